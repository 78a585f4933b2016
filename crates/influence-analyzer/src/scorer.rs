//! Streaming scorer: decodes shards in parallel (bounded), and scores every row against a batch
//! of queries as one matmul per layer on the device.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use crossbeam_channel::{Receiver, bounded};
use influence_store::{ShardEntry, SketchChunk, Store, StoreError};

use crate::AnalyzerError;
use crate::config::ScoreConfig;
use crate::query::PreparedQueries;

/// A training document seen in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct DocInfo {
    /// Document id.
    pub id: u64,
    /// Source label.
    pub source: Arc<str>,
    /// Rows (steps in which it was trained on) scored.
    pub rows: u32,
    /// Loss-bearing tokens over those rows.
    pub tokens: u64,
}

/// Counters of one scoring pass.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ScoreStats {
    /// Rows scored.
    pub rows: u64,
    /// Rows skipped because their window has no checkpoint/factors (an unfinished run).
    pub skipped_rows: u64,
    /// Rows left out because they scored NaN or ∞ (a corrupt or overflowed sketch); logged
    /// with document, window, step and layer.
    pub nonfinite_rows: u64,
    /// Shards read.
    pub shards: usize,
    /// Bytes of the shards read (compressed, on disk).
    pub shard_bytes: u64,
    /// Seconds spent reading and decoding, summed over decode threads.
    pub decode_seconds: f64,
    /// Seconds spent scoring (device upload, matmuls, read back, accumulation).
    pub score_seconds: f64,
    /// Wall-clock seconds of the whole pass.
    pub wall_seconds: f64,
    /// Decode threads used.
    pub threads: usize,
}

/// Scores of every stored document against every query.
#[derive(Clone, Debug)]
pub struct Scores {
    /// Layer names, in store order.
    pub layers: Vec<String>,
    /// Number of queries.
    pub queries: usize,
    /// Documents, in order of first appearance in the store.
    pub docs: Vec<DocInfo>,
    /// `docs × queries`: the influence of each document on each query (summed over the
    /// document's rows, each scored against its own window).
    pub totals: Vec<f64>,
    /// `queries × layers`: each query's score summed over all documents, split by layer (the
    /// per-layer influence of the whole store).
    pub layer_totals: Vec<f64>,
    /// Per-layer splits of [`Scores::totals`] for selected `(document, query)` pairs, one value
    /// per layer: only those computed by [`layer_splits`] (for the documents a report lists),
    /// never `documents × queries × layers` — see [`score_store`] for the memory bound.
    pub splits: HashMap<(usize, usize), Vec<f64>>,
    /// `docs × queries`: the influence per nat, `Σ_w s_w / nats_w`: each window's part of the
    /// score divided by the query's `−log p(completion | prompt)` at that window's checkpoint
    /// (equal to `totals / nats` with one window). A window's score is a first-order change of
    /// the query's loss at its checkpoint; dividing each by the loss it changes keeps windows
    /// whose checkpoints predict the completion differently well on one scale, where dividing a
    /// multi-window sum by the last window's nats would weigh early windows by a loss they never
    /// had.
    pub per_nat: Vec<f64>,
    /// Per document: `(window, weight)` for every window in which it has rows, the weight the
    /// sum of its rows' weights there (1 a row, or its learning rate under
    /// [`ScoreConfig::lr_weighting`]) — what an exact re-score of the window weighs by
    /// ([`crate::rerank()`]).
    pub row_weights: Vec<Vec<(u32, f64)>>,
    /// Counters.
    pub stats: ScoreStats,
}

impl Scores {
    /// The score of document `d` (index into [`Scores::docs`]) for query `q`.
    pub fn score(&self, d: usize, q: usize) -> f64 {
        self.totals[d * self.queries + q]
    }

    /// The influence per nat of document `d` for query `q` ([`Scores::per_nat`]).
    pub fn score_per_nat(&self, d: usize, q: usize) -> f64 {
        self.per_nat[d * self.queries + q]
    }

    /// Query `q`'s influence per nat for every document, in [`Scores::docs`] order.
    pub fn per_nat_column(&self, q: usize) -> Vec<f64> {
        (0..self.docs.len())
            .map(|d| self.score_per_nat(d, q))
            .collect()
    }

