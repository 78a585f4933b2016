//! One training step of the tiny-gpt example (CPU preset shape: d=128, 4 blocks, B=16, T=128)
//! without the hook and with it in several settings, in one criterion group so the ratios come
//! from one run.
//!
//! `cargo bench -p influence-benches --bench hook_overhead`

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;

use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use influence_benches::CountingSink;
use influence_hook::{FitLabels, Hook, HookConfig, Tap};
use tiny_gpt::data::LmBatch;
use tiny_gpt::model::Gpt;
use tiny_gpt::train::{Batches, TrainConfig, prepare};

struct Bench {
    model: Gpt,
    optim: ModuleOptimizer,
    hook: Option<Hook<LmBatch>>,
    batches: Vec<LmBatch>,
    next: usize,
}

impl Bench {
    fn new(
        config: &TrainConfig,
        prepared: &tiny_gpt::train::Prepared,
        hook: Option<HookConfig>,
    ) -> Self {
        let device = Device::default().autodiff();
        device.seed(1);
        let hook = hook.map(|c| Hook::new(c, CountingSink::default()).expect("hook config"));
        let tap = hook.as_ref().map_or_else(Tap::detached, Hook::tap);
        let model = config.model(prepared.bpe.vocab_size()).init(&device, &tap);
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

    fn step(&mut self) -> f32 {
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
}

fn hook_overhead(c: &mut Criterion) {
    let config = TrainConfig::cpu();
    let prepared = prepare(&config).expect("corpus");
    let defaults = config.hook.clone();
    let no_windows = u64::MAX / 2;
    let cases: Vec<(&str, Option<HookConfig>)> = vec![
        ("no_hook", None),
        (
            "sketches_only",
            Some(defaults.clone().factors(false).window_steps(no_windows)),
        ),
        (
            "factors_every_step",
            Some(defaults.clone().factor_every(1).window_steps(no_windows)),
        ),
        ("default_schedule", Some(defaults.clone())),
        (
            "window_close_every_step",
            Some(defaults.clone().window_steps(1)),
        ),
    ];
    let mut group = c.benchmark_group("train_step");
    group.sample_size(10);
    for (name, hook) in cases {
        let mut bench = Bench::new(&config, &prepared, hook);
        for _ in 0..3 {
            bench.step(); // warm up allocations and caches
        }
        group.bench_function(name, |b| b.iter(|| black_box(bench.step())));
    }
    group.finish();
}

criterion_group!(benches, hook_overhead);
criterion_main!(benches);
