//! Round trips, resume and error paths of the store, on synthetic runs small enough to check every
//! value.

use std::collections::BTreeMap;

use half::{bf16, f16};
use influence_core::{
    Eigenbasis, FORMAT_VERSION, FisherLabels, LayerFactors, LayerSpec, LossReduction,
    ProjectionKind, RunInfo, Sink, SketchBatch, SketchRowMeta, WindowRecord,
};
use influence_store::{
    Overflow, ReadOptions, SketchDtype, Store, StoreConfig, StoreError, StoreWriter,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SOURCES: [&str; 3] = ["wiki", "math", "code"];

fn run_info(window_steps: u64) -> RunInfo {
    RunInfo {
        format_version: FORMAT_VERSION,
        layers: vec![
            LayerSpec {
                name: "blocks.0.fc1".into(),
                d_in: 6,
                d_out: 5,
                bias: true,
                k_a: 4,
                k_g: 3,
            },
            LayerSpec {
                name: "head".into(),
                d_in: 5,
                d_out: 7,
                bias: false,
                k_a: 2,
                k_g: 5,
            },
        ],
        projection_seed: 11,
        projection: ProjectionKind::Rademacher,
        loss_reduction: LossReduction::MeanOverTokens,
        window_steps,
        fisher: FisherLabels::Empirical,
        sketch_scheme: Default::default(),
    }
}

fn batch(run: &RunInfo, step: u64, rng: &mut StdRng) -> SketchBatch {
    let rows = rng.random_range(1..6usize);
    SketchBatch {
        step,
        window: (step / run.window_steps) as u32,
        learning_rate: 1e-3 / (1.0 + step as f64),
        rows: (0..rows)
            .map(|r| SketchRowMeta {
                doc_id: step * 100 + r as u64,
                loss: (r % 3 != 0).then(|| rng.random_range(0.5..4.0)),
                tokens: rng.random_range(1..200),
                source: SOURCES[rng.random_range(0..3)].into(),
            })
            .collect(),
        sketches: run
            .layers
            .iter()
            .map(|l| {
                (0..rows * l.sketch_len())
                    .map(|_| rng.random_range(-50.0..50.0))
                    .collect()
            })
            .collect(),
        skipped: Vec::new(),
    }
}

fn matrix(d: usize, rng: &mut StdRng) -> Vec<f64> {
    (0..d * d).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn window(run: &RunInfo, w: u32, first: u64, last: u64, rng: &mut StdRng) -> WindowRecord {
    WindowRecord {
        window: w,
        first_step: first,
        last_step: last,
        learning_rates: (first..=last).map(|s| 1e-3 / (1.0 + s as f64)).collect(),
        layers: run
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (da, ds) = (l.d_in_aug(), l.d_out);
                LayerFactors {
                    name: l.name.clone(),
                    a: matrix(da, rng),
                    s: matrix(ds, rng),
                    tokens: 1000 + i as u64,
                    tokens_per_example: 37.5,
                    eig_a: Eigenbasis {
                        dim: da,
                        vectors: matrix(da, rng),
                        values: (0..da).map(|x| x as f64).collect(),
                    },
                    eig_s: Eigenbasis {
                        dim: ds,
                        vectors: matrix(ds, rng),
                        values: (0..ds).map(|x| x as f64 * 0.5).collect(),
                    },
                    corrected: (i == 0).then(|| (0..da * ds).map(|x| x as f64 * 0.1).collect()),
                    corrected_examples: 64,
                    // Layer 1 of odd windows carries an eigenbasis projection (one with its
                    // second moment, one without), so both kinds of row round-trip.
                    sketch_basis: (i == 1 && w % 2 == 1).then(|| influence_core::SketchBasis {
                        from_window: w - 1,
                        k_a: 2,
                        k_g: 3,
                        p_a: matrix(da, rng)[..da * 2].to_vec(),
                        p_g: matrix(ds, rng)[..ds * 3].to_vec(),
                        coords: (0..l.sketch_len() as u32).map(|c| c % 6).collect(),
                        second_moment: (w == 1).then(|| vec![0.25; l.sketch_len()]),
                        rows: 17,
                    }),
                }
            })
            .collect(),
    }
}

