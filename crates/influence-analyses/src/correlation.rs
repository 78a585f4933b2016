//! Query×query Pearson correlations of influence scores, summarised within and between query
//! groups, and same-task against different-task pairs.
//!
//! The paper's claim: two reasoning queries of the same task draw on the same documents (their
//! score vectors correlate strongly, arithmetic pairs up to 0.96), while two factual queries do
//! not (mean 0.06 for 7B, 0.03 for 35B).

use serde::{Deserialize, Serialize};

use crate::QueryMeta;
use crate::error::{AnalysisError, Result, check_score_matrix};
use crate::stats::{check_labels, group_indices, mean, median, pearson_p};

/// Pearson correlations between every pair of queries' score vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrelationMatrix {
    /// `r[i][j]`: Pearson r of queries `i` and `j` over all documents (symmetric, diagonal 1).
    pub r: Vec<Vec<f64>>,
    /// `p[i][j]`: two-sided p-value of `r[i][j]` (t-test with `n − 2` degrees of freedom; 0 on
    /// the diagonal and wherever `|r| = 1`).
    pub p: Vec<Vec<f64>>,
    /// Number of documents each correlation is taken over.
    pub n: usize,
}

/// Pearson r and its two-sided p-value between every pair of query score vectors.
///
/// `scores` is indexed `[query][document]`; every row must have the same length `n ≥ 3`.
/// `p` follows from `t = r·√((n−2)/(1−r²))` with `n − 2` degrees of freedom.
///
/// # Errors
/// [`AnalysisError::Empty`], [`AnalysisError::LengthMismatch`] or [`AnalysisError::NonFinite`]
/// for a malformed matrix, [`AnalysisError::TooFew`] for fewer than three documents, and
/// [`AnalysisError::Degenerate`] for a query whose scores are all equal (its correlation with
/// anything is undefined; a zero query gradient produces this).
pub fn correlation_matrix(scores: &[Vec<f64>]) -> Result<CorrelationMatrix> {
    let n = check_score_matrix(scores)?;
    if n < 3 {
        return Err(AnalysisError::TooFew {
            arg: "scores[0]".into(),
            got: n,
            need: 3,
            what: "documents",
        });
    }
    // Centre and normalise each row once; r is then a dot product.
    let mut z = Vec::with_capacity(scores.len());
    for (q, row) in scores.iter().enumerate() {
        let m = mean(row);
        let centred: Vec<f64> = row.iter().map(|x| x - m).collect();
        let norm = centred.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(AnalysisError::Degenerate {
                arg: format!("scores[{q}]"),
                reason: "all scores are equal, so its correlation is undefined",
            });
        }
        z.push(centred.into_iter().map(|x| x / norm).collect::<Vec<f64>>());
    }
    let q = scores.len();
    let mut r = vec![vec![1.0; q]; q];
    let mut p = vec![vec![0.0; q]; q];
    for i in 0..q {
        for j in i + 1..q {
            let rij = z[i]
                .iter()
                .zip(&z[j])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                .clamp(-1.0, 1.0);
            let pij = pearson_p(rij, n);
            (r[i][j], r[j][i]) = (rij, rij);
            (p[i][j], p[j][i]) = (pij, pij);
        }
    }
    Ok(CorrelationMatrix { r, p, n })
}

/// Summary of the correlations of a set of query pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairSummary {
    /// Number of pairs (always at least one).
    pub pairs: usize,
    /// Mean r.
    pub mean: f64,
    /// Median r.
    pub median: f64,
    /// Smallest r.
    pub min: f64,
    /// Largest r.
    pub max: f64,
    /// Mean |r|.
    pub mean_abs: f64,
    /// Pairs whose p-value is below 0.05.
    pub significant: usize,
}

