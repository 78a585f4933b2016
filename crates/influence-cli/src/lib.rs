//! The `influence` command line, for any model that implements [`influence_analyzer::Task`].
//!
//! A model crate provides a binary of three lines (the bundled GPT's is
//! `examples/tiny-gpt/src/bin/influence.rs`):
//!
//! ```rust,ignore
//! fn main() -> anyhow::Result<()> {
//!     // `MyTask: influence_analyzer::Task`, built from the directory given by `--model`.
//!     influence_cli::main_with(|model_dir| MyTask::load(model_dir))
//! }
//! ```
//!
//! Commands: `query` (score queries against a store; JSON, CSV or Arrow out), `sketch` (the
//! post-hoc path: a store for a corpus at one checkpoint) and `inspect` (a store's summary,
//! optionally verifying every checksum).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use influence_analyzer::device::DeviceName;
use influence_analyzer::{
    Damping, Progress, ScoreConfig, Strategy, Task, TokenScorer, analyze, read_queries,
    sketch_corpus, write_scores_arrow,
};
use influence_core::ProjectionKind;
use influence_hook::HookConfig;
use influence_store::{SketchDtype, Store, StoreConfig, StoreWriter};

pub mod report;

/// Which documents shaped an answer: training-data influence from a burn-influence store.
#[derive(Parser, Debug)]
#[command(name = "influence", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `influence` commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score queries (JSON lines: id, prompt, completion) against every stored document.
    Query(QueryArgs),
    /// Sketch a corpus at one checkpoint into a new store (post-hoc path).
    Sketch(SketchArgs),
    /// Summarise a store (and verify every checksum with --verify).
    Inspect(InspectArgs),
    /// Generate and grade the model's answers, score them, run the analyses of Ruis et al.
    /// (2024) and write a report folder (tables, figures, one HTML page).
    Report(report::ReportArgs),
}

/// Curvature approximations.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StrategyArg {
    /// EK-FAC: Kronecker eigenbasis, corrected eigenvalues.
    Ekfac,
    /// KFAC eigenvalues.
    Kfac,
    /// Diagonal of the EK-FAC matrix.
    Diagonal,
    /// No preconditioning (gradient dot product).
    Identity,
}

/// Output formats of `query`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// Top/bottom documents per query with per-layer splits (and token-wise scores).
    Json,
    /// One line per (query, ranked document).
    Csv,
    /// The full score vector of every query (one column per query).
    Arrow,
}

/// Arguments of `influence query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// The store directory.
    #[arg(long)]
    pub store: PathBuf,
    /// Queries, one JSON object per line: {"id", "prompt", "completion", …}.
    #[arg(long)]
    pub queries: PathBuf,
    /// Directory describing the model (default: the store's parent directory).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write results here (format from --format, else from the extension: .json, .csv, .arrow).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Documents kept at the top of each query's ranking.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Documents kept at the bottom of each query's ranking.
    #[arg(long)]
    pub bottom_k: Option<usize>,
    /// How to score.
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Device: cpu, or wgpu / wgpu-cpu / cuda / cuda:N when built with those features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Token-wise influence of each query's top N documents (JSON output), at the latest window.
    #[arg(long, default_value_t = 0)]
    pub token_wise: usize,
    /// Documents printed per query.
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Re-rank each query's top N and bottom N documents by their exact score (each
    /// candidate's gradient recomputed at every window's checkpoint it has rows in); the lists
    /// then show the exact ranking, with both scores.
    #[arg(long, value_name = "N")]
    pub rerank: Option<usize>,
}

