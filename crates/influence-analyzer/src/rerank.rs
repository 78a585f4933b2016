//! Exact re-ranking: the top and bottom candidates of each query's sketch ranking, scored again
//! with their exact per-document gradients.
//!
//! A sketch score is an estimate; users act on the top of a ranking. For each query,
//! [`rerank`] takes the `n` highest and `n` lowest documents by sketch score, deduplicates the
//! candidates of all queries, and for every window in which a candidate has rows computes its
//! exact gradient at that window's checkpoint (one forward/backward pass of the documents through
//! [`Task::document_batches`], the post-hoc probe) and its score against the query gradient
//! preconditioned exactly as the sketch scorer's query is (`Q̃` of [`PreparedQueries`]):
//!
//! `I_exact(q, n) = Σ_w  W(n, w) · ⟨Q̃_w, G_n(θ_w)⟩ / N(n, w)`,
//!
//! with `W(n, w)` the summed weights of the document's rows in window `w` (1 a row, or the
//! learning rate under [`ScoreConfig::lr_weighting`]) — the same weighting as the sketch score —
//! and `N(n, w) = √(Σ_ℓ ⟨G_ℓ, (F_ℓ + λ)⁻¹ G_ℓ⟩)` the gradient's norm in the scoring metric when
//! rows are normalised ([`ScoreConfig::normalize`]; 1 otherwise). Each document's gradient is
//! computed once per window whatever the number of queries.

use std::collections::HashMap;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use influence_ekfac::Preconditioner;
use influence_hook::{FitLabels, FitLoss};
use influence_store::Store;
use serde::Serialize;

use crate::AnalyzerError;
use crate::analyze::Analysis;
use crate::config::ScoreConfig;
use crate::query::load_window_model;
use crate::task::{Document, Task};

