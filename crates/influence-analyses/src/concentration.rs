//! How concentrated a query's positive influence is: cumulative curves over the top k% of its
//! positively scored documents, their per-group means, and the power-law slope of its top scores.
//!
//! The paper finds factual queries' totals larger and far more variable than reasoning ones',
//! and compares the slopes α of the two groups with a t-test ([`crate::welch_t_test`]).

use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result, all_finite, non_empty};
use crate::stats::{check_labels, group_indices, least_squares, mean, sample_std};

/// One query's cumulative-influence curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The percentages k of the query's positive set, as given.
    pub percent: Vec<f64>,
    /// How many documents each point sums: `ceil(k/100 · positive_docs)`.
    pub counts: Vec<usize>,
    /// Sum of the top `counts[i]` positive scores divided by `nats`.
    pub absolute: Vec<f64>,
    /// Sum of the top `counts[i]` positive scores divided by `total_positive` (0 everywhere when
    /// the query has no positive document).
    pub relative: Vec<f64>,
    /// Sum of all positive scores.
    pub total_positive: f64,
    /// Number of documents with a score strictly above zero.
    pub positive_docs: usize,
    /// The completion's negative log-likelihood the absolute curve is divided by.
    pub nats: f64,
}

/// The percentage grid 1, 2, …, 100 (steps of 1%).
pub fn percent_grid() -> Vec<f64> {
    (1..=100).map(f64::from).collect()
}

/// The cumulative-influence curve of one query.
///
/// The positive set is the documents with `score > 0`, sorted by score, largest first. For each
/// `k` in `percentiles` (each in `[0, 100]`) the curve sums the top `ceil(k/100 · P)` of them
/// (`P` = size of the positive set; `k·P/100` within 1e-9 of an integer counts as that integer),
/// and divides the sum by `nats` (absolute) and by the total positive influence (relative).
///
/// # Errors
/// [`AnalysisError::Empty`] / [`AnalysisError::NonFinite`] for `scores` or `percentiles`,
/// [`AnalysisError::Invalid`] for a percentage outside `[0, 100]` or `nats` not finite and
/// positive.
pub fn concentration_curve(scores: &[f64], nats: f64, percentiles: &[f64]) -> Result<Curve> {
    non_empty(|| "scores".into(), scores.len())?;
    all_finite(|| "scores".into(), scores)?;
    check_nats(nats)?;
    non_empty(|| "percentiles".into(), percentiles.len())?;
    all_finite(|| "percentiles".into(), percentiles)?;
    if let Some(i) = percentiles.iter().position(|k| !(0.0..=100.0).contains(k)) {
        return Err(AnalysisError::Invalid {
            arg: format!("percentiles[{i}]"),
            reason: format!("{} is outside [0, 100]", percentiles[i]),
        });
    }
    let positive = sorted_positive(scores);
    let p = positive.len();
    // prefix[c] = sum of the top c positive scores.
    let mut prefix = Vec::with_capacity(p + 1);
    prefix.push(0.0);
    for s in &positive {
        prefix.push(prefix[prefix.len() - 1] + s);
    }
    let total_positive = prefix[p];
    let counts: Vec<usize> = percentiles.iter().map(|&k| top_count(k, p)).collect();
    let absolute = counts.iter().map(|&c| prefix[c] / nats).collect();
    let relative = counts
        .iter()
        .map(|&c| {
            if p == 0 {
                0.0
            } else {
                prefix[c] / total_positive
            }
        })
        .collect();
    Ok(Curve {
        percent: percentiles.to_vec(),
        counts,
        absolute,
        relative,
        total_positive,
        positive_docs: p,
        nats,
    })
}

fn check_nats(nats: f64) -> Result<()> {
    if !(nats.is_finite() && nats > 0.0) {
        return Err(AnalysisError::Invalid {
            arg: "nats".into(),
            reason: format!("{nats} is not a finite positive number of nats"),
        });
    }
    Ok(())
}

/// `ceil(k/100 · p)`, with values within 1e-9 of an integer taken as that integer.
fn top_count(k: f64, p: usize) -> usize {
    let x = k * p as f64 / 100.0;
    let c = if (x - x.round()).abs() <= 1e-9 {
        x.round()
    } else {
        x.ceil()
    };
    (c as usize).min(p)
}

/// The strictly positive scores, largest first.
fn sorted_positive(scores: &[f64]) -> Vec<f64> {
    let mut positive: Vec<f64> = scores.iter().copied().filter(|&s| s > 0.0).collect();
    positive.sort_by(|a, b| b.total_cmp(a));
    positive
}

/// The mean (and spread) of the curves of one query group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupCurve {
    /// The group.
    pub group: String,
    /// The percentage grid shared by the group's curves.
    pub percent: Vec<f64>,
    /// Mean over the group's queries of [`Curve::absolute`].
    pub absolute_mean: Vec<f64>,
    /// Sample standard deviation (divisor `n − 1`; 0 for one query) of [`Curve::absolute`].
    pub absolute_std: Vec<f64>,
    /// Mean over the group's queries of [`Curve::relative`].
    pub relative_mean: Vec<f64>,
    /// Sample standard deviation of [`Curve::relative`].
    pub relative_std: Vec<f64>,
    /// Mean of [`Curve::total_positive`].
    pub total_positive_mean: f64,
    /// Sample standard deviation of [`Curve::total_positive`].
    pub total_positive_std: f64,
    /// Number of queries averaged.
    pub queries: usize,
}

