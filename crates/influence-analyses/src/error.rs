//! The crate's one error type and the input checks every analysis shares.

/// What is wrong with an analysis's input.
///
/// Every variant names the offending argument as the caller wrote it, with an index where one
/// helps (`scores[3]`, `needles[0]`), so that a pipeline can say precisely which query or document
/// broke an analysis.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// The argument holds no elements where at least one is needed.
    #[error("`{arg}` is empty")]
    Empty {
        /// The argument, e.g. `scores` or `needles[2]`.
        arg: String,
    },
    /// Two arguments (or two rows of one argument) that must have the same length do not.
    #[error("`{arg}` has length {got}, but `{other}` has length {expected}")]
    LengthMismatch {
        /// The argument whose length is wrong, e.g. `scores[4]`.
        arg: String,
        /// The argument it must match, e.g. `scores[0]`.
        other: String,
        /// The length of `other`.
        expected: usize,
        /// The length of `arg`.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("`{arg}` holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// The argument, e.g. `scores[1]`.
        arg: String,
        /// The position of the first bad value.
        index: usize,
        /// The bad value itself.
        value: f64,
    },
    /// The argument has fewer usable values than the analysis needs.
    #[error("`{arg}` has {got} usable values, at least {need} are needed ({what})")]
    TooFew {
        /// The argument, e.g. `scores`.
        arg: String,
        /// How many usable values there are.
        got: usize,
        /// How many are needed.
        need: usize,
        /// Which values count as usable, e.g. "positive scores".
        what: &'static str,
    },
    /// The argument is well-formed but the statistic is undefined for it (a constant score
    /// vector has no correlation; two constant samples have no t statistic).
    #[error("`{arg}` is degenerate: {reason}")]
    Degenerate {
        /// The argument, e.g. `scores[2]`.
        arg: String,
        /// Why the statistic is undefined.
        reason: &'static str,
    },
    /// A value is outside the range the analysis accepts.
    #[error("`{arg}` is invalid: {reason}")]
    Invalid {
        /// The argument, e.g. `percentiles[1]` or `nats`.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;

/// Fails with [`AnalysisError::Empty`] when `len` is zero.
pub(crate) fn non_empty(arg: impl FnOnce() -> String, len: usize) -> Result<()> {
    if len == 0 {
        return Err(AnalysisError::Empty { arg: arg() });
    }
    Ok(())
}

/// Fails with [`AnalysisError::NonFinite`] at the first NaN or infinity of `xs`.
pub(crate) fn all_finite(arg: impl FnOnce() -> String, xs: &[f64]) -> Result<()> {
    match xs.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(AnalysisError::NonFinite {
            arg: arg(),
            index,
            value: xs[index],
        }),
        None => Ok(()),
    }
}

/// Fails with [`AnalysisError::LengthMismatch`] when `got != expected`.
pub(crate) fn same_len(
    arg: impl FnOnce() -> String,
    got: usize,
    other: impl FnOnce() -> String,
    expected: usize,
) -> Result<()> {
    if got != expected {
        return Err(AnalysisError::LengthMismatch {
            arg: arg(),
            other: other(),
            expected,
            got,
        });
    }
    Ok(())
}

/// Checks a `[query][document]` score matrix: at least one query, every row as long as the first
/// and non-empty, every value finite.
pub(crate) fn check_score_matrix(scores: &[Vec<f64>]) -> Result<usize> {
    non_empty(|| "scores".into(), scores.len())?;
    let n = scores[0].len();
    non_empty(|| "scores[0]".into(), n)?;
    for (q, row) in scores.iter().enumerate() {
        same_len(
            || format!("scores[{q}]"),
            row.len(),
            || "scores[0]".into(),
            n,
        )?;
        all_finite(|| format!("scores[{q}]"), row)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_argument_and_position() {
        let err = check_score_matrix(&[vec![1.0, 2.0], vec![1.0, f64::NAN]])
            .expect_err("NaN must be rejected");
        assert!(
            matches!(&err, AnalysisError::NonFinite { arg, index: 1, value }
                if arg == "scores[1]" && value.is_nan()),
            "{err:?}"
        );
        assert!(err.to_string().contains("`scores[1]`"), "{err}");

        let err = check_score_matrix(&[vec![1.0, 2.0], vec![1.0]]).expect_err("ragged");
        assert_eq!(
            err,
            AnalysisError::LengthMismatch {
                arg: "scores[1]".into(),
                other: "scores[0]".into(),
                expected: 2,
                got: 1
            }
        );
        assert_eq!(
            check_score_matrix(&[]).expect_err("empty"),
            AnalysisError::Empty {
                arg: "scores".into()
            }
        );
        assert_eq!(
            check_score_matrix(&[vec![]]).expect_err("empty row"),
            AnalysisError::Empty {
                arg: "scores[0]".into()
            }
        );
    }
}
