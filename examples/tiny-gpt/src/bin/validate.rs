//! `validate`: the validation study of `docs/accuracy.md` — LDS against retraining on random
//! halves of the corpus, top-k removal, and the price of sketching.
//!
//! ```text
//! cargo run --release -p tiny-gpt --bin validate              # the full study (tables → OUT/study.md)
//! cargo run --release -p tiny-gpt --bin validate -- --preset ci
//! cargo run --release -p tiny-gpt --bin validate -- --rerank-run runs/tiny-gpt --out runs/rerank-run
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use tiny_gpt::validate::{Plan, StudyConfig, StudyReport, retrain_plan, run_study};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Preset {
    /// The study of docs/accuracy.md.
    Study,
    /// The reduced check CI runs.
    Ci,
}

/// Validate the influence scores of the example against retraining.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Settings preset.
    #[arg(long, value_enum, default_value = "study")]
    preset: Preset,
    /// Read the whole study configuration from a JSON file (as written to OUT/config.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Queries (JSON lines with prompt and reference completion).
    #[arg(long, default_value = "examples/tiny-gpt/queries.jsonl")]
    queries: PathBuf,
    /// Output directory: stores, the retraining cache (reused by a later run), study.json,
    /// study.md.
    #[arg(long, default_value = "runs/validate")]
    out: PathBuf,
    /// Override the number of random subsets.
    #[arg(long)]
    subsets: Option<usize>,
    /// Retraining runs at a time (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Measure only the agreement with exact influence at the final checkpoint (the price
    /// table), without retraining.
    #[arg(long, conflicts_with_all = ["plan", "retrain"])]
    agreement_only: bool,
    /// Stop before retraining and write the runs to OUT/plan.json (to train them elsewhere with
    /// --retrain, then run the study again here: every run then comes from OUT/cache).
    #[arg(long)]
    plan: bool,
    /// Train the runs of a plan file into OUT/cache, and nothing else.
    #[arg(long, value_name = "PLAN", conflicts_with = "plan")]
    retrain: Option<PathBuf>,
    /// Print the tables of a finished study's study.json again (to OUT/study.md too), and
    /// nothing else.
    #[arg(long, value_name = "STUDY_JSON", conflicts_with_all = ["plan", "retrain"])]
    render: Option<PathBuf>,
    /// Measure exact re-ranking on a finished run instead (e.g. the main command's
    /// runs/tiny-gpt): top-10/50/100 overlap with the exact ranking over the whole corpus
    /// against N, to OUT/rerank-run.md and .json, and nothing else.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["plan", "retrain", "render"])]
    rerank_run: Option<PathBuf>,
    /// With --rerank-run: the values of N per query and side, as shares of the corpus.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.0025,0.005,0.01,0.025,0.05,0.1"
    )]
    rerank_shares: Vec<f64>,
}

fn main() -> Result<()> {
    tiny_gpt::init_logging();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: the study configuration", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: invalid study configuration", path.display()))?
        }
        None => match args.preset {
            Preset::Study => StudyConfig::study(),
            Preset::Ci => StudyConfig::ci(),
        },
    };
    if let Some(m) = args.subsets {
        config.subsets = m;
    }
    if let Some(j) = args.jobs {
        config.jobs = j;
    }
    if args.agreement_only {
        config.retrain = false;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let log = |line: String| println!("{line}");
    if let Some(path) = &args.render {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: the study results", path.display()))?;
        let report: StudyReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid study results", path.display()))?;
        std::fs::write(args.out.join("study.md"), report.markdown())?;
        println!("{}", report.markdown());
        return Ok(());
    }
    if let Some(run) = &args.rerank_run {
        if let Some(bad) = args
            .rerank_shares
            .iter()
            .find(|s| !(**s > 0.0 && **s <= 1.0))
        {
            anyhow::bail!("--rerank-shares: {bad} is not a share of the corpus in (0, 1]");
        }
        let queries = influence_analyzer::read_queries(&args.queries)?;
        let table =
            tiny_gpt::reranking::run_overlaps(run, &queries, &args.rerank_shares, &args.out, &log)?;
        println!("{table}");
        return Ok(());
    }
    if let Some(path) = &args.retrain {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: the plan", path.display()))?;
        let plan: Plan = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid plan", path.display()))?;
        let jobs = args.jobs.unwrap_or(plan.config.jobs);
        let trained = retrain_plan(&plan, &args.out.join("cache"), jobs, &log)?;
        println!(
            "{trained} runs trained into {}",
            args.out.join("cache").display()
        );
        return Ok(());
    }
    std::fs::write(
        args.out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let queries = influence_analyzer::read_queries(&args.queries)?;
    let Some(report) = run_study(&config, &queries, &args.out, args.plan, &log)? else {
        return Ok(());
    };
    println!("\n{}", report.markdown());
    println!(
        "written: {} and {}",
        args.out.join("study.md").display(),
        args.out.join("study.json").display()
    );
    Ok(())
}
