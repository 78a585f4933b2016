//! One training step of the tiny-gpt example (CPU preset shape: d=128, 4 blocks, B=16, T=128)
//! without the hook and with it in several settings, in one criterion group so the ratios come
//! from one run.
//!
//! `cargo bench -p influence-benches --bench hook_overhead`

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use influence_benches::{Bench, CountingSink};
use influence_hook::HookConfig;
use tiny_gpt::train::{TrainConfig, prepare};

fn hook_overhead(c: &mut Criterion) {
    let config = TrainConfig::cpu();
    let prepared = prepare(&config).expect("corpus");
    let defaults = config.hook.clone();
    let no_windows = u64::MAX / 2;
    let cases: Vec<(&str, Option<HookConfig>)> = vec![
        ("no_hook", None),
        // Eigenbasis sketches need the factors (the first step's warm-up basis): "sketches only"
        // accumulates them on a window's first step alone, i.e. once, in the warm-up.
        (
            "sketches_only",
            Some(
                defaults
                    .clone()
                    .factor_every(no_windows)
                    .window_steps(no_windows),
            ),
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
        let hook = hook.map(|h| (h, Box::new(CountingSink::default()) as _));
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
