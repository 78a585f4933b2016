//! Arbitrary bytes as a manifest: parsing and validation return errors, never panic.
#![no_main]

use std::path::Path;

use influence_store::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::from_bytes(data, Path::new("manifest.json"));
});