/// Drives a writer like the hook does: steps `from..to`, closing windows at their boundaries.
/// Returns everything sent, by step.
fn drive(
    w: &mut StoreWriter,
    run: &RunInfo,
    from: u64,
    to: u64,
    rng: &mut StdRng,
    sent: &mut BTreeMap<u64, SketchBatch>,
    windows: &mut Vec<WindowRecord>,
) {
    for step in from..to {
        let b = batch(run, step, rng);
        sent.insert(step, b.clone());
        w.sketches(b).expect("sketches");
        if (step + 1) % run.window_steps == 0 {
            let wi = (step / run.window_steps) as u32;
            let rec = window(run, wi, step + 1 - run.window_steps, step, rng);
            windows.retain(|x| x.window != wi);
            windows.push(rec.clone());
            w.window(rec).expect("window");
            w.checkpoint(wi, format!("checkpoint {wi}").into_bytes())
                .expect("checkpoint");
        }
    }
}

/// Every row of `store`, by step (fails on a repeated step).
/// `(doc_id, loss, tokens, source, learning rate, sketch per layer)` of a stored row.
type Row = (u64, Option<f32>, u32, String, f64, Vec<Vec<f32>>);

fn read_all(store: &Store) -> BTreeMap<u64, Vec<Row>> {
    let mut out: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for chunk in store.sketches(&ReadOptions::default()).expect("stream") {
        let c = chunk.expect("chunk");
        for r in 0..c.len() {
            let sk = c
                .layers
                .iter()
                .enumerate()
                .map(|(j, &li)| {
                    let k = store.run().layers[li].sketch_len();
                    c.sketches[j][r * k..(r + 1) * k].to_vec()
                })
                .collect();
            out.entry(c.steps[r]).or_default().push((
                c.doc_ids[r],
                c.losses[r],
                c.tokens[r],
                c.sources[r].to_string(),
                c.learning_rates[r],
                sk,
            ));
        }
    }
    out
}

fn rounded(v: f32, dtype: SketchDtype) -> f32 {
    match dtype {
        SketchDtype::F32 | SketchDtype::I8 => v,
        SketchDtype::F16 => f16::from_f32(v).to_f32(),
        SketchDtype::Bf16 => bf16::from_f32(v).to_f32(),
    }
}

/// Checks a stored row against the sent one: equal to the dtype's rounding, and for `i8` within
/// half a quantisation step (`max|row| / 254`, plus f32 rounding of the product).
fn assert_row(got: &[f32], sent: &[f32], dtype: SketchDtype, what: &str) {
    let want: Vec<f32> = sent.iter().map(|&v| rounded(v, dtype)).collect();
    if dtype != SketchDtype::I8 {
        assert_eq!(got, want, "{what}");
        return;
    }
    assert_eq!(got.len(), want.len(), "{what}");
    let max = sent.iter().fold(0f32, |m, v| m.max(v.abs()));
    let step = max / 127.0;
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 0.5 * step * (1.0 + 1e-5) + 1e-30,
            "{what}: {g} vs {w} (step {step})"
        );
    }
    // The largest value is kept to f32 precision: it sets the scale.
    let (gm, wm) = (got.iter().fold(0f32, |m, v| m.max(v.abs())), max);
    assert!((gm - wm).abs() <= 1e-6 * wm, "{what}: max {gm} vs {wm}");
}

fn assert_matches(store: &Store, sent: &BTreeMap<u64, SketchBatch>, dtype: SketchDtype) {
    let got = read_all(store);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>(),
        "steps stored"
    );
    for (step, b) in sent {
        let rows = &got[step];
        assert_eq!(rows.len(), b.rows.len(), "rows of step {step}");
        for (r, (meta, row)) in b.rows.iter().zip(rows).enumerate() {
            assert_eq!(
                (row.0, row.1, row.2, row.3.as_str()),
                (meta.doc_id, meta.loss, meta.tokens, meta.source.as_str())
            );
            assert_eq!(row.4, b.learning_rate);
            for (li, l) in store.run().layers.iter().enumerate() {
                let k = l.sketch_len();
                assert_row(
                    &row.5[li],
                    &b.sketches[li][r * k..(r + 1) * k],
                    dtype,
                    &format!("step {step} row {r} layer {}", l.name),
                );
            }
        }
    }
}

