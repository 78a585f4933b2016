//! A one-layer model as an analyzer [`Task`]: `s = W x (+ b)`, loss `½‖s − y‖²` summed, one
//! "token" per document. Small enough for a dense Fisher; documents and queries are written as
//! text (`"x0 x1 … ; y0 y1 …"`, queries with `x` as prompt and `y` as completion).

use std::path::Path;

use burn::module::Module;
use burn::nn::{Initializer, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};
use influence_analyzer::{Document, Query, Task, TaskError};
use influence_core::LossReduction;
use influence_hook::{DocRef, FitLabels, FitLoss, StepBatch, Tap, TrackedLinear};

/// The model.
#[derive(Module, Debug)]
pub struct LinearModel {
    /// The one tracked layer.
    pub proj: TrackedLinear,
}

/// A batch: inputs and targets `[b, 1, d]`.
#[derive(Clone, Debug)]
pub struct LinearBatch {
    /// Inputs.
    pub x: Tensor<3>,
    /// Targets.
    pub y: Tensor<3>,
}

impl FitLoss<LinearBatch> for LinearModel {
    fn fit_loss(&self, b: &LinearBatch, _labels: FitLabels) -> Tensor<1> {
        (self.proj.forward(b.x.clone()) - b.y.clone())
            .powf_scalar(2.0)
            .sum()
            .mul_scalar(0.5)
    }
}

/// The task.
pub struct LinearTask {
    /// Input width.
    pub d_in: usize,
    /// Output width.
    pub d_out: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// The corpus.
    pub docs: Vec<Document>,
    /// Documents per batch.
    pub batch: usize,
}

/// `"1 0 2"`: numbers separated by spaces.
pub fn join(v: &[f32]) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `"1 0 2 ; 0.5 -1"` for `x`, `y`.
pub fn text_of(x: &[f32], y: &[f32]) -> String {
    format!("{} ; {}", join(x), join(y))
}

fn numbers(s: &str, n: usize) -> Result<Vec<f32>, TaskError> {
    let v: Vec<f32> = s
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{s:?}: {e}"))?;
    if v.len() != n {
        return Err(format!("{s:?}: {} numbers, expected {n}", v.len()).into());
    }
    Ok(v)
}

impl LinearTask {
    /// A fresh model (weights zero when `zero`) with its layer on `tap`.
    pub fn model(&self, tap: &Tap, device: &Device, zero: bool) -> LinearModel {
        let mut c = LinearConfig::new(self.d_in, self.d_out).with_bias(self.bias);
        if zero {
            c = c.with_initializer(Initializer::Zeros);
        }
        LinearModel {
            proj: TrackedLinear::new(c.init(device), "proj", tap),
        }
    }

    fn batch(&self, pairs: &[(Vec<f32>, Vec<f32>)], device: &Device) -> LinearBatch {
        let b = pairs.len();
        let x: Vec<f32> = pairs.iter().flat_map(|p| p.0.clone()).collect();
        let y: Vec<f32> = pairs.iter().flat_map(|p| p.1.clone()).collect();
        LinearBatch {
            x: Tensor::from_data(TensorData::new(x, [b, 1, self.d_in]), device),
            y: Tensor::from_data(TensorData::new(y, [b, 1, self.d_out]), device),
        }
    }

    fn step(refs: Vec<DocRef>) -> StepBatch {
        StepBatch {
            batch_size: refs.len(),
            seq_len: 1,
            doc_index: (0..refs.len() as i32).collect(),
            docs: refs,
            loss_tokens: None,
            token_loss: None,
            loss_multiplier: None,
        }
    }
}

impl Task for LinearTask {
    type Model = LinearModel;
    type Batch = LinearBatch;

    fn load_model(
        &self,
        checkpoint: &Path,
        tap: &Tap,
        device: &Device,
    ) -> Result<LinearModel, TaskError> {
        influence_hook::unseeded(|| self.model(tap, device, false))
            .try_load_file(checkpoint)
            .map_err(|e| e.to_string().into())
    }

    fn query_batch(
        &self,
        queries: &[Query],
        device: &Device,
    ) -> Result<(LinearBatch, StepBatch), TaskError> {
        let pairs = queries
            .iter()
            .map(|q| {
                Ok((
                    numbers(&q.prompt, self.d_in)?,
                    numbers(&q.completion, self.d_out)?,
                ))
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        let refs = (0..queries.len())
            .map(|i| DocRef {
                id: i as u64,
                source: "query".into(),
            })
            .collect();
        Ok((self.batch(&pairs, device), Self::step(refs)))
    }

    fn completion_nll(&self, model: &LinearModel, batch: &LinearBatch) -> Tensor<2> {
        let [b, _, _] = batch.x.dims();
        (model.proj.forward(batch.x.clone()) - batch.y.clone())
            .powf_scalar(2.0)
            .sum_dim(2)
            .reshape([b, 1])
            .mul_scalar(0.5)
    }

    fn document_batches(
        &self,
        docs: &[Document],
        device: &Device,
    ) -> Result<Vec<(LinearBatch, StepBatch)>, TaskError> {
        docs.chunks(self.batch.max(1))
            .map(|chunk| {
                let pairs = chunk
                    .iter()
                    .map(|d| {
                        let (x, y) = d.text.split_once(';').ok_or("no ';' in document")?;
                        Ok((numbers(x, self.d_in)?, numbers(y, self.d_out)?))
                    })
                    .collect::<Result<Vec<_>, TaskError>>()?;
                let refs = chunk
                    .iter()
                    .map(|d| DocRef {
                        id: d.id,
                        source: d.source.clone(),
                    })
                    .collect();
                Ok((self.batch(&pairs, device), Self::step(refs)))
            })
            .collect()
    }

    fn loss_reduction(&self) -> LossReduction {
        LossReduction::Sum
    }

    fn corpus(&self) -> Result<Vec<Document>, TaskError> {
        Ok(self.docs.clone())
    }

    fn token_texts(&self, doc: &Document) -> Result<Vec<String>, TaskError> {
        Ok(vec![doc.text.clone()])
    }
}
