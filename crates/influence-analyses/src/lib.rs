//! The analyses of Ruis et al. (2024), *Procedural Knowledge in Pretraining Drives Reasoning in
//! Large Language Models*, over influence scores.
//!
//! Pure functions, no I/O: they take score vectors indexed `[query][document]` (all rows the same
//! length), per-document source labels and per-query [`QueryMeta`], and return plain serde
//! structs ready to be written as JSON.
//!
//! | analysis | functions |
//! | --- | --- |
//! | query×query correlation | [`correlation_matrix`], [`group_correlations`], [`task_split`] |
//! | concentration | [`concentration_curve`], [`group_mean_curves`], [`power_law_slope`], [`welch_t_test`] |
//! | answer search | [`answer_search`], [`contains_answer`], [`answer_search_rates`] |
//! | validation study (LDS) | [`pearson`], [`spearman`], [`top_k_overlap`], [`bootstrap_mean_ci`], [`subset_predictions`], [`lds`] |
//! | sources | [`ranking_by_score`], [`default_ks`], [`source_multipliers`], [`query_source_multipliers`], [`mean_multipliers`] |
//! | layers | [`layer_shares`], [`group_layer_shares`] |
//!
//! Sign convention: a positive score means training on the document made the completion more
//! likely. Group summaries list groups in order of first appearance. Bad input to the statistics
//! (empty, ragged, NaN, out of range) is an [`AnalysisError`] naming the argument, never a panic
//! or a silent NaN; the two helpers that cannot fail, [`ranking_by_score`] (NaN ranked last) and
//! [`answer_search`] (nothing to find is not found), document how they treat odd input.
//!
//! ```
//! use influence_analyses::{
//!     answer_search, concentration_curve, correlation_matrix, group_correlations, groups,
//!     power_law_slope, query_source_multipliers, QueryMeta, Side,
//! };
//!
//! # fn main() -> Result<(), influence_analyses::AnalysisError> {
//! // Three queries scored against five documents.
//! let scores = vec![
//!     vec![4.0, 2.0, 1.0, -1.0, 0.5],
//!     vec![8.0, 4.0, 2.0, -2.0, 1.0], // twice the first: r = 1
//!     vec![0.1, -0.3, 0.2, 0.9, -0.4],
//! ];
//! let metas: Vec<QueryMeta> = [("reasoning", "arithmetic"), ("reasoning", "arithmetic"), ("factual", "capitals")]
//!     .iter()
//!     .enumerate()
//!     .map(|(i, (group, task))| QueryMeta {
//!         id: format!("q{i}"),
//!         group: (*group).into(),
//!         task: (*task).into(),
//!         correct: Some(true),
//!         nats: 2.0,
//!     })
//!     .collect();
//!
//! let m = correlation_matrix(&scores)?;
//! assert!((m.r[0][1] - 1.0).abs() < 1e-12);
//! let summaries = group_correlations(&m, &groups(&metas))?;
//! assert_eq!((summaries[0].a.as_str(), summaries[0].summary.pairs), ("reasoning", 1));
//!
//! // Half of query 0's four positive documents carry 6 of its 7.5 positive units.
//! let curve = concentration_curve(&scores[0], metas[0].nats, &[50.0, 100.0])?;
//! assert_eq!(curve.absolute, [3.0, 3.75]);
//! assert_eq!(curve.relative, [0.8, 1.0]);
//! let fit = power_law_slope(&scores[0], 500)?;
//! assert!(fit.alpha > 0.0);
//!
//! // Is the answer 6 (of "4 + 2") in the top two documents?
//! let hit = answer_search(&["4 + 2 = 6", "16 apples"], &["6"]);
//! assert_eq!(hit.first_rank, [Some(1)]);
//!
//! let sources = ["math", "web", "web", "web", "web"];
//! let ms = query_source_multipliers(&scores[0], &sources, &[1])?;
//! let top_math = ms.iter().find(|x| x.source == "math" && x.side == Side::Top);
//! assert_eq!(top_math.map(|x| x.multiplier), Some(5.0)); // 1 found / (1 · 1/5) expected
//! # Ok(())
//! # }
//! ```

mod answers;
mod concentration;
mod correlation;
mod error;
mod layers;
mod sources;
mod stats;
mod validation;

use serde::{Deserialize, Serialize};

pub use answers::{AnswerHit, AnswerRate, answer_search, answer_search_rates, contains_answer};
pub use concentration::{
    Curve, GroupCurve, PowerLaw, concentration_curve, group_mean_curves, percent_grid,
    power_law_slope,
};
pub use correlation::{
    CorrelationMatrix, GroupPair, PairSummary, TaskSplit, correlation_matrix, group_correlations,
    task_split,
};
pub use error::{AnalysisError, Result};
pub use layers::{GroupLayerShares, group_layer_shares, layer_shares};
pub use sources::{
    MeanMultiplier, Side, SourceMultiplier, default_ks, mean_multipliers, query_source_multipliers,
    ranking_by_score, source_multipliers,
};
pub use stats::{TTest, pearson_p, two_sided_t_p, welch_t_test};
pub use validation::{
    BOOTSTRAP_RESAMPLES, Lds, MeanCi, average_ranks, bootstrap_mean_ci, lds, pearson, spearman,
    subset_predictions, top_k_overlap,
};

/// What the analyses need to know about a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryMeta {
    /// Unique id of the query.
    pub id: String,
    /// Query group: `"factual"`, `"reasoning"`, `"control"`, …
    pub group: String,
    /// Task within the group: `"capitals"`, `"arithmetic"`, `"slopes"`, `"linear"`, …
    pub task: String,
    /// Whether the model's completion was right; `None` when not judged.
    pub correct: Option<bool>,
    /// The completion's negative log-likelihood `−log p(completion | prompt)`, in nats.
    pub nats: f64,
}

/// The group label of every query, in order (for the `groups` arguments).
pub fn groups(metas: &[QueryMeta]) -> Vec<String> {
    metas.iter().map(|m| m.group.clone()).collect()
}

/// The task label of every query, in order (pass to [`group_correlations`] for per-task
/// summaries).
pub fn tasks(metas: &[QueryMeta]) -> Vec<String> {
    metas.iter().map(|m| m.task.clone()).collect()
}
