//! Corrupted copies of a real store (written by the tiny GPT's training through the background
//! writer) are rejected with typed errors naming the file and field, and never panic.
//!
//! Three families: damage the manifest catches (bit flips, truncation: checksum and size errors);
//! "forged" damage with the manifest's size and checksum updated to match, which reaches the Arrow
//! decoder and the schema/row validation; and edits of the manifest itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use influence_core::Sink;
use influence_store::{Manifest, Store, StoreConfig, StoreError, StoreWriter, fsutil};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tiny_gpt::task::GptTask;
use tiny_gpt::train::{TrainConfig, prepare, train};

/// Writes a real store: 8 steps of the tiny GPT, windows of 4, small shards. Returns the task
/// that reads its checkpoints.
fn real_store(dir: &Path) -> GptTask {
    let mut config = TrainConfig::tiny();
    config.log_every = 0;
    let prepared = prepare(&config).expect("prepare");
    let device = Device::flex().autodiff();
    let writer = StoreWriter::create(dir, StoreConfig::default().shard_rows(10).fsync(false))
        .expect("create");
    train(
        &config,
        &prepared,
        &device,
        Some(Box::new(writer) as Box<dyn Sink>),
    )
    .expect("train");
    GptTask::new(config, prepared.bpe).expect("task")
}

/// Runs `f`, failing the test if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => panic!("{what}: the reader panicked"),
    }
}

/// Opens and fully verifies the store.
fn open_and_verify(dir: &Path, what: &str) -> Result<(), StoreError> {
    no_panic(what, || Store::open(dir)?.verify().map(|_| ()))
}

/// The file name of `file`, as errors print it.
fn file_name(file: &Path) -> String {
    file.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

/// Every file the manifest names, with what the test expects of it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let m = Manifest::load(dir).expect("manifest");
    let mut v: Vec<PathBuf> = m.shards.iter().map(|s| dir.join(&s.file.file)).collect();
    for w in &m.windows {
        v.push(dir.join(&w.factors.file));
        v.extend(w.checkpoint.as_ref().map(|c| dir.join(&c.file)));
    }
    v
}

/// Rewrites the manifest entry of `file` to `bytes`'s size and checksum (a forged file).
fn forge_manifest(dir: &Path, file: &Path, bytes: &[u8]) {
    let rel = file
        .strip_prefix(dir)
        .expect("inside")
        .to_string_lossy()
        .into_owned();
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    fn visit(v: &mut Value, rel: &str, size: u64, sha: &str) {
        match v {
            Value::Object(o) => {
                if o.get("file").and_then(Value::as_str) == Some(rel) {
                    o.insert("bytes".into(), json!(size));
                    o.insert("sha256".into(), json!(sha));
                }
                o.values_mut().for_each(|x| visit(x, rel, size, sha));
            }
            Value::Array(a) => a.iter_mut().for_each(|x| visit(x, rel, size, sha)),
            _ => {}
        }
    }
    visit(&mut m, &rel, bytes.len() as u64, &fsutil::sha256_hex(bytes));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("json")).expect("write");
}

