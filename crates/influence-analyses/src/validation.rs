//! Statistics of the validation study (`docs/accuracy.md`): Pearson and Spearman correlation of
//! two vectors, top-k overlap, a bootstrap confidence interval of a mean, and the linear
//! datamodeling score (LDS) of Park et al. 2023 (TRAK), as kronfluence computes it.
//!
//! The LDS of a query is the Spearman correlation, over `M` random training subsets, between the
//! change an influence method predicts for the query's measurement (the sum of the scores of the
//! kept documents) and the measurement after actually retraining on each subset; the study
//! reports its mean over queries with a bootstrap interval over queries.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result, all_finite, non_empty, same_len};
use crate::sources::ranking_by_score;
use crate::stats::mean;

fn check_pair(a: &[f64], b: &[f64]) -> Result<()> {
    same_len(|| "b".into(), b.len(), || "a".into(), a.len())?;
    if a.len() < 2 {
        return Err(AnalysisError::TooFew {
            arg: "a".into(),
            got: a.len(),
            need: 2,
            what: "paired values",
        });
    }
    all_finite(|| "a".into(), a)?;
    all_finite(|| "b".into(), b)
}

/// Pearson correlation of `a` and `b`; errors when either is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Result<f64> {
    check_pair(a, b)?;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    for (arg, s) in [("a", saa), ("b", sbb)] {
        if s == 0.0 {
            return Err(AnalysisError::Degenerate {
                arg: arg.into(),
                reason: "constant values have no correlation",
            });
        }
    }
    Ok((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks from 1, ties sharing their average rank.
pub fn average_ranks(xs: &[f64]) -> Vec<f64> {
    let order = ranking_by_score(xs, false);
    let mut ranks = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation (Pearson correlation of average ranks); errors when either input is
/// constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Result<f64> {
    check_pair(a, b)?;
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Fraction of the `k` highest of `a` that are among the `k` highest of `b` (ties broken by
/// index, as [`ranking_by_score`] does).
pub fn top_k_overlap(a: &[f64], b: &[f64], k: usize) -> Result<f64> {
    check_pair(a, b)?;
    if k == 0 || k > a.len() {
        return Err(AnalysisError::Invalid {
            arg: "k".into(),
            reason: format!("must be in 1..={}, got {k}", a.len()),
        });
    }
    let top_b: std::collections::HashSet<usize> =
        ranking_by_score(b, true).into_iter().take(k).collect();
    let hits = ranking_by_score(a, true)
        .into_iter()
        .take(k)
        .filter(|i| top_b.contains(i))
        .count();
    Ok(hits as f64 / k as f64)
}

/// A mean with a two-sided percentile-bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    /// The sample mean.
    pub mean: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
    /// Values averaged.
    pub n: usize,
}

/// Resamples in [`bootstrap_mean_ci`] as the study calls it.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Mean of `values` with a `level` (e.g. 0.95) percentile-bootstrap interval from `resamples`
/// resamples with replacement, drawn from `seed` (the same inputs give the same interval).
pub fn bootstrap_mean_ci(
    values: &[f64],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<MeanCi> {
    non_empty(|| "values".into(), values.len())?;
    all_finite(|| "values".into(), values)?;
    if !(level > 0.0 && level < 1.0) {
        return Err(AnalysisError::Invalid {
            arg: "level".into(),
            reason: format!("must be in (0, 1), got {level}"),
        });
    }
    if resamples == 0 {
        return Err(AnalysisError::Invalid {
            arg: "resamples".into(),
            reason: "must be at least 1".into(),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    let tail = (1.0 - level) / 2.0;
    Ok(MeanCi {
        mean: mean(values),
        low: at(tail),
        high: at(1.0 - tail),
        n,
    })
}

/// Sum of `scores` over the kept documents of each subset: the change an additive influence model
/// predicts for training on that subset (up to a constant shared by all subsets).
pub fn subset_predictions(scores: &[f64], keep: &[Vec<bool>]) -> Result<Vec<f64>> {
    all_finite(|| "scores".into(), scores)?;
    keep.iter()
        .enumerate()
        .map(|(m, mask)| {
            same_len(
                || format!("keep[{m}]"),
                mask.len(),
                || "scores".into(),
                scores.len(),
            )?;
            Ok(scores
                .iter()
                .zip(mask)
                .filter(|(_, k)| **k)
                .map(|(s, _)| s)
                .sum())
        })
        .collect()
}

/// The linear datamodeling score of one method over queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lds {
    /// Spearman correlation per query, over subsets.
    pub per_query: Vec<f64>,
    /// Their mean, with a 95 % bootstrap interval over queries.
    pub summary: MeanCi,
}

/// LDS from `predicted[q][m]` and `actual[q][m]` (query `q`, subset `m`); `seed` draws the
/// bootstrap. A query whose measurement does not vary over the subsets is an error naming it.
pub fn lds(predicted: &[Vec<f64>], actual: &[Vec<f64>], seed: u64) -> Result<Lds> {
    non_empty(|| "predicted".into(), predicted.len())?;
    same_len(
        || "actual".into(),
        actual.len(),
        || "predicted".into(),
        predicted.len(),
    )?;
    let per_query = predicted
        .iter()
        .zip(actual)
        .enumerate()
        .map(|(q, (p, a))| {
            spearman(p, a).map_err(|e| AnalysisError::Invalid {
                arg: format!("query {q}"),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    let summary = bootstrap_mean_ci(&per_query, 0.95, BOOTSTRAP_RESAMPLES, seed)?;
    Ok(Lds { per_query, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn spearman_of_known_orders() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        // Any increasing transform: 1; reversed: −1.
        let cube: Vec<f64> = a.iter().map(|x: &f64| x.powi(3) - 7.0).collect();
        assert!(close(spearman(&a, &cube).expect("ok"), 1.0, 1e-15));
        let rev: Vec<f64> = a.iter().rev().copied().collect();
        assert!(close(spearman(&a, &rev).expect("ok"), -1.0, 1e-15));
        // One swap of neighbours: ρ = 1 − 6·2/(5·24) = 0.9.
        let swap = [1.0, 3.0, 2.0, 4.0, 5.0];
        assert!(close(spearman(&a, &swap).expect("ok"), 0.9, 1e-12));
        // Ties: ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]: numpy (corrcoef of the ranks) gives
        // 0.9486832980505138.
        let r = spearman(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).expect("ok");
        assert!(close(r, 0.948_683_298_050_513_9, 1e-12), "{r}");
        assert_eq!(
            average_ranks(&[5.0, 1.0, 5.0, 0.0]),
            vec![3.5, 2.0, 3.5, 1.0]
        );
    }

    #[test]
    fn pearson_and_errors() {
        assert!(close(
            pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]).expect("ok"),
            0.997_948_715_788_673_3,
            1e-12
        ));
        assert!(matches!(
            spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]),
            Err(AnalysisError::Degenerate { .. })
        ));
        assert!(matches!(
            pearson(&[1.0, 2.0], &[1.0]),
            Err(AnalysisError::LengthMismatch { .. })
        ));
        assert!(matches!(
            pearson(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(AnalysisError::NonFinite { .. })
        ));
    }

    #[test]
    fn overlap_counts_shared_top_documents() {
        let a = [9.0, 8.0, 7.0, 1.0, 0.0];
        let b = [9.0, 0.0, 7.0, 8.0, 1.0];
        // top-2 of a: {0, 1}; of b: {0, 3} → 1 of 2.
        assert_eq!(top_k_overlap(&a, &b, 2).expect("ok"), 0.5);
        assert_eq!(top_k_overlap(&a, &b, 3).expect("ok"), 2.0 / 3.0);
        assert_eq!(top_k_overlap(&a, &a, 5).expect("ok"), 1.0);
        assert!(top_k_overlap(&a, &b, 6).is_err());
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_shrinks_with_n() {
        let ci = bootstrap_mean_ci(&[0.5; 7], 0.95, 1000, 1).expect("ok");
        assert_eq!((ci.mean, ci.low, ci.high), (0.5, 0.5, 0.5));
        let few: Vec<f64> = (0..10).map(|i| f64::from(i % 5)).collect();
        let many: Vec<f64> = (0..1000).map(|i| f64::from(i % 5)).collect();
        let (a, b) = (
            bootstrap_mean_ci(&few, 0.95, 4000, 2).expect("ok"),
            bootstrap_mean_ci(&many, 0.95, 4000, 2).expect("ok"),
        );
        for ci in [a, b] {
            assert!(ci.low < ci.mean && ci.mean < ci.high, "{ci:?}");
            assert!(close(ci.mean, 2.0, 1e-12));
        }
        // Standard error √2/√n: the 95 % interval is ≈ ±1.96·√(2/n) (n = 1000: ±0.088).
        assert!(
            close(b.high - b.low, 2.0 * 1.96 * (2.0f64 / 1000.0).sqrt(), 0.02),
            "{b:?}"
        );
        assert!(a.high - a.low > 5.0 * (b.high - b.low));
        assert_eq!(
            a,
            bootstrap_mean_ci(&few, 0.95, 4000, 2).expect("ok"),
            "seeded"
        );
    }

    #[test]
    fn lds_of_an_exact_additive_model_is_one() {
        // Measurement = Σ kept scores (+ a constant): a perfect method has LDS 1; its negation −1.
        let scores = [[0.3, -1.0, 2.0, 0.1], [1.0, 1.0, -0.5, 0.0]];
        let keep: Vec<Vec<bool>> = (0..16u32)
            .map(|m| (0..4).map(|d| (m >> d) & 1 == 1).collect())
            .collect();
        let pred: Vec<Vec<f64>> = scores
            .iter()
            .map(|s| subset_predictions(s, &keep).expect("ok"))
            .collect();
        let actual: Vec<Vec<f64>> = pred
            .iter()
            .map(|p| p.iter().map(|x| 3.0 * x - 1.0).collect())
            .collect();
        let l = lds(&pred, &actual, 0).expect("ok");
        assert!(l.per_query.iter().all(|&r| close(r, 1.0, 1e-12)));
        assert!(close(l.summary.mean, 1.0, 1e-12));
        let neg: Vec<Vec<f64>> = actual
            .iter()
            .map(|a| a.iter().map(|x| -x).collect())
            .collect();
        assert!(close(
            lds(&pred, &neg, 0).expect("ok").summary.mean,
            -1.0,
            1e-12
        ));
        // Subset 5 keeps documents 0 and 2.
        assert!(close(pred[0][5], 2.3, 1e-12));
        // A query whose measurement never changes is named.
        let flat = vec![actual[0].clone(), vec![0.0; 16]];
        let e = lds(&pred, &flat, 0).expect_err("degenerate");
        assert!(e.to_string().contains("query 1"), "{e}");
    }
}
