//! The hand-written training loop with the hook attached.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{Context, Result};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use influence_core::Sink;
use influence_hook::{FitLabels, Hook, HookConfig, Tap};
use influence_store::{ResumePoint, StoreConfig};
use serde::{Deserialize, Serialize};

use crate::corpus::{CorpusConfig, Document};
use crate::data::{LmBatch, PackedSeq, TokenDoc, epoch};
use crate::model::{Gpt, GptConfig};
use crate::tokenizer::Bpe;

/// Everything a training run is set up with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The corpus.
    pub corpus: CorpusConfig,
    /// BPE vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub d_model: usize,
    /// Blocks.
    pub n_layers: usize,
    /// Heads.
    pub n_heads: usize,
    /// MLP width.
    pub d_ff: usize,
    /// Positions per sequence.
    pub seq_len: usize,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps (then cosine decay to 10 %).
    pub warmup: usize,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Print the loss every this many steps.
    pub log_every: usize,
    /// The hook.
    pub hook: HookConfig,
    /// The store the hook writes to.
    #[serde(default)]
    pub store: StoreConfig,
}

impl TrainConfig {
    /// Default: fits 2 CPU cores in a few minutes.
    pub fn cpu() -> Self {
        Self {
            corpus: CorpusConfig::default(),
            vocab_size: 512,
            d_model: 128,
            n_layers: 4,
            n_heads: 4,
            d_ff: 512,
            seq_len: 128,
            batch_size: 16,
            steps: 600,
            lr: 3e-3,
            warmup: 50,
            seed: 42,
            log_every: 25,
            hook: HookConfig::default()
                .window_steps(200)
                .factor_every(10)
                .fit_batches(4),
            store: StoreConfig::default(),
        }
    }

    /// The same run with a larger model (1.5× wider, two more blocks), on the same corpus,
    /// tokenizer, data order and hook settings: the paper's comparison of two model sizes.
    pub fn larger(&self) -> Self {
        let mut c = self.clone();
        let width = (self.d_model * 3 / 2).div_ceil(self.n_heads) * self.n_heads;
        c.d_model = width;
        c.d_ff = self.d_ff * 3 / 2;
        c.n_layers = self.n_layers + 2;
        c
    }

    /// Larger preset for a GPU.
    pub fn gpu() -> Self {
        let mut c = Self::cpu();
        c.corpus = CorpusConfig {
            registry_per_source: usize::MAX,
            arithmetic: 8000,
            slopes: 6000,
            linear: 6000,
            code: 3000,
            ..CorpusConfig::default()
        };
        c.vocab_size = 2048;
        c.d_model = 384;
        c.n_layers = 6;
        c.n_heads = 6;
        c.d_ff = 1536;
        c.seq_len = 256;
        c.batch_size = 64;
        c.steps = 5000;
        c.lr = 1e-3;
        c.warmup = 200;
        c.hook = c.hook.window_steps(1000).fit_batches(8);
        c
    }

    /// A very small setting for tests.
    pub fn tiny() -> Self {
        let mut c = Self::cpu();
        c.corpus = CorpusConfig {
            registry_per_source: 12,
            registry_keep_all: Vec::new(),
            registry_file: None,
            arithmetic: 40,
            slopes: 20,
            linear: 20,
            code: 10,
            seed: 3,
        };
        c.vocab_size = 300;
        c.d_model = 32;
        c.n_layers = 2;
        c.n_heads = 2;
        c.d_ff = 64;
        c.seq_len = 64;
        c.batch_size = 4;
        c.steps = 8;
        c.warmup = 2;
        c.log_every = 1;
        c.hook = c.hook.window_steps(4).factor_every(2).fit_batches(2);
        c
    }

    /// The model shape for a vocabulary.
    pub fn model(&self, vocab_size: usize) -> GptConfig {
        GptConfig::new(vocab_size)
            .with_d_model(self.d_model)
            .with_n_layers(self.n_layers)
            .with_n_heads(self.n_heads)
            .with_d_ff(self.d_ff)
            .with_max_pos(self.seq_len)
    }