#[test]
fn corrupted_copies_of_a_real_store_are_rejected_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    real_store(dir);
    open_and_verify(dir, "the intact store").expect("the intact store verifies");
    let manifest_path = dir.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).expect("manifest");
    let files = files(dir);
    assert!(
        files.len() >= 6,
        "shards, factors and checkpoints: {files:?}"
    );
    let mut rng = StdRng::seed_from_u64(77);
    let (mut flips, mut truncations, mut forged_ok, mut forged_err) = (0, 0, 0, 0);

    for file in &files {
        let name = file_name(file);
        let original = std::fs::read(file).expect("read");
        let restore = || {
            std::fs::write(file, &original).expect("restore");
            std::fs::write(&manifest_path, &manifest_bytes).expect("restore manifest");
        };
        // Bit flips: the checksum catches every one.
        for _ in 0..40 {
            let mut bytes = original.clone();
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
            std::fs::write(file, &bytes).expect("write");
            match open_and_verify(dir, &name) {
                Err(StoreError::Checksum { path, .. }) => assert_eq!(&path, file),
                other => {
                    panic!("{name}: flipped byte {i}: expected a checksum error, got {other:?}")
                }
            }
            flips += 1;
        }
        // Truncations: the size check at open catches every one.
        let mut lengths = vec![0, 1, original.len() / 2, original.len() - 1];
        lengths.extend((0..12).map(|_| rng.random_range(0..original.len())));
        for len in lengths {
            std::fs::write(file, &original[..len]).expect("write");
            match no_panic(&name, || Store::open(dir).map(|_| ())) {
                Err(StoreError::Size {
                    path,
                    expected,
                    found,
                }) => {
                    assert_eq!(
                        (&path, expected, found),
                        (file, original.len() as u64, len as u64)
                    );
                }
                other => panic!("{name}: truncated to {len}: expected a size error, got {other:?}"),
            }
            truncations += 1;
        }
        restore();
        if !name.ends_with(".arrow") {
            continue;
        }
        // Forged: the manifest agrees with the damaged bytes, so the Arrow decoder and the
        // validation behind it see them. Errors or (for flips inside sketch values) valid data;
        // never a panic.
        for round in 0..60 {
            let mut bytes = original.clone();
            if round % 4 == 0 {
                bytes.truncate(rng.random_range(0..original.len()));
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
            }
            std::fs::write(file, &bytes).expect("write");
            forge_manifest(dir, file, &bytes);
            match open_and_verify(dir, &name) {
                Ok(()) => {
                    assert!(round % 4 != 0, "{name}: a truncated Arrow file decoded");
                    forged_ok += 1;
                }
                Err(e) => {
                    assert!(
                        e.to_string().contains(&name),
                        "{name}: error does not name the file: {e}"
                    );
                    forged_err += 1;
                }
            }
            restore();
        }
    }
    println!(
        "{flips} flips, {truncations} truncations rejected; forged: {forged_err} rejected, {forged_ok} decoded as valid data"
    );
    assert!(forged_err > 0);
    open_and_verify(dir, "the restored store").expect("restored");
}

/// Applies `edit` to the manifest JSON, opens and verifies, restores. Returns the outcome.
fn with_edited_manifest(
    dir: &Path,
    what: &str,
    edit: impl FnOnce(&mut Value),
) -> Result<(), StoreError> {
    let path = dir.join("manifest.json");
    let original = std::fs::read(&path).expect("read");
    let mut m: Value = serde_json::from_slice(&original).expect("json");
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("json")).expect("write");
    let r = open_and_verify(dir, what);
    std::fs::write(&path, &original).expect("restore");
    r
}

/// [`with_edited_manifest`], which must fail: the error.
fn manifest_error(dir: &Path, what: &str, edit: impl FnOnce(&mut Value)) -> String {
    match with_edited_manifest(dir, what, edit) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("{what}: the edited manifest was accepted"),
    }
}

