//! Arbitrary bytes as a sketch shard: decoding and validation return errors, never panic or
//! abort. (The store's own reader checks a shard's SHA-256 before decoding it; this target feeds
//! the decoder directly, as a forged or buggy file would.)
#![no_main]

use std::path::Path;

use influence_core::{
    FORMAT_VERSION, FisherLabels, LayerSpec, LossReduction, ProjectionKind, RunInfo,
};
use influence_store::{FileEntry, Manifest, ShardEntry, SketchDtype, decode_shard};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // arrow-ipc panics on some malformed buffer offsets; the store's decoder catches those and
    // returns an error. libfuzzer-sys's panic hook would abort on the caught panic too, so use a
    // silent hook: a panic that escapes `decode_shard` still aborts (libfuzzer-sys catches it).
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let run = RunInfo {
        format_version: FORMAT_VERSION,
        layers: vec![
            LayerSpec { name: "a".into(), d_in: 8, d_out: 8, bias: true, k_a: 4, k_g: 4 },
            LayerSpec { name: "b".into(), d_in: 8, d_out: 4, bias: false, k_a: 2, k_g: 2 },
        ],
        projection_seed: 0,
        projection: ProjectionKind::Rademacher,
        loss_reduction: LossReduction::Sum,
        window_steps: 1 << 40,
        fisher: FisherLabels::Empirical,
        sketch_scheme: Default::default(),
    };
    let shard = ShardEntry {
        file: FileEntry {
            file: "shards/fuzz.arrow".into(),
            bytes: data.len() as u64,
            sha256: "0".repeat(64),
        },
        window: 0,
        first_step: 0,
        last_step: u64::MAX,
        rows: 1,
    };
    for dtype in [SketchDtype::F32, SketchDtype::F16, SketchDtype::Bf16] {
        let manifest = Manifest::new(run.clone(), dtype);
        let _ = decode_shard(data.to_vec(), &manifest, &shard, &[0, 1], Path::new("fuzz.arrow"));
    }
});
