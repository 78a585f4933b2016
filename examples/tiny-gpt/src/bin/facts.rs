//! `facts`: fact tracing on a run of the example — for every fact of the corpus's fact sources
//! a factual query, and the rank of the first training document that states it, by influence
//! and by BM25 (`tiny_gpt::facts` defines every term).
//!
//! ```text
//! cargo run --release -p tiny-gpt                    # the README main command: runs/tiny-gpt
//! cargo run --release -p tiny-gpt --bin facts        # → runs/tiny-gpt/facts.{md,json}
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use tiny_gpt::facts::{default_methods, sketch_curvature_methods, trace_facts};

/// Fact tracing: MRR and recall@10 of influence against BM25 over every fact of the corpus.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The run directory (config.json, tokenizer.json, store/).
    #[arg(long, default_value = "runs/tiny-gpt")]
    run: PathBuf,
    /// Queries scored per pass over the store.
    #[arg(long, default_value_t = 96)]
    chunk: usize,
    /// Use at most this many facts (spread over the pool; default all).
    #[arg(long)]
    max_facts: Option<usize>,
    /// Also score with sketch-space (LoGra) curvature, for stores of random projections.
    #[arg(long)]
    sketch_curvature: bool,
}

fn main() -> Result<()> {
    tiny_gpt::init_logging();
    let args = Args::parse();
    let mut methods = default_methods();
    if args.sketch_curvature {
        methods.extend(sketch_curvature_methods());
    }
    let report = trace_facts(&args.run, &methods, args.chunk, args.max_facts, &|line| {
        println!("{line}")
    })?;
    let md = report.markdown();
    println!("\n{md}");
    for (ext, body) in [("md", md), ("json", serde_json::to_string_pretty(&report)?)] {
        let p = args.run.join(format!("facts.{ext}"));
        std::fs::write(&p, body).with_context(|| format!("{}", p.display()))?;
    }
    Ok(())
}
