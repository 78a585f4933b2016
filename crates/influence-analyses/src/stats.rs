//! The small statistics the analyses share: means, sample standard deviations, medians, Pearson
//! correlation with its p-value, Welch's t-test and a least-squares line.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::error::{AnalysisError, Result, all_finite, non_empty};

/// Arithmetic mean; `NaN` for an empty slice (callers check emptiness first).
pub(crate) fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample variance (divisor `n − 1`); `0` for fewer than two values.
pub(crate) fn sample_variance(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64
}

/// Sample standard deviation (divisor `n − 1`); `0` for fewer than two values.
pub(crate) fn sample_std(xs: &[f64]) -> f64 {
    sample_variance(xs).sqrt()
}

/// Median (mean of the two middle values for an even count); `NaN` for an empty slice.
pub(crate) fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        0.5 * (v[mid - 1] + v[mid])
    }
}

/// Two-sided p-value of a Student t statistic with `df` degrees of freedom: `2·P(T > |t|)`.
///
/// An infinite `|t|` gives 0. Uses the survival function (not `1 − cdf`) so that small p-values
/// keep their precision.
pub fn two_sided_t_p(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => (2.0 * dist.sf(t.abs())).min(1.0),
        Err(_) => f64::NAN,
    }
}

/// Two-sided p-value of a Pearson correlation `r` over `n` pairs: `t = r·√((n−2)/(1−r²))` with
/// `n − 2` degrees of freedom; exactly 0 when `|r| = 1`. `NaN` when `n < 3`.
pub fn pearson_p(r: f64, n: usize) -> f64 {
    if n < 3 {
        return f64::NAN;
    }
    if r.abs() >= 1.0 {
        return 0.0;
    }
    let df = (n - 2) as f64;
    two_sided_t_p(r * (df / (1.0 - r * r)).sqrt(), df)
}

/// The result of [`welch_t_test`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TTest {
    /// `(mean_a − mean_b) / √(var_a/n_a + var_b/n_b)`.
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided p-value from the Student t distribution with `df` degrees of freedom.
    pub p: f64,
    /// Mean of sample `a`.
    pub mean_a: f64,
    /// Mean of sample `b`.
    pub mean_b: f64,
    /// Sample variance (divisor `n − 1`) of `a`.
    pub var_a: f64,
    /// Sample variance (divisor `n − 1`) of `b`.
    pub var_b: f64,
    /// Size of sample `a`.
    pub n_a: usize,
    /// Size of sample `b`.
    pub n_b: usize,
}

/// Welch's two-sample t-test (unequal variances), two-sided.
///
/// The paper compares the power-law slopes of factual and reasoning queries this way.
///
/// # Errors
/// [`AnalysisError::TooFew`] when a sample has fewer than two values,
/// [`AnalysisError::NonFinite`] for NaN or infinite values, [`AnalysisError::Degenerate`] when
/// both samples are constant (the statistic is then undefined).
pub fn welch_t_test(a: &[f64], b: &[f64]) -> Result<TTest> {
    for (name, xs) in [("a", a), ("b", b)] {
        if xs.len() < 2 {
            return Err(AnalysisError::TooFew {
                arg: name.into(),
                got: xs.len(),
                need: 2,
                what: "values",
            });
        }
        all_finite(|| name.into(), xs)?;
    }
    let (n_a, n_b) = (a.len(), b.len());
    let (mean_a, mean_b) = (mean(a), mean(b));
    let (var_a, var_b) = (sample_variance(a), sample_variance(b));
    let (sa, sb) = (var_a / n_a as f64, var_b / n_b as f64);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return Err(AnalysisError::Degenerate {
            arg: "a, b".into(),
            reason: "both samples are constant",
        });
    }
    let t = (mean_a - mean_b) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (n_a - 1) as f64 + sb * sb / (n_b - 1) as f64);
    Ok(TTest {
        t,
        df,
        p: two_sided_t_p(t, df),
        mean_a,
        mean_b,
        var_a,
        var_b,
        n_a,
        n_b,
    })
}

/// A least-squares line `y = intercept + slope·x` with its coefficient of determination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line {
    pub slope: f64,
    pub intercept: f64,
    pub r2: f64,
}

/// Ordinary least squares of `y` on `x` (at least two points, `x` not constant).
pub(crate) fn least_squares(x: &[f64], y: &[f64]) -> Line {
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    // A perfectly flat y is fitted perfectly by a flat line.
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Line {
        slope,
        intercept,
        r2,
    }
}

