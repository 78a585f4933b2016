//! `influence report`: the whole analysis of Ruis et al. (2024) for one or more runs.
//!
//! For each run (a store and its model; two runs of different sizes trained on the same corpus
//! are set side by side) it
//! 1. loads the latest checkpoint and lets the model answer every query greedily
//!    ([`Task::generate`]), grading the answer ([`grade`]);
//! 2. scores the model's own completion of each query against every stored document and, where
//!    the model was wrong, also the reference completion (the correct worked answer) — the
//!    paper keeps correct and wrong completions apart;
//! 3. runs the analyses of `influence_analyses` (correlations between queries, concentration
//!    of influence, answer search in the top documents, source multipliers, per-layer shares)
//!    and the token-wise split of each query's top documents;
//! 4. writes tables, figures and one HTML page with `influence_report`.
//!
//! With `--scores FILE` (a score matrix computed by another tool, read by
//! [`influence_analyzer::ExternalScores`]) there is no store and no model: steps 1 and 2 are
//! replaced by the file's scores of the queries' reference completions, the answer search
//! reads the file's `text` column, and there are no token-wise highlights ([`run_scores`]).
//!
//! Query lines carry, besides `id`, `prompt` and `completion` (the reference), a `group`
//! (`factual`, `reasoning`, `control`), a `task`, the final `answer` and the intermediate
//! `steps` (see `examples/tiny-gpt/queries.jsonl`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use influence_analyses as an;
use influence_analyzer::device::DeviceName;
use influence_analyzer::query::load_window_model;
use influence_analyzer::{
    Analysis, Document, ExternalScores, NATS_METADATA, Query, Reranked, ScoreConfig, Scores, Task,
    TokenScorer, read_queries, windows,
};
use influence_report as rp;
use influence_store::Store;
use serde::Serialize;

use crate::{
    ScoringArgs, analyze_with_bars, bar, corpus_by_id, open_store_and_task, rerank_with_bar,
    score_config, snippet,
};

/// Arguments of `influence report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A store directory; repeat for several runs (e.g. two model sizes on the same corpus).
    #[arg(long = "store", required_unless_present = "scores")]
    pub stores: Vec<PathBuf>,
    /// A score matrix computed by another tool (kronfluence, …) instead of a store: documents ×
    /// queries as Arrow IPC (.arrow, .ipc, .feather) or CSV, columns doc_id, source, text,
    /// score:<query id> (docs/format.md, "External score matrices"). No model is loaded: the
    /// queries' reference completions are what the file scores.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["stores", "models", "rerank"])]
    pub scores: Option<PathBuf>,
    /// A name for each run, in --store order (default: the store's parent directory name).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// The model directory of each run, in --store order (default: each store's parent).
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Queries, one JSON object per line: {"id", "group", "task", "prompt", "completion",
    /// "answer", "steps"}.
    #[arg(long)]
    pub queries: PathBuf,
    /// The report folder (index.html, figures/, tables/, report.json).
    #[arg(long)]
    pub out: PathBuf,
    /// How to score.
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Device: cpu, or wgpu / wgpu-cpu / cuda / cuda:N when built with those features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Documents searched for each query's answer and intermediate results (comma-separated;
    /// the first is shown on the page; the paper: 500 of millions, so a smaller N is the closer
    /// match for a corpus of thousands).
    #[arg(long, value_delimiter = ',', default_value = "500,50")]
    pub top_n: Vec<usize>,
    /// Top documents shown on the page per query.
    #[arg(long, default_value_t = 8)]
    pub show: usize,
    /// Top documents per query split over their tokens (at the latest window's checkpoint).
    #[arg(long, default_value_t = 3)]
    pub token_wise: usize,
    /// Tokens the model may generate per answer.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Score the queries' reference completions only (do not let the model answer).
    #[arg(long)]
    pub no_generate: bool,
    /// Re-rank each completion's top N and bottom N documents by their exact score; the top
    /// documents, the answer search and the token-wise highlights then use the exact ranking
    /// (the candidates first, by exact score; sketch order beyond them).
    #[arg(long, value_name = "N")]
    pub rerank: Option<usize>,
}

/// One scored completion: a query answered by the model, or its reference answer.
#[derive(Clone, Debug, Serialize)]
pub struct Scored {
    /// The query's id.
    pub query: String,
    /// `model` (the model's own greedy answer) or `reference` (the query file's completion).
    pub kind: String,
    /// Query group (`factual`, `reasoning`, `control`, …).
    pub group: String,
    /// Task within the group.
    pub task: String,
    /// Whether the completion gives the right answer (`None`: the query has no answer field).
    pub correct: Option<bool>,
    /// The expected final answer.
    pub answer: Option<String>,
    /// What the answer search looks for: every intermediate result (reasoning) or the answer.
    pub needles: Vec<String>,
}

impl Scored {
    /// A label for tables and figures: `id` for the model's answer, `id (ref)` for a reference.
    pub fn label(&self) -> String {
        if self.kind == "reference" {
            format!("{} (ref)", self.query)
        } else {
            self.query.clone()
        }
    }

    /// `group`, split by correctness for the model's answers (`factual ✓`, `factual ✗`) and
    /// marked for references (`factual ref`).
    pub fn outcome(&self) -> String {
        match (self.kind.as_str(), self.correct) {
            ("reference", _) => format!("{} ref", self.group),
            (_, Some(true)) => format!("{} correct", self.group),
            (_, Some(false)) => format!("{} wrong", self.group),
            _ => self.group.clone(),
        }
    }
}

