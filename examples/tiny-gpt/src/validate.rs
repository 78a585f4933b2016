//! Does the influence mean anything? The validation study of `docs/accuracy.md`, on this example.
//!
//! * **Retraining harness** ([`Retrainer`]): trains the GPT again from the same initialisation on a
//!   subset of the corpus (a keep mask over `Prepared::tokens`), without the hook, and measures
//!   every query's `log p(completion | prompt)` at the end. The number of steps keeps the number of
//!   epochs: `steps × kept tokens / all tokens`. Runs go in parallel, one thread each, and are
//!   cached on disk under the SHA-256 of everything that determines them.
//! * **LDS** ([`run_study`]): `M` random subsets of half the documents; for each method, each
//!   query's Spearman correlation between the sum of the kept documents' scores and the retrained
//!   measurement; mean over queries with a bootstrap interval.
//! * **Top-k removal**: drop a query's `k` most positively influential documents (by our default
//!   method, by the plain gradient dot product, or `k` at random) and retrain with several seeds:
//!   the change of its log-probability against the full run of the same seed.
//! * **Price of sketching**: post-hoc sketches of several sizes and value types against the
//!   exact-gradient scores at the same checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::tensor::Device;
use influence_analyses::{Lds, MeanCi, bootstrap_mean_ci, lds, pearson, spearman, top_k_overlap};
use influence_analyzer::{Query, ScoreConfig, Strategy, Task, analyze, sketch_corpus};
use influence_core::{CoordinateSelection, ProjectionKind, SketchScheme};
use influence_hook::HookConfig;
use influence_store::{SketchDtype, Store, StoreConfig, StoreWriter};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::TokenDoc;
use crate::task::GptTask;
use crate::train::{Prepared, TrainConfig, prepare, train_on};

/// What the study runs; every field has a serde default from [`StudyConfig::study`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyConfig {
    /// The model, corpus and training recipe (its hook settings are the "training-time
    /// sketches" method).
    pub train: TrainConfig,
    /// Random subsets for the LDS.
    pub subsets: usize,
    /// Fraction of the documents each subset keeps.
    pub fraction: f64,
    /// Seed of the subsets (and of the random removals and the bootstrap).
    pub subset_seed: u64,
    /// Use at most this many queries (spread evenly over the query file); `None`: all.
    pub max_queries: Option<usize>,
    /// Extra training-time sketch sizes (`k_a = k_g = k`) scored as methods besides the
    /// configuration's own.
    pub train_ks: Vec<usize>,
    /// Post-hoc sketch sizes at the final checkpoint (the LDS rows and the price curve).
    pub posthoc_ks: Vec<usize>,
    /// Non-square post-hoc sizes `(k_a, k_g)`, measured like `posthoc_ks`.
    #[serde(default)]
    pub posthoc_sizes: Vec<(usize, usize)>,
    /// Values per layer of the simulated whitened projection ([`crate::whiten`]), each measured
    /// on the full-rank store against the same reference (empty: not measured).
    #[serde(default)]
    pub whitened_values: Vec<usize>,
    /// Candidates per query and side for the exact re-ranking measurement
    /// ([`crate::reranking`]), run on each post-hoc eigenbasis store against the full-rank
    /// store (empty: not measured).
    #[serde(default)]
    pub rerank_ns: Vec<usize>,
    /// Sketch schemes of the post-hoc price curve (each at every size of `posthoc_ks`).
    #[serde(default = "all_schemes")]
    pub posthoc_schemes: Vec<SketchScheme>,
    /// Training-time stores with other schemes, at the configuration's own size, scored and
    /// (top-k) removed like the default.
    #[serde(default)]
    pub train_schemes: Vec<SketchScheme>,
    /// Value types of the price curve.
    pub dtypes: Vec<SketchDtype>,
    /// Documents removed per query in the removal experiment.
    pub removal_k: usize,
    /// Also remove the top documents of the default store scored with normalised rows (the
    /// scoring default; the other removal rows score plain inner products).
    #[serde(default)]
    pub removal_normalised: bool,
    /// Queries of the removal experiment (spread evenly over the study's queries).
    pub removal_queries: usize,
    /// Training seeds of the removal experiment.
    pub removal_seeds: Vec<u64>,
    /// Documents in the top-k overlap of the price curve.
    pub overlap_k: usize,
    /// Retraining runs at a time (0: one per core).
    pub jobs: usize,
    /// Retrain (LDS, removal); `false` measures only the agreement with exact influence.
    #[serde(default = "yes")]
    pub retrain: bool,
}

fn yes() -> bool {
    true
}

impl StudyConfig {
    /// The full study of `docs/accuracy.md`: a 2-block GPT on a 1.6 k-document slice of the
    /// corpus, 4 epochs, 64 subsets.
    pub fn study() -> Self {
        let mut train = TrainConfig::cpu();
        train.corpus.registry_per_source = 60;
        train.corpus.registry_keep_all = Vec::new();
        train.corpus.arithmetic = 300;
        train.corpus.slopes = 200;
        train.corpus.linear = 200;
        train.corpus.code = 100;
        train.d_model = 64;
        train.n_layers = 2;
        train.n_heads = 4;
        train.d_ff = 256;
        train.batch_size = 8;
        train.steps = 600;
        train.warmup = 30;
        train.log_every = 0;
        train.hook = train
            .hook
            .window_steps(200)
            .factor_every(5)
            .fit_batches(8)
            .sketch_scheme(eigenbasis(CoordinateSelection::Eigenvalue));
        Self {
            train,
            subsets: 64,
            fraction: 0.5,
            subset_seed: 17,
            max_queries: None,
            train_ks: vec![64],
            posthoc_ks: vec![4, 8, 16, 32],
            posthoc_sizes: Vec::new(),
            whitened_values: Vec::new(),
            rerank_ns: Vec::new(),
            posthoc_schemes: all_schemes(),
            train_schemes: vec![SketchScheme::Random],
            // f16 and bf16 gave the f32 figures to three decimals (2026-11-27): one value type.
            dtypes: vec![SketchDtype::F16],
            removal_k: 50,
            removal_normalised: false,
            removal_queries: 12,
            removal_seeds: vec![1, 2, 3],
            overlap_k: 100,
            jobs: 0,
            retrain: true,
        }
    }