    /// The per-layer split of [`Scores::score`]: the score itself with one layer, else the
    /// split [`layer_splits`] computed for this pair (`None` when none was).
    pub fn layer_scores(&self, d: usize, q: usize) -> Option<Vec<f64>> {
        if self.layers.len() == 1 {
            return Some(vec![self.score(d, q)]);
        }
        self.splits.get(&(d, q)).cloned()
    }

    /// Query `q`'s score summed over all documents, per layer (store order).
    pub fn layer_total(&self, q: usize) -> &[f64] {
        let l = self.layers.len();
        &self.layer_totals[q * l..(q + 1) * l]
    }

    /// Query `q`'s score for every document, in [`Scores::docs`] order.
    pub fn column(&self, q: usize) -> Vec<f64> {
        (0..self.docs.len()).map(|d| self.score(d, q)).collect()
    }

    /// Indices of the `k` highest-scoring documents of query `q`, best first (a bounded heap over
    /// all documents).
    pub fn top(&self, q: usize, k: usize) -> Vec<usize> {
        top_k(self.docs.len(), k, |d| self.score(d, q))
    }

    /// Indices of the `k` lowest-scoring documents of query `q`, most negative first.
    pub fn bottom(&self, q: usize, k: usize) -> Vec<usize> {
        top_k(self.docs.len(), k, |d| -self.score(d, q))
    }
}

/// Indices of the `k` largest `value(i)` for `i < n`, largest first; ties broken by index.
/// Non-finite values (NaN, ±∞) are never ranked: fewer than `k` come back when fewer are finite.
pub fn top_k(n: usize, k: usize, value: impl Fn(usize) -> f64) -> Vec<usize> {
    use std::cmp::{Ordering, Reverse};
    use std::collections::BinaryHeap;
    #[derive(PartialEq)]
    struct Item(f64, usize);
    impl Eq for Item {}
    impl PartialOrd for Item {
        fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Item {
        fn cmp(&self, o: &Self) -> Ordering {
            // Larger value first; on ties the smaller index ranks higher.
            self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
        }
    }
    if k == 0 {
        return Vec::new();
    }
    let mut heap = BinaryHeap::with_capacity(k + 1);
    for i in 0..n {
        let v = value(i);
        if !v.is_finite() {
            continue;
        }
        heap.push(Reverse(Item(v, i)));
        if heap.len() > k {
            heap.pop();
        }
    }
    let mut out: Vec<Item> = heap.into_iter().map(|r| r.0).collect();
    out.sort_by(|a, b| b.cmp(a));
    out.into_iter().map(|i| i.1).collect()
}

/// Calls `f` with every selected shard's chunks, in manifest order, while `threads` threads
/// read and decode ahead (at most `2 × threads` shards in memory). Returns the seconds spent
/// decoding, summed over threads.
pub fn for_each_shard(
    store: &Store,
    shards: &[&ShardEntry],
    layers: &[usize],
    threads: usize,
    mut f: impl FnMut(&ShardEntry, Vec<SketchChunk>) -> Result<(), AnalyzerError>,
) -> Result<f64, AnalyzerError> {
    type Slot = Receiver<(Result<Vec<SketchChunk>, StoreError>, f64)>;
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = bounded::<(usize, crossbeam_channel::Sender<_>)>(threads);
        let (order_tx, order_rx) = bounded::<Slot>(threads);
        scope.spawn(move || {
            for i in 0..shards.len() {
                let (tx, rx) = bounded(1);
                // The consumer reads slots in order; when it stops early, both sends fail.
                if order_tx.send(rx).is_err() || job_tx.send((i, tx)).is_err() {
                    break;
                }
            }
        });
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            scope.spawn(move || {
                for (i, tx) in job_rx {
                    let t = Instant::now();
                    let r = store.read_shard(shards[i], layers);
                    let _ = tx.send((r, t.elapsed().as_secs_f64()));
                }
            });
        }
        drop(job_rx);
        let mut decode = 0.0;
        for (i, slot) in order_rx.iter().enumerate() {
            let (chunks, secs) = slot
                .recv()
                .map_err(|_| AnalyzerError::Device("a decode thread stopped".into()))?;
            decode += secs;
            f(shards[i], chunks?)?;
        }
        Ok(decode)
    })
}