/// Whether `completion` gives `answer`. A numeric answer must equal the *last* number in the
/// completion (a worked answer ends with its result; `-3` and `3.0` are numbers, `13` does not
/// give `3`); any other answer must occur in it as a whole word, ignoring case.
pub fn grade(completion: &str, answer: &str) -> bool {
    let answer = answer.trim();
    if let Ok(want) = answer.parse::<f64>() {
        return numbers(completion)
            .last()
            .is_some_and(|got| (got - want).abs() < 1e-9);
    }
    let hay = completion.to_lowercase();
    let needle = answer.to_lowercase();
    if needle.is_empty() {
        return false;
    }
    hay.match_indices(&needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// The numbers in `text`, in order: optional minus sign, digits, optional decimal part.
fn numbers(text: &str) -> Vec<f64> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let neg = i > 0 && b[i - 1] == b'-' && (i < 2 || !b[i - 2].is_ascii_alphanumeric());
            let start = if neg { i - 1 } else { i };
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if let Ok(v) = text[start..i].parse() {
                out.push(v);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn field(q: &Query, name: &str) -> Option<String> {
    q.extra.get(name).and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn steps(q: &Query) -> Vec<String> {
    q.extra
        .get("steps")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| match s {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The completions to score for `queries`: the model's own answer (graded) and, where it is
/// wrong, the reference. `generate` returns the model's answer, or `None` when it cannot.
pub fn completions_to_score(
    queries: &[Query],
    mut generate: impl FnMut(&Query) -> Result<Option<String>>,
) -> Result<(Vec<Query>, Vec<Scored>)> {
    let mut out = Vec::new();
    let mut meta = Vec::new();
    for q in queries {
        let answer = field(q, "answer");
        let group = field(q, "group").unwrap_or_else(|| "queries".into());
        let task = field(q, "task").unwrap_or_else(|| group.clone());
        let mut needles = steps(q);
        if needles.is_empty() {
            needles.extend(answer.clone());
        }
        let base = Scored {
            query: q.id.clone(),
            kind: "reference".into(),
            group,
            task,
            correct: answer.as_deref().map(|a| grade(&q.completion, a)),
            answer: answer.clone(),
            needles,
        };
        if base.correct == Some(false) {
            bail!(
                "query {}: its reference completion {:?} does not give its answer {:?}",
                q.id,
                q.completion,
                answer.unwrap_or_default()
            );
        }
        match generate(q)? {
            Some(said) => {
                let correct = answer.as_deref().map(|a| grade(&said, a));
                let mut mine = q.clone();
                mine.completion = said;
                mine.extra
                    .insert("kind".into(), serde_json::Value::from("model"));
                out.push(mine);
                meta.push(Scored {
                    kind: "model".into(),
                    correct,
                    ..base.clone()
                });
                if correct == Some(false) {
                    let mut reference = q.clone();
                    reference.id = format!("{}:reference", q.id);
                    reference
                        .extra
                        .insert("kind".into(), serde_json::Value::from("reference"));
                    out.push(reference);
                    meta.push(base);
                }
            }
            None => {
                out.push(q.clone());
                meta.push(base);
            }
        }
    }
    Ok((out, meta))
}

/// Runs `influence report` (for `--scores`, [`run_scores`]: no task is loaded).
pub fn run<T: Task>(a: &ReportArgs, load: &impl Fn(&Path) -> Result<T>) -> Result<()> {
    if a.scores.is_some() {
        return run_scores(a);
    }
    if !a.names.is_empty() && a.names.len() != a.stores.len() {
        bail!(
            "--name given {} times for {} --store: name every run or none",
            a.names.len(),
            a.stores.len()
        );
    }
    if !a.models.is_empty() && a.models.len() != a.stores.len() {
        bail!(
            "--model given {} times for {} --store: give every run's model or none",
            a.models.len(),
            a.stores.len()
        );
    }
    if a.top_n.is_empty() || a.top_n.contains(&0) {
        bail!("--top-n: give one or more N ≥ 1");
    }
    let config = score_config(&a.scoring)?;
    let device = a.device.parse::<DeviceName>()?.device()?;
    let queries = read_queries(&a.queries)?;
    let mut runs = Vec::new();
    for (i, store_dir) in a.stores.iter().enumerate() {
        let (store, task) =
            open_store_and_task(store_dir, a.models.get(i).map(|p| p.as_path()), load)?;
        let name = match a.names.get(i) {
            Some(n) => n.clone(),
            None => run_name(store_dir),
        };
        println!("\n== {name}: {}", store_dir.display());
        runs.push(analyse_run(
            &name, &task, &store, &queries, &config, &device, a,
        )?);
    }
    write_report(a, notes(a, &config), runs)
}

/// Runs `influence report --scores FILE`: the analyses and the page of a score matrix computed
/// by another tool ([`ExternalScores`]), for the queries' reference completions, with no store
/// and no model (so no generated answers, no token-wise highlights, no re-ranking).
pub fn run_scores(a: &ReportArgs) -> Result<()> {
    let path = a
        .scores
        .as_deref()
        .context("run_scores needs --scores FILE")?;
    if a.names.len() > 1 {
        bail!(
            "--name given {} times with --scores: one score file is one run",
            a.names.len()
        );
    }
    if a.top_n.is_empty() || a.top_n.contains(&0) {
        bail!("--top-n: give one or more N ≥ 1");
    }
    let queries = read_queries(&a.queries)?;
    let ext = ExternalScores::read(path)?;
    let (scored, meta) = completions_to_score(&queries, |_| Ok(None))?;
    let analysis = ext.analysis(&scored)?;
    let corpus: HashMap<u64, Document> = ext.documents().into_iter().map(|d| (d.id, d)).collect();
    let name = match a.names.first() {
        Some(n) => n.clone(),
        None => path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        ),
    };
    println!(
        "\n== {name}: {} ({} documents × {} completions)",
        path.display(),
        analysis.scores.docs.len(),
        scored.len()
    );
    let results = Results::compute(&analysis, &meta, &corpus, &a.top_n, None)?;
    results.print_headline(&name);
    let origin = Origin::External { path };
    let section = results.section(
        &name,
        &origin,
        &analysis,
        &meta,
        &corpus,
        &TokenTable::new(),
        a,
    )?;
    let unknown_nats = scored.iter().filter(|q| !ext.nats_known(q)).count();
    let no_text = ext
        .texts
        .iter()
        .filter(|t| t.as_deref().unwrap_or("").is_empty())
        .count();
    write_report(
        a,
        external_notes(a, path, unknown_nats, scored.len(), no_text),
        vec![section],
    )
}

fn write_report(a: &ReportArgs, notes: Vec<String>, runs: Vec<rp::RunSection>) -> Result<()> {
    let data = rp::ReportData {
        title: "Which training documents shaped the answers".into(),
        notes,
        runs,
    };
    let files = rp::write_report(&data, &a.out)?;
    println!(
        "\nreport: {} ({} figures, {} tables)",
        files.index.display(),
        files.figures.len(),
        files.tables.len()
    );
    Ok(())
}

fn run_name(store_dir: &Path) -> String {
    store_dir
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| store_dir.display().to_string())
}

fn notes(a: &ReportArgs, config: &ScoreConfig) -> Vec<String> {
    vec![
        format!(
            "Influence of a training document on a completion: EK-FAC-preconditioned query gradient against the document's gradient sketch{}, summed over the windows of the run ({:?}, damping {:?}). Positive: training on the document made the completion more likely.",
            if config.normalize {
                ", each stored row unit-normalised in the preconditioned metric (a cosine, TrackStar-style, so that a few long, high-gradient-norm documents do not top every query)"
            } else {
                " (plain inner product, rows not normalised)"
            },
            config.strategy,
            config.damping
        ),
        format!(
            "Each query is answered greedily by the model (at most {} tokens) and graded against its answer; where the model is wrong, the reference completion is scored as well (marked ref). Answer search looks in each completion's top {} documents for the answer (factual) or every intermediate result (reasoning), as Ruis et al. (2024) do with N = 500.",
            a.max_new_tokens,
            a.top_n.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" and ")
        ),
        "Ruis et al. (2024), Procedural Knowledge in Pretraining Drives Reasoning in Large Language Models: factual answers are found in the top documents far more often than reasoning steps (7B: 55 % vs 7.4 %); same-task reasoning queries have strongly correlated influence (up to 0.96) while factual queries do not (mean ≈ 0.06).".into(),
    ]
}

fn external_notes(
    a: &ReportArgs,
    path: &Path,
    unknown_nats: usize,
    completions: usize,
    no_text: usize,
) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Scores read from {}, computed by another tool; the analyses take its sign as burn-influence's (positive: training on the document made the completion more likely). No model was loaded: the queries' reference completions are what is scored, none is generated or graded.",
            path.display()
        ),
        format!(
            "Answer search looks in each completion's top {} documents (by the file's scores) for the answer (factual) or every intermediate result (reasoning), as Ruis et al. (2024) do with N = 500; it reads the file's text column{}.",
            a.top_n
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
            if no_text > 0 {
                format!(" ({no_text} documents have no text there and count as empty)")
            } else {
                String::new()
            }
        ),
    ];
    if unknown_nats > 0 {
        notes.push(format!(
            "−log p(completion | prompt) of {unknown_nats} of {completions} completions is neither in the file's {NATS_METADATA} metadata nor a nats field of the query line: taken as 1, so their per-nat quantities are the plain scores."
        ));
    }
    if a.token_wise > 0 {
        notes.push(
            "Token-wise highlights need the model's gradients and are not shown for external scores.".into(),
        );
    }
    notes.push("Per-layer shares: the file gives one total per document, shown as the single layer \"external\".".into());
    notes.push("Ruis et al. (2024), Procedural Knowledge in Pretraining Drives Reasoning in Large Language Models: factual answers are found in the top documents far more often than reasoning steps (7B: 55 % vs 7.4 %); same-task reasoning queries have strongly correlated influence (up to 0.96) while factual queries do not (mean ≈ 0.06).".into());
    notes
}