    /// The reduced check CI runs: a smaller model and corpus, 10 subsets, 8 queries.
    pub fn ci() -> Self {
        let mut c = Self::study();
        c.train.corpus.registry_per_source = 16;
        c.train.corpus.arithmetic = 60;
        c.train.corpus.slopes = 40;
        c.train.corpus.linear = 40;
        c.train.corpus.code = 20;
        c.train.vocab_size = 384;
        c.train.d_model = 32;
        c.train.n_heads = 2;
        c.train.d_ff = 64;
        c.train.steps = 160;
        c.train.hook = c.train.hook.window_steps(80).k_a(8).k_g(8);
        c.subsets = 10;
        c.max_queries = Some(8);
        c.train_ks = Vec::new();
        c.posthoc_ks = vec![8];
        c.posthoc_schemes = vec![
            SketchScheme::Random,
            eigenbasis(CoordinateSelection::Eigenvalue),
        ];
        // The default value type (i8: the same agreement as f16 at half the bytes, (v)).
        c.dtypes = vec![SketchDtype::I8];
        c.removal_k = 20;
        // The scoring default (normalised rows) is removed as well as the plain scores.
        c.removal_normalised = true;
        c.removal_queries = 2;
        c.removal_seeds = vec![1];
        c.overlap_k = 20;
        c
    }

    fn jobs(&self) -> usize {
        threads(self.jobs)
    }
}

/// One retraining run: the documents kept (indices into `Prepared::tokens`) and the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Keep mask over the corpus.
    pub keep: Vec<bool>,
    /// Initialisation and data-order seed.
    pub seed: u64,
}

/// What a retraining run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// `log p(completion | prompt)` of each query, in nats.
    pub log_prob: Vec<f64>,
    /// Steps trained.
    pub steps: usize,
    /// Seconds it took (0 when read from the cache).
    pub seconds: f64,
    /// Whether it came from the cache.
    #[serde(skip)]
    pub cached: bool,
}

/// Retrains the example on subsets of its corpus and measures the queries.
pub struct Retrainer<'a> {
    config: &'a TrainConfig,
    prepared: &'a Prepared,
    task: &'a GptTask,
    queries: &'a [Query],
    cache: PathBuf,
}

impl<'a> Retrainer<'a> {
    /// A harness over `prepared` (from [`prepare`] of `config`) measuring `queries`, caching runs
    /// in `cache`.
    pub fn new(
        config: &'a TrainConfig,
        prepared: &'a Prepared,
        task: &'a GptTask,
        queries: &'a [Query],
        cache: impl Into<PathBuf>,
    ) -> Result<Self> {
        let cache = cache.into();
        std::fs::create_dir_all(&cache).with_context(|| format!("{}", cache.display()))?;
        Ok(Self {
            config,
            prepared,
            task,
            queries,
            cache,
        })
    }

    /// The run's training configuration: `config` with `seed`, silent, and the steps scaled to
    /// keep the number of epochs.
    fn run_config(&self, job: &Job) -> Result<TrainConfig> {
        if job.keep.len() != self.prepared.tokens.len() {
            bail!(
                "keep mask has {} entries for {} documents",
                job.keep.len(),
                self.prepared.tokens.len()
            );
        }
        let all: usize = self.prepared.tokens.iter().map(|t| t.tokens.len()).sum();
        let kept: usize = self
            .prepared
            .tokens
            .iter()
            .zip(&job.keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| t.tokens.len())
            .sum();
        if kept == 0 {
            bail!("the keep mask keeps no documents");
        }
        let mut c = self.config.clone();
        c.seed = job.seed;
        c.log_every = 0;
        c.steps = ((self.config.steps * kept) as f64 / all as f64)
            .round()
            .max(1.0) as usize;
        c.warmup = c.warmup.min(c.steps);
        Ok(c)
    }

    fn key(&self, job: &Job, config: &TrainConfig) -> Result<String> {
        let mut h = Sha256::new();
        // A retraining run has no hook and writes no store: their settings are not part of
        // what it measures, so changing them keeps the measurements.
        let mut value = serde_json::to_value(config)?;
        if let Some(m) = value.as_object_mut() {
            m.remove("hook");
            m.remove("store");
        }
        h.update(serde_json::to_vec(&value)?);
        h.update(job.keep.iter().map(|&k| u8::from(k)).collect::<Vec<u8>>());
        for q in self.queries {
            h.update(q.prompt.as_bytes());
            h.update([0]);
            h.update(q.completion.as_bytes());
            h.update([0]);
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Trains `job` (or reads it from the cache) and measures the queries.
    pub fn measure(&self, job: &Job) -> Result<Measurement> {
        let config = self.run_config(job)?;
        let path = self.cache.join(format!("{}.json", self.key(job, &config)?));
        if let Ok(text) = std::fs::read_to_string(&path) {
            match serde_json::from_str::<Measurement>(&text) {
                Ok(mut m) if m.log_prob.len() == self.queries.len() => {
                    m.cached = true;
                    m.seconds = 0.0;
                    return Ok(m);
                }
                _ => tracing::warn!(path = %path.display(), "unreadable cache entry: retraining"),
            }
        }
        let start = Instant::now();
        let tokens: Vec<TokenDoc> = self
            .prepared
            .tokens
            .iter()
            .zip(&job.keep)
            .filter(|(_, k)| **k)
            .map(|(t, _)| t.clone())
            .collect();
        let device = Device::flex().autodiff();
        let report = train_on(&config, self.prepared, &tokens, &device, None, None)?;
        let log_prob = log_probs(self.task, &report.model, self.queries, &device)?;
        let m = Measurement {
            log_prob,
            steps: config.steps,
            seconds: start.elapsed().as_secs_f64(),
            cached: false,
        };
        // Written whole to a temporary file and renamed: a crash never leaves a torn entry.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&m)?)
            .with_context(|| format!("{}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
        Ok(m)
    }

    /// Measures every job, `jobs` at a time, in input order; `progress(done, total, cached)`
    /// after each.
    pub fn measure_all(
        &self,
        jobs: &[Job],
        threads: usize,
        progress: &(dyn Fn(usize, usize, bool) + Sync),
    ) -> Result<Vec<Measurement>> {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let out: Mutex<Vec<Option<Result<Measurement>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, jobs.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= jobs.len() {
                            break;
                        }
                        let r = self.measure(&jobs[i]);
                        let cached = r.as_ref().is_ok_and(|m| m.cached);
                        if let Ok(mut o) = out.lock() {
                            o[i] = Some(r);
                        }
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len(), cached);
                    }
                });
            }
        });
        out.into_inner()
            .map_err(|_| anyhow!("a retraining thread panicked"))?
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| Err(anyhow!("job {i} did not run"))))
            .collect()
    }
}