struct Accumulator {
    nq: usize,
    nl: usize,
    index: HashMap<u64, usize>,
    docs: Vec<DocInfo>,
    totals: Vec<f64>,
    per_nat: Vec<f64>,
    layer_totals: Vec<f64>,
    row_weights: Vec<Vec<(u32, f64)>>,
    nonfinite_logged: usize,
}

/// A row's weights: `kept` what its document's window weight adds (1, or the learning rate),
/// `scale` what its scores are multiplied by (`kept`, divided by the row norm when rows are
/// normalised). `None` for a row with a non-finite score or norm (a sketch that holds NaN or
/// ∞, or overflows in the matmul): such a row adds nothing, in either pass.
fn row_weight(
    chunk: &SketchChunk,
    r: usize,
    row: &[f32],
    norms: Option<&[f32]>,
    lr_weighting: bool,
) -> Option<(f64, f64)> {
    if !norms.is_none_or(|n| n[r].is_finite()) || row.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let kept = if lr_weighting {
        chunk.learning_rates[r]
    } else {
        1.0
    };
    let scale = match norms {
        // A zero row scores zero whatever it is divided by.
        Some(n) if n[r] > 0.0 => kept / f64::from(n[r]),
        Some(_) => 0.0,
        None => kept,
    };
    Some((kept, scale))
}

impl Accumulator {
    fn doc(&mut self, id: u64, source: &Arc<str>) -> usize {
        if let Some(&d) = self.index.get(&id) {
            return d;
        }
        let d = self.docs.len();
        self.index.insert(id, d);
        self.docs.push(DocInfo {
            id,
            source: source.clone(),
            rows: 0,
            tokens: 0,
        });
        self.totals.extend(std::iter::repeat_n(0.0, self.nq));
        self.per_nat.extend(std::iter::repeat_n(0.0, self.nq));
        self.row_weights.push(Vec::new());
        d
    }

    /// `scores`: `rows × (layers · queries)`, layer-major within a row; `nats`: per query, the
    /// window's `−log p(completion | prompt)`; `norms`: each row's norm in the scoring metric
    /// when rows are normalised. A row with a non-finite score or norm adds nothing — not even
    /// its document — and is counted in the returned number and logged.
    fn add(
        &mut self,
        window: u32,
        chunk: &SketchChunk,
        scores: &[f32],
        nats: &[f64],
        norms: Option<&[f32]>,
        lr_weighting: bool,
    ) -> u64 {
        let (nq, nl) = (self.nq, self.nl);
        let mut bad = 0;
        for r in 0..chunk.len() {
            let row = &scores[r * nl * nq..(r + 1) * nl * nq];
            let Some((kept, w)) = row_weight(chunk, r, row, norms, lr_weighting) else {
                bad += 1;
                if self.nonfinite_logged < 20 {
                    self.nonfinite_logged += 1;
                    let layer = row
                        .chunks(nq.max(1))
                        .position(|l| l.iter().any(|v| !v.is_finite()));
                    tracing::warn!(
                        document = chunk.doc_ids[r],
                        window,
                        step = chunk.steps[r],
                        layer = layer.map_or("(row norm)".to_owned(), |l| l.to_string()),
                        "a stored row scores non-finite; it is left out of every ranking"
                    );
                }
                continue;
            };
            let d = self.doc(chunk.doc_ids[r], &chunk.sources[r]);
            let info = &mut self.docs[d];
            info.rows += 1;
            info.tokens += u64::from(chunk.tokens[r]);
            let weights = &mut self.row_weights[d];
            match weights.iter_mut().find(|(x, _)| *x == window) {
                Some((_, sum)) => *sum += kept,
                None => weights.push((window, kept)),
            }
            for l in 0..nl {
                for q in 0..nq {
                    let v = w * f64::from(row[l * nq + q]);
                    self.layer_totals[q * nl + l] += v;
                    self.totals[d * nq + q] += v;
                    self.per_nat[d * nq + q] += v / nats[q];
                }
            }
        }
        bad
    }
}