fn small_shards(dtype: SketchDtype) -> StoreConfig {
    StoreConfig::default()
        .dtype(dtype)
        .batch_rows(7)
        .shard_rows(20)
        .fsync(false)
}

#[test]
fn every_dtype_round_trips_with_factors_and_checkpoints() {
    for dtype in SketchDtype::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = run_info(10);
        let mut rng = StdRng::seed_from_u64(5);
        let (mut sent, mut windows) = (BTreeMap::new(), Vec::new());
        let mut w = StoreWriter::create(dir.path(), small_shards(dtype)).expect("create");
        let stats = w.stats();
        w.begin(&run).expect("begin");
        drive(&mut w, &run, 0, 25, &mut rng, &mut sent, &mut windows);
        // The last partial window, as `Hook::finish` closes it.
        let rec = window(&run, 2, 20, 24, &mut rng);
        windows.push(rec.clone());
        w.window(rec).expect("window");
        w.checkpoint(2, b"last".to_vec()).expect("checkpoint");
        w.finish().expect("finish");

        let store = Store::open(dir.path()).expect("open");
        let m = store.manifest();
        assert!(m.finished);
        assert_eq!(m.dtype, dtype);
        // Only i8 needs version 3: other stores stay readable by version-2 readers.
        assert_eq!(
            m.store_version,
            if dtype == SketchDtype::I8 { 3 } else { 2 }
        );
        let rows: u64 = sent.values().map(|b| b.rows.len() as u64).sum();
        assert_eq!(m.rows(), rows);
        assert_eq!(stats.snapshot().rows_written, rows);
        assert!(
            m.shards.len() >= 4,
            "small shards: {} shards",
            m.shards.len()
        );
        for s in &m.shards {
            assert_eq!(s.first_step / 10, u64::from(s.window));
            assert_eq!(
                s.last_step / 10,
                u64::from(s.window),
                "a shard never spans windows"
            );
        }
        let report = store.verify().expect("verify");
        assert_eq!(
            (report.rows, report.factor_files, report.checkpoints),
            (rows, 3, 3)
        );
        assert_matches(&store, &sent, dtype);
        for rec in &windows {
            assert_eq!(&store.factors(rec.window).expect("factors"), rec);
        }
        assert_eq!(store.checkpoint(2).expect("checkpoint"), b"last");
        assert_eq!(store.checkpoint(0).expect("checkpoint"), b"checkpoint 0");

        // Subsets: one layer, one window.
        let only = ReadOptions::default().layers(["head"]).windows([1]);
        let mut n = 0;
        for c in store.sketches(&only).expect("stream") {
            let c = c.expect("chunk");
            assert_eq!(c.layers, [1]);
            assert!(c.windows.iter().all(|&w| w == 1));
            n += c.len();
        }
        let want: usize = sent.range(10..20).map(|(_, b)| b.rows.len()).sum();
        assert_eq!(n, want);
        let e = store
            .sketches(&ReadOptions::default().layers(["nope"]))
            .err()
            .expect("unknown layer");
        assert!(e.to_string().contains("nope"), "{e}");
    }
}

