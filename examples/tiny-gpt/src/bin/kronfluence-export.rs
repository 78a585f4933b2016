//! `kronfluence-export`: trains the reduced validation study's model and writes the bundle that
//! `tools/kronfluence/kronfluence_scores.py` reads (weights under PyTorch's names, documents,
//! queries, burn's logits for the replica's check, our exact-gradient EK-FAC scores);
//! `tiny_gpt::kronfluence` documents every file.
//!
//! ```text
//! cargo run --release -p tiny-gpt --bin kronfluence-export      # → examples/tiny-gpt/validate/kronfluence
//! tools/kronfluence/run.sh                                       # kronfluence's scores, compared
//! ```

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use influence_analyzer::read_queries;
use tiny_gpt::kronfluence::{default_config, export};

/// Export the example's model, documents and queries for kronfluence.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The bundle directory.
    #[arg(long, default_value = "examples/tiny-gpt/validate/kronfluence")]
    out: PathBuf,
    /// Queries (JSON lines), each fitting the model's context.
    #[arg(long, default_value = "examples/tiny-gpt/validate/queries.jsonl")]
    queries: PathBuf,
}

fn main() -> Result<()> {
    tiny_gpt::init_logging();
    let args = Args::parse();
    let queries = read_queries(&args.queries)?;
    let ours = export(&default_config(), &queries, &args.out, &|line| {
        println!("{line}")
    })?;
    println!(
        "bundle: {} (our scores: {})",
        args.out.display(),
        ours.display()
    );
    Ok(())
}