/// Scoring options shared by `query` and `report`.
#[derive(Args, Debug, Clone)]
pub struct ScoringArgs {
    /// Scoring configuration (JSON, `ScoreConfig` fields); the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Curvature approximation.
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Damping as a multiple of the mean eigenvalue per layer (default 0.1).
    #[arg(long, conflicts_with = "damping_absolute")]
    pub damping: Option<f64>,
    /// A fixed damping λ for every layer.
    #[arg(long)]
    pub damping_absolute: Option<f64>,
    /// Truncate each preconditioned query gradient to this rank.
    #[arg(long)]
    pub rank: Option<usize>,
    /// Weight each row by its step's learning rate (TracIn-style).
    #[arg(long)]
    pub lr_weighting: bool,
    /// Precondition random-projection windows by the Fisher of their own stored sketches
    /// (LoGra-style, one extra pass over each window's shards); eigenbasis windows ignore it.
    #[arg(long)]
    pub sketch_curvature: bool,
    /// Unit-normalise each stored row in the scoring metric (cosine scores, TrackStar-style;
    /// the default). `--normalize false` scores the plain inner product.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set)]
    pub normalize: Option<bool>,
    /// Windows to score (comma-separated; default all complete windows).
    #[arg(long, value_delimiter = ',')]
    pub windows: Option<Vec<u32>>,
    /// Queries per gradient pass.
    #[arg(long)]
    pub query_batch: Option<usize>,
    /// Shard decode threads (0: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `influence sketch`.
#[derive(Args, Debug)]
pub struct SketchArgs {
    /// The checkpoint to sketch at (a `.bpk` file, e.g. a store's `checkpoints/window-NNNNN.bpk`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Directory describing the model.
    #[arg(long)]
    pub model: PathBuf,
    /// The new store's directory (must not hold a store unless --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing store at --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Hook configuration (JSON, `HookConfig` fields); the flags below override it.
    #[arg(long)]
    pub hook_config: Option<PathBuf>,
    /// Input-side sketch size.
    #[arg(long)]
    pub k_a: Option<usize>,
    /// Output-side sketch size.
    #[arg(long)]
    pub k_g: Option<usize>,
    /// Exact gradients instead of sketches (identity projections; small models only).
    #[arg(long)]
    pub full_rank: bool,
    /// Projection seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Layers to track (`*` wildcards; repeat the flag); default every tracked layer.
    #[arg(long)]
    pub layers: Vec<String>,
    /// Batches re-run for the corrected eigenvalues (default: all, up to 256).
    #[arg(long)]
    pub fit_batches: Option<usize>,
    /// Sketch dtype: f32, f16, bf16 or i8 (per-row scale; the library default).
    #[arg(long, default_value = "i8")]
    pub dtype: String,
    /// Sketch only the first N documents of the corpus.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Device: cpu, or wgpu / cuda when built with those features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `influence inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The store directory.
    #[arg(long)]
    pub store: PathBuf,
    /// Read every file and check its checksum and contents.
    #[arg(long)]
    pub verify: bool,
    /// Print the manifest as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// With --verify: the model directory whose task loads the checkpoints, to check that each
    /// loads and holds only finite parameters (default: the store's parent directory, when it
    /// describes a model; otherwise checkpoints get their checksums checked only).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Parses the command line and runs it; `load` builds the task from a model directory.
pub fn main_with<T: Task>(load: impl Fn(&Path) -> Result<T>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Cli::parse(), load)
}

/// Runs a parsed command line.
pub fn run<T: Task>(cli: Cli, load: impl Fn(&Path) -> Result<T>) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect(&a, &load),
        Command::Query(a) => {
            let (store, task) = open_store_and_task(&a.store, a.model.as_deref(), &load)?;
            query(&task, &store, &a)
        }
        Command::Report(a) => report::run(&a, &load),
        Command::Sketch(a) => {
            let task = load(&a.model).with_context(|| {
                format!("loading the model description from {}", a.model.display())
            })?;
            sketch(&task, &a)
        }
    }
}