/// `log p(completion | prompt)` of each query under `model`.
pub fn log_probs(
    task: &GptTask,
    model: &crate::model::Gpt,
    queries: &[Query],
    device: &Device,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(8) {
        let (batch, _) = task
            .query_batch(chunk, device)
            .map_err(|e| anyhow!("query batch: {e}"))?;
        let nll = task.completion_nll(model, &batch).sum_dim(1);
        let v: Vec<f32> = nll
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow!("reading the log-probabilities: {e:?}"))?;
        out.extend(v.into_iter().map(|x| -f64::from(x)));
    }
    Ok(out)
}

/// Random keep masks keeping `fraction` of `n` documents each.
pub fn random_subsets(n: usize, count: usize, fraction: f64, seed: u64) -> Vec<Vec<bool>> {
    let keep = ((n as f64) * fraction).round() as usize;
    (0..count)
        .map(|m| {
            let mut rng =
                StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(m as u64));
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            let mut mask = vec![false; n];
            for &i in &idx[..keep] {
                mask[i] = true;
            }
            mask
        })
        .collect()
}

/// A method's scores, `[query][document]` in corpus order.
#[derive(Clone, Debug)]
pub struct MethodScores {
    /// Row label of the tables.
    pub name: String,
    /// Scores.
    pub scores: Vec<Vec<f64>>,
}

/// Scores every query against `store` with `config`, as `[query][document]` over `ids` order.
pub fn score_matrix(
    task: &GptTask,
    store: &Store,
    queries: &[Query],
    config: &ScoreConfig,
    ids: &[u64],
) -> Result<Vec<Vec<f64>>> {
    let a = analyze(task, store, queries, config, &Device::flex(), &mut |_| {})?;
    let pos: std::collections::HashMap<u64, usize> = a
        .scores
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id, i))
        .collect();
    (0..queries.len())
        .map(|q| {
            ids.iter()
                .map(|id| {
                    pos.get(id)
                        .map(|&d| a.scores.score(d, q))
                        .ok_or_else(|| anyhow!("document {id} is not in the store"))
                })
                .collect()
        })
        .collect()
}

/// One row of the LDS table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LdsRow {
    /// Method.
    pub method: String,
    /// Its LDS.
    pub lds: Lds,
}

/// One condition of the removal experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovalRow {
    /// What was removed: `top-k by <method>` or `k random`.
    pub removed: String,
    /// `log p` after removal minus `log p` of the full run with the same seed, per (query, seed).
    pub deltas: Vec<f64>,
    /// Their mean with a bootstrap interval.
    pub summary: MeanCi,
    /// Median.
    pub median: f64,
    /// Fraction of (query, seed) pairs where the fall exceeds the random removal's (`None` for
    /// the random removal itself).
    pub beats_random: Option<f64>,
}

/// The eigenbasis scheme ranking coordinates by `select`, without a per-side cap (the study's
/// layers are at most 257 wide).
pub fn eigenbasis(select: CoordinateSelection) -> SketchScheme {
    SketchScheme::Eigenbasis {
        select,
        max_side: 1024,
    }
}

fn all_schemes() -> Vec<SketchScheme> {
    vec![
        SketchScheme::Random,
        eigenbasis(CoordinateSelection::Eigenvalue),
        eigenbasis(CoordinateSelection::Contribution),
    ]
}

/// A scheme's name in the tables.
pub fn scheme_label(s: &SketchScheme) -> String {
    let cap = match s {
        SketchScheme::Eigenbasis { max_side, .. } if *max_side < 1024 => {
            format!(", ≤ {max_side} a side")
        }
        _ => String::new(),
    };
    scheme_name(s) + &cap
}

fn scheme_name(s: &SketchScheme) -> String {
    match s {
        SketchScheme::Random => "random projection".into(),
        SketchScheme::Eigenbasis {
            select: CoordinateSelection::Eigenvalue,
            ..
        } => "eigenbasis, top Λ".into(),
        SketchScheme::Eigenbasis {
            select: CoordinateSelection::Contribution,
            ..
        } => "eigenbasis, top Λ/(Λ+λ)²".into(),
    }
}

/// One point of the price curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PriceRow {
    /// Sketch scheme.
    #[serde(default)]
    pub scheme: String,
    /// Bytes per layer of the per-window files (factors, bases), per window.
    #[serde(default)]
    pub window_bytes_per_layer: f64,
    /// `k_a` (and `k_g` for square sizes).
    pub k: usize,
    /// `k_g` when it differs from `k` (0 in older reports: square).
    #[serde(default)]
    pub k_g: usize,
    /// Value type.
    pub dtype: SketchDtype,
    /// Stored values per document (all layers).
    pub values_per_doc: usize,
    /// Uncompressed bytes per document.
    pub bytes_per_doc: usize,
    /// Bytes per document in the store's zstd shards.
    pub stored_bytes_per_doc: f64,
    /// Pearson correlation with the exact-gradient EK-FAC scores (normalised ones for a scheme
    /// scored with normalised rows), mean over queries.
    pub pearson: f64,
    /// Spearman correlation, mean over queries.
    pub spearman: f64,
    /// Fraction of the exact top documents among the sketch's top, mean over queries.
    pub top_overlap: f64,
    /// LDS of these scores (NaN without retraining).
    pub lds: f64,
}

