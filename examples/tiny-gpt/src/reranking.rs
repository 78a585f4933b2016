//! How much of the exact top of each ranking the sketches find, with and without exact
//! re-ranking of their candidates ([`influence_analyzer::rerank()`]): issue 12's overlap-vs-N
//! measurement, run by `validate` on a post-hoc sketch store against the full-rank store of the
//! same checkpoint (the same factors, so the re-ranked exact score is the reference's quantity).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, anyhow, ensure};
use burn::tensor::Device;
use influence_analyzer::{ScoreConfig, Task, analyze, rerank, scorer::top_k};
use influence_store::Store;
use serde::Serialize;

use crate::task::GptTask;

/// Overlap of one re-ranking setting with the exact ranking, mean over queries.
#[derive(Clone, Debug, Serialize)]
pub struct RerankRow {
    /// Candidates re-ranked per query and side (0: the sketch ranking alone).
    pub n: usize,
    /// `n` as a share of the corpus.
    pub share: f64,
    /// Per `k` of the study: the mean top-`k` overlap with the exact ranking.
    pub overlap: Vec<(usize, f64)>,
    /// Distinct documents re-scored.
    pub documents: usize,
    /// Seconds the re-ranking took (0 for `n = 0`).
    pub seconds: f64,
}

/// Scores `queries` on the sketch `store` with `config`, re-ranks with each of `ns`, and
/// compares each query's top `ks` with those of `exact` (`[query][document]` over `ids`, the
/// exact scores of the same quantity).
pub fn rerank_overlaps(
    task: &GptTask,
    store: &Store,
    queries: &[influence_analyzer::Query],
    config: &ScoreConfig,
    (ids, exact): (&[u64], &[Vec<f64>]),
    ns: &[usize],
    ks: &[usize],
) -> Result<Vec<RerankRow>> {
    let device = Device::flex();
    let a = analyze(task, store, queries, config, &device, &mut |_| {})?;
    let s = &a.scores;
    ensure!(
        s.docs.len() == ids.len(),
        "the sketch store has {} documents, the reference {}",
        s.docs.len(),
        ids.len()
    );
    let pos: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    // Reference position of each scored document.
    let refpos: Vec<usize> = s
        .docs
        .iter()
        .map(|d| {
            pos.get(&d.id)
                .copied()
                .ok_or_else(|| anyhow!("document {} is not in the reference", d.id))
        })
        .collect::<Result<_>>()?;
    let corpus = task.corpus().map_err(|e| anyhow!("the corpus: {e}"))?;
    let overlap = |q: usize, k: usize, list: &[usize]| -> f64 {
        let want: Vec<usize> = top_k(ids.len(), k, |i| exact[q][i]);
        let got: Vec<usize> = list.iter().map(|&d| refpos[d]).collect();
        want.iter().filter(|i| got.contains(i)).count() as f64 / k.max(1) as f64
    };
    let mut rows = Vec::new();
    for &n in std::iter::once(&0).chain(ns) {
        let t = Instant::now();
        let r = if n > 0 {
            Some(rerank(
                task,
                store,
                &a,
                &corpus,
                config,
                n,
                &device,
                &mut |_, _| {},
            )?)
        } else {
            None
        };
        let seconds = t.elapsed().as_secs_f64();
        let overlap = ks
            .iter()
            .map(|&k| {
                let mean = (0..queries.len())
                    .map(|q| {
                        let list = match &r {
                            Some(r) => r.merged_top(s, q, k),
                            None => s.top(q, k),
                        };
                        overlap(q, k, &list)
                    })
                    .sum::<f64>()
                    / queries.len().max(1) as f64;
                (k, mean)
            })
            .collect();
        rows.push(RerankRow {
            n,
            share: n as f64 / ids.len().max(1) as f64,
            overlap,
            documents: r.as_ref().map_or(0, |r| r.stats.documents),
            seconds,
        });
    }
    Ok(rows)
}
