//! Does a query's answer occur in its most influential documents?
//!
//! For a factual query the needle is the full answer; for a reasoning query, every intermediate
//! step's result. The paper searches the top 500 documents and reports the share of queries whose
//! needles are *all* found, per group and separately for correct and wrong completions.
//!
//! Matching is honest about numbers: the needle `12` is found in `x = 12.` and `(12)`, but not in
//! `123`, `3.12`, `12.5` or `12,000`.

use serde::{Deserialize, Serialize};

use crate::QueryMeta;
use crate::error::{Result, non_empty, same_len};
use crate::stats::group_indices;

/// The result of searching one query's top documents for its needles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerHit {
    /// `found[i]`: needle `i` occurs in at least one of the documents.
    pub found: Vec<bool>,
    /// Every needle was found (not necessarily in the same document).
    pub all_found: bool,
    /// `first_rank[i]`: the 1-based rank of the best document containing needle `i`.
    pub first_rank: Vec<Option<usize>>,
}

/// Searches `top_docs` (best first) for each of `needles`.
///
/// Pass only the top N documents (the paper: N = 500). See [`contains_answer`] for the matching
/// rules. Nothing here can fail: a blank needle is never found, and a query without needles (or
/// without documents) has `all_found == false` — "no answer to look for" does not count as found.
pub fn answer_search<D: AsRef<str>, N: AsRef<str>>(top_docs: &[D], needles: &[N]) -> AnswerHit {
    let docs: Vec<&str> = top_docs.iter().map(AsRef::as_ref).collect();
    let needles: Vec<&str> = needles.iter().map(AsRef::as_ref).collect();
    answer_search_impl(&docs, &needles)
}

fn answer_search_impl(docs: &[&str], needles: &[&str]) -> AnswerHit {
    let needles: Vec<String> = needles.iter().map(|n| n.trim().to_lowercase()).collect();
    let mut first_rank: Vec<Option<usize>> = vec![None; needles.len()];
    for (rank, doc) in docs.iter().enumerate() {
        let pending = first_rank
            .iter()
            .zip(&needles)
            .any(|(slot, n)| slot.is_none() && !n.is_empty());
        if !pending {
            break;
        }
        let doc = doc.to_lowercase();
        for (slot, needle) in first_rank.iter_mut().zip(&needles) {
            if slot.is_none() && !needle.is_empty() && find_lowercase(&doc, needle) {
                *slot = Some(rank + 1);
            }
        }
    }
    let found: Vec<bool> = first_rank.iter().map(Option::is_some).collect();
    AnswerHit {
        all_found: !found.is_empty() && found.iter().all(|&f| f),
        found,
        first_rank,
    }
}

/// Whether `needle` occurs in `text` as a whole token, ignoring case.
///
/// The rules apply at each end of the needle according to its edge character:
/// - **digit**: the neighbour must not be a digit, nor a `.` or `,` followed (after the needle)
///   or preceded (before it) by a digit that makes it part of a longer number — `12` is not in
///   `123`, `3.12`, `12.5`; `12` is not in `12,000` and `200` is not in `1,200` (a comma followed
///   by exactly three digits is read as a thousands separator; `1,2,3` lists still match);
/// - **`-` before a digit** (a negative number): the character before must not be a digit or a
///   letter, so `-12` is not found in the subtraction `5-12`;
/// - **letter**: the neighbour must not be a letter, digit or `_` (a word boundary);
/// - anything else (punctuation, spaces): no condition.
///
/// A `-` before an unsigned needle is allowed: `12` is found in `5-12` and in `x = -12` (we cannot
/// tell a minus sign from a hyphen or a subtraction). Numbers are compared as written: `12` is not
/// found in `12.0`, nor `1200` in `1,200`.
pub fn contains_answer(text: &str, needle: &str) -> bool {
    let needle = needle.trim().to_lowercase();
    !needle.is_empty() && find_lowercase(&text.to_lowercase(), &needle)
}