/// Where a run's scores come from, for its summary.
enum Origin<'a> {
    /// Scored here from a store.
    Store(&'a Store),
    /// Read from a file another tool wrote.
    External {
        /// The score file.
        path: &'a Path,
    },
}

/// Everything one run contributes to the report.
fn analyse_run<T: Task>(
    name: &str,
    task: &T,
    store: &Store,
    queries: &[Query],
    config: &ScoreConfig,
    device: &Device,
    a: &ReportArgs,
) -> Result<rp::RunSection> {
    let chosen = windows(store, config)?;
    let last = *chosen.last().context("the store has no complete window")?;
    let (scored_queries, meta) = {
        let (model, _probe) = load_window_model(task, store, last, device)?;
        let pb = bar(queries.len() as u64, "answering");
        let r = completions_to_score(queries, |q| {
            pb.inc(1);
            if a.no_generate {
                return Ok(None);
            }
            task.generate(&model, &q.prompt, a.max_new_tokens, device)
                .map_err(|e| anyhow::anyhow!("query {}: generating: {e}", q.id))
        })?;
        pb.finish_and_clear();
        r
    };
    let answered = meta.iter().filter(|m| m.kind == "model").count();
    let right = meta
        .iter()
        .filter(|m| m.kind == "model" && m.correct == Some(true))
        .count();
    println!(
        "answered {answered} queries: {right} correct; scoring {} completions",
        scored_queries.len()
    );

    let analysis = analyze_with_bars(task, store, &scored_queries, config, device)?;
    let s = &analysis.scores.stats;
    println!(
        "scored {} completions against {} documents ({} rows) over {} window(s) in {:.1} s",
        scored_queries.len(),
        analysis.scores.docs.len(),
        s.rows,
        analysis.prepared.len(),
        s.wall_seconds
    );
    let corpus = corpus_by_id(task)?;
    let reranked = match a.rerank {
        Some(n) => Some(rerank_with_bar(
            task, store, &analysis, &corpus, config, n, device,
        )?),
        None => None,
    };
    let results = Results::compute(&analysis, &meta, &corpus, &a.top_n, reranked)?;
    let tokens = token_wise(task, store, &analysis, &results, &corpus, a, device)?;
    results.print_headline(name);
    results.section(
        name,
        &Origin::Store(store),
        &analysis,
        &meta,
        &corpus,
        &tokens,
        a,
    )
}