#[test]
fn manifest_edits_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    real_store(dir);
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("read"))
        .expect("json");
    // Fields added to the manifest after stores were first written read as empty when absent
    // (an older store has none): removing one is accepted, and the store still verifies.
    const OPTIONAL: [&str; 1] = ["non_finite"];
    for key in OPTIONAL {
        assert!(m.get(key).is_some(), "{key} is written");
        with_edited_manifest(dir, key, |m| {
            m.as_object_mut().expect("object").remove(key);
        })
        .unwrap_or_else(|e| panic!("a manifest without {key} (an older store): {e}"));
    }
    for key in m.as_object().expect("object").keys() {
        if OPTIONAL.contains(&key.as_str()) {
            continue;
        }
        let e = manifest_error(dir, key, |m| {
            m.as_object_mut().expect("object").remove(key);
        });
        assert!(
            e.contains(key.as_str()) && e.contains("manifest.json"),
            "removing {key}: {e}"
        );
    }
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit, &str); 17] = [
        (
            "projection seed",
            |m| m["run"]["projection_seed"] = json!(1),
            "run.projection_seed",
        ),
        (
            "newer store",
            |m| m["store_version"] = json!(4),
            "store_version is 4, this reader supports 1 to 3",
        ),
        (
            // Version 1 knew only random projections; this store's sketches are eigenbasis ones.
            "version-1 records with a scheme version 1 cannot hold",
            |m| m["run"]["format_version"] = json!(1),
            "run.sketch_scheme",
        ),
        (
            "newer records",
            |m| m["run"]["format_version"] = json!(9),
            "run.format_version is 9",
        ),
        (
            "missing shard",
            |m| m["shards"][0]["file"] = json!("shards/gone.arrow"),
            "gone.arrow: missing",
        ),
        (
            "path escape",
            |m| m["shards"][0]["file"] = json!("shards/../manifest.json"),
            "shards[0].file",
        ),
        (
            "bad checksum",
            |m| m["shards"][0]["sha256"] = json!("xyz"),
            "shards[0].sha256",
        ),
        (
            "row count",
            |m| {
                let r = m["shards"][0]["rows"].as_u64().expect("rows");
                m["shards"][0]["rows"] = json!(r + 1);
            },
            "`rows`",
        ),
        (
            "overlap",
            |m| m["shards"][1]["first_step"] = m["shards"][0]["first_step"].clone(),
            "shards[1]",
        ),
        (
            "shape",
            |m| m["run"]["layers"][0]["k_a"] = json!(8),
            "run.layers[0].k_a`: the shard says 33, the manifest says 8",
        ),
        (
            "dtype",
            |m| m["dtype"] = json!("f32"),
            "sketch.blocks.0.attn.qkv",
        ),
        (
            "layer name",
            |m| m["run"]["layers"][1]["name"] = json!("blocks.9.x"),
            "run.layers[1].name",
        ),
        (
            "learning rates",
            |m| {
                m["windows"][0]["learning_rates"]
                    .as_array_mut()
                    .expect("lrs")
                    .pop();
            },
            "windows[0].learning_rates",
        ),
        (
            "window steps",
            |m| m["run"]["window_steps"] = json!(3),
            "window",
        ),
        (
            "negative learning rate",
            |m| m["windows"][0]["learning_rates"][1] = json!(-0.001),
            "windows[0].learning_rates`: item 1 is -0.001",
        ),
        ("unknown field", |m| m["extra"] = json!(1), "extra"),
        (
            "checkpoint size",
            |m| m["windows"][1]["checkpoint"]["bytes"] = json!(5),
            "window-00001.bpk",
        ),
    ];
    for (what, edit, expect) in cases {
        let e = manifest_error(dir, what, edit);
        assert!(e.contains(expect), "{what}: expected {expect:?} in: {e}");
    }
    // Byte-level damage of the manifest: an error (or, rarely, an edit that still validates and
    // then fails on the files), never a panic.
    let path = dir.join("manifest.json");
    let original = std::fs::read(&path).expect("read");
    let mut rng = StdRng::seed_from_u64(5);
    let mut rejected = 0;
    for round in 0..300 {
        let mut bytes = original.clone();
        if round % 3 == 0 {
            bytes.truncate(rng.random_range(0..bytes.len()));
        } else {
            let i = rng.random_range(0..bytes.len());
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(&path, &bytes).expect("write");
        rejected += usize::from(open_and_verify(dir, "manifest bytes").is_err());
    }
    std::fs::write(&path, &original).expect("restore");
    assert!(
        rejected > 200,
        "only {rejected} of 300 damaged manifests rejected"
    );
}

