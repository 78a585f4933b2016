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
    /// Seconds the re-ranking took (0 for `n = 0`): measured when timed, else the full pass's
    /// seconds per exact gradient times this one's gradients.
    pub seconds: f64,
    /// Whether `seconds` was measured on a pass of its own.
    pub timed: bool,
    /// Exact gradients (document × window pairs) the re-ranking computes.
    pub gradients: usize,
}

/// What [`rerank_overlaps`] measures: each `n` of `ns` (candidates per query and side) at
/// each top-`k` of `ks`; with `timed`, every `n` is a re-ranking pass of its own.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Candidates per query and side.
    pub ns: Vec<usize>,
    /// Depths of the overlap.
    pub ks: Vec<usize>,
    /// Time a pass per `n` (else read every `n` from the full pass).
    pub timed: bool,
}

/// Scores `queries` on the sketch `store` with `config`, re-ranks with each of `ns`, and
/// compares each query's top `ks` with the exact ranking of the same quantity over the whole
/// corpus — the re-ranking with every document a candidate, which the analyzer's tests hold
/// equal to autodiff and dense solves. With plain scores, `check` (`[query][document]` over
/// `ids`: a full-rank store's exact scores at the same checkpoint and factors) must agree with
/// that reference: the largest difference relative to the query's largest score is returned
/// with the rows. With `timed`, each `n` is a re-ranking pass of its own (timed, and checked to
/// pick the candidates of the full pass restricted to `n`); otherwise every `n` is read from the
/// full pass ([`influence_analyzer::Reranked::restrict`]), which gives the same scores.
pub fn rerank_overlaps(
    task: &GptTask,
    store: &Store,
    queries: &[influence_analyzer::Query],
    config: &ScoreConfig,
    check: Option<(&[u64], &[Vec<f64>])>,
    sweep: &Sweep,
) -> Result<(Vec<RerankRow>, Option<f64>)> {
    let Sweep { ns, ks, timed } = sweep;
    let timed = *timed;
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
        let n = n.min(n_docs);
        let t = Instant::now();
        let r = match n {
            0 => None,
            // A pass of its own, timed; checked against the restriction of the full one.
            _ if timed => {
                let r = rerank(task, store, &a, &corpus, config, n, &device, &mut |_, _| {})?;
                let cut = full.restrict(s, n)?;
                if r.docs != cut.docs {
                    return Err(anyhow!(
                        "n = {n}: the restricted re-ranking has other candidates"
                    ));
                }
                Some(r)
            }
            _ => Some(full.restrict(s, n)?),
        };
        let seconds = if timed || n == 0 {
            t.elapsed().as_secs_f64()
        } else {
            // Not run: the full pass's cost per exact gradient times this pass's gradients.
            r.as_ref().map_or(0.0, |r| {
                full_seconds * r.stats.gradients as f64 / full.stats.gradients.max(1) as f64
            })
        };
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
            timed: timed || n == 0,
            gradients: r.as_ref().map_or(0, |r| r.stats.gradients),
        });
    }
    rows.push(RerankRow {
        n: n_docs,
        share: 1.0,
        overlap: ks.iter().map(|&k| (k, 1.0)).collect(),
        documents: n_docs,
        seconds: full_seconds,
        timed: true,
        gradients: full.stats.gradients,
    });
    Ok((rows, checked))
}

/// The overlap-vs-N measurement on a finished run (the main command's `runs/tiny-gpt`, say):
/// its training-time store over all its windows, each query's exact ranking over the whole
/// corpus from one re-ranking pass with every document a candidate, and every `N` of `shares`
/// (of the corpus, per query and side) read from it. Plain and normalised-row scores; the rows
/// go to `out/rerank-run.json`, and the returned markdown table to `out/rerank-run.md`.
pub fn run_overlaps(
    run_dir: &std::path::Path,
    queries: &[influence_analyzer::Query],
    shares: &[f64],
    out: &std::path::Path,
    log: &dyn Fn(String),
) -> Result<String> {
    use anyhow::Context;
    let task = GptTask::from_run_dir(run_dir)?;
    let store_dir = run_dir.join("store");
    let store = Store::open(&store_dir).with_context(|| format!("{}", store_dir.display()))?;
    let corpus = task.corpus().map_err(|e| anyhow!("the corpus: {e}"))?.len();
    let ns: Vec<usize> = shares
        .iter()
        .map(|&s| ((s * corpus as f64).round() as usize).max(1))
        .collect();
    let ks = [10, 50, 100];
    let mut table = String::from(
        "| N per query and side (share of the corpus) | plain: top-10 / top-50 / top-100 | \
         normalised rows: top-10 / top-50 / top-100 | documents re-scored | exact gradients | \
         seconds (normalised) |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let mut all = Vec::new();
    let plain = ScoreConfig::default().normalize(false);
    let normalised = ScoreConfig::default();
    for config in [&plain, &normalised] {
        let t = Instant::now();
        let sweep = Sweep {
            ns: ns.clone(),
            ks: ks.to_vec(),
            timed: false,
        };
        let (rows, _) = rerank_overlaps(&task, &store, queries, config, None, &sweep)?;
        log(format!(
            "{} scores: overlap table in {:.0} s",
            if config.normalize {
                "normalised"
            } else {
                "plain"
            },
            t.elapsed().as_secs_f64()
        ));
        all.push(rows);
    }
    let fmt = |r: &RerankRow| {
        r.overlap
            .iter()
            .map(|(_, v)| format!("{v:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (p, n) in all[0].iter().zip(&all[1]) {
        let seconds = if n.timed {
            format!("{:.0}", n.seconds)
        } else {
            format!("≈ {:.0}", n.seconds)
        };
        table.push_str(&format!(
            "| {} ({:.2} %) | {} | {} | {} | {} | {seconds} |\n",
            n.n,
            100.0 * n.share,
            fmt(p),
            fmt(n),
            n.documents,
            n.gradients,
        ));
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let json = out.join("rerank-run.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({"plain": all[0], "normalised": all[1]}))?,
    )
    .with_context(|| format!("{}", json.display()))?;
    let md = out.join("rerank-run.md");
    std::fs::write(&md, &table).with_context(|| format!("{}", md.display()))?;
    Ok(table)
}