/// The queries of every scored window on the device, and how a decoded chunk is scored
/// against them — shared by the scoring pass and the layer-split pass.
struct Scoring<'a> {
    run: &'a influence_core::RunInfo,
    device: Device,
    /// Per window and layer: Qᵀ as a `[k_g·k_a, queries]` tensor.
    queries: HashMap<u32, Vec<Tensor<2>>>,
    /// Per window and layer: the row metric as a `[k_g·k_a, 1]` column when rows are
    /// normalised.
    metrics: HashMap<u32, Vec<Tensor<2>>>,
    nq: usize,
}

impl<'a> Scoring<'a> {
    fn new(
        run: &'a influence_core::RunInfo,
        prepared: &[PreparedQueries],
        config: &ScoreConfig,
        device: &Device,
    ) -> Result<Self, AnalyzerError> {
        let nq = prepared.first().map_or(0, PreparedQueries::len);
        if nq == 0 || prepared.iter().any(|p| p.len() != nq) {
            return Err(AnalyzerError::argument(
                "queries",
                "no queries, or a different number per window",
            ));
        }
        let device = device.clone().inner();
        let mut queries = HashMap::new();
        let mut metrics = HashMap::new();
        // One layer's values as a `shape` tensor, after checking their count.
        let upload = |values: Option<&Vec<f32>>, shape: [usize; 2], what: String| {
            values
                .filter(|v| v.len() == shape[0] * shape[1])
                .map(|v| Tensor::<2>::from_data(TensorData::new(v.clone(), shape), &device))
                .ok_or_else(|| {
                    AnalyzerError::Mismatch(format!(
                        "{what} do not have {}×{} values",
                        shape[0], shape[1]
                    ))
                })
        };
        for p in prepared {
            let mut per_layer = Vec::with_capacity(run.layers.len());
            let mut m = Vec::with_capacity(run.layers.len());
            for (l, spec) in run.layers.iter().enumerate() {
                let kk = spec.sketch_len();
                let layer =
                    |what: &str| format!("window {}: {what} of layer {}", p.window, spec.name);
                let t = upload(p.sketches.get(l), [nq, kk], layer("query sketches"))?;
                per_layer.push(t.transpose());
                if config.normalize {
                    m.push(upload(
                        p.row_metric.get(l),
                        [kk, 1],
                        layer("the row metric"),
                    )?);
                }
            }
            queries.insert(p.window, per_layer);
            if config.normalize {
                metrics.insert(p.window, m);
            }
        }
        Ok(Self {
            run,
            device,
            queries,
            metrics,
            nq,
        })
    }

    /// Scores `chunk` (a window's rows, all layers) on the device: `rows × (layers · queries)`
    /// values, layer-major within a row, and each row's norm in the scoring metric when rows
    /// are normalised. The chunk's sketches are moved to the device, not copied.
    fn score(
        &self,
        window: u32,
        chunk: &mut SketchChunk,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), AnalyzerError> {
        let rows = chunk.len();
        let q = &self.queries[&window];
        let metric = self.metrics.get(&window);
        let mut parts = Vec::with_capacity(self.run.layers.len());
        let mut norm2: Option<Tensor<2>> = None;
        for (l, spec) in self.run.layers.iter().enumerate() {
            let kk = spec.sketch_len();
            let values = std::mem::take(&mut chunk.sketches[l]);
            let k = Tensor::<2>::from_data(TensorData::new(values, [rows, kk]), &self.device);
            if let Some(m) = metric {
                let n = (k.clone() * k.clone()).matmul(m[l].clone());
                norm2 = Some(match norm2 {
                    Some(acc) => acc + n,
                    None => n,
                });
            }
            parts.push(k.matmul(q[l].clone()));
        }
        let read = |t: Tensor<2>, what: &str| {
            t.try_into_vec_as::<f32>()
                .map_err(|e| AnalyzerError::Device(format!("reading {what}: {e:?}")))
        };
        let scores = read(Tensor::cat(parts, 1), "scores")?;
        let norms = match norm2 {
            Some(n) => Some(read(n.sqrt(), "row norms")?),
            None => None,
        };
        Ok((scores, norms))
    }
}

