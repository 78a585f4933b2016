//! How much of the exact top of each ranking the sketches find, with and without exact
//! re-ranking of their candidates ([`influence_analyzer::rerank()`]): issue 12's overlap-vs-N
//! measurement, run by `validate` on a post-hoc sketch store: the reference is the exact score of
//! every document (the re-ranking with all of them candidates), checked against the full-rank
//! store of the same checkpoint and factors.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Result, anyhow};
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
/// compares each query's top `ks` with the exact ranking of the same quantity over the whole
/// corpus — the re-ranking with every document a candidate, which the analyzer's tests hold
/// equal to autodiff and dense solves. With plain scores, `check` (`[query][document]` over
/// `ids`: a full-rank store's exact scores at the same checkpoint and factors) must agree with
/// that reference: the largest difference relative to the query's largest score is returned
/// with the rows.
pub fn rerank_overlaps(
    task: &GptTask,
    store: &Store,
    queries: &[influence_analyzer::Query],
    config: &ScoreConfig,
    check: Option<(&[u64], &[Vec<f64>])>,
    ns: &[usize],
    ks: &[usize],
) -> Result<(Vec<RerankRow>, Option<f64>)> {
    let device = Device::flex();
    let a = analyze(task, store, queries, config, &device, &mut |_| {})?;
    let s = &a.scores;
    let n_docs = s.docs.len();
    let corpus = task.corpus().map_err(|e| anyhow!("the corpus: {e}"))?;
    let t = Instant::now();
    let full = rerank(
        task,
        store,
        &a,
        &corpus,
        config,
        n_docs,
        &device,
        &mut |_, _| {},
    )?;
    let full_seconds = t.elapsed().as_secs_f64();
    let exact: Vec<Vec<f64>> = (0..queries.len())
        .map(|q| {
            (0..n_docs)
                .map(|d| {
                    full.exact_score(d, q)
                        .ok_or_else(|| anyhow!("document {} was not re-scored", s.docs[d].id))
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let checked = match check {
        Some((ids, want)) if !config.normalize => {
            let pos: HashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
            let mut worst = 0.0f64;
            for (q, row) in exact.iter().enumerate() {
                let scale = want[q]
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.abs()))
                    .max(1e-30);
                for (d, v) in row.iter().enumerate() {
                    let i = pos
                        .get(&s.docs[d].id)
                        .ok_or_else(|| anyhow!("document {} is not in the check", s.docs[d].id))?;
                    worst = worst.max((v - want[q][*i]).abs() / scale);
                }
            }
            Some(worst)
        }
        _ => None,
    };
    let overlap = |q: usize, k: usize, list: &[usize]| -> f64 {
        let want: Vec<usize> = top_k(n_docs, k, |d| exact[q][d]);
        want.iter().filter(|d| list.contains(d)).count() as f64 / k.max(1) as f64
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
            share: n as f64 / n_docs.max(1) as f64,
            overlap,
            documents: r.as_ref().map_or(0, |r| r.stats.documents),
            seconds,
        });
    }
    rows.push(RerankRow {
        n: n_docs,
        share: 1.0,
        overlap: ks.iter().map(|&k| (k, 1.0)).collect(),
        documents: n_docs,
        seconds: full_seconds,
    });
    Ok((rows, checked))
}