#[test]
fn batch_bytes_caps_record_batches_without_splitting_a_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(100);
    let mut rng = StdRng::seed_from_u64(9);
    let (mut sent, mut windows) = (BTreeMap::new(), Vec::new());
    // 22 values a row, 88 bytes at f32: a batch is written as soon as it holds 88 bytes, so
    // every step's rows (one to five) make a record batch of their own.
    let config = StoreConfig::default()
        .dtype(SketchDtype::F32)
        .batch_bytes(88)
        .fsync(false);
    let mut w = StoreWriter::create(dir.path(), config).expect("create");
    w.begin(&run).expect("begin");
    drive(&mut w, &run, 0, 30, &mut rng, &mut sent, &mut windows);
    w.finish().expect("finish");
    let store = Store::open(dir.path()).expect("open");
    let mut batches = 0;
    for shard in store.shards(&ReadOptions::default()) {
        let (_, record_batches) = store.record_batches(shard).expect("record batches");
        for b in record_batches {
            let step = b.column_by_name("step").expect("step column");
            let step = step
                .as_any()
                .downcast_ref::<arrow_array::UInt64Array>()
                .expect("u64 steps");
            let first = step.value(0);
            assert!(step.iter().all(|s| s == Some(first)), "one step a batch");
            assert_eq!(b.num_rows(), sent[&first].rows.len(), "step {first} whole");
            batches += 1;
        }
    }
    assert_eq!(batches, 30);
    assert_matches(&store, &sent, SketchDtype::F32);
}

/// Writes `b` alone into a fresh store at `dtype`; returns the manifest's overflow count and the
/// first chunk read back.
fn write_one_batch(
    dir: &std::path::Path,
    run: &RunInfo,
    b: SketchBatch,
    dtype: SketchDtype,
) -> (u64, influence_store::SketchChunk) {
    let config = StoreConfig::default().fsync(false).dtype(dtype);
    let mut w = StoreWriter::create(dir, config).expect("create");
    w.begin(run).expect("begin");
    w.sketches(b).expect("sketches");
    w.finish().expect("finish");
    let store = Store::open(dir).expect("open");
    let c = store
        .sketches(&ReadOptions::default())
        .expect("stream")
        .next()
        .expect("chunk")
        .expect("ok");
    (store.manifest().overflowed_values, c)
}

#[test]
fn f16_overflow_is_counted_not_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(10);
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = batch(&run, 0, &mut rng);
    b.sketches[0][0] = 1e6;
    b.sketches[1][1] = -7e4;
    let (overflowed, c) = write_one_batch(dir.path(), &run, b, SketchDtype::F16);
    assert_eq!(overflowed, 2);
    assert_eq!(c.sketches[0][0], f32::INFINITY);
    assert_eq!(c.sketches[1][1], f32::NEG_INFINITY);
}

/// The documents a hook skipped for non-finite values reach the manifest (`non_finite`) with
/// their step, layer and value.
#[test]
fn skipped_documents_are_recorded_in_the_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(10);
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = batch(&run, 3, &mut rng);
    let skipped = influence_core::SkippedRow {
        step: 3,
        doc_id: 77,
        layer: "head".into(),
        value: "output_gradient".into(),
    };
    b.skipped = vec![skipped.clone()];
    write_one_batch(dir.path(), &run, b, SketchDtype::F32);
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(store.manifest().non_finite, vec![skipped]);
}

#[test]
fn i8_rows_with_non_finite_values_decode_as_nan_and_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(10);
    let mut rng = StdRng::seed_from_u64(1);
    let mut b = batch(&run, 0, &mut rng);
    let k0 = run.layers[0].sketch_len();
    b.sketches[0][1] = f32::NAN;
    b.sketches[0][2] = f32::INFINITY;
    // A zero row: scale 0, decodes as zeros (not NaN).
    let k1 = run.layers[1].sketch_len();
    b.sketches[1][k1..2 * k1].fill(0.0);
    let sent = b.clone();
    let (overflowed, c) = write_one_batch(dir.path(), &run, b, SketchDtype::I8);
    assert_eq!(overflowed, 2);
    assert!(c.sketches[0][..k0].iter().all(|v| v.is_nan()), "row 0");
    assert_row(
        &c.sketches[0][k0..2 * k0],
        &sent.sketches[0][k0..2 * k0],
        SketchDtype::I8,
        "row 1",
    );
    assert!(c.sketches[1][k1..2 * k1].iter().all(|&v| v == 0.0));
}

#[test]
fn an_i8_manifest_claiming_version_2_is_refused() {
    let run = run_info(10);
    let mut m = influence_store::Manifest::new(run, SketchDtype::I8);
    m.store_version = 2;
    let bytes = serde_json::to_vec(&m).expect("json");
    let e = influence_store::Manifest::from_bytes(&bytes, std::path::Path::new("manifest.json"))
        .expect_err("i8 needs version 3");
    assert!(
        e.to_string().contains("dtype") && e.to_string().contains("version 3"),
        "{e}"
    );
}