/// Opens a store, then the task of its model directory (`model`, default the store's parent).
/// The store first: a wrong `--store` is reported as such, not as a missing model.
pub(crate) fn open_store_and_task<T: Task>(
    store_dir: &Path,
    model: Option<&Path>,
    load: &impl Fn(&Path) -> Result<T>,
) -> Result<(Store, T)> {
    let store = Store::open(store_dir)?;
    let model_dir = match model {
        Some(m) => m.to_path_buf(),
        None => store_dir
            .canonicalize()
            .with_context(|| format!("--store {}", store_dir.display()))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let task = load(&model_dir)
        .with_context(|| format!("loading the model description from {}", model_dir.display()))?;
    Ok((store, task))
}

/// [`analyze`] with progress bars for the query gradients and the scored rows.
pub(crate) fn analyze_with_bars<T: Task>(
    task: &T,
    store: &Store,
    queries: &[influence_analyzer::Query],
    config: &ScoreConfig,
    device: &burn::tensor::Device,
) -> Result<influence_analyzer::Analysis> {
    let windows = bar(0, "gradients");
    let rows = bar(store.manifest().rows(), "rows");
    let analysis = analyze(task, store, queries, config, device, &mut |p| match p {
        Progress::Window { done, total, .. } => {
            windows.set_length(total as u64);
            windows.set_position(done as u64);
        }
        Progress::Rows { done, total } => {
            rows.set_length(total);
            rows.set_position(done);
        }
    })?;
    windows.finish_and_clear();
    rows.finish_and_clear();
    Ok(analysis)
}

/// [`influence_analyzer::rerank`] with a progress bar and the cost line.
pub(crate) fn rerank_with_bar<T: Task>(
    task: &T,
    store: &Store,
    analysis: &influence_analyzer::Analysis,
    corpus: &HashMap<u64, influence_analyzer::Document>,
    config: &ScoreConfig,
    n: usize,
    device: &burn::tensor::Device,
) -> Result<influence_analyzer::Reranked> {
    let docs: Vec<influence_analyzer::Document> = corpus.values().cloned().collect();
    let pb = bar(0, "exact");
    let r = influence_analyzer::rerank(
        task,
        store,
        analysis,
        &docs,
        config,
        n,
        device,
        &mut |d, t| {
            pb.set_length(t as u64);
            pb.set_position(d as u64);
        },
    )
    .context("--rerank")?;
    pb.finish_and_clear();
    println!(
        "{} (top and bottom {n} per query by sketch score)",
        r.stats.summary()
    );
    Ok(r)
}

/// The task's corpus by document id.
pub(crate) fn corpus_by_id<T: Task>(
    task: &T,
) -> Result<HashMap<u64, influence_analyzer::Document>> {
    Ok(task
        .corpus()
        .map_err(|e| anyhow::anyhow!("reading the corpus: {e}"))?
        .into_iter()
        .map(|d| (d.id, d))
        .collect())
}

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})")
    {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

pub(crate) fn score_config(a: &ScoringArgs) -> Result<ScoreConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("--config {}: invalid", p.display()))?
        }
        None => ScoreConfig::default(),
    };
    if let Some(s) = a.strategy {
        c.strategy = match s {
            StrategyArg::Ekfac => Strategy::Ekfac,
            StrategyArg::Kfac => Strategy::Kfac,
            StrategyArg::Diagonal => Strategy::Diagonal,
            StrategyArg::Identity => Strategy::Identity,
        };
    }
    if let Some(d) = a.damping {
        c.damping = Damping::RelativeToMean(d);
    }
    if let Some(d) = a.damping_absolute {
        c.damping = Damping::Absolute(d);
    }
    if a.rank.is_some() {
        c.rank = a.rank;
    }
    if a.lr_weighting {
        c.lr_weighting = true;
    }
    if a.sketch_curvature {
        c.sketch_curvature = true;
    }
    if let Some(on) = a.normalize {
        c.normalize = on;
    }
    if a.windows.is_some() {
        c.windows = a.windows.clone();
    }
    if let Some(b) = a.query_batch {
        c.query_batch = b;
    }
    if let Some(t) = a.threads {
        c.decode_threads = t;
    }
    c.validate()?;
    Ok(c)
}