/// Indices of each distinct label, groups in order of first appearance.
pub(crate) fn group_indices<S: AsRef<str>>(labels: &[S]) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let label = label.as_ref();
        match out.iter_mut().find(|(g, _)| g == label) {
            Some((_, idx)) => idx.push(i),
            None => out.push((label.to_owned(), vec![i])),
        }
    }
    out
}

/// Checks that `labels` is as long as the thing it labels.
pub(crate) fn check_labels(
    arg: &'static str,
    len: usize,
    other: &'static str,
    expected: usize,
) -> Result<()> {
    non_empty(|| arg.into(), len)?;
    crate::error::same_len(|| arg.into(), len, || other.into(), expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn descriptive_statistics_by_hand() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        assert_eq!(sample_variance(&[1.0, 2.0, 6.0]), 7.0); // (4 + 1 + 9) / 2
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(sample_std(&[42.0]), 0.0);
    }

    // Reference values from mpmath (independent of statrs), 40 digits:
    //   from mpmath import mp, mpf, betainc, sqrt; mp.dps = 40
    //   p2 = lambda t, df: betainc(df/2, mpf(1)/2, 0, df/(df+t*t), regularized=True)
    //   a = [1,2,3,4,5]; b = [2,4,6,8,10,12]  (means 3, 7; variances 2.5, 14)
    //   se2 = 2.5/5 + 14/6; t = (3-7)/sqrt(se2)
    //   df = se2**2 / ((2.5/5)**2/4 + (14/6)**2/5); p2(t, df)
    #[test]
    fn welch_matches_hand_computation() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [2.0, 4.0, 6.0, 8.0, 10.0, 12.0];
        let r = welch_t_test(&a, &b).expect("valid samples");
        assert_eq!(
            (r.mean_a, r.mean_b, r.var_a, r.var_b),
            (3.0, 7.0, 2.5, 14.0)
        );
        assert_eq!((r.n_a, r.n_b), (5, 6));
        assert!(close(r.t, -2.376_354_103_144_018, 1e-12), "t = {}", r.t);
        assert!(close(r.df, 6.972_255_729_794_934, 1e-12), "df = {}", r.df);
        assert!(close(r.p, 0.049_284_338_206_730_52, 1e-9), "p = {}", r.p);
        // Swapping the samples flips t and keeps df and p.
        let s = welch_t_test(&b, &a).expect("valid samples");
        assert_eq!((s.t, s.df, s.p), (-r.t, r.df, r.p));
    }

    #[test]
    fn welch_rejects_bad_samples() {
        assert!(matches!(
            welch_t_test(&[1.0], &[1.0, 2.0]),
            Err(AnalysisError::TooFew { arg, got: 1, need: 2, .. }) if arg == "a"
        ));
        assert!(matches!(
            welch_t_test(&[1.0, 2.0], &[1.0, f64::INFINITY]),
            Err(AnalysisError::NonFinite { arg, index: 1, .. }) if arg == "b"
        ));
        assert!(matches!(
            welch_t_test(&[1.0, 1.0], &[2.0, 2.0]),
            Err(AnalysisError::Degenerate { .. })
        ));
    }

    // mpmath: r = 0.5, n = 10 → t = 1.63299..., p2(t, 8) = 0.14111328125 (exact: 8 df is even).
    #[test]
    fn pearson_p_matches_hand_computation() {
        assert!(close(pearson_p(0.5, 10), 0.141_113_281_25, 1e-10));
        assert!(close(pearson_p(-0.5, 10), 0.141_113_281_25, 1e-10));
        assert_eq!(pearson_p(1.0, 10), 0.0);
        assert_eq!(pearson_p(0.0, 10), 1.0);
        assert!(pearson_p(0.3, 2).is_nan());
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let y: Vec<f64> = x.iter().map(|v| 0.5 - 2.0 * v).collect();
        let l = least_squares(&x, &y);
        assert!(close(l.slope, -2.0, 1e-14) && close(l.intercept, 0.5, 1e-14));
        assert!(close(l.r2, 1.0, 1e-14));
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let g = group_indices(&["b", "a", "b", "c"]);
        assert_eq!(
            g,
            vec![
                ("b".to_owned(), vec![0, 2]),
                ("a".to_owned(), vec![1]),
                ("c".to_owned(), vec![3])
            ]
        );
    }
}
