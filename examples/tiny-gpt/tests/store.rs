//! The example's store under real conditions: the training process killed with SIGKILL at many
//! points and resumed, and the finished store read back by pyarrow.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use influence_store::{ReadOptions, Store};
use rand::{Rng, SeedableRng, rngs::StdRng};

const STEPS: &str = "160";

fn tiny_gpt(out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiny-gpt"));
    c.args(["--preset", "tiny", "--no-query", "--steps", STEPS, "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        c.arg("--resume");
    }
    c
}

/// Doc ids of every stored row, by step; fails on a repeated `(step, doc)` or a step gap.
fn rows_by_step(store: &Store) -> BTreeMap<u64, Vec<u64>> {
    let mut by_step: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for chunk in store
        .sketches(&ReadOptions::default().layers(Vec::<String>::new()))
        .expect("stream")
    {
        let c = chunk.expect("every committed shard reads back");
        for (&s, &d) in c.steps.iter().zip(&c.doc_ids) {
            assert!(seen.insert((s, d)), "row (step {s}, doc {d}) stored twice");
            by_step.entry(s).or_default().push(d);
        }
    }
    let steps: Vec<u64> = by_step.keys().copied().collect();
    let want: Vec<u64> = (0..steps.len() as u64).collect();
    assert_eq!(steps, want, "stored steps are a gap-free prefix of the run");
    by_step
}

#[test]
fn sigkill_at_many_points_then_resume_keeps_every_step_exactly_once() {
    let root = tempfile::tempdir().expect("tempdir");
    // Reference: the same run without interruption (the data order depends only on the step).
    let reference_dir = root.path().join("reference");
    let t = Instant::now();
    let status = tiny_gpt(&reference_dir, false)
        .status()
        .expect("run tiny-gpt");
    assert!(status.success(), "reference run failed: {status}");
    let duration = t.elapsed();
    let reference = rows_by_step(&Store::open(reference_dir.join("store")).expect("open"));
    assert_eq!(reference.len(), 160);

    let out = root.path().join("crashy");
    let store_dir = out.join("store");
    let mut rng = StdRng::seed_from_u64(2024);
    let (mut kills, mut finished) = (0, false);
    for attempt in 0..16 {
        let mut child = tiny_gpt(&out, attempt > 0).spawn().expect("spawn");
        // Short lives (a fraction of a whole run), so that most attempts die somewhere in
        // startup, a step, a shard commit, a window close or a checkpoint write.
        let delay = duration.mul_f64(rng.random_range(0.02..0.2));
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "attempt {attempt} failed: {status}");
            finished = true;
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        kills += 1;
        // After every crash: whatever is committed is readable, duplicate-free, gap-free, and
        // identical to the reference rows of those steps.
        if store_dir.join(influence_store::MANIFEST).exists() {
            let store = Store::open(&store_dir).expect("a crashed store opens");
            store.verify().expect("every committed file verifies");
            for (step, docs) in rows_by_step(&store) {
                assert_eq!(
                    docs, reference[&step],
                    "rows of step {step} after kill {kills}"
                );
            }
        }
    }
    println!(
        "{kills} kills, {} resumes",
        Store::open(&store_dir).map_or(0, |s| s.manifest().resumes.len())
    );
    if !finished {
        let status = tiny_gpt(&out, true).status().expect("final resume");
        assert!(status.success(), "final resume failed: {status}");
    }
    let store = Store::open(&store_dir).expect("open");
    let m = store.manifest();
    assert!(m.finished);
    assert!(
        kills >= 8,
        "only {kills} kills landed before the run finished"
    );
    assert!(!m.resumes.is_empty());
    store.verify().expect("verify");
    assert_eq!(
        rows_by_step(&store),
        reference,
        "every step exactly once, no loss"
    );
    assert_eq!(store.complete_windows().count(), 40);
    for sub in ["shards", "factors", "checkpoints"] {
        for e in std::fs::read_dir(store_dir.join(sub)).expect("read_dir") {
            let name = e.expect("entry").file_name();
            assert!(
                !name.to_string_lossy().ends_with(".tmp"),
                "temporary {name:?} left behind"
            );
        }
    }
}