fn output_format(a: &QueryArgs) -> Result<Option<(PathBuf, Format)>> {
    let Some(out) = &a.out else {
        if a.format.is_some() {
            bail!("--format needs --out");
        }
        return Ok(None);
    };
    let format = match a.format {
        Some(f) => f,
        None => match out.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some("arrow") | Some("ipc") | Some("feather") => Format::Arrow,
            _ => bail!(
                "--out {}: say --format json|csv|arrow (or use one of those extensions)",
                out.display()
            ),
        },
    };
    Ok(Some((out.clone(), format)))
}

fn query<T: Task>(task: &T, store: &Store, a: &QueryArgs) -> Result<()> {
    let mut config = score_config(&a.scoring)?;
    if let Some(k) = a.top_k {
        config.top_k = k;
    }
    if let Some(k) = a.bottom_k {
        config.bottom_k = k;
    }
    config.validate()?;
    let out = output_format(a)?;
    let device = a.device.parse::<DeviceName>()?.device()?;
    let queries = read_queries(&a.queries)?;
    let mut analysis = analyze_with_bars(task, store, &queries, &config, &device)?;
    let corpus = corpus_by_id(task)?;
    let reranked = match a.rerank {
        Some(n) => Some(rerank_with_bar(
            task, store, &analysis, &corpus, &config, n, &device,
        )?),
        None => None,
    };
    // The per-layer split of every listed document: one more pass over the shards.
    let pairs = analysis.listed_pairs(reranked.as_ref(), config.top_k, config.bottom_k);
    analysis
        .add_layer_splits(store, &config, &device, &pairs)
        .context("splitting the listed documents' scores by layer")?;
    let report = match &reranked {
        Some(r) => analysis.report_reranked(r, config.top_k, config.bottom_k),
        None => analysis.report(config.top_k, config.bottom_k),
    };

    let mut token_wise = Vec::new();
    if a.token_wise > 0 {
        let last = analysis.prepared.last().context("no window was scored")?;
        let scorer = TokenScorer::new(task, store, last, &device)?;
        for (qi, q) in report.queries.iter().enumerate() {
            for r in q.top.iter().take(a.token_wise) {
                let doc = corpus.get(&r.doc_id).with_context(|| {
                    format!("document {} is not in the task's corpus", r.doc_id)
                })?;
                let t = scorer.score(doc)?;
                token_wise.push(serde_json::json!({
                    "query": q.id,
                    "doc_id": r.doc_id,
                    "window": last.window,
                    "tokens": t.tokens,
                    "scores": t.scores[qi],
                }));
            }
        }
    }

    let s = &analysis.scores.stats;
    println!(
        "scored {} queries against {} documents ({} rows, {} shards, {:.1} MB) over {} window(s) in {:.2} s ({:.0} rows/s)",
        queries.len(),
        analysis.scores.docs.len(),
        s.rows,
        s.shards,
        s.shard_bytes as f64 / 1e6,
        analysis.prepared.len(),
        s.wall_seconds,
        s.rows as f64 / s.wall_seconds.max(1e-9)
    );
    if s.nonfinite_rows > 0 {
        println!(
            "{} rows scored NaN or ∞ and are left out of every ranking (the log names them; \
             check the store with influence inspect --verify)",
            s.nonfinite_rows
        );
    }
    if report.ranking == "exact" {
        println!("ranked by exact score (sketch score in brackets)");
    }
    for q in &report.queries {
        println!(
            "\n{}  {:?} → {:?}  (−log p = {:.3} nats)",
            q.id, q.prompt, q.completion, q.nats
        );
        for r in q.top.iter().take(a.show) {
            let text = corpus.get(&r.doc_id).map_or("", |d| d.text.as_str());
            let score = match r.exact {
                Some(e) => format!("{e:>+11.4e} [{:>+10.3e}]", r.score),
                None => format!("{:>+11.4e}", r.score),
            };
            println!(
                "  {:>3}. doc {:>6} {:<11} {score} ({:>+9.3e}/nat)  {}",
                r.rank,
                r.doc_id,
                r.source,
                r.score_per_nat,
                snippet(text, 70)
            );
        }
    }
    if let Some((path, format)) = out {
        match format {
            Format::Json => {
                let mut v = serde_json::to_value(&report)?;
                if !token_wise.is_empty() {
                    v["token_wise"] = serde_json::Value::Array(token_wise);
                }
                std::fs::write(&path, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("--out {}", path.display()))?;
            }
            Format::Csv => report.write_csv(&path)?,
            Format::Arrow => write_scores_arrow(&analysis, &path)?,
        }
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn snippet(text: &str, n: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > n {
        format!("{}…", flat.chars().take(n).collect::<String>())
    } else {
        flat
    }
}

fn sketch<T: Task>(task: &T, a: &SketchArgs) -> Result<()> {
    let device = a.device.parse::<DeviceName>()?.device()?;
    let mut hook = match &a.hook_config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--hook-config {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("--hook-config {}: invalid", p.display()))?
        }
        None => HookConfig::default(),
    };
    if let Some(k) = a.k_a {
        hook.k_a = k;
    }
    if let Some(k) = a.k_g {
        hook.k_g = k;
    }
    if a.full_rank {
        hook.projection = ProjectionKind::Identity;
    }
    if let Some(s) = a.seed {
        hook.projection_seed = s;
    }
    if !a.layers.is_empty() {
        hook.include = a.layers.clone();
    }
    hook.factor_every = 1;
    let mut docs = task
        .corpus()
        .map_err(|e| anyhow::anyhow!("reading the corpus: {e}"))?;
    if let Some(n) = a.limit {
        docs.truncate(n);
    }
    let dtype = match a.dtype.as_str() {
        "f32" => SketchDtype::F32,
        "f16" => SketchDtype::F16,
        "bf16" => SketchDtype::Bf16,
        "i8" => SketchDtype::I8,
        other => bail!("--dtype {other:?}: expected f32, f16, bf16 or i8"),
    };
    if a.out.join(influence_store::MANIFEST).exists() {
        if !a.overwrite {
            bail!(
                "--out {} already holds a store (use --overwrite)",
                a.out.display()
            );
        }
        std::fs::remove_dir_all(&a.out)
            .with_context(|| format!("replacing {}", a.out.display()))?;
    }
    let store_config = StoreConfig {
        dtype,
        ..StoreConfig::default()
    };
    let writer = StoreWriter::create(&a.out, store_config)?;
    let stats = writer.stats();
    let pb = bar(0, "batches");
    // The corrected eigenvalues average over these batches (the whole of a small corpus).
    hook.fit_batches = a.fit_batches.unwrap_or(256);
    let summary = sketch_corpus(
        task,
        &a.checkpoint,
        &docs,
        hook,
        writer,
        &device,
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
    )?;
    pb.finish_and_clear();
    let store = Store::open(&a.out)?;
    let s = stats.snapshot();
    println!(
        "sketched {} documents in {} batches at {} in {:.1} s: {} rows, {} layers, {:.1} MB in {}",
        summary.documents,
        summary.batches,
        a.checkpoint.display(),
        summary.seconds,
        store.manifest().rows(),
        store.run().layers.len(),
        s.bytes_written as f64 / 1e6,
        a.out.display()
    );
    Ok(())
}