/// Token-wise scores of each scored completion's top documents: doc id → per completion.
type TokenTable = HashMap<u64, (Vec<String>, Vec<Vec<f32>>)>;

fn token_wise<T: Task>(
    task: &T,
    store: &Store,
    analysis: &Analysis,
    results: &Results,
    corpus: &HashMap<u64, Document>,
    a: &ReportArgs,
    device: &Device,
) -> Result<TokenTable> {
    let mut out = TokenTable::new();
    if a.token_wise == 0 {
        return Ok(out);
    }
    let Some(last) = analysis.prepared.last() else {
        return Ok(out);
    };
    let scores = &analysis.scores;
    let mut wanted: Vec<u64> = (0..scores.queries)
        .flat_map(|q| results.top(scores, q, a.token_wise))
        .map(|d| scores.docs[d].id)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let scorer = TokenScorer::new(task, store, last, device)?;
    let pb = bar(wanted.len() as u64, "token-wise");
    for id in wanted {
        let doc = corpus
            .get(&id)
            .with_context(|| format!("document {id} is not in the task's corpus"))?;
        let t = scorer.score(doc)?;
        out.insert(id, (t.tokens, t.scores));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The analyses of one run.
struct Results {
    /// Completions whose model answer is in the correlation matrix (indices into the scored
    /// completions): every model answer, or every reference when the model did not generate.
    primary: Vec<usize>,
    correlation: an::CorrelationMatrix,
    group_pairs: Vec<an::GroupPair>,
    task_pairs: Vec<an::GroupPair>,
    curves: Vec<an::Curve>,
    group_curves: Vec<an::GroupCurve>,
    power_laws: Vec<Option<an::PowerLaw>>,
    alpha_test: Option<an::TTest>,
    total_test: Option<an::TTest>,
    /// Per N of `--top-n`: each completion's answer search.
    hits: Vec<(usize, Vec<an::AnswerHit>)>,
    /// Per N: the rates per group.
    answer_rates: Vec<(usize, Vec<an::AnswerRate>)>,
    multipliers: Vec<an::MeanMultiplier>,
    layer_shares: Vec<Vec<f64>>,
    layers: Vec<String>,
    ks: Vec<usize>,
    /// The exact re-ranking (`--rerank`), when asked for.
    reranked: Option<Reranked>,
}

impl Results {
    /// Query `q`'s top `k`: by exact score first when re-ranked ([`Reranked::merged_top`]).
    fn top(&self, s: &Scores, q: usize, k: usize) -> Vec<usize> {
        match &self.reranked {
            Some(r) => r.merged_top(s, q, k),
            None => s.top(q, k),
        }
    }

    /// Query `q`'s bottom `k`, likewise.
    fn bottom(&self, s: &Scores, q: usize, k: usize) -> Vec<usize> {
        match &self.reranked {
            Some(r) => r.merged_bottom(s, q, k),
            None => s.bottom(q, k),
        }
    }

    /// The score a list shows: the exact one for a re-ranked candidate.
    fn shown_score(&self, s: &Scores, d: usize, q: usize) -> f64 {
        self.reranked
            .as_ref()
            .and_then(|r| r.exact_score(d, q))
            .unwrap_or_else(|| s.score(d, q))
    }

    fn compute(
        analysis: &Analysis,
        meta: &[Scored],
        corpus: &HashMap<u64, Document>,
        top_n: &[usize],
        reranked: Option<Reranked>,
    ) -> Result<Self> {
        let s = &analysis.scores;
        let nats = analysis.nats();
        let columns: Vec<Vec<f64>> = (0..s.queries).map(|q| s.column(q)).collect();
        let sources: Vec<String> = s.docs.iter().map(|d| d.source.to_string()).collect();
        // Grouped by group and task, so the heatmap shows blocks.
        let mut primary: Vec<usize> = (0..meta.len())
            .filter(|&i| meta[i].kind == "model" || !meta.iter().any(|m| m.kind == "model"))
            .collect();
        primary.sort_by(|&i, &j| {
            (&meta[i].group, &meta[i].task).cmp(&(&meta[j].group, &meta[j].task))
        });
        let prim_cols: Vec<Vec<f64>> = primary.iter().map(|&i| columns[i].clone()).collect();
        let prim_groups: Vec<String> = primary.iter().map(|&i| meta[i].group.clone()).collect();
        let prim_tasks: Vec<String> = primary.iter().map(|&i| meta[i].task.clone()).collect();
        let correlation = an::correlation_matrix(&prim_cols)?;
        let group_pairs = an::group_correlations(&correlation, &prim_groups)?;
        // Same-task pairs (within each task) and pairs of different tasks of the same group.
        let task_pairs: Vec<an::GroupPair> = an::group_correlations(&correlation, &prim_tasks)?
            .into_iter()
            .filter(|p| p.a == p.b)
            .collect();

        let percents = an::percent_grid();
        // On influence per nat (each window's part divided by that window's nats), so the
        // absolute curve is per nat over several windows too: the scores are already divided.
        let curves = (0..s.queries)
            .map(|q| an::concentration_curve(&s.per_nat_column(q), 1.0, &percents))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes: Vec<String> = meta.iter().map(Scored::outcome).collect();
        let group_curves = an::group_mean_curves(&curves, &outcomes)?;
        let power_laws: Vec<Option<an::PowerLaw>> = columns
            .iter()
            .map(|c| an::power_law_slope(c, 500).ok())
            .collect();
        let pick = |group: &str, f: &dyn Fn(usize) -> Option<f64>| -> Vec<f64> {
            primary
                .iter()
                .filter(|&&i| meta[i].group == group)
                .filter_map(|&i| f(i))
                .collect()
        };
        let alpha = |i: usize| power_laws[i].as_ref().map(|p| p.alpha);
        let total = |i: usize| Some(curves[i].total_positive);
        let alpha_test =
            an::welch_t_test(&pick("factual", &alpha), &pick("reasoning", &alpha)).ok();
        let total_test =
            an::welch_t_test(&pick("factual", &total), &pick("reasoning", &total)).ok();

        let search = |n: usize| -> Vec<an::AnswerHit> {
            (0..s.queries)
                .map(|q| {
                    let list = match &reranked {
                        Some(r) => r.merged_top(s, q, n),
                        None => s.top(q, n),
                    };
                    let texts: Vec<&str> = list
                        .into_iter()
                        .map(|d| {
                            corpus
                                .get(&s.docs[d].id)
                                .map_or("", |doc| doc.text.as_str())
                        })
                        .collect();
                    an::answer_search(&texts, &meta[q].needles)
                })
                .collect()
        };
        let hits: Vec<(usize, Vec<an::AnswerHit>)> = top_n
            .iter()
            .map(|&n| (n, search(n.min(s.docs.len()))))
            .collect();
        let metas: Vec<an::QueryMeta> = meta
            .iter()
            .zip(nats)
            .map(|(m, &nats)| an::QueryMeta {
                id: m.label(),
                group: if m.kind == "reference" {
                    format!("{} ref", m.group)
                } else {
                    m.group.clone()
                },
                task: m.task.clone(),
                correct: m.correct,
                nats,
            })
            .collect();
        let answer_rates = hits
            .iter()
            .map(|(n, h)| Ok((*n, an::answer_search_rates(h, &metas)?)))
            .collect::<Result<Vec<_>>>()?;

        let ks = an::default_ks(s.docs.len());
        let mut multipliers = Vec::new();
        for side in [an::Side::Top, an::Side::Bottom] {
            let per_query: Vec<Vec<an::SourceMultiplier>> = primary
                .iter()
                .map(|&i| {
                    let ranking = an::ranking_by_score(&columns[i], side == an::Side::Top);
                    an::source_multipliers(&ranking, &sources, &ks, side)
                })
                .collect::<Result<_, _>>()?;
            multipliers.extend(an::mean_multipliers(&per_query, &prim_groups)?);
        }
        let report = analysis.report(0, 0);
        let layer_shares = report
            .queries
            .iter()
            .map(|q| an::layer_shares(&q.layer_totals))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            primary,
            correlation,
            group_pairs,
            task_pairs,
            curves,
            group_curves,
            power_laws,
            alpha_test,
            total_test,
            hits,
            answer_rates,
            multipliers,
            layer_shares,
            layers: s.layers.clone(),
            ks,
            reranked,
        })
    }

    fn print_headline(&self, name: &str) {
        for (n, rates) in &self.answer_rates {
            println!(
                "{name}: answer found in the top {n} documents (all intermediate results for reasoning):"
            );
            for r in rates {
                println!(
                    "  {:<18} {:<7} {:>3}/{:<3} {:>5.1} %",
                    r.group,
                    match r.correct {
                        Some(true) => "correct",
                        Some(false) => "wrong",
                        None => "",
                    },
                    r.found_all,
                    r.queries,
                    100.0 * r.rate
                );
            }
        }
        println!("{name}: mean Pearson r of influence between queries:");
        for p in self.group_pairs.iter().chain(&self.task_pairs) {
            if p.summary.pairs > 0 {
                println!(
                    "  {:<12} × {:<12} {:>4} pairs  mean {:+.3}  max {:+.3}",
                    p.a, p.b, p.summary.pairs, p.summary.mean, p.summary.max
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn section(
        &self,
        name: &str,
        origin: &Origin<'_>,
        analysis: &Analysis,
        meta: &[Scored],
        corpus: &HashMap<u64, Document>,
        tokens: &TokenTable,
        a: &ReportArgs,
    ) -> Result<rp::RunSection> {
        let s = &analysis.scores;
        let nats = analysis.nats();
        let summary = match origin {
            Origin::Store(store) => vec![
                ("documents".to_string(), s.docs.len().to_string()),
                ("sketch rows".into(), s.stats.rows.to_string()),
                (
                    "rows left out (non-finite scores)".into(),
                    s.stats.nonfinite_rows.to_string(),
                ),
                ("tracked layers".into(), s.layers.len().to_string()),
                ("windows scored".into(), analysis.prepared.len().to_string()),
                (
                    "training steps".into(),
                    store
                        .manifest()
                        .windows
                        .last()
                        .map_or(0, |w| w.last_step + 1)
                        .to_string(),
                ),
                (
                    "model answers correct".into(),
                    format!(
                        "{}/{}",
                        meta.iter()
                            .filter(|m| m.kind == "model" && m.correct == Some(true))
                            .count(),
                        meta.iter().filter(|m| m.kind == "model").count()
                    ),
                ),
                (
                    "scoring time".into(),
                    format!("{:.1} s", s.stats.wall_seconds),
                ),
                (
                    "top documents ranked by".into(),
                    match &self.reranked {
                        Some(r) => format!(
                            "exact score (top and bottom {} by sketch score re-ranked; {})",
                            r.stats.per_side,
                            r.stats.summary()
                        ),
                        None => "sketch score".into(),
                    },
                ),
            ],
            Origin::External { path } => vec![
                ("documents".to_string(), s.docs.len().to_string()),
                ("completions scored".into(), s.queries.to_string()),
                (
                    "scores".into(),
                    format!("{} (another tool)", path.display()),
                ),
                ("top documents ranked by".into(), "the file's score".into()),
            ],
        };
        let correlation = rp::Heatmap {
            labels: self.primary.iter().map(|&i| meta[i].label()).collect(),
            groups: self
                .primary
                .iter()
                .map(|&i| meta[i].group.clone())
                .collect(),
            values: self.correlation.r.clone(),
        };
        let curves = self
            .group_curves
            .iter()
            .map(|g| rp::GroupCurve {
                group: g.group.clone(),
                percent: g.percent.clone(),
                absolute: g.absolute_mean.clone(),
                relative: g.relative_mean.clone(),
            })
            .collect();
        let multipliers = self
            .multipliers
            .iter()
            .map(|m| rp::Multiplier {
                group: m.group.clone(),
                side: side_name(m.side).into(),
                k: m.k,
                source: m.source.clone(),
                multiplier: m.multiplier,
            })
            .collect();
        let mut shares: BTreeMap<(String, usize), (f64, usize)> = BTreeMap::new();
        for &i in &self.primary {
            for (l, v) in self.layer_shares[i].iter().enumerate() {
                let e = shares.entry((meta[i].group.clone(), l)).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        let layer_shares = shares
            .into_iter()
            .map(|((group, l), (sum, n))| rp::LayerShare {
                group,
                layer: self.layers[l].clone(),
                share: sum / n.max(1) as f64,
            })
            .collect();

        let doc_view = |q: usize, d: usize, rank: usize| -> rp::DocView {
            let info = &s.docs[d];
            let text = corpus
                .get(&info.id)
                .map_or(String::new(), |doc| doc.text.clone());
            let tokens = tokens
                .get(&info.id)
                .map(|(texts, per_query)| {
                    texts
                        .iter()
                        .zip(&per_query[q])
                        .map(|(t, &v)| rp::TokenScore {
                            text: t.clone(),
                            score: f64::from(v),
                        })
                        .collect()
                })
                .unwrap_or_default();
            rp::DocView {
                rank,
                doc_id: info.id,
                source: info.source.to_string(),
                score: self.shown_score(s, d, q),
                text,
                tokens,
            }
        };
        let queries = meta
            .iter()
            .enumerate()
            .map(|(q, m)| rp::QuerySection {
                id: m.label(),
                group: m.group.clone(),
                task: m.task.clone(),
                prompt: analysis.queries[q].prompt.clone(),
                completion: analysis.queries[q].completion.clone(),
                completion_kind: m.kind.clone(),
                correct: m.correct,
                answer: m.answer.clone(),
                nats: nats[q],
                answer_found: self.hits.first().map(|(_, h)| h[q].all_found),
                top: self
                    .top(s, q, a.show)
                    .into_iter()
                    .enumerate()
                    .map(|(r, d)| doc_view(q, d, r + 1))
                    .collect(),
                bottom: self
                    .bottom(s, q, a.show.min(3))
                    .into_iter()
                    .enumerate()
                    .map(|(r, d)| doc_view(q, d, r + 1))
                    .collect(),
            })
            .collect();
        Ok(rp::RunSection {
            name: name.to_string(),
            summary,
            correlation,
            curves,
            multipliers,
            layer_shares,
            tables: self.tables(analysis, meta, corpus),
            queries,
        })
    }

    fn tables(
        &self,
        analysis: &Analysis,
        meta: &[Scored],
        corpus: &HashMap<u64, Document>,
    ) -> Vec<rp::Table> {
        use rp::Cell::{Bool, Empty, Int, Number, Text};
        let s = &analysis.scores;
        let nats = analysis.nats();
        let opt_bool = |b: Option<bool>| b.map_or(Empty, Bool);
        let opt_num = |v: Option<f64>| v.map_or(Empty, Number);
        let queries = rp::Table {
            name: "queries".into(),
            title: "Completions scored: grade, nats, concentration and answer search".into(),
            columns: [
                "completion",
                "kind",
                "group",
                "task",
                "correct",
                "nats",
                "total_positive",
                "positive_per_nat",
                "alpha_top500",
                "answer_found",
                "top_source",
                "top_text",
            ]
            .map(String::from)
            .to_vec(),
            rows: meta
                .iter()
                .enumerate()
                .map(|(q, m)| {
                    let top = self.top(s, q, 1);
                    let top_doc = top.first().map(|&d| &s.docs[d]);
                    vec![
                        Text(m.label()),
                        Text(m.kind.clone()),
                        Text(m.group.clone()),
                        Text(m.task.clone()),
                        opt_bool(m.correct),
                        Number(nats[q]),
                        Number(s.column(q).iter().filter(|&&v| v > 0.0).sum()),
                        Number(self.curves[q].total_positive),
                        opt_num(self.power_laws[q].as_ref().map(|p| p.alpha)),
                        self.hits
                            .first()
                            .map_or(Empty, |(_, h)| Bool(h[q].all_found)),
                        top_doc.map_or(Empty, |d| Text(d.source.to_string())),
                        top_doc.map_or(Empty, |d| {
                            Text(
                                corpus
                                    .get(&d.id)
                                    .map_or(String::new(), |doc| snippet(&doc.text, 80)),
                            )
                        }),
                    ]
                })
                .collect(),
        };
        let pairs = rp::Table {
            name: "correlation_summary".into(),
            title: "Pearson r of influence between queries, within and between groups and tasks"
                .into(),
            columns: ["by", "a", "b", "pairs", "mean", "min", "max"]
                .map(String::from)
                .to_vec(),
            rows: self
                .group_pairs
                .iter()
                .map(|p| ("group", p))
                .chain(self.task_pairs.iter().map(|p| ("task", p)))
                .filter(|(_, p)| p.summary.pairs > 0)
                .map(|(by, p)| {
                    vec![
                        Text(by.into()),
                        Text(p.a.clone()),
                        Text(p.b.clone()),
                        Int(p.summary.pairs as i64),
                        Number(p.summary.mean),
                        Number(p.summary.min),
                        Number(p.summary.max),
                    ]
                })
                .collect(),
        };
        let matrix = rp::Table {
            name: "correlation_matrix".into(),
            title: "Pearson r and two-sided p-value for every pair of queries".into(),
            columns: ["a", "b", "r", "p"].map(String::from).to_vec(),
            rows: (0..self.primary.len())
                .flat_map(|i| (i + 1..self.primary.len()).map(move |j| (i, j)))
                .map(|(i, j)| {
                    vec![
                        Text(meta[self.primary[i]].label()),
                        Text(meta[self.primary[j]].label()),
                        Number(self.correlation.r[i][j]),
                        Number(self.correlation.p[i][j]),
                    ]
                })
                .collect(),
        };
        let answers = rp::Table {
            name: "answer_search".into(),
            title: "Answer found in the top documents, per group (correct and wrong kept apart)"
                .into(),
            columns: ["top_n", "group", "correct", "queries", "found", "rate"]
                .map(String::from)
                .to_vec(),
            rows: self
                .answer_rates
                .iter()
                .flat_map(|(n, rates)| rates.iter().map(move |r| (*n, r)))
                .map(|(n, r)| {
                    vec![
                        Int(n as i64),
                        Text(r.group.clone()),
                        opt_bool(r.correct),
                        Int(r.queries as i64),
                        Int(r.found_all as i64),
                        Number(r.rate),
                    ]
                })
                .collect(),
        };
        let mults = rp::Table {
            name: "source_multipliers".into(),
            title: format!(
                "Count of each source in a query's top/bottom k over the count expected from the corpus mix, averaged per group (k in {:?})",
                self.ks
            ),
            columns: ["group", "side", "k", "source", "multiplier"]
                .map(String::from)
                .to_vec(),
            rows: self
                .multipliers
                .iter()
                .map(|m| {
                    vec![
                        Text(m.group.clone()),
                        Text(side_name(m.side).into()),
                        Int(m.k as i64),
                        Text(m.source.clone()),
                        Number(m.multiplier),
                    ]
                })
                .collect(),
        };
        let curves = rp::Table {
            name: "concentration".into(),
            title: "Cumulative positive influence of the top k % of positively scored documents, mean per group (absolute: per nat; relative: share of the total positive influence)".into(),
            columns: ["group", "queries", "percent", "absolute_per_nat", "relative"]
                .map(String::from)
                .to_vec(),
            rows: self
                .group_curves
                .iter()
                .flat_map(|g| {
                    g.percent.iter().enumerate().map(move |(i, p)| {
                        vec![
                            Text(g.group.clone()),
                            Int(g.queries as i64),
                            Number(*p),
                            Number(g.absolute_mean[i]),
                            Number(g.relative_mean[i]),
                        ]
                    })
                })
                .collect(),
        };
        let tests = rp::Table {
            name: "t_tests".into(),
            title: "Factual vs reasoning (model answers): Welch t-tests".into(),
            columns: ["measure", "mean_factual", "mean_reasoning", "t", "df", "p"]
                .map(String::from)
                .to_vec(),
            rows: [
                ("power-law alpha (top 500)", &self.alpha_test),
                ("total positive influence per nat", &self.total_test),
            ]
            .into_iter()
            .filter_map(|(what, t)| {
                t.as_ref().map(|t| {
                    vec![
                        Text(what.into()),
                        Number(t.mean_a),
                        Number(t.mean_b),
                        Number(t.t),
                        Number(t.df),
                        Number(t.p),
                    ]
                })
            })
            .collect(),
        };
        let layers = rp::Table {
            name: "layer_shares".into(),
            title: "Share of each layer in each completion's influence".into(),
            columns: std::iter::once("completion".to_string())
                .chain(self.layers.iter().cloned())
                .collect(),
            rows: meta
                .iter()
                .enumerate()
                .map(|(q, m)| {
                    std::iter::once(Text(m.label()))
                        .chain(self.layer_shares[q].iter().map(|&v| Number(v)))
                        .collect()
                })
                .collect(),
        };
        vec![
            queries, answers, pairs, matrix, tests, curves, mults, layers,
        ]
    }
}

fn side_name(side: an::Side) -> &'static str {
    match side {
        an::Side::Top => "top",
        an::Side::Bottom => "bottom",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grading_reads_the_last_number_or_a_whole_word() {
        assert!(grade(
            "First, 4 + 2 = 6.\nThen, 6 * 15 = 90.\nThe answer is 90.",
            "90"
        ));
        assert!(!grade(
            "First, 4 + 2 = 6.\nThen, 6 * 15 = 90.\nThe answer is 91.",
            "90"
        ));
        assert!(!grade("The answer is 190.", "90"));
        assert!(grade("The slope is -8 / 2 = -4.", "-4"));
        assert!(!grade("The slope is -8 / 2 = -4.", "4"));
        assert!(grade("The answer is x = 7.", "7"));
        assert!(grade("The run is 3 - (1) = 2.\nThe slope is 1.5", "1.5"));
        assert!(grade(" The capital of Peru is Lima.", "Lima"));
        assert!(grade(" lima.", "Lima"));
        assert!(!grade(" Limassol.", "Lima"));
        assert!(!grade(" The capital of Peru is Quito.", "Lima"));
        assert!(grade(" Au.", "Au"));
        assert!(!grade(" Aurum.", "Au"));
        assert!(!grade("anything", ""));
    }

    fn q(id: &str, completion: &str, answer: &str, steps: &[&str]) -> Query {
        let line = serde_json::json!({
            "id": id, "prompt": "p", "completion": completion, "group": "reasoning",
            "task": "arithmetic", "answer": answer, "steps": steps,
        });
        serde_json::from_value(line).expect("query")
    }

    #[test]
    fn wrong_answers_bring_their_reference_along() {
        let qs = [
            q("a", "First, 1 + 1 = 2.\nThe answer is 2.", "2", &["2"]),
            q("b", "First, 2 + 2 = 4.\nThe answer is 4.", "4", &["4"]),
        ];
        let (scored, meta) = completions_to_score(&qs, |q| {
            Ok(Some(
                if q.id == "a" {
                    "The answer is 2."
                } else {
                    "The answer is 5."
                }
                .into(),
            ))
        })
        .expect("completions");
        let ids: Vec<&str> = scored.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "b:reference"]);
        assert_eq!(scored[1].completion, "The answer is 5.");
        assert_eq!(scored[2].completion, qs[1].completion);
        let kinds: Vec<(&str, Option<bool>)> =
            meta.iter().map(|m| (m.kind.as_str(), m.correct)).collect();
        assert_eq!(
            kinds,
            [
                ("model", Some(true)),
                ("model", Some(false)),
                ("reference", Some(true))
            ]
        );
        assert_eq!(meta[2].outcome(), "reasoning ref");
        assert_eq!(meta[1].outcome(), "reasoning wrong");

        let (scored, meta) = completions_to_score(&qs, |_| Ok(None)).expect("no generation");
        assert_eq!(scored, qs.to_vec());
        assert!(meta.iter().all(|m| m.kind == "reference"));

        let bad = [q("c", "The answer is 3.", "4", &[])];
        let err = completions_to_score(&bad, |_| Ok(None)).expect_err("bad reference");
        assert!(err.to_string().contains("query c"), "{err}");
    }
}
