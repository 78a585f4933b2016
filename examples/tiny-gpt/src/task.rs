//! The bundled GPT as an analyzer [`Task`]: checkpoints, query batches (loss on the completion
//! only), document batches as in training, and the regenerated corpus.

use std::path::Path;

use anyhow::{Context, anyhow};
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use influence_analyzer::{Document, Query, Task, TaskError};
use influence_core::LossReduction;
use influence_hook::{DocRef, StepBatch, Tap};

use crate::data::{LmBatch, PackedSeq, TokenDoc, pack};
use crate::model::Gpt;
use crate::tokenizer::Bpe;
use crate::train::TrainConfig;

/// The tiny GPT of a run directory (`config.json`, `tokenizer.json`).
pub struct GptTask {
    /// The run's configuration.
    pub config: TrainConfig,
    /// Its tokenizer.
    pub bpe: Bpe,
    /// The corpus it was trained on (regenerated from the configuration).
    pub docs: Vec<Document>,
}

impl GptTask {
    /// Loads the task of the run written to `dir` by `tiny-gpt --out DIR`.
    pub fn from_run_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: the run's configuration", path.display()))?;
        let config: TrainConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
        let bpe = Bpe::load(&dir.join("tokenizer.json"))?;
        Self::new(config, bpe)
    }

    /// The task of a configuration and its tokenizer.
    pub fn new(config: TrainConfig, bpe: Bpe) -> anyhow::Result<Self> {
        let docs = crate::corpus::generate(&config.corpus)?
            .into_iter()
            .map(|d| Document {
                id: d.id,
                source: d.source,
                text: d.text,
            })
            .collect();
        Ok(Self { config, bpe, docs })
    }

    fn tokens(&self, text: &str) -> Result<Vec<u32>, TaskError> {
        self.bpe.encode(text).map_err(|e| e.to_string().into())
    }

    /// Greedy completion of `prompt` with the model, up to `max_tokens` tokens or EOS.
    pub fn greedy(
        &self,
        model: &Gpt,
        prompt: &str,
        max_tokens: usize,
        device: &Device,
    ) -> anyhow::Result<String> {
        let mut ids = self.bpe.encode(prompt)?;
        let start = ids.len();
        // Prompt and answer must fit the context, to be scored as a query afterwards.
        let max_tokens = max_tokens.min(self.config.seq_len.saturating_sub(start));
        for _ in 0..max_tokens {
            let len = ids.len().min(self.config.seq_len);
            let window = &ids[ids.len() - len..];
            let seq = PackedSeq {
                spans: vec![(0, 0, len)],
                inputs: window.iter().map(|&t| i64::from(t)).collect(),
                targets: vec![0; len],
                positions: (0..len as i64).collect(),
                slot: vec![0; len],
                docs: vec![DocRef {
                    id: 0,
                    source: "prompt".into(),
                }],
            };
            let batch = LmBatch::new(&[seq], device);
            let logits = model
                .forward(&batch)
                .narrow(1, len - 1, 1)
                .reshape([self.bpe.vocab_size()]);
            let next = logits
                .argmax(0)
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .map_err(|e| anyhow!("reading the next token: {e:?}"))?[0];
            let next = u32::try_from(next)?;
            if next == self.bpe.eos {
                break;
            }
            ids.push(next);
        }
        self.bpe.decode(&ids[start..])
    }
}

impl Task for GptTask {
    type Model = Gpt;
    type Batch = LmBatch;

    fn load_model(&self, checkpoint: &Path, tap: &Tap, device: &Device) -> Result<Gpt, TaskError> {
        influence_hook::unseeded(|| self.config.model(self.bpe.vocab_size()).init(device, tap))
            .try_load_file(checkpoint)
            .map_err(|e| format!("{}: {e}", checkpoint.display()).into())
    }