/// Everything the study found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StudyReport {
    /// The configuration.
    pub config: StudyConfig,
    /// Query ids.
    pub queries: Vec<String>,
    /// Documents in the corpus.
    pub documents: usize,
    /// Tokens in the corpus.
    pub tokens: usize,
    /// Mean training loss of the last 10 % of the full run's steps.
    pub final_loss: f64,
    /// LDS per method.
    pub lds: Vec<LdsRow>,
    /// Removal experiment.
    pub removal: Vec<RemovalRow>,
    /// Top-k overlap size used in the price curve.
    pub overlap_k: usize,
    /// Price of sketching.
    pub price: Vec<PriceRow>,
    /// Retraining runs (trained, read from cache) and their mean seconds.
    pub runs: (usize, usize, f64),
    /// Wall seconds of the whole study.
    pub seconds: f64,
}

/// A post-hoc store's scores and sizes (the store itself is removed once scored).
struct PriceStore {
    scheme: String,
    k: usize,
    k_g: usize,
    dtype: SketchDtype,
    values: usize,
    /// Bytes a document before compression (values and, for i8, the per-row scales).
    raw: usize,
    stored: f64,
    window_bytes: f64,
    scores: Vec<Vec<f64>>,
    /// Scored with normalised rows: compared with the exact gradients' normalised scores.
    normalised: bool,
}

/// Agreement of per-query `scores` with a per-query `reference`: mean over queries of the
/// Pearson and Spearman correlations and of the top-`k` overlap.
fn agreement(scores: &[Vec<f64>], reference: &[Vec<f64>], k: usize) -> Result<(f64, f64, f64)> {
    let (mut pe, mut sp, mut o) = (0.0, 0.0, 0.0);
    for (got, want) in scores.iter().zip(reference) {
        pe += pearson(got, want)?;
        sp += spearman(got, want)?;
        o += top_k_overlap(got, want, k)?;
    }
    let nq = scores.len() as f64;
    Ok((pe / nq, sp / nq, o / nq))
}

fn evenly<T: Clone>(items: &[T], n: Option<usize>) -> Vec<T> {
    match n {
        Some(n) if n < items.len() => (0..n).map(|i| items[i * items.len() / n].clone()).collect(),
        _ => items.to_vec(),
    }
}

fn hooked_store(
    config: &TrainConfig,
    prepared: &Prepared,
    dir: &Path,
    hook: HookConfig,
) -> Result<(Store, crate::model::Gpt, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    let writer = StoreWriter::create(dir, config.store.clone())?;
    let mut c = config.clone();
    c.hook = hook;
    c.log_every = 0;
    let device = Device::flex().autodiff();
    let report = train_on(
        &c,
        prepared,
        &prepared.tokens,
        &device,
        Some(Box::new(writer)),
        None,
    )?;
    let tail = (report.losses.len() / 10).max(1);
    let loss = report.losses[report.losses.len() - tail..]
        .iter()
        .map(|&l| f64::from(l))
        .sum::<f64>()
        / tail as f64;
    Ok((Store::open(dir)?, report.model, loss))
}

/// The fit settings of the exact reference: factors from every step, `Λ` from every document
/// (a reservoir larger than any corpus here).
pub fn exact_fit(hook: &HookConfig) -> HookConfig {
    hook.clone().factor_every(1).fit_batches(10_000)
}

/// The exact reference at `checkpoint`, written to `dir`: every document's full-rank gradient
/// (f32), with EK-FAC factors fitted on the whole corpus at that checkpoint and `Λ` from every
/// document ([`exact_fit`]).
pub fn exact_store(
    task: &GptTask,
    checkpoint: &Path,
    dir: &Path,
    hook: &HookConfig,
) -> Result<Store> {
    posthoc_store(
        task,
        checkpoint,
        dir,
        exact_fit(hook).projection(ProjectionKind::Identity),
        SketchDtype::F32,
    )
}

/// Sketches `task`'s corpus at `checkpoint` into a new store at `dir` (removed first).
pub fn posthoc_store(
    task: &GptTask,
    checkpoint: &Path,
    dir: &Path,
    hook: HookConfig,
    dtype: SketchDtype,
) -> Result<Store> {
    let _ = std::fs::remove_dir_all(dir);
    let docs = task.corpus().map_err(|e| anyhow!("corpus: {e}"))?;
    let writer = StoreWriter::create(
        dir,
        StoreConfig {
            dtype,
            fsync: false,
            ..StoreConfig::default()
        },
    )?;
    sketch_corpus(
        task,
        checkpoint,
        &docs,
        hook,
        writer,
        &Device::flex(),
        &mut |_, _| {},
    )?;
    Ok(Store::open(dir)?)
}

fn stored_bytes_per_doc(store: &Store) -> f64 {
    let m = store.manifest();
    let bytes: u64 = m.shards.iter().map(|s| s.file.bytes).sum();
    let rows: u64 = m.shards.iter().map(|s| s.rows).sum();
    bytes as f64 / rows.max(1) as f64
}

/// The retraining runs of a study, written by [`run_study`] with `plan_only` so that another
/// machine can train them ([`retrain_plan`]) into a cache that a later [`run_study`] reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The study.
    pub config: StudyConfig,
    /// Its queries.
    pub queries: Vec<Query>,
    /// `(seed, keep mask as a string of 0 and 1)` per run.
    pub jobs: Vec<(u64, String)>,
}