fn find_lowercase(text: &str, needle: &str) -> bool {
    text.match_indices(needle).any(|(start, m)| {
        let before = &text[..start];
        let after = &text[start + m.len()..];
        left_ok(needle, before) && right_ok(needle, after)
    })
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn left_ok(needle: &str, before: &str) -> bool {
    let mut chars = needle.chars();
    let (Some(first), second) = (chars.next(), chars.next()) else {
        return true;
    };
    let mut prev = before.chars().rev();
    let p1 = prev.next();
    let p2 = prev.next();
    if first.is_ascii_digit() {
        match p1 {
            Some(c) if c.is_ascii_digit() => false,
            // "3.12": a decimal part.
            Some('.') => !p2.is_some_and(|c| c.is_ascii_digit()),
            // "1,200": a thousands group (needle starting with exactly three digits).
            Some(',') => !(p2.is_some_and(|c| c.is_ascii_digit()) && leading_digits(needle) == 3),
            _ => true,
        }
    } else if is_word(first) || (first == '-' && second.is_some_and(|c| c.is_ascii_digit())) {
        // A word, or a negative number: not glued to a preceding word ("5-12" is a subtraction).
        !p1.is_some_and(is_word)
    } else {
        true
    }
}

fn right_ok(needle: &str, after: &str) -> bool {
    let Some(last) = needle.chars().next_back() else {
        return true;
    };
    let mut next = after.chars();
    let n1 = next.next();
    if last.is_ascii_digit() {
        match n1 {
            Some(c) if c.is_ascii_digit() => false,
            // "12.5": a decimal part.
            Some('.') => !next.next().is_some_and(|c| c.is_ascii_digit()),
            // "12,000": a thousands group follows.
            Some(',') => leading_digits(next.as_str()) != 3,
            _ => true,
        }
    } else if is_word(last) {
        !n1.is_some_and(is_word)
    } else {
        true
    }
}

fn leading_digits(s: &str) -> usize {
    s.chars().take_while(char::is_ascii_digit).count()
}

/// The share of a group's queries whose needles were all found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRate {
    /// The group.
    pub group: String,
    /// Which of the group's completions are counted: right (`Some(true)`), wrong
    /// (`Some(false)`) or not judged (`None`), as in [`QueryMeta::correct`].
    pub correct: Option<bool>,
    /// How many queries are counted.
    pub queries: usize,
    /// How many of them had every needle found.
    pub found_all: usize,
    /// `found_all / queries`.
    pub rate: f64,
}

