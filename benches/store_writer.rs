//! The store's writer on real sketches (captured from the tiny-gpt example at its CPU preset
//! shape and default sketch size), and the training-step stall it causes.
//!
//! `cargo bench --profile dev -p influence-benches --bench store_writer`
//!
//! * `store_writer/{f32,f16,bf16,i8}`: writing 2,048 captured rows (no row repeats, so that zstd
//!   sees real data) through a `StoreWriter` (fsync on, the default) from `begin` to `finish`;
//!   criterion reports rows/s; the bytes written, MB/s and the compression ratio are printed.
//! * `train_step_store/{counting_sink,store_writer}`: one training step at the default hook
//!   schedule, the sink counting rows vs. the background writer at default settings; the ratio is
//!   the writer's cost to the step, and the writer's own stall counter is printed.

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use influence_benches::{Bench, CountingSink};
use influence_core::{MemorySink, RunInfo, Sink, SketchBatch};
use influence_store::{SketchDtype, StoreConfig, StoreWriter};
use tiny_gpt::train::{TrainConfig, prepare};

const ROWS: usize = 2048;

/// Real sketch batches: enough steps of the example's CPU preset (sketches only) for `ROWS` rows.
/// The first steps are skipped: at initialisation gradients are more alike than in training.
fn captured(config: &TrainConfig) -> (RunInfo, Vec<SketchBatch>) {
    let prepared = prepare(config).expect("corpus");
    let sink = MemorySink::new();
    // Eigenbasis sketches need the factors (the warm-up basis); one window, factors only once.
    let hook = config
        .hook
        .clone()
        .factor_every(u64::MAX / 2)
        .window_steps(u64::MAX / 2);
    let mut bench = Bench::new(config, &prepared, Some((hook, Box::new(sink.clone()) as _)));
    for _ in 0..20 {
        bench.step();
    }
    let (skip, skip_rows) = {
        let store = sink.store();
        (store.batches.len(), store.rows())
    };
    while sink.store().rows() - skip_rows < ROWS {
        bench.step();
    }
    let store = sink.store();
    (
        store.run.clone().expect("run"),
        store.batches[skip..].to_vec(),
    )
}

/// Writes `ROWS` rows (the captured batches cycled, with increasing steps) into a fresh store.
fn write(run: &RunInfo, batches: &[SketchBatch], config: &StoreConfig) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    let mut w = StoreWriter::create(dir.path(), config.clone()).expect("create");
    let stats = w.stats();
    w.begin(run).expect("begin");
    let (mut rows, mut step) = (0, 0u64);
    while rows < ROWS {
        let mut b = batches[step as usize].clone();
        b.step = step;
        b.window = 0;
        b.rows.truncate(ROWS - rows);
        for (s, l) in b.sketches.iter_mut().zip(&run.layers) {
            s.truncate(b.rows.len() * l.sketch_len());
        }
        rows += b.rows.len();
        step += 1;
        w.sketches(b).expect("sketches");
    }
    w.finish().expect("finish");
    let elapsed = start.elapsed();
    let s = stats.snapshot();
    (elapsed, s.bytes_written, s.raw_bytes)
}

fn store_writer(c: &mut Criterion) {
    let config = TrainConfig::cpu();
    let (run, batches) = captured(&config);
    let rows_per_step = batches.iter().map(|b| b.rows.len()).sum::<usize>() / batches.len();
    println!(
        "captured {} steps, {rows_per_step} rows/step, {} layers",
        batches.len(),
        run.layers.len()
    );
    let mut group = c.benchmark_group("store_writer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    for dtype in SketchDtype::ALL {
        let store = config.store.clone().dtype(dtype);
        let (t, bytes, raw) = write(&run, &batches, &store);
        println!(
            "{}: {ROWS} rows in {:.3} s: {:.0} rows/s, {:.1} MB/s raw, {:.1} MB/s to disk; {} B raw, {} B on disk, ratio {:.3}; {:.0} B per document per layer on disk",
            dtype.name(),
            t.as_secs_f64(),
            ROWS as f64 / t.as_secs_f64(),
            raw as f64 / t.as_secs_f64() / 1e6,
            bytes as f64 / t.as_secs_f64() / 1e6,
            raw,
            bytes,
            bytes as f64 / raw as f64,
            bytes as f64 / (ROWS * run.layers.len()) as f64,
        );
        group.bench_function(dtype.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| write(&run, &batches, &store).0).sum())
        });
    }
    group.finish();
}

fn train_step_store(c: &mut Criterion) {
    let config = TrainConfig::cpu();
    let prepared = prepare(&config).expect("corpus");
    let mut group = c.benchmark_group("train_step_store");
    group.sample_size(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = StoreWriter::create(dir.path(), config.store.clone()).expect("create");
    let stats = writer.stats();
    let sinks: Vec<(&str, Box<dyn Sink>)> = vec![
        ("counting_sink", Box::new(CountingSink::default())),
        ("store_writer", Box::new(writer)),
    ];
    for (name, sink) in sinks {
        let mut bench = Bench::new(&config, &prepared, Some((config.hook.clone(), sink)));
        for _ in 0..3 {
            bench.step();
        }
        group.bench_function(name, |b| b.iter(|| black_box(bench.step())));
        bench.finish();
    }
    group.finish();
    let s = stats.snapshot();
    println!(
        "store writer during the training steps: {} rows, {} shards, stalled {} times for {:.6} s in all, deepest queue {} of {}, writer thread busy {:.2} s",
        s.rows_written,
        s.shards,
        s.stalls,
        s.stall_seconds,
        s.max_queue_depth,
        config.store.queue_steps,
        s.writer_busy_seconds
    );
}

criterion_group!(benches, store_writer, train_step_store);
criterion_main!(benches);