/// The rows `keep` of `chunk` (all its sketches' layers), in order.
fn select_rows(chunk: &SketchChunk, keep: &[usize]) -> SketchChunk {
    let pick = |v: &[f32]| -> Vec<f32> {
        let k = v.len() / chunk.len().max(1);
        keep.iter()
            .flat_map(|&r| v[r * k..(r + 1) * k].iter().copied())
            .collect()
    };
    SketchChunk {
        doc_ids: keep.iter().map(|&r| chunk.doc_ids[r]).collect(),
        steps: keep.iter().map(|&r| chunk.steps[r]).collect(),
        windows: keep.iter().map(|&r| chunk.windows[r]).collect(),
        learning_rates: keep.iter().map(|&r| chunk.learning_rates[r]).collect(),
        losses: keep.iter().map(|&r| chunk.losses[r]).collect(),
        tokens: keep.iter().map(|&r| chunk.tokens[r]).collect(),
        sources: keep.iter().map(|&r| chunk.sources[r].clone()).collect(),
        layers: chunk.layers.clone(),
        sketches: chunk.sketches.iter().map(|v| pick(v)).collect(),
    }
}

/// Scores every row of the store's windows that `prepared` covers against the prepared
/// queries, on `device`, in one streaming pass. `progress` is called with the rows scored so
/// far after each shard.
///
/// Memory: besides the shards in flight (at most `2 × decode threads` decoded shards) and one
/// chunk's scores, the pass keeps per document its [`DocInfo`] (~40 bytes), an id index entry
/// (~30 bytes), its window weights (24 bytes plus 16 a window it has rows in) and two f64
/// accumulators per query (totals and per nat): about `16 · queries + 100` bytes a document,
/// whatever the number of layers. Layer splits are `queries × layers` totals plus, per pair
/// asked for, one f64 per layer ([`layer_splits`]). Measured: `docs/performance.md`.
pub fn score_store(
    store: &Store,
    prepared: &[PreparedQueries],
    config: &ScoreConfig,
    device: &Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Scores, AnalyzerError> {
    let wall = Instant::now();
    let run = store.run();
    let nl = run.layers.len();
    let scoring = Scoring::new(run, prepared, config, device)?;
    let nq = scoring.nq;
    for p in prepared {
        if let Some(q) = p.nats.iter().position(|n| !(n.is_finite() && *n > 0.0)) {
            return Err(AnalyzerError::NonFinite(format!(
                "window {}: query #{q} has −log p(completion | prompt) = {}: influence per nat \
                 needs a finite positive value",
                p.window, p.nats[q]
            )));
        }
    }
    let nats: HashMap<u32, &[f64]> = prepared.iter().map(|p| (p.window, &p.nats[..])).collect();
    let (shards, skipped) = scored_shards(store, &scoring, config);
    if skipped > 0 {
        tracing::warn!(
            rows = skipped,
            "rows of windows without checkpoint or factors are not scored"
        );
    }
    let mut acc = Accumulator {
        nq,
        nl,
        index: HashMap::new(),
        docs: Vec::new(),
        totals: Vec::new(),
        per_nat: Vec::new(),
        layer_totals: vec![0.0; nq * nl],
        row_weights: Vec::new(),
        nonfinite_logged: 0,
    };
    let mut stats = ScoreStats {
        skipped_rows: skipped,
        threads: config.decode_threads_or_default(),
        ..ScoreStats::default()
    };
    let mut score_seconds = 0.0;
    let all_layers: Vec<usize> = (0..nl).collect();
    let decode = for_each_shard(
        store,
        &shards,
        &all_layers,
        config.decode_threads_or_default(),
        |shard, chunks| {
            let t = Instant::now();
            for mut chunk in chunks {
                if chunk.is_empty() {
                    continue;
                }
                let rows = chunk.len();
                let (scores, norms) = scoring.score(shard.window, &mut chunk)?;
                let bad = acc.add(
                    shard.window,
                    &chunk,
                    &scores,
                    nats[&shard.window],
                    norms.as_deref(),
                    config.lr_weighting,
                );
                stats.nonfinite_rows += bad;
                stats.rows += rows as u64 - bad;
            }
            stats.shards += 1;
            stats.shard_bytes += shard.file.bytes;
            score_seconds += t.elapsed().as_secs_f64();
            progress(stats.rows);
            Ok(())
        },
    )?;
    stats.decode_seconds = decode;
    stats.score_seconds = score_seconds;
    stats.wall_seconds = wall.elapsed().as_secs_f64();
    Ok(Scores {
        layers: run.layers.iter().map(|l| l.name.clone()).collect(),
        queries: nq,
        docs: acc.docs,
        totals: acc.totals,
        per_nat: acc.per_nat,
        layer_totals: acc.layer_totals,
        splits: HashMap::new(),
        row_weights: acc.row_weights,
        stats,
    })
}

/// The shards of the windows `scoring` has queries for, and the rows of the windows
/// `config` selects that are left out for want of a checkpoint or factors.
fn scored_shards<'s>(
    store: &'s Store,
    scoring: &Scoring<'_>,
    config: &ScoreConfig,
) -> (Vec<&'s ShardEntry>, u64) {
    let mut skipped = 0u64;
    let shards = store
        .manifest()
        .shards
        .iter()
        .filter(|s| {
            let keep = scoring.queries.contains_key(&s.window);
            if !keep
                && config
                    .windows
                    .as_ref()
                    .is_none_or(|w| w.contains(&s.window))
            {
                skipped += s.rows;
            }
            keep
        })
        .collect();
    (shards, skipped)
}