impl PairSummary {
    /// Summarises the listed `(i, j)` pairs of `m`; `None` when there are none.
    fn of(m: &CorrelationMatrix, pairs: impl Iterator<Item = (usize, usize)>) -> Option<Self> {
        let (mut rs, mut significant) = (Vec::new(), 0);
        for (i, j) in pairs {
            rs.push(m.r[i][j]);
            significant += usize::from(m.p[i][j] < 0.05);
        }
        if rs.is_empty() {
            return None;
        }
        Some(Self {
            pairs: rs.len(),
            mean: mean(&rs),
            median: median(&rs),
            min: rs.iter().copied().fold(f64::INFINITY, f64::min),
            max: rs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean_abs: rs.iter().map(|r| r.abs()).sum::<f64>() / rs.len() as f64,
            significant,
        })
    }
}

/// Correlations between the queries of group `a` and those of group `b` (`a == b`: within one
/// group, distinct pairs only). The statistics are those of [`PairSummary`] (flattened in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupPair {
    /// First group.
    pub a: String,
    /// Second group (equal to `a` for a within-group summary).
    pub b: String,
    /// The pairs' statistics.
    #[serde(flatten)]
    pub summary: PairSummary,
}

impl GroupPair {
    fn new(a: &str, b: &str, summary: PairSummary) -> Self {
        Self {
            a: a.to_owned(),
            b: b.to_owned(),
            summary,
        }
    }
}

/// Summaries of `m` within each group (off-diagonal pairs `i < j`) and between each two groups
/// (every `i` of `a` with every `j` of `b`).
///
/// `groups[i]` labels query `i`; pass the tasks instead of the groups for per-task summaries.
/// Order: all within-group entries first, groups in order of first appearance, then the
/// between-group entries in the same order. Entries without any pair (a group of one query) are
/// left out.
///
/// # Errors
/// [`AnalysisError::Empty`] or [`AnalysisError::LengthMismatch`] when `groups` does not label
/// every query of `m`.
pub fn group_correlations<S: AsRef<str>>(
    m: &CorrelationMatrix,
    groups: &[S],
) -> Result<Vec<GroupPair>> {
    check_labels("groups", groups.len(), "matrix.r", m.r.len())?;
    let g = group_indices(groups);
    let mut out = Vec::new();
    let mut push = |a: &str, b: &str, s: Option<PairSummary>| {
        if let Some(summary) = s {
            out.push(GroupPair::new(a, b, summary));
        }
    };
    for (name, idx) in &g {
        let pairs = idx
            .iter()
            .enumerate()
            .flat_map(|(k, &i)| idx[k + 1..].iter().map(move |&j| (i, j)));
        push(name, name, PairSummary::of(m, pairs));
    }
    for (x, (na, ia)) in g.iter().enumerate() {
        for (nb, ib) in &g[x + 1..] {
            let pairs = ia.iter().flat_map(|&i| ib.iter().map(move |&j| (i, j)));
            push(na, nb, PairSummary::of(m, pairs));
        }
    }
    Ok(out)
}

/// Within one group: pairs of queries of the same task against pairs of different tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSplit {
    /// The group, e.g. `"reasoning"`.
    pub group: String,
    /// Pairs of the group whose two queries share a task; `None` if there are none.
    pub same_task: Option<PairSummary>,
    /// Pairs of the group whose two queries have different tasks; `None` if there are none.
    pub different_task: Option<PairSummary>,
}