#[test]
fn resume_rolls_back_to_the_last_checkpoint_without_duplicates_or_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(10);
    let config = small_shards(SketchDtype::F32);
    let mut rng = StdRng::seed_from_u64(9);
    let (mut sent, mut windows) = (BTreeMap::new(), Vec::new());
    {
        let mut w = StoreWriter::create(dir.path(), config.clone()).expect("create");
        w.begin(&run).expect("begin");
        drive(&mut w, &run, 0, 27, &mut rng, &mut sent, &mut windows);
        // Dropped mid-window-2 without finish, like a training loop that errors out.
    }
    // Leftovers of a harder crash: a half-written shard and a shard renamed but never named by
    // the manifest.
    std::fs::write(
        dir.path()
            .join("shards/sketches-w00002-s0000000027.arrow.tmp"),
        b"partial",
    )
    .expect("write");
    std::fs::write(dir.path().join("shards/orphan.arrow"), b"orphan").expect("write");
    let before = Store::open(dir.path()).expect("open the crashed store");
    assert!(!before.manifest().finished);
    assert!(
        before.manifest().shards.iter().any(|s| s.window == 2),
        "rows of the open window were committed"
    );
    before
        .verify()
        .expect("every committed shard of a crashed run is readable");

    let (mut w, point) = StoreWriter::resume(dir.path(), config.clone()).expect("resume");
    assert_eq!(point.step, 20);
    assert_eq!(
        point.checkpoint,
        Some(dir.path().join("checkpoints/window-00001.bpk"))
    );
    let rolled: u64 = sent.range(20..).map(|(_, b)| b.rows.len() as u64).sum();
    assert_eq!(point.removed_rows, rolled);
    let names: Vec<String> = point
        .removed_files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".arrow.tmp")), "{names:?}");
    assert!(
        names.iter().any(|n| n.ends_with("orphan.arrow")),
        "{names:?}"
    );
    let e = w
        .sketches(batch(&run, 20, &mut rng))
        .expect_err("sketches before begin");
    assert!(e.to_string().contains("before begin"), "{e}");

    // A different run cannot continue this store.
    let mut other = run.clone();
    other.projection_seed = 12;
    let e = w.begin(&other).expect_err("mismatched run");
    assert!(e.to_string().contains("projection_seed"), "{e}");
    w.begin(&run).expect("begin");
    let e = w
        .sketches(batch(&run, 19, &mut rng))
        .expect_err("a stored step");
    assert!(e.to_string().contains("already stored"), "{e}");
    sent.retain(|&s, _| s < 20);
    drive(&mut w, &run, 20, 30, &mut rng, &mut sent, &mut windows);
    w.finish().expect("finish");

    let store = Store::open(dir.path()).expect("open");
    store.verify().expect("verify");
    assert_matches(&store, &sent, SketchDtype::F32);
    assert_eq!(store.manifest().resumes.len(), 1);
    assert_eq!(store.manifest().windows.len(), 3);
    let e = StoreWriter::resume(dir.path(), config)
        .err()
        .expect("finished");
    assert!(e.to_string().contains("finished"), "{e}");
}

#[test]
fn creating_over_a_store_and_bad_records_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(10);
    let mut rng = StdRng::seed_from_u64(2);
    let mut w = StoreWriter::create(dir.path(), small_shards(SketchDtype::F16)).expect("create");
    w.begin(&run).expect("begin");
    let mut b = batch(&run, 0, &mut rng);
    b.sketches[1].pop();
    let e = w.sketches(b).expect_err("short sketch");
    assert!(e.to_string().contains("head"), "{e}");
    let mut b = batch(&run, 3, &mut rng);
    b.window = 1;
    assert!(w.sketches(b).is_err(), "window inconsistent with the step");
    for lr in [-1e-3, f64::NAN, f64::INFINITY] {
        let mut b = batch(&run, 3, &mut rng);
        b.learning_rate = lr;
        let e = w.sketches(b).expect_err("a bad learning rate");
        assert!(e.to_string().contains("learning rate"), "{lr}: {e}");
    }
    w.sketches(batch(&run, 4, &mut rng)).expect("sketches");
    w.finish().expect("finish");
    let e = StoreWriter::create(dir.path(), StoreConfig::default())
        .err()
        .expect("exists");
    assert!(matches!(e, StoreError::Exists { .. }), "{e}");
}

