//! Which pretraining sources the most (and least) influential documents come from, relative to
//! the corpus mix.
//!
//! For the top (or bottom) `k` documents of a query, the multiplier of a source is its count
//! among those `k` divided by the count expected if they were drawn from the corpus at random:
//! `k · (documents of the source) / (documents in the corpus)`. The paper reports, averaged over a
//! group's queries, math/trivia ≈ 50–60× and StackExchange ≈ 20× at top-50 for reasoning, wiki
//! ≈ 5–6× for factual.

use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result, all_finite, non_empty, same_len};
use crate::stats::{check_labels, group_indices, mean, sample_std};

/// Which end of a ranking to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The `k` best-ranked documents (most positively influential).
    Top,
    /// The `k` worst-ranked documents (most negatively influential).
    Bottom,
}

/// The over- or under-representation of one source among a query's top or bottom `k` documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMultiplier {
    /// The source label.
    pub source: String,
    /// Which end of the ranking.
    pub side: Side,
    /// How many documents were taken from that end.
    pub k: usize,
    /// Documents of the source among them.
    pub count: usize,
    /// `k · corpus_count(source) / corpus_size`.
    pub expected: f64,
    /// `count / expected` (0 when the source is absent from the `k`).
    pub multiplier: f64,
}

/// Document indices ordered by score: highest first when `descending` (the ranking for
/// [`Side::Top`]), lowest first otherwise (the ranking for [`Side::Bottom`]).
///
/// The sort is stable: tied documents keep index order in both directions (`-0.0` ties with
/// `0.0`). NaN scores are never ranked among the extremes: they come last in both directions.
pub fn ranking_by_score(scores: &[f64], descending: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => {
                let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
                if descending { o.reverse() } else { o }
            }
        }
    });
    idx
}

/// The paper's `k`s: 50, 500, 5000, … up to half the corpus; at least `[min(50, n/2)]` (never
/// below 1) for a small corpus, and nothing for an empty one.
pub fn default_ks(n_docs: usize) -> Vec<usize> {
    if n_docs == 0 {
        return Vec::new();
    }
    let half = n_docs / 2;
    let ks: Vec<usize> = std::iter::successors(Some(50usize), |k| k.checked_mul(10))
        .take_while(|&k| k <= half)
        .collect();
    if ks.is_empty() {
        vec![50.min(half).max(1)]
    } else {
        ks
    }
}

/// Multipliers of every corpus source among the first `k` documents of `ranking`, for each `k`
/// in `ks`.
///
/// `ranking` lists every document index exactly once, *starting from the extreme that `side`
/// names*: for [`Side::Top`] highest score first (`ranking_by_score(scores, true)`), for
/// [`Side::Bottom`] lowest score first (`ranking_by_score(scores, false)`). The first `k` entries
/// are taken in both cases; `side` only labels the output. `sources[d]` labels document `d`.
/// Every source of the corpus gets an entry for every `k`, with count 0 and multiplier 0 where it
/// is absent; sources are sorted by name, `k`s kept in the given order; a `k` larger than the
/// corpus is skipped.
///
/// # Errors
/// [`AnalysisError::Empty`] for an empty `sources` or `ks`, [`AnalysisError::LengthMismatch`] when
/// `ranking` is not as long as `sources`, [`AnalysisError::Invalid`] when `ranking` is not a
/// permutation of the document indices or a `k` is 0.
pub fn source_multipliers<S: AsRef<str>>(
    ranking: &[usize],
    sources: &[S],
    ks: &[usize],
    side: Side,
) -> Result<Vec<SourceMultiplier>> {
    let sources: Vec<&str> = sources.iter().map(AsRef::as_ref).collect();
    let corpus = Corpus::new(&sources)?;
    corpus.check_ranking(ranking)?;
    check_ks(ks)?;
    Ok(corpus.multipliers(ranking, ks, side))
}

