//! A tiny decoder-only transformer trained from scratch with the influence hook attached.
//!
//! * [`corpus`]: generated, source-labelled documents (facts, arithmetic, slopes, equations, code);
//! * [`tokenizer`]: byte-level BPE trained on them with Hugging Face `tokenizers`;
//! * [`data`]: packing into sequences with per-document positions and attention;
//! * [`model`]: the GPT, every Linear a `TrackedLinear`;
//! * [`train`]: the hand-written loop; [`learner`]: the same with burn-train's `Learner`;
//! * [`validate`]: retraining on subsets of the corpus, LDS, top-k removal and the price of
//!   sketching (`docs/accuracy.md`); [`kronfluence`]: the export for the comparison with
//!   kronfluence, and our side of it.

pub mod corpus;
pub mod data;
pub mod facts;
pub mod kronfluence;
pub mod learner;
pub mod model;
pub mod reranking;
pub mod task;
pub mod tokenizer;
pub mod train;
pub mod validate;
pub mod whiten;

/// Logs of the example's binaries to stderr: `RUST_LOG` when set, warnings otherwise.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}
