//! The analyzer's scorer on a store of real sketches (the tiny-gpt example's CPU preset model at
//! the default hook and store: 16 layers × 40×30 eigenbasis coordinates, int8, zstd), against
//! the raw decode rate of the same shards, and the whole query path against re-sketching the
//! corpus (what tools that recompute training gradients per query pay).
//!
//! `cargo bench --profile dev -p influence-benches --bench scoring`
//!
//! * `scoring/decode_only`: read, verify and decode every shard with the scorer's parallel
//!   pipeline, doing nothing with the rows (the raw decompression rate; also printed for one
//!   thread);
//! * `scoring/score_queries`: the same pass scoring every row against the bundled queries
//!   (`examples/tiny-gpt/queries.jsonl`; one matmul per layer on the CPU device, accumulation
//!   per document, top-k) with the default [`ScoreConfig`] (rows normalised);
//! * `scoring/score_queries_plain`: the same without row normalisation.
//!   Throughput in rows/s (criterion) and MB/s of shards (printed).
//! * Printed once: re-sketching the corpus (all 3,100 documents) with the post-hoc path at the
//!   checkpoint vs answering the same queries from the stored sketches (query gradients +
//!   scoring).

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use influence_analyzer::scorer::for_each_shard;
use influence_analyzer::{ScoreConfig, prepare_queries, read_queries, score_store, sketch_corpus};
use influence_core::{RunInfo, Sink, SketchBatch};
use influence_hook::Tap;
use influence_store::{ReadOptions, Store, StoreConfig, StoreWriter};
use tiny_gpt::task::GptTask;
use tiny_gpt::train::{TrainConfig, prepare};

/// Documents sketched post hoc: the CPU preset's whole corpus.
const DOCS: usize = 3100;
/// Copies of those rows in the scoring store (with new steps), for a store of the example's size.
const COPIES: u64 = 8;

fn bench(c: &mut Criterion) {
    let config = TrainConfig::cpu();
    let prepared = prepare(&config).expect("corpus");
    let dir = tempfile::tempdir().expect("tmp");
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let model = influence_hook::seeded(&ad, config.seed, || {
        config
            .model(prepared.bpe.vocab_size())
            .init(&ad, &Tap::detached())
    });
    model.save_file(dir.path().join("model")).expect("save");
    let ckpt = dir.path().join("model.bpk");
    let task = GptTask::new(config.clone(), prepared.bpe).expect("task");
    let docs: Vec<_> = task.docs.iter().take(DOCS).cloned().collect();

    // Re-sketching the corpus: one post-hoc pass (forward + backward of every document).
    let posthoc = dir.path().join("posthoc");
    let writer = StoreWriter::create(&posthoc, StoreConfig::default()).expect("store");
    let t = Instant::now();
    sketch_corpus(
        &task,
        &ckpt,
        &docs,
        config.hook.clone().factor_every(1),
        writer,
        &device,
        &mut |_, _| {},
    )
    .expect("sketch");
    let resketch = t.elapsed().as_secs_f64();
    let store = Store::open(&posthoc).expect("open");
    let queries = read_queries(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/tiny-gpt/queries.jsonl"),
    )
    .expect("queries");
    let score_config = ScoreConfig::default();
    let t = Instant::now();
    let q = prepare_queries(&task, &store, &queries, &score_config, &device, &mut |_| {})
        .expect("prepare");
    let s = score_store(&store, &q, &score_config, &device, &mut |_| {}).expect("score");
    let query = t.elapsed().as_secs_f64();
    println!(
        "re-sketching {DOCS} documents: {resketch:.2} s; answering {} queries from their sketches: {query:.3} s ({} rows); ratio {:.0}×",
        queries.len(),
        s.stats.rows,
        resketch / query
    );

    // A larger store of the same real rows for throughput.
    let (run, batches) = rows(&store);
    let big = dir.path().join("big");
    let mut w = StoreWriter::create(&big, StoreConfig::default()).expect("big");
    w.begin(&run).expect("begin");
    let mut step = 0;
    for _ in 0..COPIES {
        for b in &batches {
            let mut b = b.clone();
            b.step = step;
            step += 1;
            w.sketches(b).expect("rows");
        }
    }
    w.finish().expect("finish");
    let big = Store::open(&big).expect("open big");
    let rows_total = big.manifest().rows();
    let bytes: u64 = big.manifest().shards.iter().map(|s| s.file.bytes).sum();
    let shards: Vec<_> = big.manifest().shards.iter().collect();
    let layers: Vec<usize> = (0..run.layers.len()).collect();
    let threads = score_config.decode_threads_or_default();
    for t in [1, threads] {
        let start = Instant::now();
        for_each_shard(&big, &shards, &layers, t, |_, _| Ok(())).expect("decode");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "decode only, {t} thread(s): {rows_total} rows, {:.1} MB in {secs:.3} s = {:.0} rows/s, {:.1} MB/s",
            bytes as f64 / 1e6,
            rows_total as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
    }
    let start = Instant::now();
    let s = score_store(&big, &q, &score_config, &device, &mut |_| {}).expect("score");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "score {} queries: {rows_total} rows in {secs:.3} s = {:.0} rows/s, {:.0} document×query/s, {:.1} MB/s (decode {:.3} s summed over {} threads, scoring {:.3} s)",
        queries.len(),
        rows_total as f64 / secs,
        (rows_total * queries.len() as u64) as f64 / secs,
        bytes as f64 / 1e6 / secs,
        s.stats.decode_seconds,
        s.stats.threads,
        s.stats.score_seconds
    );

    let mut g = c.benchmark_group("scoring");
    g.sample_size(10)
        .measurement_time(std::time::Duration::from_secs(15));
    g.throughput(Throughput::Elements(rows_total));
    g.bench_function("decode_only", |b| {
        b.iter(|| for_each_shard(&big, &shards, &layers, threads, |_, _| Ok(())).expect("decode"))
    });
    g.bench_function("score_queries", |b| {
        b.iter(|| score_store(&big, &q, &score_config, &device, &mut |_| {}).expect("score"))
    });
    // The default normalises rows (one more weighted sum of squares per row and layer); the
    // plain inner product for comparison.
    let plain = score_config.clone().normalize(false);
    g.bench_function("score_queries_plain", |b| {
        b.iter(|| score_store(&big, &q, &plain, &device, &mut |_| {}).expect("score"))
    });
    g.finish();
}

/// The post-hoc store's rows as sketch batches (f16 values widened to f32).
fn rows(store: &Store) -> (RunInfo, Vec<SketchBatch>) {
    let run = store.run().clone();
    let mut out = Vec::new();
    for chunk in store.sketches(&ReadOptions::default()).expect("stream") {
        let chunk = chunk.expect("chunk");
        out.push(SketchBatch {
            step: 0,
            window: 0,
            learning_rate: chunk.learning_rates[0],
            rows: (0..chunk.len())
                .map(|r| influence_core::SketchRowMeta {
                    doc_id: chunk.doc_ids[r],
                    loss: chunk.losses[r],
                    tokens: chunk.tokens[r],
                    source: chunk.sources[r].to_string(),
                })
                .collect(),
            sketches: chunk.sketches.clone(),
            skipped: Vec::new(),
        });
    }
    (run, out)
}

criterion_group!(benches, bench);
criterion_main!(benches);
