//! Shared pieces of the benchmarks.

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use influence_core::{RunInfo, Sink, SinkError, SketchBatch, WindowRecord};
use influence_hook::{FitLabels, Hook, HookConfig, Tap};
use tiny_gpt::data::LmBatch;
use tiny_gpt::model::Gpt;
use tiny_gpt::train::{Batches, TrainConfig};

/// A sink that keeps nothing (so a benchmark measures the hook, not memory growth) but counts.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// Sketch rows received.
    pub rows: usize,
    /// Windows received.
    pub windows: usize,
}

impl Sink for CountingSink {
    fn begin(&mut self, _run: &RunInfo) -> Result<(), SinkError> {
        Ok(())
    }
    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError> {
        self.rows += batch.rows.len();
        Ok(())
    }
    fn window(&mut self, _record: WindowRecord) -> Result<(), SinkError> {
        self.windows += 1;
        Ok(())
    }
    fn checkpoint(&mut self, _window: u32, _bytes: Vec<u8>) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// One training step of the example, with or without the hook.
pub struct Bench {
    /// The model.
    pub model: Gpt,
    optim: ModuleOptimizer,
    hook: Option<Hook<LmBatch>>,
    batches: Vec<LmBatch>,
    next: usize,
}

impl Bench {
    /// The example's model at `config`, 8 batches to cycle through, and the hook (configuration
    /// and sink) when given.
    pub fn new(
        config: &TrainConfig,
        prepared: &tiny_gpt::train::Prepared,
        hook: Option<(HookConfig, Box<dyn Sink>)>,
    ) -> Self {
        let device = Device::default().autodiff();
        let hook = hook.map(|(c, sink)| Hook::new(c, sink).expect("hook config"));
        let tap = hook.as_ref().map_or_else(Tap::detached, Hook::tap);
        let model = influence_hook::seeded(&device, 1, || {
            config.model(prepared.bpe.vocab_size()).init(&device, &tap)
        });
        let mut it = Batches::new(&prepared.tokens, config.seq_len, config.batch_size, 7);
        let batches = (0..8)
            .map(|_| LmBatch::new(it.next_seqs(), &device))
            .collect();
        Self {
            model,
            optim: AdamConfig::new().init(),
            hook,
            batches,
            next: 0,
        }
    }

    /// One training step; returns the loss.
    pub fn step(&mut self) -> f32 {
        let batch = self.batches[self.next % self.batches.len()].clone();
        self.next += 1;
        if let Some(h) = &self.hook {
            h.arm();
        }
        let (loss, token_loss) = self.model.loss(&batch, FitLabels::Empirical);
        let mut grads = loss.backward();
        if let Some(h) = &self.hook {
            h.capture(&mut grads, &batch.step_batch(Some(token_loss)), &batch)
                .expect("capture");
        }
        let grads = GradientsParams::from_grads(grads, &self.model);
        let model = self.model.clone();
        self.model = self.optim.step(1e-3, model, grads);
        if let Some(h) = &self.hook {
            h.end_step(1e-3, &self.model).expect("end step");
        }
        // Reading the loss synchronises the device, as a training loop that logs it does.
        loss.into_scalar::<f32>()
    }

    /// Finishes the hook (closing the last window, finishing the sink).
    pub fn finish(&self) {
        if let Some(h) = &self.hook {
            h.finish(&self.model).expect("finish");
        }
    }
}