/// One way of damaging a file's bytes, as a fuzzer would: the mutation operators of AFL-style
/// fuzzing (bit flips, interesting values at aligned offsets, byte ranges deleted, duplicated,
/// zeroed, truncation, trailing garbage).
fn mutate(rng: &mut StdRng, original: &[u8]) -> Vec<u8> {
    const WORDS32: [u32; 7] = [
        0,
        u32::MAX,
        0x7FFF_FFFF,
        0x8000_0000,
        0x7FC0_0000, // f32 NaN
        0x7F80_0000, // f32 +∞
        0xFF80_0000, // f32 −∞
    ];
    const WORDS64: [u64; 5] = [
        0,
        u64::MAX,
        0x7FF8_0000_0000_0000, // f64 NaN
        0x7FF0_0000_0000_0000, // f64 +∞
        0x0000_0001_0000_0000, // a length or offset just past 32 bits
    ];
    let mut b = original.to_vec();
    let n = b.len().max(1);
    match rng.random_range(0..9) {
        0 => {
            for _ in 0..rng.random_range(1..5) {
                let i = rng.random_range(0..n).min(b.len().saturating_sub(1));
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            let i = rng.random_range(0..n).min(b.len().saturating_sub(1));
            b[i] = rng.random();
        }
        2 if b.len() >= 4 => {
            let i = rng.random_range(0..b.len() / 4) * 4;
            let w = WORDS32[rng.random_range(0..WORDS32.len())];
            b[i..i + 4].copy_from_slice(&w.to_le_bytes());
        }
        3 if b.len() >= 8 => {
            let i = rng.random_range(0..b.len() / 8) * 8;
            let w = WORDS64[rng.random_range(0..WORDS64.len())];
            b[i..i + 8].copy_from_slice(&w.to_le_bytes());
        }
        4 => b.truncate(rng.random_range(0..b.len())),
        5 => {
            let extra = rng.random_range(1..64);
            b.extend((0..extra).map(|_| rng.random::<u8>()));
        }
        6 => {
            let i = rng.random_range(0..b.len());
            let len = rng.random_range(1..=(b.len() - i).min(256));
            b.drain(i..i + len);
        }
        7 => {
            let i = rng.random_range(0..b.len());
            let len = rng.random_range(1..=(b.len() - i).min(256));
            let chunk = b[i..i + len].to_vec();
            let at = rng.random_range(0..=b.len());
            b.splice(at..at, chunk);
        }
        _ => {
            let i = rng.random_range(0..b.len());
            let len = rng.random_range(1..=(b.len() - i).min(64));
            b[i..i + len].fill(0);
        }
    }
    b
}

/// A structured edit of one manifest value: a leaf replaced by a value of another type or an
/// extreme of its own, a key removed, an array element duplicated or dropped.
fn mutate_manifest(rng: &mut StdRng, m: &mut Value) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Object(o) => o.values().map(count).sum(),
            Value::Array(a) => a.iter().map(count).sum(),
            _ => 0,
        }
    }
    /// The `n`th node of `v` in pre-order.
    fn nth(v: &mut Value, n: usize) -> Result<&mut Value, usize> {
        if n == 0 {
            return Ok(v);
        }
        let mut n = n - 1;
        let children: Vec<&mut Value> = match v {
            Value::Object(o) => o.values_mut().collect(),
            Value::Array(a) => a.iter_mut().collect(),
            _ => Vec::new(),
        };
        for c in children {
            match nth(c, n) {
                Ok(x) => return Ok(x),
                Err(rest) => n = rest,
            }
        }
        Err(n)
    }
    let replacements = [
        json!(null),
        json!(0),
        json!(-1),
        json!(1),
        json!(u64::MAX),
        json!(1e300),
        json!(0.5),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!(true),
    ];
    let n = rng.random_range(0..count(m));
    let Ok(target) = nth(m, n) else {
        unreachable!("node {n} is counted")
    };
    match target {
        Value::Object(o) if !o.is_empty() && rng.random_bool(0.5) => {
            let key = o.keys().nth(rng.random_range(0..o.len())).cloned();
            if let Some(key) = key {
                o.remove(&key);
            }
        }
        Value::Array(a) if !a.is_empty() && rng.random_bool(0.5) => {
            let i = rng.random_range(0..a.len());
            if rng.random_bool(0.5) {
                let x = a[i].clone();
                a.insert(i, x);
            } else {
                a.remove(i);
            }
        }
        Value::Number(x) if rng.random_bool(0.5) => {
            let v = x.as_u64().unwrap_or(1);
            *target = json!(v.wrapping_add(rng.random_range(1..3)));
        }
        _ => *target = replacements[rng.random_range(0..replacements.len())].clone(),
    }
}