/// [`source_multipliers`] of one query's scores at both ends: the [`Side::Top`] entries (highest
/// scores) followed by the [`Side::Bottom`] ones (lowest scores).
///
/// # Errors
/// Those of [`source_multipliers`], plus [`AnalysisError::LengthMismatch`] when `scores` and
/// `sources` differ in length and [`AnalysisError::NonFinite`] for a NaN or infinite score.
pub fn query_source_multipliers<S: AsRef<str>>(
    scores: &[f64],
    sources: &[S],
    ks: &[usize],
) -> Result<Vec<SourceMultiplier>> {
    let sources: Vec<&str> = sources.iter().map(AsRef::as_ref).collect();
    let corpus = Corpus::new(&sources)?;
    same_len(
        || "scores".into(),
        scores.len(),
        || "sources".into(),
        sources.len(),
    )?;
    all_finite(|| "scores".into(), scores)?;
    check_ks(ks)?;
    let mut out = corpus.multipliers(&ranking_by_score(scores, true), ks, Side::Top);
    out.extend(corpus.multipliers(&ranking_by_score(scores, false), ks, Side::Bottom));
    Ok(out)
}

fn check_ks(ks: &[usize]) -> Result<()> {
    non_empty(|| "ks".into(), ks.len())?;
    if let Some(i) = ks.iter().position(|&k| k == 0) {
        return Err(AnalysisError::Invalid {
            arg: format!("ks[{i}]"),
            reason: "k must be at least 1".into(),
        });
    }
    Ok(())
}

/// The corpus's sources: the distinct labels (sorted), each document's label index, and counts.
struct Corpus {
    names: Vec<String>,
    label: Vec<usize>,
    counts: Vec<usize>,
}

impl Corpus {
    fn new(sources: &[&str]) -> Result<Self> {
        non_empty(|| "sources".into(), sources.len())?;
        let mut names: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
        names.sort_unstable();
        names.dedup();
        let label: Vec<usize> = sources
            .iter()
            .map(|s| {
                names
                    .binary_search_by(|n| n.as_str().cmp(s))
                    .unwrap_or_default()
            })
            .collect();
        let mut counts = vec![0; names.len()];
        for &l in &label {
            counts[l] += 1;
        }
        Ok(Self {
            names,
            label,
            counts,
        })
    }

    fn check_ranking(&self, ranking: &[usize]) -> Result<()> {
        same_len(
            || "ranking".into(),
            ranking.len(),
            || "sources".into(),
            self.label.len(),
        )?;
        let mut seen = vec![false; ranking.len()];
        for (i, &d) in ranking.iter().enumerate() {
            if d >= seen.len() || std::mem::replace(&mut seen[d], true) {
                return Err(AnalysisError::Invalid {
                    arg: format!("ranking[{i}]"),
                    reason: format!(
                        "document {d} is out of range or repeated; a ranking lists each of the {} documents once",
                        seen.len()
                    ),
                });
            }
        }
        Ok(())
    }

    fn multipliers(&self, ranking: &[usize], ks: &[usize], side: Side) -> Vec<SourceMultiplier> {
        let n = ranking.len();
        let mut out = Vec::new();
        for &k in ks.iter().filter(|&&k| k <= n) {
            let mut count = vec![0usize; self.names.len()];
            for &d in &ranking[..k] {
                count[self.label[d]] += 1;
            }
            for (s, name) in self.names.iter().enumerate() {
                let expected = k as f64 * self.counts[s] as f64 / n as f64;
                out.push(SourceMultiplier {
                    source: name.clone(),
                    side,
                    k,
                    count: count[s],
                    expected,
                    multiplier: count[s] as f64 / expected,
                });
            }
        }
        out
    }
}

/// The multiplier of one source at one `k` and side, averaged over a group's queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanMultiplier {
    /// The query group.
    pub group: String,
    /// The source label.
    pub source: String,
    /// Which end of the ranking.
    pub side: Side,
    /// How many documents were taken from that end.
    pub k: usize,
    /// Number of queries averaged.
    pub queries: usize,
    /// Mean multiplier over the queries.
    pub multiplier: f64,
    /// Sample standard deviation (divisor `n − 1`; 0 for one query) of the multipliers.
    pub std: f64,
}

