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
    /// `docs × queries × layers`: the same, split by layer.
    pub per_layer: Vec<f64>,
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

    /// The per-layer split of [`Scores::score`].
    pub fn layer_scores(&self, d: usize, q: usize) -> &[f64] {
        let l = self.layers.len();
        let o = (d * self.queries + q) * l;
        &self.per_layer[o..o + l]
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
    per_layer: Vec<f64>,
    row_weights: Vec<Vec<(u32, f64)>>,
    nonfinite_logged: usize,
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
        self.per_layer
            .extend(std::iter::repeat_n(0.0, self.nq * self.nl));
        self.row_weights.push(Vec::new());
        d
    }

    /// `scores`: `rows × (layers · queries)`, layer-major within a row; `nats`: per query, the
    /// window's `−log p(completion | prompt)`; `norms`: each row's
    /// norm in the scoring metric when rows are normalised. A row with a non-finite score or
    /// norm (a sketch that holds NaN or ∞, or overflows in the matmul) adds nothing — not even
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
            let norm_ok = norms.is_none_or(|n| n[r].is_finite());
            if !norm_ok || row.iter().any(|v| !v.is_finite()) {
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
            }
            let d = self.doc(chunk.doc_ids[r], &chunk.sources[r]);
            let info = &mut self.docs[d];
            info.rows += 1;
            info.tokens += u64::from(chunk.tokens[r]);
            let mut w = if lr_weighting {
                chunk.learning_rates[r]
            } else {
                1.0
            };
            let weights = &mut self.row_weights[d];
            match weights.iter_mut().find(|(x, _)| *x == window) {
                Some((_, sum)) => *sum += w,
                None => weights.push((window, w)),
            }
            if let Some(norms) = norms {
                // A zero row scores zero whatever it is divided by.
                let n = f64::from(norms[r]);
                w = if n > 0.0 { w / n } else { 0.0 };
            }
            for l in 0..nl {
                for q in 0..nq {
                    let v = w * f64::from(row[l * nq + q]);
                    self.per_layer[(d * nq + q) * nl + l] += v;
                    self.totals[d * nq + q] += v;
                    self.per_nat[d * nq + q] += v / nats[q];
                }
            }
        }
        bad
    }
}

/// Scores every row of the store's windows that `prepared` covers against the prepared
/// queries, on `device`. `progress` is called with the rows scored so far after each shard.
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
    let nq = prepared.first().map_or(0, PreparedQueries::len);
    if nq == 0 || prepared.iter().any(|p| p.len() != nq) {
        return Err(AnalyzerError::argument(
            "queries",
            "no queries, or a different number per window",
        ));
    }
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
    let device = device.clone().inner();
    // Per window and layer: Qᵀ as a `[k_g·k_a, queries]` tensor on the device, and the row
    // metric as a `[k_g·k_a, 1]` column when rows are normalised.
    let mut queries: HashMap<u32, Vec<Tensor<2>>> = HashMap::new();
    let mut metrics: HashMap<u32, Vec<Tensor<2>>> = HashMap::new();
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
        let mut per_layer = Vec::with_capacity(nl);
        let mut m = Vec::with_capacity(nl);
        for (l, spec) in run.layers.iter().enumerate() {
            let kk = spec.sketch_len();
            let layer = |what: &str| format!("window {}: {what} of layer {}", p.window, spec.name);
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
    let all_layers: Vec<usize> = (0..nl).collect();
    let mut skipped = 0u64;
    let shards: Vec<&ShardEntry> = store
        .manifest()
        .shards
        .iter()
        .filter(|s| {
            let keep = queries.contains_key(&s.window);
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
        per_layer: Vec::new(),
        row_weights: Vec::new(),
        nonfinite_logged: 0,
    };
    let mut stats = ScoreStats {
        skipped_rows: skipped,
        threads: config.decode_threads_or_default(),
        ..ScoreStats::default()
    };
    let mut score_seconds = 0.0;
    let decode = for_each_shard(
        store,
        &shards,
        &all_layers,
        config.decode_threads_or_default(),
        |shard, chunks| {
            let t = Instant::now();
            let q = &queries[&shard.window];
            for mut chunk in chunks {
                if chunk.is_empty() {
                    continue;
                }
                let rows = chunk.len();
                let metric = metrics.get(&shard.window);
                let mut parts = Vec::with_capacity(nl);
                let mut norm2: Option<Tensor<2>> = None;
                for (l, spec) in run.layers.iter().enumerate() {
                    let kk = spec.sketch_len();
                    // Moved, not copied: the chunk's sketches go to the device as they are.
                    let values = std::mem::take(&mut chunk.sketches[l]);
                    let k = Tensor::<2>::from_data(TensorData::new(values, [rows, kk]), &device);
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
        per_layer: acc.per_layer,
        row_weights: acc.row_weights,
        stats,
    })
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