/// Averages the curves of each group, groups in order of first appearance.
///
/// # Errors
/// [`AnalysisError::Empty`] / [`AnalysisError::LengthMismatch`] when `groups` does not label every
/// curve; [`AnalysisError::Invalid`] when a curve's percentage grid differs from the first one's.
pub fn group_mean_curves<S: AsRef<str>>(curves: &[Curve], groups: &[S]) -> Result<Vec<GroupCurve>> {
    non_empty(|| "curves".into(), curves.len())?;
    check_labels("groups", groups.len(), "curves", curves.len())?;
    let grid = &curves[0].percent;
    if let Some(i) = curves.iter().position(|c| &c.percent != grid) {
        return Err(AnalysisError::Invalid {
            arg: format!("curves[{i}]"),
            reason: "its percentage grid differs from that of curves[0]".into(),
        });
    }
    let columns = |idx: &[usize], pick: fn(&Curve) -> &Vec<f64>| -> (Vec<f64>, Vec<f64>) {
        (0..grid.len())
            .map(|j| {
                let col: Vec<f64> = idx.iter().map(|&i| pick(&curves[i])[j]).collect();
                (mean(&col), sample_std(&col))
            })
            .unzip()
    };
    Ok(group_indices(groups)
        .into_iter()
        .map(|(group, idx)| {
            let (absolute_mean, absolute_std) = columns(&idx, |c| &c.absolute);
            let (relative_mean, relative_std) = columns(&idx, |c| &c.relative);
            let totals: Vec<f64> = idx.iter().map(|&i| curves[i].total_positive).collect();
            GroupCurve {
                group,
                percent: grid.clone(),
                absolute_mean,
                absolute_std,
                relative_mean,
                relative_std,
                total_positive_mean: mean(&totals),
                total_positive_std: sample_std(&totals),
                queries: idx.len(),
            }
        })
        .collect())
}

/// A power law `score ≈ e^intercept · rank^(−alpha)` fitted to a query's top positive scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    /// Minus the least-squares slope of `ln score` on `ln rank`.
    pub alpha: f64,
    /// The least-squares intercept (`ln` of the fitted top score).
    pub intercept: f64,
    /// Coefficient of determination of the log-log fit.
    pub r2: f64,
    /// How many scores were fitted: `min(top, number of positive scores)`.
    pub points: usize,
}