/// Answer-search rates per group, correct and wrong completions kept apart: for each group (in
/// order of first appearance) one row per value of [`QueryMeta::correct`] that occurs in it, in
/// the order `Some(true)`, `Some(false)`, `None`. Sum the rows of a group for its overall rate.
///
/// # Errors
/// [`Empty`](crate::AnalysisError::Empty) / [`LengthMismatch`](crate::AnalysisError::LengthMismatch)
/// when `metas` does not describe
/// every hit.
pub fn answer_search_rates(hits: &[AnswerHit], metas: &[QueryMeta]) -> Result<Vec<AnswerRate>> {
    non_empty(|| "hits".into(), hits.len())?;
    same_len(|| "metas".into(), metas.len(), || "hits".into(), hits.len())?;
    let groups: Vec<&str> = metas.iter().map(|m| m.group.as_str()).collect();
    let mut out = Vec::new();
    for (group, idx) in group_indices(&groups) {
        for correct in [Some(true), Some(false), None] {
            let counted: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| metas[i].correct == correct)
                .collect();
            if counted.is_empty() {
                continue;
            }
            let found_all = counted.iter().filter(|&&i| hits[i].all_found).count();
            out.push(AnswerRate {
                group: group.clone(),
                correct,
                queries: counted.len(),
                found_all,
                rate: found_all as f64 / counted.len() as f64,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AnalysisError;

    #[test]
    fn numbers_match_only_as_whole_numbers() {
        for text in [
            "x = 12",
            "(12)",
            "it is 12.",
            "12, 13",
            "5-12",
            "x=-12",
            "1,2,12",
            "12\n",
        ] {
            assert!(contains_answer(text, "12"), "{text:?} should contain 12");
        }
        for text in ["123", "3.12", "112", "12.5", "12,000", "v 120", "1.2"] {
            assert!(!contains_answer(text, "12"), "{text:?} must not contain 12");
        }
        assert!(!contains_answer("1,200 people", "200"));
        assert!(contains_answer("1, 200 people", "200"));
        assert!(contains_answer("slope is 0.5.", "0.5"));
        assert!(!contains_answer("slope is 10.5", "0.5"));
        assert!(contains_answer("x = -7", "-7"));
        assert!(!contains_answer("5-7", "-7"));
    }

    #[test]
    fn text_matches_whole_words_ignoring_case() {
        assert!(contains_answer("The capital is PARIS.", "Paris"));
        assert!(contains_answer("capital: paris", "  paris "));
        assert!(!contains_answer("Parisian cafés", "Paris"));
        assert!(!contains_answer("comparison", "paris"));
        assert!(contains_answer("Mount Everest, Nepal", "mount everest"));
        assert!(contains_answer("(4 + 2) * 15 = 90", "(4 + 2)"));
        assert!(!contains_answer("anything", ""));
    }

    #[test]
    fn answer_at_rank_three() {
        let docs = [
            "The number 123 and 3.12 appear here.",
            "Nothing to see; 6 apples.",
            "First 4 + 2 = 6, then 6 * 15 = 90.",
            "90 again, and 6.",
        ];
        let needles = ["6".to_owned(), "90".to_owned()];
        let top3 = answer_search(&docs[..3], &needles);
        assert_eq!(top3.found, [true, true]);
        assert!(top3.all_found);
        assert_eq!(top3.first_rank, [Some(2), Some(3)]);
        let top2 = answer_search(&docs[..2], &needles);
        assert_eq!(
            (top2.found.clone(), top2.all_found),
            (vec![true, false], false)
        );
        assert_eq!(top2.first_rank, [Some(2), None]);
        let top1 = answer_search(&docs[..1], &["12", "3"]);
        assert_eq!(top1.first_rank, [None, None]);
    }

    #[test]
    fn nothing_to_find_is_not_found() {
        let none: [&str; 0] = [];
        let no_docs = answer_search(&none, &["x"]);
        assert_eq!((no_docs.found, no_docs.all_found), (vec![false], false));
        let no_needles = answer_search(&["doc"], &none);
        assert!(no_needles.found.is_empty() && !no_needles.all_found);
        let blank = answer_search(&["x y"], &["x", " "]);
        assert_eq!(blank.first_rank, [Some(1), None]);
        assert!(!blank.all_found);
    }

    fn meta(group: &str, correct: Option<bool>) -> QueryMeta {
        QueryMeta {
            id: String::new(),
            group: group.into(),
            task: String::new(),
            correct,
            nats: 1.0,
        }
    }

    fn hit(all_found: bool) -> AnswerHit {
        AnswerHit {
            found: vec![all_found],
            all_found,
            first_rank: vec![all_found.then_some(1)],
        }
    }

    #[test]
    fn rates_per_group_correct_and_wrong_apart() {
        let metas = [
            meta("factual", Some(true)),
            meta("factual", Some(true)),
            meta("factual", Some(false)),
            meta("reasoning", Some(false)),
            meta("factual", Some(false)),
            meta("reasoning", None),
        ];
        let hits = [
            hit(true),
            hit(false),
            hit(true),
            hit(false),
            hit(false),
            hit(true),
        ];
        let rates = answer_search_rates(&hits, &metas).expect("valid");
        let rows: Vec<(&str, Option<bool>, usize, usize)> = rates
            .iter()
            .map(|r| (r.group.as_str(), r.correct, r.queries, r.found_all))
            .collect();
        assert_eq!(
            rows,
            [
                ("factual", Some(true), 2, 1),
                ("factual", Some(false), 2, 1),
                ("reasoning", Some(false), 1, 0),
                ("reasoning", None, 1, 1),
            ]
        );
        assert_eq!(rates[0].rate, 0.5);
        assert!(matches!(
            answer_search_rates(&hits[..5], &metas),
            Err(AnalysisError::LengthMismatch { .. })
        ));
        let json = serde_json::to_string(&rates).expect("serialises");
        let back: Vec<AnswerRate> = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, rates);
    }
}