/// Averages per-query multipliers (e.g. from [`query_source_multipliers`]) over each group's
/// queries, as the paper reports them.
///
/// `per_query[q]` holds query `q`'s entries; `groups[q]` labels it. Output: groups in order of
/// first appearance, and within a group the (source, side, k) entries in the order of the group's
/// first query. An entry missing from some query (which happens only when the queries were
/// computed with different `ks` or corpora) is averaged over the queries that have it.
///
/// # Errors
/// [`AnalysisError::Empty`] / [`AnalysisError::LengthMismatch`] when `groups` does not label every
/// query.
pub fn mean_multipliers<S: AsRef<str>>(
    per_query: &[Vec<SourceMultiplier>],
    groups: &[S],
) -> Result<Vec<MeanMultiplier>> {
    non_empty(|| "per_query".into(), per_query.len())?;
    check_labels("groups", groups.len(), "per_query", per_query.len())?;
    let mut out = Vec::new();
    for (group, idx) in group_indices(groups) {
        let mut keys: Vec<(&str, Side, usize)> = Vec::new();
        for &q in &idx {
            for m in &per_query[q] {
                let key = (m.source.as_str(), m.side, m.k);
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        for (source, side, k) in keys {
            let values: Vec<f64> = idx
                .iter()
                .filter_map(|&q| {
                    per_query[q]
                        .iter()
                        .find(|m| m.source == source && m.side == side && m.k == k)
                        .map(|m| m.multiplier)
                })
                .collect();
            out.push(MeanMultiplier {
                group: group.clone(),
                source: source.to_owned(),
                side,
                k,
                queries: values.len(),
                multiplier: mean(&values),
                std: sample_std(&values),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 documents: 10 "math", 30 "wiki", 60 "web".
    fn corpus() -> Vec<String> {
        (0..100)
            .map(|d| match d % 10 {
                0 => "math",
                1..=3 => "wiki",
                _ => "web",
            })
            .map(str::to_owned)
            .collect()
    }

    fn find<'a>(ms: &'a [SourceMultiplier], s: &str, side: Side, k: usize) -> &'a SourceMultiplier {
        ms.iter()
            .find(|m| m.source == s && m.side == side && m.k == k)
            .expect("entry present")
    }

    #[test]
    fn over_representation_by_construction() {
        let sources = corpus();
        // Scores: the five math docs 0, 10, 20, 30, 40 score highest, then five web docs; the
        // bottom ten are all wiki (1, 2, 3, 11, 12, 13, 21, 22, 23, 31).
        let mut scores = vec![0.0; 100];
        for (rank, d) in [0, 10, 20, 30, 40, 4, 5, 6, 7, 8].into_iter().enumerate() {
            scores[d] = 100.0 - rank as f64;
        }
        for (rank, d) in [1, 2, 3, 11, 12, 13, 21, 22, 23, 31]
            .into_iter()
            .enumerate()
        {
            scores[d] = -100.0 + rank as f64;
        }
        let ms = query_source_multipliers(&scores, &sources, &[10, 1000]).expect("valid");
        // k = 1000 > 100 is skipped; three sources × one k × two sides.
        assert_eq!(ms.len(), 6);
        let math = find(&ms, "math", Side::Top, 10);
        // expected = 10 · 10/100 = 1; five math docs in the top 10 → 5×.
        assert_eq!((math.count, math.expected, math.multiplier), (5, 1.0, 5.0));
        let web = find(&ms, "web", Side::Top, 10);
        assert_eq!(
            (web.count, web.expected, web.multiplier),
            (5, 6.0, 5.0 / 6.0)
        );
        let wiki = find(&ms, "wiki", Side::Top, 10);
        assert_eq!((wiki.count, wiki.multiplier), (0, 0.0)); // absent, still listed
        let wiki = find(&ms, "wiki", Side::Bottom, 10);
        assert_eq!((wiki.count, wiki.expected), (10, 3.0));
        assert!((wiki.multiplier - 10.0 / 3.0).abs() < 1e-15);
        // Sources sorted by name, top before bottom.
        let order: Vec<(&str, Side)> = ms.iter().map(|m| (m.source.as_str(), m.side)).collect();
        assert_eq!(
            order,
            [
                ("math", Side::Top),
                ("web", Side::Top),
                ("wiki", Side::Top),
                ("math", Side::Bottom),
                ("web", Side::Bottom),
                ("wiki", Side::Bottom)
            ]
        );
    }

    #[test]
    fn ranking_is_stable_and_puts_nan_last() {
        let s = [1.0, 3.0, 1.0, -2.0, 3.0];
        assert_eq!(ranking_by_score(&s, true), [1, 4, 0, 2, 3]);
        assert_eq!(ranking_by_score(&s, false), [3, 0, 2, 1, 4]);
        let s = [f64::NAN, 0.0, -1.0, -0.0, f64::NAN, 2.0];
        assert_eq!(ranking_by_score(&s, true), [5, 1, 3, 2, 0, 4]);
        assert_eq!(ranking_by_score(&s, false), [2, 1, 3, 5, 0, 4]);
        assert!(ranking_by_score(&[], true).is_empty());
    }

    #[test]
    fn bottom_is_the_start_of_the_ascending_ranking() {
        let sources = ["a", "b", "b", "b"];
        // "a" (document 0) has the lowest score.
        let scores = [-5.0, 1.0, 2.0, 3.0];
        let bottom = source_multipliers(
            &ranking_by_score(&scores, false),
            &sources,
            &[1],
            Side::Bottom,
        )
        .expect("valid");
        assert_eq!(
            (bottom[0].source.as_str(), bottom[0].side),
            ("a", Side::Bottom)
        );
        assert_eq!(bottom[0].multiplier, 4.0); // "a" expected 1/4, found once
        assert_eq!((bottom[1].source.as_str(), bottom[1].count), ("b", 0));
        let top = source_multipliers(&ranking_by_score(&scores, true), &sources, &[1], Side::Top)
            .expect("valid");
        assert_eq!((top[0].multiplier, top[1].count), (0.0, 1));
        let both = query_source_multipliers(&scores, &sources, &[1]).expect("valid");
        assert_eq!(both, [top, bottom].concat());
        assert!(matches!(
            query_source_multipliers(&[1.0, f64::NAN, 0.0, 0.0], &sources, &[1]),
            Err(AnalysisError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn ranking_and_ks_are_validated() {
        let sources = ["a", "b", "c"];
        assert!(matches!(
            source_multipliers(&[0, 1, 1], &sources, &[1], Side::Top),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "ranking[2]"
        ));
        assert!(matches!(
            source_multipliers(&[0, 1, 3], &sources, &[1], Side::Top),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "ranking[2]"
        ));
        assert!(matches!(
            source_multipliers(&[0, 1], &sources, &[1], Side::Top),
            Err(AnalysisError::LengthMismatch { .. })
        ));
        assert!(matches!(
            source_multipliers(&[0, 1, 2], &sources, &[1, 0], Side::Top),
            Err(AnalysisError::Invalid { arg, .. }) if arg == "ks[1]"
        ));
        assert!(matches!(
            query_source_multipliers(&[1.0, 2.0], &sources, &[1]),
            Err(AnalysisError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn default_ks_follow_the_paper() {
        assert_eq!(default_ks(1_000_000), [50, 500, 5000, 50_000, 500_000]);
        assert_eq!(default_ks(10_000), [50, 500, 5000]);
        assert_eq!(default_ks(9_999), [50, 500]);
        assert_eq!(default_ks(100), [50]);
        assert_eq!(default_ks(40), [20]);
        assert_eq!(default_ks(1), [1]);
        assert!(default_ks(0).is_empty());
    }

    #[test]
    fn group_means_over_queries() {
        let sources = ["a", "b", "b", "b"];
        // q0 ranks "a" first (4×), q1 ranks it last (0×), q2 (other group) first.
        let q = |first: bool| {
            let ranking = if first { [0, 1, 2, 3] } else { [1, 2, 3, 0] };
            source_multipliers(&ranking, &sources, &[1], Side::Top).expect("valid")
        };
        let per_query = vec![q(true), q(false), q(true)];
        let means = mean_multipliers(&per_query, &["r", "r", "f"]).expect("valid");
        let a_r = &means[0];
        assert_eq!(
            (a_r.group.as_str(), a_r.source.as_str(), a_r.queries),
            ("r", "a", 2)
        );
        assert_eq!(a_r.multiplier, 2.0);
        assert!((a_r.std - 8f64.sqrt()).abs() < 1e-12); // sample std of {4, 0}
        let b_r = &means[1];
        assert_eq!(
            (b_r.source.as_str(), b_r.multiplier),
            ("b", (0.0 + 4.0 / 3.0) / 2.0)
        );
        assert_eq!(
            (means[2].group.as_str(), means[2].multiplier, means[2].std),
            ("f", 4.0, 0.0)
        );
        assert_eq!(means.len(), 4);
    }
}