    fn query_batch(
        &self,
        queries: &[Query],
        device: &Device,
    ) -> Result<(LmBatch, StepBatch), TaskError> {
        let mut seqs = Vec::with_capacity(queries.len());
        let mut completion = Vec::with_capacity(queries.len());
        for q in queries {
            let prompt = self.tokens(&q.prompt)?;
            let answer = self.tokens(&q.completion)?;
            if prompt.is_empty() || answer.is_empty() {
                return Err(format!(
                    "query {:?}: empty prompt or completion after tokenisation",
                    q.id
                )
                .into());
            }
            let all: Vec<u32> = prompt.iter().chain(&answer).copied().collect();
            let len = all.len() - 1;
            if len > self.config.seq_len {
                return Err(format!(
                    "query {:?}: {} tokens, the model's context is {}",
                    q.id,
                    all.len(),
                    self.config.seq_len + 1
                )
                .into());
            }
            seqs.push(PackedSeq {
                spans: vec![(0, 0, len)],
                inputs: all[..len].iter().map(|&t| i64::from(t)).collect(),
                targets: all[1..].iter().map(|&t| i64::from(t)).collect(),
                positions: (0..len as i64).collect(),
                slot: vec![0; len],
                docs: vec![DocRef {
                    id: seqs.len() as u64,
                    source: "query".into(),
                }],
            });
            // Position p predicts token p+1: completion tokens are predicted from prompt.len()-1 on.
            completion.push(prompt.len() - 1);
        }
        let s = seqs.iter().map(|q| q.inputs.len()).max().unwrap_or(1);
        for q in &mut seqs {
            while q.inputs.len() < s {
                q.inputs.push(0);
                q.targets.push(0);
                q.positions.push(0);
                q.slot.push(-1);
            }
        }
        let mut batch = LmBatch::new(&seqs, device);
        let weights: Vec<f32> = seqs
            .iter()
            .zip(&completion)
            .flat_map(|(q, &from)| {
                (0..s).map(move |t| {
                    if t >= from && q.slot[t] >= 0 {
                        1.0
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        batch.weights = Tensor::from_data(TensorData::new(weights, [seqs.len(), s]), device);
        let step = batch.step_batch(None);
        Ok((batch, step))
    }

    fn completion_nll(&self, model: &Gpt, batch: &LmBatch) -> Tensor<2> {
        let logits = model.forward(batch);
        let [b, s, _] = logits.dims();
        log_softmax(logits, 2)
            .gather(2, batch.targets.clone().reshape([b, s, 1]))
            .reshape([b, s])
            .neg()
            * batch.weights.clone()
    }

    fn document_batches(
        &self,
        docs: &[Document],
        device: &Device,
    ) -> Result<Vec<(LmBatch, StepBatch)>, TaskError> {
        let tokens = docs
            .iter()
            .map(|d| {
                let mut t = self.tokens(&d.text)?;
                t.push(self.bpe.eos);
                Ok(TokenDoc {
                    id: d.id,
                    source: d.source.clone(),
                    tokens: t,
                })
            })
            .collect::<Result<Vec<_>, TaskError>>()?;
        Ok(pack(&tokens, self.config.seq_len)
            .chunks(self.config.batch_size.max(1))
            .map(|seqs| {
                let b = LmBatch::new(seqs, device);
                let step = b.step_batch(None);
                (b, step)
            })
            .collect())
    }

    fn loss_reduction(&self) -> LossReduction {
        self.config.hook.loss_reduction
    }

    fn corpus(&self) -> Result<Vec<Document>, TaskError> {
        Ok(self.docs.clone())
    }

    fn token_texts(&self, doc: &Document) -> Result<Vec<String>, TaskError> {
        let ids = self.tokens(&doc.text)?;
        ids.iter()
            .take(self.config.seq_len)
            .map(|&id| self.bpe.decode(&[id]).map_err(|e| e.to_string().into()))
            .collect()
    }

    fn generate(
        &self,
        model: &Gpt,
        prompt: &str,
        max_tokens: usize,
        device: &Device,
    ) -> Result<Option<String>, TaskError> {
        self.greedy(model, prompt, max_tokens, device)
            .map(Some)
            .map_err(|e| e.to_string().into())
    }
}