#[test]
fn a_writer_error_surfaces_on_a_later_call_not_as_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = run_info(1000);
    let mut rng = StdRng::seed_from_u64(3);
    let config = StoreConfig::default()
        .batch_rows(1)
        .shard_rows(1)
        .fsync(false);
    let mut w = StoreWriter::create(dir.path(), config).expect("create");
    w.begin(&run).expect("begin");
    w.sketches(batch(&run, 0, &mut rng)).expect("first step");
    // The disk goes away under the writer.
    std::fs::remove_dir_all(dir.path().join("shards")).expect("remove");
    let mut error = None;
    for step in 1..200 {
        if let Err(e) = w.sketches(batch(&run, step, &mut rng)) {
            error = Some(e.to_string());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let error = match error {
        Some(e) => e,
        None => w.finish().expect_err("finish reports it").to_string(),
    };
    assert!(
        error.contains("shards"),
        "the error names the path: {error}"
    );
    assert!(
        w.sketches(batch(&run, 500, &mut rng)).is_err(),
        "later calls keep failing"
    );
}

#[test]
fn lossy_mode_counts_every_dropped_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut run = run_info(1000);
    run.layers[0].k_a = 64;
    run.layers[0].k_g = 64;
    let mut rng = StdRng::seed_from_u64(4);
    let config = StoreConfig::default()
        .dtype(SketchDtype::F32)
        .zstd_level(19)
        .batch_rows(1)
        .shard_rows(1)
        .queue_steps(1)
        .overflow(Overflow::DropRows);
    let mut w = StoreWriter::create(dir.path(), config).expect("create");
    let stats = w.stats();
    w.begin(&run).expect("begin");
    let mut sent = 0u64;
    for step in 0..60 {
        let b = batch(&run, step, &mut rng);
        sent += b.rows.len() as u64;
        w.sketches(b).expect("lossy sketches never block or fail");
    }
    w.finish().expect("finish");
    let s = stats.snapshot();
    let store = Store::open(dir.path()).expect("open");
    let m = store.manifest();
    assert!(
        s.dropped_rows > 0,
        "a 1-deep queue behind zstd-19 must overflow: {s:?}"
    );
    assert_eq!(s.rows_enqueued, sent);
    assert_eq!(s.rows_written + s.dropped_rows, sent);
    assert_eq!(m.rows(), s.rows_written);
    assert_eq!(
        m.dropped.iter().map(|d| d.rows).sum::<u64>(),
        s.dropped_rows
    );
    let stored: std::collections::HashSet<u64> = m.shards.iter().map(|x| x.first_step).collect();
    assert!(
        m.dropped.iter().all(|d| !stored.contains(&d.step)),
        "a dropped step has no rows"
    );
}

/// Inputs the fuzzer (`fuzz/`, target `shard`) found; each once aborted the process or panicked
/// inside arrow-ipc. They must give errors.
#[test]
fn fuzz_regressions_are_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let run = run_info(1 << 40);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        let shard = influence_store::ShardEntry {
            file: influence_store::FileEntry {
                file: "shards/x.arrow".into(),
                bytes: bytes.len() as u64,
                sha256: "0".repeat(64),
            },
            window: 0,
            first_step: 0,
            last_step: u64::MAX,
            rows: 1,
        };
        for dtype in SketchDtype::ALL {
            let m = influence_store::Manifest::new(run.clone(), dtype);
            let e = influence_store::decode_shard(bytes.clone(), &m, &shard, &[0, 1], &path)
                .expect_err("a malformed shard");
            assert!(
                e.to_string().contains("malformed"),
                "{}: {e}",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n > 0);
}