/// Splits the distinct query pairs of `group` into same-task and different-task pairs.
///
/// The paper's claim is that `same_task` correlations of reasoning queries are high.
///
/// # Errors
/// [`AnalysisError::LengthMismatch`] when `metas` does not describe every query of `m`;
/// [`AnalysisError::Invalid`] when no query belongs to `group`.
pub fn task_split(m: &CorrelationMatrix, metas: &[QueryMeta], group: &str) -> Result<TaskSplit> {
    check_labels("metas", metas.len(), "matrix.r", m.r.len())?;
    let idx: Vec<usize> = (0..metas.len())
        .filter(|&i| metas[i].group == group)
        .collect();
    if idx.is_empty() {
        return Err(AnalysisError::Invalid {
            arg: "group".into(),
            reason: format!("no query belongs to group {group:?}"),
        });
    }
    let pairs = || {
        idx.iter()
            .enumerate()
            .flat_map(|(k, &i)| idx[k + 1..].iter().map(move |&j| (i, j)))
    };
    let same = |&(i, j): &(usize, usize)| metas[i].task == metas[j].task;
    Ok(TaskSplit {
        group: group.to_owned(),
        same_task: PairSummary::of(m, pairs().filter(same)),
        different_task: PairSummary::of(m, pairs().filter(|p| !same(p))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Orthogonal centred vectors over four documents: correlations are known exactly.
    const E1: [f64; 4] = [1.0, 1.0, -1.0, -1.0];
    const E2: [f64; 4] = [1.0, -1.0, 1.0, -1.0];

    fn lin(a: f64, x: [f64; 4], b: f64, y: [f64; 4], c: f64) -> Vec<f64> {
        (0..4).map(|d| a * x[d] + b * y[d] + c).collect()
    }

    #[test]
    fn correlations_known_by_construction() {
        let scores = vec![
            lin(1.0, E1, 0.0, E2, 0.0),  // q0
            lin(3.0, E1, 0.0, E2, 5.0),  // q1 = 3·q0 + 5: r = 1
            lin(-2.0, E1, 0.0, E2, 1.0), // q2 = −2·q0 + 1: r = −1
            lin(0.0, E1, 1.0, E2, 0.0),  // q3 ⟂ q0: r = 0
            lin(1.0, E1, 1.0, E2, 0.0),  // q4: r(q0, q4) = 1/√2
        ];
        let m = correlation_matrix(&scores).expect("valid scores");
        assert_eq!(m.n, 4);
        let inv_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
        let want = [
            (0, 1, 1.0),
            (0, 2, -1.0),
            (0, 3, 0.0),
            (0, 4, inv_sqrt2),
            (3, 4, inv_sqrt2),
        ];
        for (i, j, r) in want {
            assert!(close(m.r[i][j], r, 1e-12), "r[{i}][{j}] = {}", m.r[i][j]);
            assert_eq!(m.r[i][j], m.r[j][i]);
            assert_eq!(m.p[i][j], m.p[j][i]);
        }
        assert!(m.p[0][1] < 1e-12 && m.p[0][2] < 1e-12, "p = {:?}", m.p[0]);
        assert!(close(m.p[0][3], 1.0, 1e-12));
        // r = 1/√2, n = 4: t = (1/√2)·√(2/(1/2)) = √2 with 2 df → p = 1 − √2/√(2+2) = 1 − 1/√2.
        assert!(
            close(m.p[0][4], 1.0 - inv_sqrt2, 1e-12),
            "p = {}",
            m.p[0][4]
        );
        for i in 0..5 {
            assert_eq!((m.r[i][i], m.p[i][i]), (1.0, 0.0));
        }
    }

    // mpmath: x = 1..6, y = [2,1,4,3,6,5] → r = 29/35, t = r·√(4/(1−r²)), p2(t, 4) as in stats.rs.
    #[test]
    fn correlation_p_value_matches_mpmath() {
        let m = correlation_matrix(&[
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            vec![2.0, 1.0, 4.0, 3.0, 6.0, 5.0],
        ])
        .expect("valid scores");
        assert!(close(m.r[0][1], 29.0 / 35.0, 1e-14), "r = {}", m.r[0][1]);
        assert!(
            close(m.p[0][1], 0.041_562_682_215_743_44, 1e-12),
            "p = {}",
            m.p[0][1]
        );
    }

    #[test]
    fn degenerate_and_short_inputs_are_rejected() {
        assert!(matches!(
            correlation_matrix(&[vec![1.0, 2.0, 3.0], vec![4.0, 4.0, 4.0]]),
            Err(AnalysisError::Degenerate { arg, .. }) if arg == "scores[1]"
        ));
        assert!(matches!(
            correlation_matrix(&[vec![1.0, 2.0], vec![2.0, 1.0]]),
            Err(AnalysisError::TooFew {
                got: 2,
                need: 3,
                ..
            })
        ));
    }

    fn metas(spec: &[(&str, &str)]) -> Vec<QueryMeta> {
        spec.iter()
            .enumerate()
            .map(|(i, (g, t))| QueryMeta {
                id: format!("q{i}"),
                group: (*g).into(),
                task: (*t).into(),
                correct: None,
                nats: 1.0,
            })
            .collect()
    }

    #[test]
    fn group_and_task_summaries() {
        // Reasoning arithmetic pair: r = 1; slopes query ⟂ both; factual pair: r = 0.
        // Order: q0 arith, q1 arith, q2 slopes, q3 factual, q4 factual.
        let scores = vec![
            lin(1.0, E1, 0.0, E2, 0.0),
            lin(2.0, E1, 0.0, E2, 1.0),
            lin(0.0, E1, 1.0, E2, 0.0),
            lin(1.0, E1, 1.0, E2, 0.0),
            lin(1.0, E1, -1.0, E2, 0.0),
        ];
        let m = correlation_matrix(&scores).expect("valid scores");
        let metas = metas(&[
            ("reasoning", "arithmetic"),
            ("reasoning", "arithmetic"),
            ("reasoning", "slopes"),
            ("factual", "capitals"),
            ("factual", "capitals"),
        ]);
        let groups = crate::groups(&metas);
        let g = group_correlations(&m, &groups).expect("labels match");
        let names: Vec<(&str, &str)> = g.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
        assert_eq!(
            names,
            [
                ("reasoning", "reasoning"),
                ("factual", "factual"),
                ("reasoning", "factual")
            ]
        );
        let h = std::f64::consts::FRAC_1_SQRT_2;
        // Within reasoning: r(0,1) = 1, r(0,2) = 0, r(1,2) = 0.
        let r = &g[0];
        assert_eq!(r.summary.pairs, 3);
        assert!(close(r.summary.mean, 1.0 / 3.0, 1e-12) && close(r.summary.median, 0.0, 1e-12));
        assert!(close(r.summary.max, 1.0, 1e-12) && close(r.summary.min, 0.0, 1e-12));
        // Within factual: r(3,4) = 0.
        assert_eq!(g[1].summary.pairs, 1);
        assert!(close(g[1].summary.mean, 0.0, 1e-12));
        // Between: (0,3) = h, (0,4) = h, (1,3) = h, (1,4) = h, (2,3) = h, (2,4) = −h.
        let b = &g[2];
        assert_eq!(b.summary.pairs, 6);
        assert!(
            close(b.summary.mean, 4.0 * h / 6.0, 1e-12),
            "mean = {}",
            b.summary.mean
        );
        assert!(close(b.summary.mean_abs, h, 1e-12) && close(b.summary.min, -h, 1e-12));

        let split = task_split(&m, &metas, "reasoning").expect("group exists");
        let same = split.same_task.expect("one arithmetic pair");
        let diff = split.different_task.expect("two mixed pairs");
        assert_eq!((same.pairs, diff.pairs), (1, 2));
        assert!(close(same.mean, 1.0, 1e-12) && close(diff.mean, 0.0, 1e-12));
        assert_eq!(same.significant, 1);

        let f = task_split(&m, &metas, "factual").expect("group exists");
        assert!(f.different_task.is_none() && f.same_task.is_some());
        assert!(matches!(
            task_split(&m, &metas, "control"),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "group"
        ));
        assert!(matches!(
            group_correlations(&m, &groups[..4]),
            Err(AnalysisError::LengthMismatch {
                got: 4,
                expected: 5,
                ..
            })
        ));
    }

    #[test]
    fn summaries_round_trip_through_json() {
        let m = correlation_matrix(&[vec![1.0, 2.0, 4.0], vec![1.0, 3.0, 2.0]]).expect("valid");
        let g = group_correlations(&m, &["x", "x"]).expect("labels match");
        let json = serde_json::to_string(&g).expect("serialises");
        let back: Vec<GroupPair> = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, g);
    }
}