    /// Learning rate of `step`: linear warm-up, then cosine decay to 10 % of the peak.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let t =
            (step - self.warmup) as f64 / (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
    }
}

/// The corpus, its tokenizer and the tokenized documents.
pub struct Prepared {
    /// Documents.
    pub docs: Vec<Document>,
    /// Tokenizer.
    pub bpe: Bpe,
    /// Tokenized documents.
    pub tokens: Vec<TokenDoc>,
}

/// Generates the corpus and trains the tokenizer.
pub fn prepare(config: &TrainConfig) -> Result<Prepared> {
    let docs = crate::corpus::generate(&config.corpus)?;
    let bpe = Bpe::train(docs.iter().map(|d| d.text.as_str()), config.vocab_size)?;
    let tokens = docs
        .iter()
        .map(|d| {
            let mut t = bpe.encode(&d.text)?;
            t.push(bpe.eos);
            Ok(TokenDoc {
                id: d.id,
                source: d.source.clone(),
                tokens: t,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Prepared { docs, bpe, tokens })
}

/// An endless stream of batches: epochs of shuffled, packed sequences.
pub struct Batches<'a> {
    docs: &'a [TokenDoc],
    seq_len: usize,
    batch_size: usize,
    seed: u64,
    epoch: u64,
    seqs: Vec<PackedSeq>,
    pos: usize,
}

impl<'a> Batches<'a> {
    /// Batches of `batch_size` sequences of `seq_len` over `docs`.
    pub fn new(docs: &'a [TokenDoc], seq_len: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            docs,
            seq_len,
            batch_size,
            seed,
            epoch: 0,
            seqs: Vec::new(),
            pos: 0,
        }
    }

    /// The next batch's sequences.
    pub fn next_seqs(&mut self) -> &[PackedSeq] {
        if self.pos + self.batch_size > self.seqs.len() {
            self.seqs = epoch(self.docs, self.seq_len, self.seed ^ self.epoch);
            self.epoch += 1;
            self.pos = 0;
        }
        self.pos += self.batch_size;
        &self.seqs[self.pos - self.batch_size..self.pos.min(self.seqs.len())]
    }
}

/// What a run produced.
pub struct TrainReport {
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// The trained model.
    pub model: Gpt,
    /// Seconds spent training.
    pub seconds: f64,
}

/// Creates the hook when a sink is given and initialises the model with its tap from
/// `config.seed` (under [`influence_hook::seeded`], so concurrent runs do not disturb each other).
pub fn init_model(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &Device,
    sink: Option<Box<dyn Sink>>,
) -> Result<(Option<Hook<LmBatch>>, Gpt)> {
    let hook = match sink {
        Some(sink) => Some(Hook::<LmBatch>::new(config.hook.clone(), sink)?),
        None => None,
    };
    let tap = hook.as_ref().map_or_else(Tap::detached, Hook::tap);
    let model = influence_hook::seeded(device, config.seed, || {
        config.model(prepared.bpe.vocab_size()).init(device, &tap)
    });
    Ok((hook, model))
}

/// Trains `config.steps` steps on `device` (an autodiff device), with the hook writing to `sink`
/// when one is given.
pub fn train(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &Device,
    sink: Option<Box<dyn Sink>>,
) -> Result<TrainReport> {
    train_from(config, prepared, device, sink, None)
}

/// [`train`], continuing a run at `resume` (from [`influence_store::StoreWriter::resume`]): the
/// model is loaded from its checkpoint, the data stream skips the steps already run, and the hook
/// continues the window numbering. The optimizer's moments start afresh (they are not part of the
/// checkpoint), so a resumed run is close to, not identical with, an uninterrupted one.
pub fn train_from(
    config: &TrainConfig,
    prepared: &Prepared,
    device: &Device,
    sink: Option<Box<dyn Sink>>,
    resume: Option<&ResumePoint>,
) -> Result<TrainReport> {
    train_on(config, prepared, &prepared.tokens, device, sink, resume)
}

/// [`train_from`] on `tokens` (a subset of `prepared.tokens`, say) instead of the whole corpus;
/// the tokenizer and the initialisation are `prepared`'s and `config`'s. With
/// `config.log_every == 0` it trains silently: no progress bar, no loss lines.
pub fn train_on(
    config: &TrainConfig,
    prepared: &Prepared,
    tokens: &[TokenDoc],
    device: &Device,
    sink: Option<Box<dyn Sink>>,
    resume: Option<&ResumePoint>,
) -> Result<TrainReport> {
    if tokens.is_empty() {
        anyhow::bail!("training on an empty set of documents");
    }
    let (hook, mut model) = init_model(config, prepared, device, sink)?;
    let first = resume.map_or(0, |r| r.step);
    if let Some(r) = resume {
        if let Some(path) = &r.checkpoint {
            model = model
                .try_load_file(path)
                .map_err(|e| anyhow::anyhow!("{}: loading the checkpoint: {e}", path.display()))?;
        }
        if let Some(h) = &hook {
            h.resume_at(first).context("resuming the hook")?;
            // Eigenbasis sketches continue in the last complete window's basis, as the
            // uninterrupted run did.
            if let Some(f) = &r.factors
                && matches!(
                    config.hook.effective_scheme(),
                    influence_core::SketchScheme::Eigenbasis { .. }
                )
            {
                h.basis_from(f)
                    .context("resuming the hook's sketch basis")?;
            }
        }
    }
    let first = usize::try_from(first).context("resume step")?;
    let mut optim = AdamConfig::new().init();
    let mut batches = Batches::new(tokens, config.seq_len, config.batch_size, config.seed);
    for _ in 0..first {
        batches.next_seqs();
    }
    let mut losses = Vec::with_capacity(config.steps);
    let start = Instant::now();
    let mut window_loss = 0.0;
    // A progress bar on a terminal (hidden when stderr is not one); the loss lines go to stdout
    // either way.
    let bar = if config.log_every > 0 {
        ProgressBar::new(config.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_position(first as u64);
    bar.set_message("training");
    for step in first..config.steps {
        let batch = LmBatch::new(batches.next_seqs(), device);
        let lr = config.lr_at(step);
        if let Some(h) = &hook {
            h.arm();
        }
        let (loss, token_loss) = model.loss(&batch, FitLabels::Empirical);
        let mut grads = loss.backward();
        if let Some(h) = &hook {
            h.capture(&mut grads, &batch.step_batch(Some(token_loss)), &batch)
                .with_context(|| format!("hook capture at step {step}"))?;
        }
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(lr, model, grads);
        if let Some(h) = &hook {
            h.end_step(lr, &model)
                .with_context(|| format!("hook at the end of step {step}"))?;
        }
        let l: f32 = loss.into_scalar();
        losses.push(l);
        window_loss += f64::from(l);
        bar.inc(1);
        if config.log_every > 0 && (step + 1) % config.log_every == 0 {
            let mean = window_loss / config.log_every as f64;
            bar.set_message(format!("loss {mean:.4}"));
            bar.suspend(|| {
                println!(
                    "step {:>5}/{}  loss {:.4}  lr {:.2e}  {:.1} s",
                    step + 1,
                    config.steps,
                    mean,
                    lr,
                    start.elapsed().as_secs_f64()
                )
            });
            window_loss = 0.0;
        }
    }
    bar.finish_and_clear();
    if let Some(h) = &hook {
        h.finish(&model).context("finishing the hook")?;
    }
    Ok(TrainReport {
        losses,
        model,
        seconds: start.elapsed().as_secs_f64(),
    })
}
