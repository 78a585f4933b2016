//! The post-hoc path: sketch a corpus at one checkpoint into a store of the same format (the
//! paper's setting: every document's gradient at the final model), and token-wise influence.

use std::path::Path;

use burn::tensor::Device;
use influence_core::{MemorySink, Sink, SketchScheme, WindowRecord};
use influence_hook::{FitLabels, FitLoss, Hook, HookConfig, Probe, StepBatch};
use influence_store::Store;
use serde::Serialize;

use crate::AnalyzerError;
use crate::query::{PreparedQueries, load_window_model};
use crate::task::{Document, Task};

/// What [`sketch_corpus`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SketchSummary {
    /// Documents sketched.
    pub documents: usize,
    /// Batches (one "step" each in the store).
    pub batches: usize,
    /// Seconds taken.
    pub seconds: f64,
}

/// Sketches `docs` at `checkpoint` into `sink` (normally a new
/// [`influence_store::StoreWriter`]) without changing the model: every batch is one step of a
/// single window with learning rate 1, whose factors and corrected eigenvalues are fitted at
/// the checkpoint. Under [`SketchScheme::Eigenbasis`] a first pass fits the checkpoint's factors
/// and the sketches are then the documents' coordinates in their own eigenbasis (two passes). `config`'s layers, sketch sizes, projection and fit settings apply; its
/// `loss_reduction` is set from the task and `window_steps` to the number of batches.
///
/// `progress` is called with the batches done.
pub fn sketch_corpus<T: Task>(
    task: &T,
    checkpoint: &Path,
    docs: &[Document],
    mut config: HookConfig,
    sink: impl Sink + 'static,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SketchSummary, AnalyzerError> {
    let start = std::time::Instant::now();
    let device = device.clone().autodiff();
    let batches = task
        .document_batches(docs, &device)
        .map_err(AnalyzerError::task("batching the corpus"))?;
    if batches.is_empty() {
        return Err(AnalyzerError::argument("corpus", "no documents to sketch"));
    }
    config.loss_reduction = task.loss_reduction();
    config.window_steps = batches.len() as u64;
    let eigen = matches!(config.effective_scheme(), SketchScheme::Eigenbasis { .. });
    let total = batches.len() * if eigen { 2 } else { 1 };
    let mut done = 0;
    let basis =
        if eigen {
            // Eigenbasis sketches need the checkpoint's own factors first: a pass without sketches.
            let fit = MemorySink::new();
            let pass = config
                .clone()
                .sketches(false)
                .sketch_scheme(SketchScheme::Random);
            run_pass(
                task,
                checkpoint,
                &batches,
                pass,
                fit.clone(),
                None,
                &device,
                &mut |_| {
                    done += 1;
                    progress(done, total);
                },
            )?;
            let window = fit.store().windows.pop();
            Some(window.ok_or_else(|| {
                AnalyzerError::Mismatch("the factor pass closed no window".into())
            })?)
        } else {
            None
        };
    run_pass(
        task,
        checkpoint,
        &batches,
        config,
        sink,
        basis.as_ref(),
        &device,
        &mut |_| {
            done += 1;
            progress(done, total);
        },
    )?;
    Ok(SketchSummary {
        documents: docs.len(),
        batches: total,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One pass of the hook over `batches` at `checkpoint` (one window, learning rate 1).
#[allow(clippy::too_many_arguments)]
fn run_pass<T: Task>(
    task: &T,
    checkpoint: &Path,
    batches: &[(T::Batch, StepBatch)],
    config: HookConfig,
    sink: impl Sink + 'static,
    basis: Option<&WindowRecord>,
    device: &Device,
    progress: &mut dyn FnMut(usize),
) -> Result<(), AnalyzerError> {
    let hook = Hook::<T::Batch>::new(config, sink)?;
    if let Some(b) = basis {
        hook.basis_from(b)?;
    }
    let model = task
        .load_model(checkpoint, &hook.tap(), device)
        .map_err(AnalyzerError::task(format!(
            "loading the checkpoint {}",
            checkpoint.display()
        )))?;
    for (i, (batch, step)) in batches.iter().enumerate() {
        hook.arm();
        let mut grads = model.fit_loss(batch, FitLabels::Empirical).backward();
        hook.capture(&mut grads, step, batch)?;
        hook.end_step(1.0, &model)?;
        progress(i + 1);
    }
    hook.finish(&model)?;
    Ok(())
}

/// A document's score split over its positions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfluence {
    /// Document id.
    pub doc_id: u64,
    /// The text of each position (the input token there).
    pub tokens: Vec<String>,
    /// Per query: the score of each position, `⟨Q̃, g_t a_tᵀ⟩` summed over layers. Their sum is
    /// the document's exact (unsketched) score at this checkpoint.
    pub scores: Vec<Vec<f32>>,
}

/// Splits documents' scores over their tokens at one window's checkpoint (Grosse et al. 2023).
pub struct TokenScorer<'a, T: Task> {
    task: &'a T,
    model: T::Model,
    probe: Probe,
    /// Preconditioned query gradients in the probe's layer order.
    matrices: Vec<Vec<f32>>,
    queries: usize,
    device: Device,
}

impl<'a, T: Task> TokenScorer<'a, T> {
    /// Loads the checkpoint of `prepared`'s window.
    pub fn new(
        task: &'a T,
        store: &Store,
        prepared: &PreparedQueries,
        device: &Device,
    ) -> Result<Self, AnalyzerError> {
        let (model, probe) = load_window_model(task, store, prepared.window, device)?;
        let names: Vec<String> = store.run().layers.iter().map(|l| l.name.clone()).collect();
        let matrices = probe
            .layers()
            .iter()
            .map(|l| {
                names
                    .iter()
                    .position(|n| *n == l.name)
                    .map(|i| prepared.preconditioned[i].clone())
                    .ok_or_else(|| {
                        AnalyzerError::Mismatch(format!("layer {} is not in the store", l.name))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            task,
            model,
            probe,
            matrices,
            queries: prepared.len(),
            device: device.clone().autodiff(),
        })
    }

    /// Token-wise scores of `doc` for every query.
    pub fn score(&self, doc: &Document) -> Result<TokenInfluence, AnalyzerError> {
        let what = || format!("batching document {}", doc.id);
        let batches = self
            .task
            .document_batches(std::slice::from_ref(doc), &self.device)
            .map_err(AnalyzerError::task(what()))?;
        let [(batch, step)] = <[_; 1]>::try_from(batches).map_err(|b: Vec<_>| {
            AnalyzerError::task(what())(format!("{} batches for one document", b.len()).into())
        })?;
        self.probe.arm();
        let mut grads = self.model.fit_loss(&batch, FitLabels::Empirical).backward();
        let scale = step.loss_scale(self.task.loss_reduction());
        let flat = self
            .probe
            .token_scores(&mut grads, &step, scale, &self.matrices)?;
        let positions: Vec<usize> = step
            .doc_index
            .iter()
            .enumerate()
            .filter(|(_, d)| **d >= 0)
            .map(|(i, _)| i)
            .collect();
        let n = step.doc_index.len();
        let scores = (0..self.queries)
            .map(|q| positions.iter().map(|&p| flat[q * n + p]).collect())
            .collect();
        let mut tokens = self
            .task
            .token_texts(doc)
            .map_err(AnalyzerError::task(format!(
                "token texts of document {}",
                doc.id
            )))?;
        tokens.resize(positions.len(), String::new());
        Ok(TokenInfluence {
            doc_id: doc.id,
            tokens,
            scores,
        })
    }
}