/// The outcome of one mutation, as counted: the error's kind, or valid data.
fn outcome(r: &Result<(), StoreError>) -> &'static str {
    match r {
        Ok(()) => "valid data",
        Err(StoreError::Checksum { .. }) => "checksum error",
        Err(StoreError::Size { .. }) => "size error",
        Err(StoreError::Arrow { .. }) => "Arrow decode error",
        Err(StoreError::Invalid { .. }) => "invalid field error",
        Err(StoreError::Json { .. }) => "JSON error",
        Err(StoreError::Version { .. }) => "version error",
        Err(StoreError::Missing { .. }) => "missing file error",
        Err(StoreError::Io { .. }) => "I/O error",
        Err(_) => "other error",
    }
}

/// The seeded fuzz test: 10,000 mutated shard, factor and manifest files of a real store, most of
/// the file mutations with the manifest re-signed (size and checksum recomputed) so that they
/// reach the Arrow decoder and the validation behind it. No mutation may panic; an error must
/// name the file it is about; the counts per outcome are printed (docs/reliability.md).
#[test]
fn ten_thousand_seeded_mutations_never_panic() {
    const MUTATIONS: usize = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    real_store(dir);
    let manifest_path = dir.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).expect("manifest");
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("json");
    let arrow: Vec<PathBuf> = files(dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "arrow"))
        .collect();
    let originals: Vec<Vec<u8>> = arrow
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    let mut rng = StdRng::seed_from_u64(20_261_207);
    let mut counts: std::collections::BTreeMap<(&str, bool, &str), usize> = Default::default();
    let (mut resigned, mut unchanged) = (0, 0);
    for i in 0..MUTATIONS {
        let pick = rng.random_range(0..100);
        if pick < 25 {
            // The manifest: half byte-level damage, half structured edits that parse.
            let bytes = if rng.random_bool(0.5) {
                mutate(&mut rng, &manifest_bytes)
            } else {
                let mut m = manifest.clone();
                mutate_manifest(&mut rng, &mut m);
                serde_json::to_vec_pretty(&m).expect("json")
            };
            std::fs::write(&manifest_path, &bytes).expect("write");
            let r = open_and_verify(dir, &format!("manifest mutation {i}"));
            *counts.entry(("manifest", false, outcome(&r))).or_default() += 1;
            std::fs::write(&manifest_path, &manifest_bytes).expect("restore");
            continue;
        }
        let f = rng.random_range(0..arrow.len());
        let (file, original) = (&arrow[f], &originals[f]);
        let kind = if file.to_string_lossy().contains("factors") {
            "factor file"
        } else {
            "shard"
        };
        let name = file_name(file);
        let bytes = mutate(&mut rng, original);
        if &bytes == original {
            unchanged += 1;
            continue;
        }
        let resign = rng.random_bool(0.85);
        std::fs::write(file, &bytes).expect("write");
        if resign {
            forge_manifest(dir, file, &bytes);
            resigned += 1;
        }
        let r = open_and_verify(dir, &format!("{name} mutation {i}"));
        match &r {
            Err(e) => assert!(
                e.to_string().contains(&name),
                "{name} mutation {i}: the error does not name the file: {e}"
            ),
            Ok(()) => assert!(resign, "{name} mutation {i}: unsigned damage passed"),
        }
        if !resign {
            assert!(
                matches!(
                    r,
                    Err(StoreError::Checksum { .. } | StoreError::Size { .. })
                ),
                "{name} mutation {i}: unsigned damage must fail the size or checksum check: {r:?}"
            );
        }
        *counts.entry((kind, resign, outcome(&r))).or_default() += 1;
        std::fs::write(file, original).expect("restore");
        std::fs::write(&manifest_path, &manifest_bytes).expect("restore manifest");
    }
    println!("{MUTATIONS} mutations ({resigned} re-signed, {unchanged} left the bytes unchanged):");
    println!("| file | manifest re-signed | outcome | count |\n| --- | --- | --- | --- |");
    for ((kind, resign, what), n) in &counts {
        let resign = if *kind == "manifest" {
            "—"
        } else if *resign {
            "yes"
        } else {
            "no"
        };
        println!("| {kind} | {resign} | {what} | {n} |");
    }
    let total: usize = counts.values().sum::<usize>() + unchanged;
    assert_eq!(total, MUTATIONS);
    assert!(
        resigned * 2 > MUTATIONS,
        "most mutations must reach the decoders: {resigned} re-signed"
    );
    for kind in ["shard", "factor file", "manifest"] {
        assert!(
            counts
                .keys()
                .any(|(k, _, o)| *k == kind && *o != "valid data"),
            "no {kind} mutation was rejected"
        );
    }
    open_and_verify(dir, "the restored store").expect("restored");
}