/// What a re-ranking pass did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RerankStats {
    /// Candidates per query and side (top `n`, bottom `n`).
    pub per_side: usize,
    /// Distinct documents re-scored (the candidates of all queries, deduplicated).
    pub documents: usize,
    /// Windows whose checkpoints were used.
    pub windows: usize,
    /// Exact gradients computed (document × window pairs).
    pub gradients: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl RerankStats {
    /// The cost line, e.g. `re-ranked 2,000 documents over 3 windows in 41 s`.
    pub fn summary(&self) -> String {
        format!(
            "re-ranked {} documents ({} exact gradients) over {} window{} in {:.1} s",
            thousands(self.documents),
            thousands(self.gradients),
            self.windows,
            if self.windows == 1 { "" } else { "s" },
            self.seconds
        )
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Exact scores of each query's sketch candidates ([`rerank`]).
#[derive(Clone, Debug)]
pub struct Reranked {
    /// The deduplicated candidates: indices into [`crate::Scores::docs`].
    pub docs: Vec<usize>,
    /// `docs × queries`: each candidate's exact score for every query (computed for all
    /// queries at once; a candidate of one query is scored for all).
    pub exact: Vec<f64>,
    /// `docs × queries`: the exact influence per nat, each window's part divided by the
    /// query's nats at that window ([`crate::Scores::per_nat`]).
    pub exact_per_nat: Vec<f64>,
    /// Per query: its own candidates (positions into `docs`), by exact score, highest first.
    pub ranking: Vec<Vec<usize>>,
    /// Counters.
    pub stats: RerankStats,
    queries: usize,
    position: HashMap<usize, usize>,
    /// The windows the analysis scored (those a re-score computes gradients in).
    scored: Vec<u32>,
}

impl Reranked {
    /// The exact score of document `d` (index into [`crate::Scores::docs`]) for query `q`, if
    /// it was a candidate of any query.
    pub fn exact_score(&self, d: usize, q: usize) -> Option<f64> {
        self.position
            .get(&d)
            .map(|&p| self.exact[p * self.queries + q])
    }

    /// The exact influence per nat of document `d` for query `q`, if it was a candidate.
    pub fn exact_score_per_nat(&self, d: usize, q: usize) -> Option<f64> {
        self.position
            .get(&d)
            .map(|&p| self.exact_per_nat[p * self.queries + q])
    }

    /// Query `q`'s `k` candidates of highest exact score, best first (indices into
    /// [`crate::Scores::docs`]).
    pub fn top(&self, q: usize, k: usize) -> Vec<usize> {
        self.ranking[q]
            .iter()
            .take(k)
            .map(|&p| self.docs[p])
            .collect()
    }

    /// Query `q`'s top `k` for lists longer than the candidates (an answer search over the top
    /// 500, say): its candidates of highest exact score first — at most as many as were
    /// re-ranked per side — then the rest in sketch order.
    pub fn merged_top(&self, scores: &crate::Scores, q: usize, k: usize) -> Vec<usize> {
        self.merged(
            scores.top(q, k + self.stats.per_side),
            self.top(q, self.stats.per_side),
            k,
        )
    }

    /// [`Reranked::merged_top`] from the bottom: lowest exact scores first, then sketch order.
    pub fn merged_bottom(&self, scores: &crate::Scores, q: usize, k: usize) -> Vec<usize> {
        self.merged(
            scores.bottom(q, k + self.stats.per_side),
            self.bottom(q, self.stats.per_side),
            k,
        )
    }

    fn merged(&self, sketch: Vec<usize>, exact: Vec<usize>, k: usize) -> Vec<usize> {
        let mut out: Vec<usize> = exact.into_iter().take(k).collect();
        for d in sketch {
            if out.len() >= k {
                break;
            }
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The re-ranking with `n` candidates per query and side, taken from this one's exact
    /// scores without computing a gradient: equal to [`rerank`] with `n` on the same analysis
    /// (exact scores do not depend on which other documents are candidates), so one pass with
    /// a large `n` serves every smaller one — to read a ranking at several depths, or to measure
    /// overlap against `n`. `scores` must be the scores this re-ranking was built from; `n` must
    /// be at least 1 and at most [`RerankStats::per_side`]. The stats count what a pass at `n`
    /// would compute (documents, windows and gradients from `scores`' row weights); `seconds`
    /// is the time of this call.
    pub fn restrict(&self, scores: &crate::Scores, n: usize) -> Result<Reranked, AnalyzerError> {
        let start = Instant::now();
        if n == 0 || n > self.stats.per_side {
            return Err(AnalyzerError::argument(
                "n",
                format!(
                    "restricting a re-ranking of {} candidates per side needs 1 ≤ n ≤ {}, not {n}",
                    self.stats.per_side, self.stats.per_side
                ),
            ));
        }
        let nq = self.queries;
        if scores.queries != nq || scores.docs.len() < self.docs.iter().max().map_or(0, |d| d + 1) {
            return Err(AnalyzerError::Mismatch(
                "restrict: the scores are not the ones this re-ranking was built from".into(),
            ));
        }
        let cands = candidates(scores, nq, n);
        let docs = &cands.docs;
        let mut exact = Vec::with_capacity(docs.len() * nq);
        let mut exact_per_nat = Vec::with_capacity(docs.len() * nq);
        let mut windows = std::collections::BTreeSet::new();
        let mut gradients = 0;
        for &d in docs {
            let p = *self.position.get(&d).ok_or_else(|| {
                AnalyzerError::Mismatch(format!(
                    "restrict: document {} is a candidate at n = {n} but was not re-scored; \
                     are these the scores the re-ranking was built from?",
                    scores.docs[d].id
                ))
            })?;
            exact.extend_from_slice(&self.exact[p * nq..(p + 1) * nq]);
            exact_per_nat.extend_from_slice(&self.exact_per_nat[p * nq..(p + 1) * nq]);
            for &(w, _) in &scores.row_weights[d] {
                if self.scored.contains(&w) {
                    windows.insert(w);
                    gradients += 1;
                }
            }
        }
        Ok(Reranked::assemble(
            cands,
            exact,
            exact_per_nat,
            RerankStats {
                per_side: n,
                documents: 0,
                windows: windows.len(),
                gradients,
                seconds: start.elapsed().as_secs_f64(),
            },
            self.scored.clone(),
        ))
    }

    /// The re-ranking of `candidates` with their exact scores: each query's own candidates
    /// ranked by exact score, and the documents count of `stats` set.
    fn assemble(
        candidates: Candidates,
        exact: Vec<f64>,
        exact_per_nat: Vec<f64>,
        mut stats: RerankStats,
        scored: Vec<u32>,
    ) -> Reranked {
        let Candidates {
            docs,
            position,
            own,
        } = candidates;
        let queries = own.len();
        let ranking = rank_by_exact(own, &docs, &exact, queries);
        stats.documents = docs.len();
        Reranked {
            docs,
            exact,
            exact_per_nat,
            ranking,
            stats,
            queries,
            position,
            scored,
        }
    }

    /// Query `q`'s `k` candidates of lowest exact score, most negative first.
    pub fn bottom(&self, q: usize, k: usize) -> Vec<usize> {
        self.ranking[q]
            .iter()
            .rev()
            .take(k)
            .map(|&p| self.docs[p])
            .collect()
    }
}

/// Re-ranks each query's top `n` and bottom `n` documents of `analysis` by their exact score
/// (module docs). `corpus` must hold every candidate (matched by id; [`Task::corpus`] normally);
/// `config` must be the one `analysis` was scored with. `progress` is called with the exact
/// gradients done and their total.
#[allow(clippy::too_many_arguments)]
pub fn rerank<T: Task>(
    task: &T,
    store: &Store,
    analysis: &Analysis,
    corpus: &[Document],
    config: &ScoreConfig,
    n: usize,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Reranked, AnalyzerError> {
    let start = Instant::now();
    if n == 0 {
        return Err(AnalyzerError::argument(
            "rerank",
            "the number of candidates per query and side must be at least 1",
        ));
    }
    let scores = &analysis.scores;
    let nq = analysis.queries.len();
    if scores.queries != nq || analysis.prepared.iter().any(|p| p.len() != nq) {
        return Err(AnalyzerError::Mismatch(
            "the analysis's scores and prepared queries disagree on the number of queries".into(),
        ));
    }
    let cands = candidates(scores, nq, n);
    let docs = &cands.docs;
    let by_id: HashMap<u64, &Document> = corpus.iter().map(|d| (d.id, d)).collect();
    let documents: Vec<&Document> = docs
        .iter()
        .map(|&d| {
            let id = scores.docs[d].id;
            by_id.get(&id).copied().ok_or_else(|| {
                AnalyzerError::argument(
                    "corpus",
                    format!("document {id} of the store is not in the task's corpus"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    // Per window: the candidates with rows in it and their row weights.
    let mut per_window: Vec<Vec<(usize, f64)>> = vec![Vec::new(); analysis.prepared.len()];
    for (p, &d) in docs.iter().enumerate() {
        for &(w, weight) in &scores.row_weights[d] {
            if let Some(i) = analysis.prepared.iter().position(|x| x.window == w) {
                per_window[i].push((p, weight));
            }
        }
    }
    let total: usize = per_window.iter().map(Vec::len).sum();
    let mut exact = vec![0.0f64; docs.len() * nq];
    let mut exact_per_nat = vec![0.0f64; docs.len() * nq];
    let mut done = 0;
    let run = store.run();
    let inner = device.clone().inner();
    let autodiff = device.clone().autodiff();
    for (prepared, members) in analysis.prepared.iter().zip(&per_window) {
        if members.is_empty() {
            continue;
        }
        let span = tracing::info_span!("rerank", window = prepared.window);
        let _enter = span.enter();
        let (model, probe) = load_window_model(task, store, prepared.window, device)?;
        let factors = store.factors(prepared.window)?;
        // Per probe layer: its store index, Q̃ᵀ `[D, queries]` on the device, and (normalised
        // rows) the window's preconditioner.
        let mut layers = Vec::new();
        for spec in probe.layers() {
            let l = run
                .layers
                .iter()
                .position(|s| s.name == spec.name)
                .ok_or_else(|| {
                    AnalyzerError::Mismatch(format!("layer {} is not in the store", spec.name))
                })?;
            let dim = spec.d_out * spec.d_in_aug();
            let q = prepared
                .preconditioned
                .get(l)
                .filter(|v| v.len() == nq * dim)
                .ok_or_else(|| {
                    AnalyzerError::Mismatch(format!(
                        "window {}: no preconditioned query gradients of {} values for layer {}",
                        prepared.window,
                        nq * dim,
                        spec.name
                    ))
                })?;
            let qt =
                Tensor::<2>::from_data(TensorData::new(q.clone(), [nq, dim]), &inner).transpose();
            let pre = if config.normalize {
                match factors.layers.iter().find(|f| f.name == spec.name) {
                    Some(lf) => Some(Preconditioner::new(lf, config.strategy, config.damping)?),
                    // A store without factors, scored under identity ([`prepare_with`]).
                    None if config.strategy == influence_ekfac::Strategy::Identity => {
                        Some(Preconditioner::identity(spec.d_out, spec.d_in_aug()))
                    }
                    None => {
                        return Err(AnalyzerError::Mismatch(format!(
                            "window {} has no factors for layer {}",
                            prepared.window, spec.name
                        )));
                    }
                }
            } else {
                None
            };
            layers.push((dim, qt, pre));
        }
        let weight: HashMap<u64, (usize, f64)> = members
            .iter()
            .map(|&(p, w)| (documents[p].id, (p, w)))
            .collect();
        let batch_docs: Vec<Document> =
            members.iter().map(|&(p, _)| documents[p].clone()).collect();
        let batches = task
            .document_batches(&batch_docs, &autodiff)
            .map_err(AnalyzerError::task("batching the re-ranked documents"))?;
        let scale_of = |s: &influence_hook::StepBatch| s.loss_scale(task.loss_reduction());
        let mut seen = std::collections::HashSet::new();
        for (batch, step) in batches {
            probe.arm();
            let mut grads = model.fit_loss(&batch, FitLabels::Empirical).backward();
            let dg = probe.document_gradients(&mut grads, &step, scale_of(&step))?;
            let rows = dg.docs.len();
            let mut total_scores: Option<Tensor<2>> = None;
            let mut norm2 = vec![0.0f64; rows];
            for ((dim, qt, pre), g) in layers.iter().zip(dg.grads) {
                if let Some(pre) = pre {
                    for (r, n2) in norm2.iter_mut().enumerate() {
                        let row: Vec<f64> = g[r * dim..(r + 1) * dim]
                            .iter()
                            .map(|&v| f64::from(v))
                            .collect();
                        *n2 += pre.quadratic(&row)?;
                    }
                }
                let s = Tensor::<2>::from_data(TensorData::new(g, [rows, *dim]), &inner)
                    .matmul(qt.clone());
                total_scores = Some(match total_scores {
                    Some(t) => t + s,
                    None => s,
                });
            }
            let values: Vec<f32> = match total_scores {
                Some(t) => t
                    .try_into_vec_as::<f32>()
                    .map_err(|e| AnalyzerError::Device(format!("reading exact scores: {e:?}")))?,
                None => return Err(AnalyzerError::Mismatch("no tracked layer".into())),
            };
            for r in 0..rows {
                let id = step.docs[dg.docs[r]].id;
                if !seen.insert(id) {
                    return Err(AnalyzerError::Mismatch(format!(
                        "the task batched document {id} twice in window {}",
                        prepared.window
                    )));
                }
                let Some(&(p, w)) = weight.get(&id) else {
                    return Err(AnalyzerError::Mismatch(format!(
                        "the task batched document {id}, which was not asked for"
                    )));
                };
                let w = if config.normalize {
                    let n = norm2[r].sqrt();
                    if n > 0.0 { w / n } else { 0.0 }
                } else {
                    w
                };
                for q in 0..nq {
                    let v = w * f64::from(values[r * nq + q]);
                    exact[p * nq + q] += v;
                    exact_per_nat[p * nq + q] += v / prepared.nats[q];
                }
                done += 1;
                progress(done, total);
            }
        }
        if let Some(&(p, _)) = members
            .iter()
            .find(|(p, _)| !seen.contains(&documents[*p].id))
        {
            return Err(AnalyzerError::Mismatch(format!(
                "the task's batches of the re-ranked documents left out document {}",
                documents[p].id
            )));
        }
    }
    let stats = RerankStats {
        per_side: n,
        documents: 0,
        windows: per_window.iter().filter(|m| !m.is_empty()).count(),
        gradients: done,
        seconds: start.elapsed().as_secs_f64(),
    };
    let scored = analysis.prepared.iter().map(|p| p.window).collect();
    let reranked = Reranked::assemble(cands, exact, exact_per_nat, stats, scored);
    tracing::info!("{}", reranked.stats.summary());
    Ok(reranked)
}

/// The candidates of a re-ranking: the distinct documents (indices into
/// [`crate::Scores::docs`]), each one's position among them, and each query's own candidates
/// (positions).
struct Candidates {
    docs: Vec<usize>,
    position: HashMap<usize, usize>,
    own: Vec<Vec<usize>>,
}

/// Per query its top and bottom `n` by sketch score, deduplicated within the query and across
/// queries: the distinct candidates, each one's position among them, and each query's own
/// candidates (positions).
fn candidates(scores: &crate::Scores, nq: usize, n: usize) -> Candidates {
    let mut docs: Vec<usize> = Vec::new();
    let mut position: HashMap<usize, usize> = HashMap::new();
    let mut own: Vec<Vec<usize>> = Vec::with_capacity(nq);
    for q in 0..nq {
        let mut mine = Vec::new();
        for d in scores.top(q, n).into_iter().chain(scores.bottom(q, n)) {
            let p = *position.entry(d).or_insert_with(|| {
                docs.push(d);
                docs.len() - 1
            });
            if !mine.contains(&p) {
                mine.push(p);
            }
        }
        own.push(mine);
    }
    Candidates {
        docs,
        position,
        own,
    }
}

/// Each query's own candidates by exact score, highest first (ties by document index); a
/// non-finite exact score is left out of the ranking (as the sketch scorer leaves its rows out).
fn rank_by_exact(
    own: Vec<Vec<usize>>,
    docs: &[usize],
    exact: &[f64],
    nq: usize,
) -> Vec<Vec<usize>> {
    own.into_iter()
        .enumerate()
        .map(|(q, mut mine)| {
            mine.retain(|&p| exact[p * nq + q].is_finite());
            mine.sort_by(|&a, &b| {
                exact[b * nq + q]
                    .total_cmp(&exact[a * nq + q])
                    .then(docs[a].cmp(&docs[b]))
            });
            mine
        })
        .collect()
}