/// Fits `ln score = intercept − alpha · ln rank` to the `top` largest positive scores (rank 1 =
/// largest). The paper uses `top = 500`.
///
/// # Errors
/// [`AnalysisError::Empty`] / [`AnalysisError::NonFinite`] for `scores`,
/// [`AnalysisError::Invalid`] for `top < 3`, [`AnalysisError::TooFew`] when fewer than three
/// scores are positive.
pub fn power_law_slope(scores: &[f64], top: usize) -> Result<PowerLaw> {
    non_empty(|| "scores".into(), scores.len())?;
    all_finite(|| "scores".into(), scores)?;
    if top < 3 {
        return Err(AnalysisError::Invalid {
            arg: "top".into(),
            reason: format!("{top} points cannot give a meaningful slope; use at least 3"),
        });
    }
    let mut positive = sorted_positive(scores);
    if positive.len() < 3 {
        return Err(AnalysisError::TooFew {
            arg: "scores".into(),
            got: positive.len(),
            need: 3,
            what: "positive scores",
        });
    }
    positive.truncate(top);
    let x: Vec<f64> = (1..=positive.len()).map(|r| (r as f64).ln()).collect();
    let y: Vec<f64> = positive.iter().map(|s| s.ln()).collect();
    let line = least_squares(&x, &y);
    Ok(PowerLaw {
        alpha: -line.slope,
        intercept: line.intercept,
        r2: line.r2,
        points: positive.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn curve_by_hand() {
        // Positive set 5, 4, 3, 2, 1 (P = 5, total 15); negatives and zeros are ignored.
        let scores = [5.0, -1.0, 3.0, 0.0, 2.0, -4.0, 1.0, 4.0];
        let c = concentration_curve(&scores, 2.0, &[0.0, 20.0, 40.0, 50.0, 100.0]).expect("valid");
        assert_eq!((c.positive_docs, c.total_positive, c.nats), (5, 15.0, 2.0));
        assert_eq!(c.counts, [0, 1, 2, 3, 5]); // 50% of 5 = 2.5 → 3
        assert_eq!(c.absolute, [0.0, 2.5, 4.5, 6.0, 7.5]);
        let want = [0.0, 1.0 / 3.0, 0.6, 0.8, 1.0];
        for (got, want) in c.relative.iter().zip(want) {
            assert!(close(*got, want, 1e-15), "{:?}", c.relative);
        }
    }

    #[test]
    fn counts_do_not_round_up_on_float_noise() {
        assert_eq!(top_count(1.1, 3000), 33); // 1.1 · 3000 / 100 is 33.00000000000001 in floats
        assert_eq!(top_count(2.3, 3000), 69); // and this one 68.99999999999999
        assert_eq!(top_count(30.0, 10), 3);
        assert_eq!(top_count(7.0, 10), 1);
        assert_eq!(top_count(100.0, 7), 7);
        assert_eq!(top_count(0.0, 7), 0);
        assert_eq!(top_count(50.0, 0), 0);
    }

    #[test]
    fn query_without_positive_documents() {
        let c = concentration_curve(&[-1.0, 0.0, -3.0], 1.0, &[50.0, 100.0]).expect("valid");
        assert_eq!((c.positive_docs, c.total_positive), (0, 0.0));
        assert_eq!(
            (c.absolute.clone(), c.relative.clone()),
            (vec![0.0, 0.0], vec![0.0, 0.0])
        );
    }

    #[test]
    fn curve_input_errors() {
        assert!(matches!(
            concentration_curve(&[1.0], 1.0, &[10.0, 101.0]),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "percentiles[1]"
        ));
        assert!(matches!(
            concentration_curve(&[1.0], 0.0, &[10.0]),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "nats"
        ));
        assert!(matches!(
            concentration_curve(&[1.0, f64::NAN], 1.0, &[10.0]),
            Err(AnalysisError::NonFinite { arg, index: 1, .. }) if arg == "scores"
        ));
        assert!(matches!(
            concentration_curve(&[], 1.0, &[10.0]),
            Err(AnalysisError::Empty { arg }) if arg == "scores"
        ));
    }

    #[test]
    fn group_means_by_hand() {
        let grid = [50.0, 100.0];
        // Factual: positive sets {4, 2} and {6, 2}; reasoning: {1, 1}. nats = 1.
        let curves: Vec<Curve> = [vec![4.0, 2.0, -1.0], vec![2.0, 6.0], vec![1.0, 1.0, -5.0]]
            .iter()
            .map(|s| concentration_curve(s, 1.0, &grid).expect("valid"))
            .collect();
        let g = group_mean_curves(&curves, &["factual", "factual", "reasoning"]).expect("valid");
        assert_eq!(g.len(), 2);
        let f = &g[0];
        assert_eq!((f.group.as_str(), f.queries), ("factual", 2));
        assert_eq!(f.absolute_mean, [5.0, 7.0]); // tops 4 and 6; totals 6 and 8
        assert!(close(f.absolute_std[0], 2f64.sqrt(), 1e-12)); // sample std of {4, 6}
        assert!(close(
            f.relative_mean[0],
            (4.0 / 6.0 + 6.0 / 8.0) / 2.0,
            1e-15
        ));
        assert_eq!((f.total_positive_mean, f.relative_mean[1]), (7.0, 1.0));
        let r = &g[1];
        assert_eq!((r.group.as_str(), r.queries), ("reasoning", 1));
        assert_eq!(
            (r.relative_mean.clone(), r.relative_std.clone()),
            (vec![0.5, 1.0], vec![0.0, 0.0])
        );

        let other = concentration_curve(&[1.0], 1.0, &[100.0]).expect("valid");
        assert!(matches!(
            group_mean_curves(&[curves[0].clone(), other], &["a", "a"]),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "curves[1]"
        ));
    }

    #[test]
    fn power_law_recovered_exactly() {
        // 600 positive scores s_i = C·i^(−α), shuffled among negatives and zeros.
        let (c, alpha) = (2.5, 0.7);
        let mut scores: Vec<f64> = (1..=600).map(|i| c * f64::from(i).powf(-alpha)).collect();
        scores.extend((0..300).map(|i| -f64::from(i % 7)));
        let n = scores.len();
        // A fixed permutation (multiplication by a unit mod n).
        let shuffled: Vec<f64> = (0..n).map(|i| scores[(i * 7919) % n]).collect();
        let fit = power_law_slope(&shuffled, 500).expect("enough positives");
        assert_eq!(fit.points, 500);
        assert!(close(fit.alpha, alpha, 1e-9), "alpha = {}", fit.alpha);
        assert!(
            close(fit.intercept, c.ln(), 1e-9),
            "intercept = {}",
            fit.intercept
        );
        assert!(close(fit.r2, 1.0, 1e-12));

        // A bent curve is not a power law: the fit is imperfect.
        let bent: Vec<f64> = (1..=50).map(|i| (-0.1 * f64::from(i)).exp()).collect();
        assert!(power_law_slope(&bent, 500).expect("enough positives").r2 < 0.99);
    }

    #[test]
    fn power_law_needs_three_positives() {
        assert!(matches!(
            power_law_slope(&[3.0, 2.0, 0.0, -1.0], 500),
            Err(AnalysisError::TooFew {
                got: 2,
                need: 3,
                ..
            })
        ));
        assert!(matches!(
            power_law_slope(&[3.0, 2.0, 1.0], 2),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "top"
        ));
    }
}