/// The per-layer splits of `scores` for the `(document, query)` pairs `pairs` (document
/// indices into [`Scores::docs`]): a second streaming pass over the same shards, scoring only
/// the rows of the documents asked for, weighted exactly as [`score_store`] weighted them
/// (`prepared` and `config` must be the ones `scores` came from). Each split sums to the
/// document's score to f64 rounding. Its cost is one more read and decode of the shards; its
/// memory one f64 per layer and pair. Pairs already split, or of a one-layer store (whose
/// split is the score), are not recomputed.
pub fn layer_splits(
    store: &Store,
    prepared: &[PreparedQueries],
    config: &ScoreConfig,
    device: &Device,
    scores: &Scores,
    pairs: &[(usize, usize)],
) -> Result<HashMap<(usize, usize), Vec<f64>>, AnalyzerError> {
    let run = store.run();
    let nl = run.layers.len();
    let mut out: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    // Per document id: its index and the queries it is split for.
    let mut wanted: HashMap<u64, (usize, Vec<usize>)> = HashMap::new();
    for &(d, q) in pairs {
        let doc = scores.docs.get(d).ok_or_else(|| {
            AnalyzerError::argument("pairs", format!("document index {d} is not in the scores"))
        })?;
        if q >= scores.queries {
            return Err(AnalyzerError::argument(
                "pairs",
                format!("query index {q} of {} queries", scores.queries),
            ));
        }
        if nl == 1 || scores.splits.contains_key(&(d, q)) || out.contains_key(&(d, q)) {
            continue;
        }
        out.insert((d, q), vec![0.0; nl]);
        wanted.entry(doc.id).or_insert((d, Vec::new())).1.push(q);
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    let scoring = Scoring::new(run, prepared, config, device)?;
    let nq = scoring.nq;
    if nq != scores.queries {
        return Err(AnalyzerError::Mismatch(format!(
            "the scores have {} queries, the prepared queries {nq}",
            scores.queries
        )));
    }
    let (shards, _) = scored_shards(store, &scoring, config);
    let all_layers: Vec<usize> = (0..nl).collect();
    for_each_shard(
        store,
        &shards,
        &all_layers,
        config.decode_threads_or_default(),
        |shard, chunks| {
            for chunk in chunks {
                let keep: Vec<usize> = (0..chunk.len())
                    .filter(|&r| wanted.contains_key(&chunk.doc_ids[r]))
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                let mut sub = select_rows(&chunk, &keep);
                let (values, norms) = scoring.score(shard.window, &mut sub)?;
                for r in 0..sub.len() {
                    let row = &values[r * nl * nq..(r + 1) * nl * nq];
                    let Some((_, w)) =
                        row_weight(&sub, r, row, norms.as_deref(), config.lr_weighting)
                    else {
                        continue;
                    };
                    let (d, queries) = &wanted[&sub.doc_ids[r]];
                    for &q in queries {
                        if let Some(split) = out.get_mut(&(*d, q)) {
                            for (l, v) in split.iter_mut().enumerate() {
                                *v += w * f64::from(row[l * nq + q]);
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Per layer, the Fisher of the stored sketches of `window`: `mean over rows of vec(K) vec(K)ᵀ`
/// (`k_g·k_a` square, row-major, f64), accumulated on `device` in one pass over the window's
/// shards; and the number of rows.
pub fn sketch_fisher(
    store: &Store,
    window: u32,
    config: &ScoreConfig,
    device: &Device,
) -> Result<(Vec<Vec<f64>>, u64), AnalyzerError> {
    let run = store.run();
    let nl = run.layers.len();
    let device = device.clone().inner();
    let shards: Vec<&ShardEntry> = store
        .manifest()
        .shards
        .iter()
        .filter(|s| s.window == window)
        .collect();
    let all_layers: Vec<usize> = (0..nl).collect();
    let mut sums: Vec<Option<Tensor<2>>> = vec![None; nl];
    let mut rows = 0u64;
    for_each_shard(
        store,
        &shards,
        &all_layers,
        config.decode_threads_or_default(),
        |_, chunks| {
            for mut chunk in chunks {
                let n = chunk.len();
                if n == 0 {
                    continue;
                }
                for (l, spec) in run.layers.iter().enumerate() {
                    let kk = spec.sketch_len();
                    let values = std::mem::take(&mut chunk.sketches[l]);
                    let k = Tensor::<2>::from_data(TensorData::new(values, [n, kk]), &device);
                    let kt_k = k.clone().transpose().matmul(k);
                    sums[l] = Some(match sums[l].take() {
                        Some(t) => t + kt_k,
                        None => kt_k,
                    });
                }
                rows += n as u64;
            }
            Ok(())
        },
    )?;
    if rows == 0 {
        return Err(AnalyzerError::argument(
            "sketch_curvature",
            format!(
                "window {window} of {} has no stored rows",
                store.dir().display()
            ),
        ));
    }
    let mut out = Vec::with_capacity(nl);
    for (l, sum) in sums.into_iter().enumerate() {
        let sum = sum.ok_or_else(|| {
            AnalyzerError::Mismatch(format!("window {window}: no rows of layer {l}"))
        })?;
        let v = sum
            .try_into_vec_as::<f32>()
            .map_err(|e| AnalyzerError::Device(format!("reading the sketch Fisher: {e:?}")))?;
        out.push(v.iter().map(|&x| f64::from(x) / rows as f64).collect());
    }
    Ok((out, rows))
}

#[cfg(test)]
mod tests {
    use super::top_k;

    /// NaN and ±∞ are never ranked, at the top or the bottom; ties go to the smaller index.
    #[test]
    fn top_k_skips_non_finite_values() {
        let v = [
            1.0,
            f64::NAN,
            3.0,
            f64::INFINITY,
            3.0,
            f64::NEG_INFINITY,
            -2.0,
        ];
        assert_eq!(top_k(v.len(), 3, |i| v[i]), vec![2, 4, 0]);
        assert_eq!(top_k(v.len(), 2, |i| -v[i]), vec![6, 0]);
        assert_eq!(top_k(v.len(), 10, |i| v[i]), vec![2, 4, 0, 6]);
        assert!(top_k(3, 2, |_| f64::NAN).is_empty());
    }

    #[test]
    fn top_k_is_sorted_and_breaks_ties_by_index() {
        let v = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k(v.len(), 3, |i| v[i]), vec![1, 3, 4]);
        assert_eq!(top_k(v.len(), 10, |i| -v[i]), vec![2, 0, 4, 1, 3]);
        assert!(top_k(v.len(), 0, |i| v[i]).is_empty());
    }
}