fn inspect<T: Task>(a: &InspectArgs, load: &impl Fn(&Path) -> Result<T>) -> Result<()> {
    let store = Store::open(&a.store)?;
    let m = store.manifest();
    if a.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        println!(
            "store {} (format {}, written by {})",
            a.store.display(),
            m.store_version,
            m.created_by
        );
        println!(
            "  {} rows in {} shards, {:.1} MB; sketches {} ({}), projection {:?} seed {:#x}; loss reduction {:?}; Fisher {:?}; {}",
            m.rows(),
            m.shards.len(),
            m.shards.iter().map(|s| s.file.bytes).sum::<u64>() as f64 / 1e6,
            m.dtype.name(),
            m.compression,
            m.run.projection,
            m.run.projection_seed,
            m.run.loss_reduction,
            m.run.fisher,
            if m.finished {
                "finished"
            } else {
                "not finished (the run stopped or is still writing)"
            }
        );
        println!("  layers ({}):", m.run.layers.len());
        for l in &m.run.layers {
            println!(
                "    {:<24} {:>5} → {:<5} bias {:<5} sketch {}×{}",
                l.name, l.d_in, l.d_out, l.bias, l.k_g, l.k_a
            );
        }
        println!(
            "  windows ({}, {} steps each):",
            m.windows.len(),
            m.run.window_steps
        );
        for w in &m.windows {
            let rows: u64 = m
                .shards
                .iter()
                .filter(|s| s.window == w.window)
                .map(|s| s.rows)
                .sum();
            let lr = |f: fn(f64, f64) -> f64, init| w.learning_rates.iter().copied().fold(init, f);
            println!(
                "    {:>3}: steps {}–{}, {} rows, lr {:.2e}–{:.2e}, {}",
                w.window,
                w.first_step,
                w.last_step,
                rows,
                lr(f64::min, f64::INFINITY),
                lr(f64::max, 0.0),
                if w.is_complete() {
                    "checkpoint + factors"
                } else {
                    "factors only"
                }
            );
        }
        let dropped: u64 = m.dropped.iter().map(|d| d.rows).sum();
        if dropped > 0 {
            println!("  {dropped} rows dropped by the lossy writer");
        }
        for r in &m.resumes {
            println!(
                "  resumed at step {} (rolled back {} rows, removed {} files)",
                r.step,
                r.removed_rows,
                r.removed_files.len()
            );
        }
    }
    if a.verify {
        let r = store.verify()?;
        println!(
            "verified: {} shards, {} rows, {} factor files, {} checkpoints, {:.1} MB — every checksum and decode OK",
            r.shards,
            r.rows,
            r.factor_files,
            r.checkpoints,
            r.bytes as f64 / 1e6
        );
        if r.checkpoints > 0 {
            // The checkpoints' contents need the model: load each one with the task.
            let task = match &a.model {
                Some(m) => Some(load(m).with_context(|| {
                    format!("--model {}: loading the model description", m.display())
                })?),
                None => {
                    let parent = a
                        .store
                        .canonicalize()
                        .with_context(|| format!("--store {}", a.store.display()))?
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    match load(&parent) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            println!(
                                "checkpoints: checksums only ({} does not describe a model: {e:#}; \
                                 pass --model DIR to load them)",
                                parent.display()
                            );
                            None
                        }
                    }
                }
            };
            if let Some(task) = task {
                let c = influence_analyzer::verify_checkpoints(
                    &task,
                    &store,
                    &burn::tensor::Device::flex(),
                )?;
                println!(
                    "checkpoints: {} loaded with the model, {} parameters ({} values) each finite",
                    c.checkpoints, c.parameters, c.values
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: [&str; 6] = ["influence", "query", "--store", "s", "--queries", "q.jsonl"];

    fn scoring(flags: &[&str]) -> ScoreConfig {
        let cli = Cli::try_parse_from(QUERY.iter().chain(flags)).expect("parses");
        match cli.command {
            Command::Query(a) => score_config(&a.scoring).expect("valid"),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn normalize_is_the_default_and_can_be_turned_off() {
        assert!(scoring(&[]).normalize);
        assert!(scoring(&["--normalize"]).normalize);
        assert!(scoring(&["--normalize", "true"]).normalize);
        assert!(!scoring(&["--normalize", "false"]).normalize);
        assert!(!scoring(&["--normalize=false", "--strategy", "identity"]).normalize);
        let e = Cli::try_parse_from(QUERY.iter().chain(&["--normalize", "no"]))
            .expect_err("not a bool");
        assert!(e.to_string().contains("--normalize"), "{e}");
    }
}
