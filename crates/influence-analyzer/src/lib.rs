//! Scores queries against a burn-influence store, on any burn device, without re-running the
//! corpus.
//!
//! For each complete window of the store it loads the window's checkpoint into the user's model
//! (through the [`Task`] trait), computes the gradient of each query's loss
//! `−log p(completion | prompt)` per tracked layer, preconditions it with the window's EK-FAC
//! factors `Q̃ = Q_S[(Q_Sᵀ Q Q_A) ⊘ (Λ + λ)]Q_Aᵀ` (or KFAC, the diagonal, or nothing), projects it
//! with the store's seeded projections, and then streams the shards once — decoded in parallel,
//! bounded in memory — scoring every row against all queries as one matmul per layer on the
//! device. A document's score is the sum over its rows, each against its own window's queries:
//!
//! `I(q, n) = Σ_ℓ ⟨P_gᵀ Q̃_ℓ P_a, K_{n,ℓ}⟩ ≈ ∇f(θ)ᵀ (F + λI)⁻¹ ∇log p(n)`,
//!
//! positive when training on `n` made the completion more likely.
//!
//! ```no_run
//! # fn demo<T: influence_analyzer::Task>(task: &T) -> Result<(), influence_analyzer::AnalyzerError> {
//! use influence_analyzer::{ScoreConfig, analyze, read_queries};
//! use influence_store::Store;
//!
//! let store = Store::open("runs/tiny-gpt/store")?;
//! let queries = read_queries("queries.jsonl".as_ref())?;
//! let device = burn::tensor::Device::flex();
//! let analysis = analyze(task, &store, &queries, &ScoreConfig::default(), &device, &mut |_| {})?;
//! let report = analysis.report(10, 10);
//! println!("{}", report.queries[0].top[0].doc_id);
//! # Ok(()) }
//! ```
//!
//! The post-hoc path ([`sketch_corpus`]) writes a store of the same format for a corpus at one
//! checkpoint; [`TokenScorer`] splits a document's score over its tokens; [`rerank()`] scores
//! each query's top and bottom candidates again with their exact gradients.
//! [`ExternalScores`] reads a score matrix computed by another tool (Arrow or CSV) into an
//! [`Analysis`], so the same reports run on it.

mod analyze;
mod checkpoint;
mod config;
pub mod device;
mod error;
mod external;
mod posthoc;
pub mod query;
mod rerank;
mod results;
pub mod scorer;
mod task;

pub use analyze::{Analysis, Progress, analyze, prepare_queries, windows};
pub use checkpoint::{CheckpointReport, verify_checkpoints};
pub use config::ScoreConfig;
pub use error::{AnalyzerError, TaskError};
pub use external::{EXTERNAL_LAYER, ExternalScores, NATS_METADATA, SCORE_PREFIX};
pub use influence_ekfac::{Damping, Strategy};
pub use posthoc::{SketchSummary, TokenInfluence, TokenScorer, sketch_corpus};
pub use query::{PreparedQueries, QueryGradients, read_queries};
pub use rerank::{RerankStats, Reranked, rerank};
pub use results::{QueryResult, Ranked, Report, write_scores_arrow};
pub use scorer::{DocInfo, ScoreStats, Scores, layer_splits, score_store};
pub use task::{Document, Query, Task};