/// Trains every run of `plan` into the cache `cache` (runs already there are skipped);
/// returns how many were trained.
pub fn retrain_plan(
    plan: &Plan,
    cache: &Path,
    jobs: usize,
    log: &(dyn Fn(String) + Sync),
) -> Result<usize> {
    let prepared = prepare(&plan.config.train)?;
    let task = task_of(&plan.config.train, &prepared)?;
    let harness = Retrainer::new(&plan.config.train, &prepared, &task, &plan.queries, cache)?;
    let list = plan
        .jobs
        .iter()
        .map(|(seed, mask)| {
            if mask.len() != prepared.tokens.len() || mask.bytes().any(|b| b != b'0' && b != b'1') {
                bail!(
                    "plan: a keep mask is not {} characters of 0 and 1",
                    prepared.tokens.len()
                );
            }
            Ok(Job {
                keep: mask.bytes().map(|b| b == b'1').collect(),
                seed: *seed,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let done = harness.measure_all(&list, threads(jobs), &|done, total, _| {
        log(format!(
            "retraining {done}/{total} ({:.0} s)",
            t.elapsed().as_secs_f64()
        ));
    })?;
    Ok(done.iter().filter(|m| !m.cached).count())
}

/// `n`, or one per core when 0.
fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn task_of(train: &TrainConfig, prepared: &Prepared) -> Result<GptTask> {
    let bpe = crate::tokenizer::Bpe {
        tokenizer: prepared.bpe.tokenizer.clone(),
        eos: prepared.bpe.eos,
    };
    GptTask::new(train.clone(), bpe)
}

/// Runs the whole study into `out` (stores, the retraining cache `out/cache`, `study.json`,
/// `study.md`); `log` receives one line per stage. With `plan_only` it stops before retraining,
/// writes the runs to `out/plan.json` and returns `None`.
pub fn run_study(
    config: &StudyConfig,
    queries: &[Query],
    out: &Path,
    plan_only: bool,
    log: &(dyn Fn(String) + Sync),
) -> Result<Option<StudyReport>> {
    let start = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let prepared = prepare(&config.train)?;
    let task = task_of(&config.train, &prepared)?;
    let queries = evenly(queries, config.max_queries);
    // Queries must fit the model's context.
    task.query_batch(&queries, &Device::flex())
        .map_err(|e| anyhow!("queries: {e}"))?;
    let ids: Vec<u64> = prepared.tokens.iter().map(|t| t.id).collect();
    let n = ids.len();
    let tokens: usize = prepared.tokens.iter().map(|t| t.tokens.len()).sum();
    log(format!(
        "corpus: {n} documents, {tokens} tokens; {} queries; model d={} layers={}; {} steps of {}×{}",
        queries.len(),
        config.train.d_model,
        config.train.n_layers,
        config.train.steps,
        config.train.batch_size,
        config.train.seq_len
    ));

    // 1. The full run with the hook (our default method), and extra training-time sizes.
    let (default_store, model, final_loss) = hooked_store(
        &config.train,
        &prepared,
        &out.join("store"),
        config.train.hook.clone(),
    )?;
    let ckpt = out.join("final");
    model
        .save_file(&ckpt)
        .map_err(|e| anyhow!("{}: {e}", ckpt.display()))?;
    let ckpt = ckpt.with_extension("bpk");
    log(format!("trained with the hook: final loss {final_loss:.3}"));
    let k0 = config.train.hook.k_a;
    // Plain inner products (rows not normalised) for every method but the scoring default's
    // own row: the exact reference and the schemes are compared on the plain quantity.
    let plain = ScoreConfig::default().normalize(false);
    let default_label = scheme_label(&config.train.hook.sketch_scheme);
    let mut methods = vec![MethodScores {
        name: format!("training-time sketches k={k0}, {default_label}, EK-FAC"),
        scores: score_matrix(&task, &default_store, &queries, &plain, &ids)?,
    }];
    // Removal conditions: the store's own scheme, then each other training-time scheme
    // (method indices).
    let mut removal_methods = vec![(format!("training-time sketches ({default_label})"), 0usize)];
    for scheme in &config.train_schemes {
        let label = scheme_label(scheme);
        let dir = out.join(format!(
            "store-{}",
            label.replace([' ', ',', '/', '(', ')', '²', '+'], "")
        ));
        let (store, _, _) = hooked_store(
            &config.train,
            &prepared,
            &dir,
            config.train.hook.clone().sketch_scheme(*scheme),
        )?;
        methods.push(MethodScores {
            name: format!("training-time sketches k={k0}, {label}, EK-FAC"),
            scores: score_matrix(&task, &store, &queries, &plain, &ids)?,
        });
        removal_methods.push((
            format!("training-time sketches ({label})"),
            methods.len() - 1,
        ));
        if matches!(scheme, SketchScheme::Random) {
            methods.push(MethodScores {
                name: format!(
                    "training-time sketches k={k0}, {label}, sketch-space curvature (LoGra)"
                ),
                scores: score_matrix(
                    &task,
                    &store,
                    &queries,
                    &plain.clone().sketch_curvature(true),
                    &ids,
                )?,
            });
        }
    }
    methods.push(MethodScores {
        name: format!(
            "training-time sketches k={k0}, {default_label}, EK-FAC, normalised rows (default)"
        ),
        scores: score_matrix(
            &task,
            &default_store,
            &queries,
            &ScoreConfig::default(),
            &ids,
        )?,
    });
    if config.removal_normalised {
        removal_methods.push((
            format!("training-time sketches ({default_label}, normalised rows, default)"),
            methods.len() - 1,
        ));
    }
    methods.push(MethodScores {
        name: format!("TracIn-style: training-time sketches k={k0}, identity, LR-weighted"),
        scores: score_matrix(
            &task,
            &default_store,
            &queries,
            &plain
                .clone()
                .strategy(Strategy::Identity)
                .lr_weighting(true),
            &ids,
        )?,
    });
    for &k in &config.train_ks {
        let (store, _, _) = hooked_store(
            &config.train,
            &prepared,
            &out.join(format!("store-k{k}")),
            config.train.hook.clone().k_a(k).k_g(k),
        )?;
        methods.push(MethodScores {
            name: format!("training-time sketches k={k}, EK-FAC"),
            scores: score_matrix(&task, &store, &queries, &plain, &ids)?,
        });
    }

    // 2. Exact gradients at the final checkpoint.
    let fit = exact_fit(&config.train.hook);
    let t = Instant::now();
    let exact_store = exact_store(&task, &ckpt, &out.join("exact"), &config.train.hook)?;
    let exact_seconds = t.elapsed().as_secs_f64();
    let exact = score_matrix(&task, &exact_store, &queries, &plain, &ids)?;
    for (name, strategy) in [("KFAC", Strategy::Kfac), ("identity", Strategy::Identity)] {
        methods.push(MethodScores {
            name: format!("exact gradients, final checkpoint, {name}"),
            scores: score_matrix(
                &task,
                &exact_store,
                &queries,
                &plain.clone().strategy(strategy),
                &ids,
            )?,
        });
    }
    let identity = methods.last().map(|m| m.scores.clone()).unwrap_or_default();
    methods.push(MethodScores {
        name: "exact gradients, final checkpoint, EK-FAC".into(),
        scores: exact.clone(),
    });
    log(format!(
        "scored {} methods at the final checkpoint",
        methods.len()
    ));

    // 3. Post-hoc sketches: the price curve (and LDS rows at f32).
    let mut price_stores = Vec::new();
    for (si, scheme) in config.posthoc_schemes.iter().enumerate() {
        let sizes = config
            .posthoc_ks
            .iter()
            .map(|&k| (k, k))
            .chain(config.posthoc_sizes.iter().copied());
        for (k, k_g) in sizes {
            for &dtype in &config.dtypes {
                let name = format!("posthoc-s{si}-k{k}x{k_g}-{dtype:?}").to_lowercase();
                let t = Instant::now();
                let store = posthoc_store(
                    &task,
                    &ckpt,
                    &out.join(&name),
                    fit.clone().k_a(k).k_g(k_g).sketch_scheme(*scheme),
                    dtype,
                )?;
                let sketch_seconds = t.elapsed().as_secs_f64();
                if !config.rerank_ns.is_empty() && !matches!(scheme, SketchScheme::Random) {
                    let ks = [10, 50, 100];
                    for scoring in [plain.clone(), plain.clone().normalize(true)] {
                        let (rows, checked) = crate::reranking::rerank_overlaps(
                            &task,
                            &store,
                            &queries,
                            &scoring,
                            Some((&ids, &exact)),
                            &crate::reranking::Sweep {
                                ns: config.rerank_ns.clone(),
                                ks: ks.to_vec(),
                                timed: true,
                            },
                        )?;
                        let what = if scoring.normalize {
                            "normalised rows"
                        } else {
                            "plain"
                        };
                        log(format!(
                            "{name}, {what}: sketched the corpus in {sketch_seconds:.1} s (full rank: {exact_seconds:.1} s); exact re-ranking, top-10/50/100 overlap with the exact ranking{}:",
                            checked.map_or(String::new(), |c| format!(
                                " (exact scores = the full-rank store's to {c:.1e})"
                            ))
                        ));
                        for r in &rows {
                            let o: Vec<String> =
                                r.overlap.iter().map(|(_, v)| format!("{v:.3}")).collect();
                            log(format!(
                                "  N = {:>4} ({:.1} % of the corpus per side): {} — {} documents re-scored in {:.1} s",
                                r.n,
                                100.0 * r.share,
                                o.join(" / "),
                                r.documents,
                                r.seconds
                            ));
                        }
                        let tag = if scoring.normalize { "-normalised" } else { "" };
                        let path = out.join(format!("rerank-{name}{tag}.json"));
                        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
                            .with_context(|| format!("{}", path.display()))?;
                    }
                }
                let values: usize = store.run().layers.iter().map(|l| l.sketch_len()).sum();
                let raw: usize = store
                    .run()
                    .layers
                    .iter()
                    .map(|l| dtype.row_bytes(l.sketch_len()))
                    .sum();
                let layers = store.run().layers.len() as f64;
                let m = store.manifest();
                let window_bytes = m.windows.iter().map(|w| w.factors.bytes).sum::<u64>() as f64
                    / m.windows.len().max(1) as f64
                    / layers;
                let mut scorings = vec![(scheme_label(scheme), plain.clone())];
                if matches!(scheme, SketchScheme::Random) {
                    scorings.push((
                        format!("{}, sketch-space curvature (LoGra)", scheme_label(scheme)),
                        plain.clone().sketch_curvature(true),
                    ));
                } else {
                    scorings.push((
                        format!("{}, normalised rows", scheme_label(scheme)),
                        plain.clone().normalize(true),
                    ));
                }
                for (label, scoring) in scorings {
                    let normalised = scoring.normalize;
                    price_stores.push(PriceStore {
                        scheme: label,
                        k,
                        k_g,
                        dtype,
                        values,
                        raw,
                        stored: stored_bytes_per_doc(&store),
                        window_bytes,
                        scores: score_matrix(&task, &store, &queries, &scoring, &ids)?,
                        normalised,
                    });
                }
                // Remove the store: only its scores are needed, and the price curve's stores
                // would fill the disk.
                let _ = std::fs::remove_dir_all(out.join(&name));
            }
        }
    }
    log(format!("{} post-hoc sketch stores", price_stores.len()));
    // Whitening before projecting, simulated at its most favourable (crate::whiten).
    for &values in &config.whitened_values {
        let w = crate::whiten::whitened_scores(
            &task,
            &exact_store,
            &queries,
            &plain,
            (&ids, &exact),
            (values, config.train.hook.projection_seed),
        )?;
        log(format!(
            "whitened projection, {values} values a layer: exact whitened scores match EK-FAC to {:.1e} (relative to the largest)",
            w.check
        ));
        let layers = exact_store.run().layers.len();
        let m = exact_store.manifest();
        let window_bytes = m.windows.iter().map(|w| w.factors.bytes).sum::<u64>() as f64
            / m.windows.len().max(1) as f64
            / layers as f64;
        let raw = layers * SketchDtype::I8.row_bytes(values);
        let label = "whitened (exact EK-FAC), dense Gaussian projection, simulated";
        for (scheme, scores, normalised) in [
            (label.to_string(), w.plain.clone(), false),
            (
                format!("{label}, normalised rows"),
                w.normalised.clone(),
                true,
            ),
        ] {
            price_stores.push(PriceStore {
                scheme,
                k: values,
                k_g: 1,
                dtype: SketchDtype::I8,
                values: values * layers,
                raw,
                // Not written: near-Gaussian int8 codes, which zstd leaves at their raw size.
                stored: raw as f64,
                window_bytes,
                scores,
                normalised,
            });
        }
        // Normalised rows against the normalised score in the preconditioned metric (the
        // reference below divides by the Euclidean norm of the gradient instead).
        let kk = config.overlap_k.min(n);
        for p in price_stores.iter().filter(|p| p.normalised) {
            let (pe, sp, o) = agreement(&p.scores, &w.exact_normalised, kk)?;
            log(format!(
                "{} {}×{} {:?} vs exact EK-FAC normalised in the preconditioned metric: Pearson {pe:.3}, Spearman {sp:.3}, top-{kk} overlap {o:.2}",
                p.scheme, p.k, p.k_g, p.dtype
            ));
        }
    }
    // Normalised rows change the quantity, not only its estimate: their sketches are compared
    // with the exact gradients' normalised scores, and the change itself is logged.
    let exact_normalised = if price_stores.iter().any(|p| p.normalised) {
        let s = score_matrix(
            &task,
            &exact_store,
            &queries,
            &plain.clone().normalize(true),
            &ids,
        )?;
        let (pe, sp, o) = agreement(&s, &exact, config.overlap_k.min(n))?;
        log(format!(
            "exact gradients, EK-FAC, normalised rows vs plain: Pearson {pe:.3}, Spearman {sp:.3}, top-{} overlap {o:.2}",
            config.overlap_k.min(n),
        ));
        s
    } else {
        Vec::new()
    };
    let price_row = |p: &PriceStore, lds: f64| -> Result<PriceRow> {
        let reference = if p.normalised {
            &exact_normalised
        } else {
            &exact
        };
        let (pearson, spearman, top_overlap) =
            agreement(&p.scores, reference, config.overlap_k.min(n))?;
        Ok(PriceRow {
            scheme: p.scheme.clone(),
            window_bytes_per_layer: p.window_bytes,
            k: p.k,
            k_g: p.k_g,
            dtype: p.dtype,
            values_per_doc: p.values,
            bytes_per_doc: p.raw,
            stored_bytes_per_doc: p.stored,
            pearson,
            spearman,
            top_overlap,
            lds,
        })
    };
    // The report and its files, from whatever the study measured.
    let finish = |lds: Vec<LdsRow>,
                  removal: Vec<RemovalRow>,
                  price: Vec<PriceRow>,
                  runs: (usize, usize, f64)|
     -> Result<Option<StudyReport>> {
        let report = StudyReport {
            config: config.clone(),
            queries: queries.iter().map(|q| q.id.clone()).collect(),
            documents: n,
            tokens,
            final_loss,
            lds,
            removal,
            overlap_k: config.overlap_k.min(n),
            price,
            runs,
            seconds: start.elapsed().as_secs_f64(),
        };
        std::fs::write(out.join("study.json"), serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(out.join("study.md"), report.markdown())?;
        Ok(Some(report))
    };
    if !config.retrain {
        let price = price_stores
            .iter()
            .map(|p| price_row(p, f64::NAN))
            .collect::<Result<_>>()?;
        return finish(Vec::new(), Vec::new(), price, (0, 0, 0.0));
    }

    // 4. Retraining: the full run per seed, the subsets, the removals.
    let harness = Retrainer::new(&config.train, &prepared, &task, &queries, out.join("cache"))?;
    let subsets = random_subsets(n, config.subsets, config.fraction, config.subset_seed);
    let removal_q: Vec<usize> = evenly(
        &(0..queries.len()).collect::<Vec<_>>(),
        Some(config.removal_queries),
    );
    let k = config.removal_k.min(n / 2);
    let top = |scores: &[f64]| -> Vec<usize> {
        influence_analyses::ranking_by_score(scores, true)
            .into_iter()
            .take(k)
            .collect()
    };
    let without = |drop: &[usize]| -> Vec<bool> {
        let mut keep = vec![true; n];
        for &d in drop {
            keep[d] = false;
        }
        keep
    };
    let mut jobs: Vec<Job> = subsets
        .iter()
        .map(|keep| Job {
            keep: keep.clone(),
            seed: config.train.seed,
        })
        .collect();
    let mut removal_jobs = Vec::new(); // (condition, query, seed, job index)
    for &seed in &config.removal_seeds {
        jobs.push(Job {
            keep: vec![true; n],
            seed,
        });
        let full = jobs.len() - 1;
        for &q in &removal_q {
            let mut rng = StdRng::seed_from_u64(config.subset_seed ^ (seed << 32) ^ q as u64);
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut rng);
            let mut drops: Vec<Vec<usize>> = removal_methods
                .iter()
                .map(|(_, m)| top(&methods[*m].scores[q]))
                .collect();
            drops.push(top(&identity[q]));
            drops.push(all[..k].to_vec());
            for (c, drop) in drops.into_iter().enumerate() {
                jobs.push(Job {
                    keep: without(&drop),
                    seed,
                });
                removal_jobs.push((c, q, full, jobs.len() - 1));
            }
        }
    }
    if plan_only {
        let plan = Plan {
            config: config.clone(),
            queries: queries.clone(),
            jobs: jobs
                .iter()
                .map(|j| {
                    let mask = j.keep.iter().map(|&k| if k { '1' } else { '0' }).collect();
                    (j.seed, mask)
                })
                .collect(),
        };
        std::fs::write(out.join("plan.json"), serde_json::to_vec(&plan)?)?;
        log(format!(
            "{} runs planned: {}",
            jobs.len(),
            out.join("plan.json").display()
        ));
        return Ok(None);
    }
    let t = Instant::now();
    let measured = harness.measure_all(&jobs, config.jobs(), &|done, total, cached| {
        if done == total || done % 8 == 0 || !cached {
            log(format!(
                "retraining {done}/{total}{} ({:.0} s)",
                if cached { " (cached)" } else { "" },
                t.elapsed().as_secs_f64()
            ));
        }
    })?;
    let trained: Vec<&Measurement> = measured.iter().filter(|m| !m.cached).collect();
    let runs = (
        trained.len(),
        measured.len() - trained.len(),
        trained.iter().map(|m| m.seconds).sum::<f64>() / trained.len().max(1) as f64,
    );

    // LDS.
    let actual: Vec<Vec<f64>> = (0..queries.len())
        .map(|q| {
            measured[..subsets.len()]
                .iter()
                .map(|m| m.log_prob[q])
                .collect()
        })
        .collect();
    let lds_of = |scores: &[Vec<f64>]| -> Result<Lds> {
        let predicted = scores
            .iter()
            .map(|s| influence_analyses::subset_predictions(s, &subsets))
            .collect::<influence_analyses::Result<Vec<_>>>()?;
        Ok(lds(&predicted, &actual, config.subset_seed)?)
    };
    let mut lds_rows = Vec::new();
    for m in &methods {
        lds_rows.push(LdsRow {
            method: m.name.clone(),
            lds: lds_of(&m.scores)?,
        });
    }
    let mut price = Vec::new();
    for p in &price_stores {
        let l = lds_of(&p.scores)?;
        if p.dtype == SketchDtype::F32 || config.dtypes.len() == 1 {
            lds_rows.push(LdsRow {
                method: format!(
                    "post-hoc sketches k={}, {}, final checkpoint, EK-FAC",
                    p.k, p.scheme
                ),
                lds: l.clone(),
            });
        }
        price.push(price_row(p, l.summary.mean)?);
    }

    // Removal.
    let mut names: Vec<String> = removal_methods
        .iter()
        .map(|(name, _)| format!("top-{k} by {name}"))
        .collect();
    names.push(format!("top-{k} by exact gradient dot product (identity)"));
    names.push(format!("{k} random"));
    let random = names.len() - 1;
    let mut deltas: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for &(c, q, full, j) in &removal_jobs {
        deltas[c].push(measured[j].log_prob[q] - measured[full].log_prob[q]);
    }
    let removal = names
        .iter()
        .zip(&deltas)
        .enumerate()
        .map(|(c, (name, d))| {
            // The random removal is the reference, not a contender.
            let beats = (c != random).then(|| {
                d.iter().zip(&deltas[random]).filter(|(x, r)| x < r).count() as f64
                    / d.len().max(1) as f64
            });
            Ok(RemovalRow {
                removed: name.clone(),
                deltas: d.clone(),
                summary: bootstrap_mean_ci(
                    d,
                    0.95,
                    influence_analyses::BOOTSTRAP_RESAMPLES,
                    config.subset_seed,
                )?,
                median: quantile(d, 0.5),
                beats_random: beats,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    finish(lds_rows, removal, price, runs)
}

/// Linear-interpolation quantile (numpy's default); `NaN` for an empty slice.
fn quantile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let h = p.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

impl StudyReport {
    /// The tables of `docs/accuracy.md`.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "{} documents ({} tokens), {} queries, {} subsets keeping {:.0} %; model d={} layers={}, \
             {} steps of {}×{} on the full corpus (final loss {:.3}); {} retraining runs trained{}, \
             {} read from the cache; {:.0} s in all.\n",
            self.documents,
            self.tokens,
            self.queries.len(),
            c.subsets,
            c.fraction * 100.0,
            c.train.d_model,
            c.train.n_layers,
            c.train.steps,
            c.train.batch_size,
            c.train.seq_len,
            self.final_loss,
            self.runs.0,
            if self.runs.0 > 0 {
                format!(" ({:.1} s each)", self.runs.2)
            } else {
                String::new()
            },
            self.runs.1,
            self.seconds
        );
        let _ = writeln!(s, "| method | LDS (mean Spearman) | 95 % CI | min | max |");
        let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
        for r in &self.lds {
            let (lo, hi) = r
                .lds
                .per_query
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let _ = writeln!(
                s,
                "| {} | {:.3} | [{:.3}, {:.3}] | {:.2} | {:.2} |",
                r.method, r.lds.summary.mean, r.lds.summary.low, r.lds.summary.high, lo, hi
            );
        }
        let _ = writeln!(
            s,
            "\n| removed ({} queries × {} seeds) | mean Δ log p | 95 % CI | min | 25 % | median | 75 % | max | falls more than random |",
            c.removal_queries.min(self.queries.len()),
            c.removal_seeds.len()
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for r in &self.removal {
            let q = |p: f64| quantile(&r.deltas, p);
            let _ = writeln!(
                s,
                "| {} | {:+.3} | [{:+.3}, {:+.3}] | {:+.2} | {:+.2} | {:+.2} | {:+.2} | {:+.2} | {} |",
                r.removed,
                r.summary.mean,
                r.summary.low,
                r.summary.high,
                q(0.0),
                q(0.25),
                r.median,
                q(0.75),
                q(1.0),
                r.beats_random
                    .map_or("—".into(), |b| format!("{:.0} %", b * 100.0))
            );
        }
        let _ = writeln!(
            s,
            "\n| scheme | k_a × k_g | dtype | values/doc | bytes/doc (raw) | bytes/doc (zstd) | window files/layer | Pearson | Spearman | top-{} overlap | LDS |",
            self.overlap_k
        );
        let _ = writeln!(
            s,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for p in &self.price {
            let _ = writeln!(
                s,
                "| {} | {}×{} | {:?} | {} | {} | {:.0} | {:.0} KB | {:.3} | {:.3} | {:.2} | {:.3} |",
                p.scheme,
                p.k,
                if p.k_g == 0 { p.k } else { p.k_g },
                p.dtype,
                p.values_per_doc,
                p.bytes_per_doc,
                p.stored_bytes_per_doc,
                p.window_bytes_per_layer / 1024.0,
                p.pearson,
                p.spearman,
                p.top_overlap,
                p.lds
            );
        }
        s
    }
}
