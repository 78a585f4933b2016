//! How a query's influence is spread over the model's layers.
//!
//! The score is a sum over layers (`I(q, n) = Σ_ℓ I_ℓ(q, n)`), so each layer's share of it comes
//! for free. The caller chooses what "a layer's total" is (typically `Σ_n I_ℓ(q, n)` over the
//! query's top documents, or over the corpus); the shares here are of the sum of the *absolute*
//! per-layer totals, so that they are non-negative and add up to 1 even when layers pull in
//! opposite directions.

use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result, all_finite, non_empty, same_len};
use crate::stats::{check_labels, group_indices, mean, sample_std};

/// Each layer's share `|t_ℓ| / Σ_m |t_m|` of the total absolute influence.
///
/// # Errors
/// [`AnalysisError::Empty`] / [`AnalysisError::NonFinite`] for `layer_totals`,
/// [`AnalysisError::Degenerate`] when every total is zero.
pub fn layer_shares(layer_totals: &[f64]) -> Result<Vec<f64>> {
    non_empty(|| "layer_totals".into(), layer_totals.len())?;
    all_finite(|| "layer_totals".into(), layer_totals)?;
    let sum: f64 = layer_totals.iter().map(|t| t.abs()).sum();
    if sum == 0.0 {
        return Err(AnalysisError::Degenerate {
            arg: "layer_totals".into(),
            reason: "every layer's total is zero, so no layer has a share",
        });
    }
    Ok(layer_totals.iter().map(|t| t.abs() / sum).collect())
}

/// The mean layer shares of one query group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupLayerShares {
    /// The group.
    pub group: String,
    /// Mean share per layer over the group's queries.
    pub mean: Vec<f64>,
    /// Sample standard deviation (divisor `n − 1`; 0 for one query) per layer.
    pub std: Vec<f64>,
    /// Number of queries averaged.
    pub queries: usize,
}

/// Averages per-query layer shares (from [`layer_shares`]) over each group, groups in order of
/// first appearance.
///
/// # Errors
/// [`AnalysisError::Empty`], [`AnalysisError::LengthMismatch`] (queries with different layer
/// counts, or `groups` not labelling every query) or [`AnalysisError::NonFinite`].
pub fn group_layer_shares<S: AsRef<str>>(
    shares: &[Vec<f64>],
    groups: &[S],
) -> Result<Vec<GroupLayerShares>> {
    non_empty(|| "shares".into(), shares.len())?;
    check_labels("groups", groups.len(), "shares", shares.len())?;
    let layers = shares[0].len();
    non_empty(|| "shares[0]".into(), layers)?;
    for (q, row) in shares.iter().enumerate() {
        same_len(
            || format!("shares[{q}]"),
            row.len(),
            || "shares[0]".into(),
            layers,
        )?;
        all_finite(|| format!("shares[{q}]"), row)?;
    }
    Ok(group_indices(groups)
        .into_iter()
        .map(|(group, idx)| {
            let (mean, std) = (0..layers)
                .map(|l| {
                    let col: Vec<f64> = idx.iter().map(|&q| shares[q][l]).collect();
                    (mean(&col), sample_std(&col))
                })
                .unzip();
            GroupLayerShares {
                group,
                mean,
                std,
                queries: idx.len(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_absolute_totals() {
        // |−3| + |1| + |0| + |4| = 8.
        assert_eq!(
            layer_shares(&[-3.0, 1.0, 0.0, 4.0]).expect("valid"),
            [0.375, 0.125, 0.0, 0.5]
        );
        assert!(matches!(
            layer_shares(&[0.0, 0.0]),
            Err(AnalysisError::Degenerate { arg, .. }) if arg == "layer_totals"
        ));
        assert!(matches!(
            layer_shares(&[1.0, f64::NAN]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn group_means_by_hand() {
        let shares = vec![vec![1.0, 0.0], vec![0.5, 0.5], vec![0.25, 0.75]];
        let g = group_layer_shares(&shares, &["f", "r", "f"]).expect("valid");
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].group.as_str(), g[0].queries), ("f", 2));
        assert_eq!(g[0].mean, [0.625, 0.375]);
        // Sample std of {1, 0.25}: |1 − 0.25| / √2.
        assert!((g[0].std[0] - 0.75 / 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(
            (g[1].mean.clone(), g[1].std.clone()),
            (vec![0.5, 0.5], vec![0.0, 0.0])
        );
        assert!(matches!(
            group_layer_shares(&[vec![1.0], vec![0.5, 0.5]], &["a", "b"]),
            Err(AnalysisError::LengthMismatch { arg, .. }) if arg == "shares[1]"
        ));
    }
}