/// Mutated checkpoints, re-signed so that they reach burn's burnpack reader and the parameter
/// checks of `verify_checkpoints` (what `influence inspect --verify --model` runs): an error
/// naming the checkpoint, or a model that loads with finite parameters; never a panic.
#[test]
fn mutated_checkpoints_are_errors_or_finite_models_never_panics() {
    const MUTATIONS: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let task = real_store(dir);
    let device = Device::flex();
    let manifest_path = dir.join("manifest.json");
    let manifest_bytes = std::fs::read(&manifest_path).expect("manifest");
    let checkpoints: Vec<PathBuf> = files(dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "bpk"))
        .collect();
    assert!(!checkpoints.is_empty());
    let mut rng = StdRng::seed_from_u64(17);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..MUTATIONS {
        let file = &checkpoints[i % checkpoints.len()];
        let name = file_name(file);
        let original = std::fs::read(file).expect("read");
        let bytes = mutate(&mut rng, &original);
        std::fs::write(file, &bytes).expect("write");
        forge_manifest(dir, file, &bytes);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let store = Store::open(dir).map_err(|e| e.to_string())?;
            store.verify().map_err(|e| e.to_string())?;
            influence_analyzer::verify_checkpoints(&task, &store, &device)
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| panic!("{name} mutation {i}: a panic"));
        let what = match r {
            Ok(_) => "loads, every parameter finite".to_string(),
            Err(e) => {
                assert!(
                    e.contains(&name),
                    "{name} mutation {i}: the error does not name it: {e}"
                );
                let kind = if e.contains("NaN or ∞") {
                    "error: non-finite parameter"
                } else if e.contains("loading the checkpoint") {
                    "error: the reader refuses it"
                } else {
                    "error: other"
                };
                kind.to_string()
            }
        };
        *counts.entry(what).or_default() += 1;
        std::fs::write(file, &original).expect("restore");
        std::fs::write(&manifest_path, &manifest_bytes).expect("restore manifest");
    }
    println!("{MUTATIONS} re-signed checkpoint mutations: {counts:?}");
    assert!(counts.keys().any(|k| k.starts_with("error")));
}