#[test]
fn pyarrow_reads_the_store() {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("INFLUENCE_SKIP_PYARROW").is_some(),
            "python3 with pyarrow and numpy is needed (pip install pyarrow numpy), \
             or set INFLUENCE_SKIP_PYARROW=1 to skip this test"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let status = tiny_gpt(dir.path(), false).status().expect("run tiny-gpt");
    assert!(status.success());
    let store_dir = dir.path().join("store");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/read_store.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&store_dir)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let py: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");

    let store = Store::open(&store_dir).expect("open");
    let m = store.manifest();
    let (mut rows, mut doc_sum, mut step_sum) = (0u64, 0u64, 0u64);
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    let mut sums = vec![0f64; m.run.layers.len()];
    let mut first: Option<(u64, u64, Vec<Vec<f32>>)> = None;
    for chunk in store.sketches(&ReadOptions::default()).expect("stream") {
        let c = chunk.expect("chunk");
        rows += c.len() as u64;
        doc_sum += c.doc_ids.iter().sum::<u64>();
        step_sum += c.steps.iter().sum::<u64>();
        for s in &c.sources {
            *sources.entry(s.to_string()).or_default() += 1;
        }
        for (sum, values) in sums.iter_mut().zip(&c.sketches) {
            *sum += values.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        if first.is_none() {
            let k = |li: usize| m.run.layers[li].sketch_len();
            first = Some((
                c.doc_ids[0],
                c.steps[0],
                c.sketches
                    .iter()
                    .enumerate()
                    .map(|(li, v)| v[..k(li)].to_vec())
                    .collect(),
            ));
        }
    }
    assert!(rows > 0);
    assert_eq!(py["rows"], rows);
    assert_eq!(py["shards"], m.shards.len());
    assert_eq!(py["doc_id_sum"], doc_sum);
    assert_eq!(py["step_sum"], step_sum);
    let py_sources: BTreeMap<String, u64> =
        serde_json::from_value(py["sources"].clone()).expect("sources");
    assert_eq!(py_sources, sources);
    let (doc, step, sketches) = first.expect("a first row");
    assert_eq!(py["first_row"]["doc_id"], doc);
    assert_eq!(py["first_row"]["step"], step);
    for (li, l) in m.run.layers.iter().enumerate() {
        let got: Vec<f32> =
            serde_json::from_value(py["first_row"]["sketches"][&l.name].clone()).expect("row");
        assert_eq!(
            got, sketches[li],
            "first row of {} (exact: same f16 values)",
            l.name
        );
        let py_sum = py["layer_sums"][&l.name].as_f64().expect("sum");
        // Same f16 values summed in f64 in another order: equal to ~1e-12 relative.
        assert!(
            (py_sum - sums[li]).abs() <= 1e-9 * sums[li].abs().max(1.0),
            "{}: pyarrow sum {py_sum}, Rust sum {}",
            l.name,
            sums[li]
        );
    }
    let factors = py["factors"].as_array().expect("factors");
    assert_eq!(factors.len(), m.windows.len());
    for f in factors {
        let w = f["window"].as_u64().expect("window") as u32;
        let record = store.factors(w).expect("factors");
        let names: Vec<&str> = record.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(f["layers"], serde_json::json!(names));
        let a_sum: f64 = record.layers.iter().flat_map(|l| &l.a).sum();
        let py_a = f["a_sum"].as_f64().expect("a_sum");
        assert!(
            (py_a - a_sum).abs() <= 1e-9 * a_sum.abs().max(1.0),
            "{py_a} vs {a_sum}"
        );
        // pyarrow recomputed every eigenbasis layer's second moment from the window's rows.
        let bases = record
            .layers
            .iter()
            .filter(|l| l.sketch_basis.is_some())
            .count();
        assert_eq!(
            f["bases_checked"].as_u64(),
            Some(bases as u64),
            "window {w}"
        );
        assert!(
            bases > 0,
            "the example's default sketches are eigenbasis coordinates"
        );
    }
}
