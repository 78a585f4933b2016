//! How the analyzer reaches the user's model: the [`Task`] trait (in the manner of
//! kronfluence's `Task`), and the query and document types it is given.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use influence_core::LossReduction;
use influence_hook::{FitLoss, StepBatch, Tap};
use serde::{Deserialize, Serialize};

use crate::TaskError;

/// A query: the measurement is `log p(completion | prompt)`, summed over completion tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// A name for the query (unique within a file).
    pub id: String,
    /// The prompt (not scored).
    pub prompt: String,
    /// The completion whose log-probability is measured.
    pub completion: String,
    /// Every other field of the query's JSON line (group, answer, steps, …), kept for reports.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A training document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The document's id (as in the store's `doc_id` column).
    pub id: u64,
    /// Its source label.
    pub source: String,
    /// Its text.
    pub text: String,
}

/// What the analyzer needs from a model. Implement it once for your model; the bundled GPT's
/// implementation is `tiny_gpt::task::GptTask`.
///
/// The model's Linear layers must be [`influence_hook::TrackedLinear`]s registered on the `tap`
/// the analyzer passes to [`Task::load_model`], under the same names as when the store was
/// written.
pub trait Task {
    /// The model.
    type Model: Module + FitLoss<Self::Batch>;
    /// The model's batch type.
    type Batch: Clone + Send + 'static;

    /// Builds the model with its tracked layers registered on `tap` and loads the burnpack
    /// checkpoint at `checkpoint` (a window's `checkpoints/window-NNNNN.bpk`), on `device`
    /// (an autodiff device).
    fn load_model(
        &self,
        checkpoint: &Path,
        tap: &Tap,
        device: &Device,
    ) -> Result<Self::Model, TaskError>;

    /// One sequence per query, prompt then completion. The [`StepBatch`] marks every prompt and
    /// completion position of query `i` with document index `i` (`docs[i]` describes query
    /// `i`) and padding with −1: the query's gradient sums over all its positions.
    fn query_batch(
        &self,
        queries: &[Query],
        device: &Device,
    ) -> Result<(Self::Batch, StepBatch), TaskError>;

    /// `−log p` of every completion token, 0 on prompt and padding positions: `[batch, seq]`,
    /// differentiable. The analyzer sums it: the query loss is `−f`.
    fn completion_nll(&self, model: &Self::Model, batch: &Self::Batch) -> Tensor<2>;

    /// Training batches of `docs` (each document whole, several per batch allowed), as the
    /// model trained on them; [`FitLoss::fit_loss`] with empirical labels is their loss.
    fn document_batches(
        &self,
        docs: &[Document],
        device: &Device,
    ) -> Result<Vec<(Self::Batch, StepBatch)>, TaskError>;

    /// How [`FitLoss::fit_loss`] reduces over tokens.
    fn loss_reduction(&self) -> LossReduction;

    /// The training corpus (for post-hoc sketching and for showing top documents).
    fn corpus(&self) -> Result<Vec<Document>, TaskError>;

    /// The text of each position of `doc` in the batches of [`Task::document_batches`] (the
    /// input token at that position), for token-wise influence.
    fn token_texts(&self, doc: &Document) -> Result<Vec<String>, TaskError>;

    /// The model's own (greedy) completion of `prompt`, at most `max_tokens` tokens, so that a
    /// report can grade it and score what the model actually says. `Ok(None)` (the default):
    /// the model cannot generate, and the query file's completion is used as given.
    fn generate(
        &self,
        model: &Self::Model,
        prompt: &str,
        max_tokens: usize,
        device: &Device,
    ) -> Result<Option<String>, TaskError> {
        let _ = (model, prompt, max_tokens, device);
        Ok(None)
    }
}
