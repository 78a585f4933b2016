//! The manifest: the one file that says what a store holds. Everything not named here is not
//! part of the store (temporaries, orphans of a crash).

use std::collections::HashSet;
use std::path::{Component, Path};

use influence_core::{FORMAT_VERSION, MIN_FORMAT_VERSION, RunInfo};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::{SketchDtype, StoreError};

/// Version of the on-disk layout (manifest fields, schema, file names); bumped on any change a
/// reader must know about. Version 2 added the sketch scheme to the run and the sketch-basis
/// columns to factor files; version 1 stores are read (and scored) as before. Version 3 added the
/// `i8` dtype (per-row scale columns); a store of another dtype is still written as version 2
/// ([`SketchDtype::min_store_version`]), readable by version-2 readers.
pub const STORE_VERSION: u32 = 3;

/// The oldest store version this build reads.
pub const MIN_STORE_VERSION: u32 = 1;

/// File name of the manifest inside a store directory.
pub const MANIFEST: &str = "manifest.json";

/// A file of the store with its size and checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the store directory (always `/`-separated, never `..`).
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

/// A finished shard of sketch rows: one Arrow IPC file, all rows from one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The file.
    #[serde(flatten)]
    pub file: FileEntry,
    /// The window all its rows belong to.
    pub window: u32,
    /// Step of its first row.
    pub first_step: u64,
    /// Step of its last row (inclusive).
    pub last_step: u64,
    /// Rows.
    pub rows: u64,
}

/// A closed window: its factors and the checkpoint at its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowEntry {
    /// Window index.
    pub window: u32,
    /// First step.
    pub first_step: u64,
    /// Last step (inclusive); the checkpoint is the model after it.
    pub last_step: u64,
    /// Learning rate of each step of the window.
    pub learning_rates: Vec<f64>,
    /// The factor file (Arrow IPC, one row per layer).
    pub factors: FileEntry,
    /// The checkpoint (burnpack, `.bpk`); `None` until written. A window without one is not
    /// complete: resume starts after the last window that has one.
    pub checkpoint: Option<FileEntry>,
}

impl WindowEntry {
    /// Whether factors and checkpoint are both written.
    pub fn is_complete(&self) -> bool {
        self.checkpoint.is_some()
    }
}

/// Rows the writer dropped (only with `overflow = drop_rows`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroppedStep {
    /// The step whose rows were dropped.
    pub step: u64,
    /// How many rows.
    pub rows: u64,
}

/// One resume of the run: what was rolled back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeEntry {
    /// The step training continued from.
    pub step: u64,
    /// Rows of later steps that were removed (they are written again by the resumed run).
    pub removed_rows: u64,
    /// Files removed: shards and factors of rolled-back windows, temporaries, orphans.
    pub removed_files: Vec<String>,
}

/// The manifest (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`STORE_VERSION`] of the writer.
    pub store_version: u32,
    /// The writing library and its version.
    pub created_by: String,
    /// Tracked layers (names, shapes, sketch sizes), projection seed and kind, loss reduction,
    /// window length, Fisher labels.
    pub run: RunInfo,
    /// Value type of the sketch columns.
    pub dtype: SketchDtype,
    /// Compression of the Arrow IPC buffers (always `zstd`).
    pub compression: String,
    /// Finished shards, in step order.
    pub shards: Vec<ShardEntry>,
    /// Closed windows, in order.
    pub windows: Vec<WindowEntry>,
    /// Steps whose rows were dropped by a lossy writer.
    pub dropped: Vec<DroppedStep>,
    /// Sketch values that did not fit the dtype's range and were stored as ±inf.
    pub overflowed_values: u64,
    /// Resumes of this run, in order.
    pub resumes: Vec<ResumeEntry>,
    /// Documents of steps the hook left out because a captured value was NaN or ∞ (absent in
    /// stores written before it was recorded).
    #[serde(default)]
    pub non_finite: Vec<influence_core::SkippedRow>,
    /// Whether the writer finished (the run ended normally).
    pub finished: bool,
}

impl Manifest {
    /// A manifest for a new run.
    pub fn new(run: RunInfo, dtype: SketchDtype) -> Self {
        Self {
            store_version: dtype.min_store_version(),
            created_by: concat!("influence-store ", env!("CARGO_PKG_VERSION")).into(),
            run,
            dtype,
            compression: "zstd".into(),
            shards: Vec::new(),
            windows: Vec::new(),
            dropped: Vec::new(),
            overflowed_values: 0,
            resumes: Vec::new(),
            non_finite: Vec::new(),
            finished: false,
        }
    }

    /// Reads and validates the manifest of the store in `dir` (fields only; see
    /// [`Manifest::check_files`] for the files it names).
    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(MANIFEST);
        let bytes = fsutil::read(&path).map_err(|e| match e {
            StoreError::Missing { path, .. } => StoreError::Missing {
                path,
                what: "store manifest".into(),
            },
            other => other,
        })?;
        Self::from_bytes(&bytes, &path)
    }

    /// Parses and validates manifest bytes; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let path = path.to_owned();
        // Check the version before the shape, so that a future store gets a version error rather
        // than an unknown-field one.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
                path: path.clone(),
                source,
            })?;
        match value
            .get("store_version")
            .and_then(serde_json::Value::as_u64)
        {
            Some(v) if (u64::from(MIN_STORE_VERSION)..=u64::from(STORE_VERSION)).contains(&v) => {}
            Some(v) => {
                return Err(StoreError::Version {
                    path,
                    field: "store_version",
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                    expected: STORE_VERSION,
                    oldest: MIN_STORE_VERSION,
                });
            }
            None => {
                return Err(StoreError::invalid(
                    path,
                    "store_version",
                    "missing or not an unsigned integer",
                ));
            }
        }
        let manifest: Self = serde_json::from_value(value).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Writes the manifest into `dir` atomically (temporary, fsync, rename).
    pub fn save(&self, dir: &Path, fsync: bool) -> Result<(), StoreError> {
        let path = dir.join(MANIFEST);
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| StoreError::Json {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &bytes, fsync)?;
        Ok(())
    }

    /// Checks every field against the others. `path` names the manifest in errors.
    pub fn validate(&self, path: &Path) -> Result<(), StoreError> {
        let bad = |field: String, message: String| StoreError::invalid(path, field, message);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.run.format_version) {
            return Err(StoreError::Version {
                path: path.to_owned(),
                field: "run.format_version",
                found: self.run.format_version,
                expected: FORMAT_VERSION,
                oldest: MIN_FORMAT_VERSION,
            });
        }
        if self.run.format_version < 2
            && self.run.sketch_scheme != influence_core::SketchScheme::Random
        {
            return Err(bad(
                "run.sketch_scheme".into(),
                "format version 1 has only random sketches".into(),
            ));
        }
        if self.store_version < self.dtype.min_store_version() {
            return Err(bad(
                "dtype".into(),
                format!(
                    "{} needs store version {}, the manifest says {}",
                    self.dtype.name(),
                    self.dtype.min_store_version(),
                    self.store_version
                ),
            ));
        }
        if self.compression != "zstd" {
            return Err(bad(
                "compression".into(),
                format!("{:?} (only \"zstd\" is written or read)", self.compression),
            ));
        }
        if self.run.layers.is_empty() {
            return Err(bad("run.layers".into(), "no layers".into()));
        }
        if self.run.window_steps == 0 {
            return Err(bad("run.window_steps".into(), "must be at least 1".into()));
        }
        let mut names = HashSet::new();
        for (i, l) in self.run.layers.iter().enumerate() {
            let f = |x: &str| format!("run.layers[{i}].{x}");
            if l.name.is_empty() || !names.insert(l.name.as_str()) {
                return Err(bad(f("name"), format!("{:?} is empty or repeated", l.name)));
            }
            for (field, v) in [
                ("d_in", l.d_in),
                ("d_out", l.d_out),
                ("k_a", l.k_a),
                ("k_g", l.k_g),
            ] {
                if v == 0 || v > 1 << 24 {
                    return Err(bad(f(field), format!("{v} is outside 1..=2^24")));
                }
            }
            if l.k_a.checked_mul(l.k_g).is_none_or(|k| k > 1 << 24) {
                return Err(bad(f("k_a"), "k_a × k_g is too large".into()));
            }
        }
        let mut files = HashSet::new();
        let mut last_step: Option<u64> = None;
        for (i, s) in self.shards.iter().enumerate() {
            let f = |x: &str| format!("shards[{i}].{x}");
            check_file(&s.file, "shards/", &f, path)?;
            if !files.insert(s.file.file.as_str()) {
                return Err(bad(f("file"), "named twice".into()));
            }
            if s.first_step > s.last_step {
                return Err(bad(f("last_step"), "before first_step".into()));
            }
            if s.rows == 0 {
                return Err(bad(f("rows"), "a shard holds at least one row".into()));
            }
            if last_step.is_some_and(|l| s.first_step <= l) {
                return Err(bad(
                    f("first_step"),
                    format!(
                        "{} overlaps the previous shard (steps must increase: no duplicate rows)",
                        s.first_step
                    ),
                ));
            }
            last_step = Some(s.last_step);
            let w = self.run.window_steps;
            if s.first_step / w != u64::from(s.window) || s.last_step / w != u64::from(s.window) {
                return Err(bad(
                    f("window"),
                    format!(
                        "steps {}..={} are not all in window {} (window_steps {w})",
                        s.first_step, s.last_step, s.window
                    ),
                ));
            }
        }
        for (i, w) in self.windows.iter().enumerate() {
            let f = |x: &str| format!("windows[{i}].{x}");
            if w.window as usize != i {
                return Err(bad(f("window"), format!("{} (expected {i})", w.window)));
            }
            if w.first_step != u64::from(w.window) * self.run.window_steps
                || w.last_step < w.first_step
                || w.last_step - w.first_step >= self.run.window_steps
            {
                return Err(bad(
                    f("last_step"),
                    format!(
                        "steps {}..={} do not form window {} of {} steps",
                        w.first_step, w.last_step, w.window, self.run.window_steps
                    ),
                ));
            }
            if w.learning_rates.len() as u64 != w.last_step - w.first_step + 1 {
                return Err(bad(
                    f("learning_rates"),
                    format!(
                        "{} values for {} steps",
                        w.learning_rates.len(),
                        w.last_step - w.first_step + 1
                    ),
                ));
            }
            crate::schema::check_learning_rates(&w.learning_rates, path, &f("learning_rates"))?;
            check_file(
                &w.factors,
                "factors/",
                &|x: &str| f(&format!("factors.{x}")),
                path,
            )?;
            if let Some(c) = &w.checkpoint {
                check_file(
                    c,
                    "checkpoints/",
                    &|x: &str| f(&format!("checkpoint.{x}")),
                    path,
                )?;
            }
        }
        Ok(())
    }

    /// Checks that every file the manifest names exists with the recorded size (checksums are
    /// verified when a file is read, or by [`crate::Store::verify`]).
    pub fn check_files(&self, dir: &Path) -> Result<(), StoreError> {
        let shard_files = self.shards.iter().map(|s| (&s.file, "sketch shard"));
        let window_files = self.windows.iter().flat_map(|w| {
            std::iter::once((&w.factors, "factor file"))
                .chain(w.checkpoint.as_ref().map(|c| (c, "checkpoint")))
        });
        for (entry, what) in shard_files.chain(window_files) {
            let path = dir.join(&entry.file);
            let meta = std::fs::metadata(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    StoreError::Missing {
                        path: path.clone(),
                        what: format!("{what} named by {MANIFEST}"),
                    }
                } else {
                    StoreError::Io {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
            if meta.len() != entry.bytes {
                return Err(StoreError::Size {
                    path,
                    expected: entry.bytes,
                    found: meta.len(),
                });
            }
        }
        Ok(())
    }

    /// Rows in all shards.
    pub fn rows(&self) -> u64 {
        self.shards.iter().map(|s| s.rows).sum()
    }

    /// The last window with factors and checkpoint.
    pub fn last_complete_window(&self) -> Option<&WindowEntry> {
        self.windows.iter().rev().find(|w| w.is_complete())
    }
}

/// A relative path inside the store, under `dir` (no absolute paths, no `..`), with a
/// well-formed checksum.
fn check_file(
    entry: &FileEntry,
    dir: &str,
    field: &dyn Fn(&str) -> String,
    manifest: &Path,
) -> Result<(), StoreError> {
    let p = Path::new(&entry.file);
    let inside = p.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside || !entry.file.starts_with(dir) || entry.file.len() <= dir.len() {
        return Err(StoreError::invalid(
            manifest,
            field("file"),
            format!("{:?} is not a file under {dir} of the store", entry.file),
        ));
    }
    if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::invalid(
            manifest,
            field("sha256"),
            format!("{:?} is not 64 hex digits", entry.sha256),
        ));
    }
    Ok(())
}

/// Relative path of a store file, as written in the manifest.
pub(crate) fn rel(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

/// The first field where two run infos differ: `(JSON path, a's value, b's value)`, e.g.
/// `("run.layers[0].k_a", "16", "8")`.
pub(crate) fn run_difference(a: &RunInfo, b: &RunInfo) -> Option<(String, String, String)> {
    use serde_json::Value;
    fn first(path: String, a: &Value, b: &Value) -> Option<(String, String, String)> {
        match (a, b) {
            (Value::Object(ma), Value::Object(mb)) => ma
                .iter()
                .find_map(|(k, v)| {
                    first(format!("{path}.{k}"), v, mb.get(k).unwrap_or(&Value::Null))
                })
                .or_else(|| {
                    mb.iter()
                        .find(|(k, _)| !ma.contains_key(*k))
                        .map(|(k, v)| (format!("{path}.{k}"), "nothing".into(), v.to_string()))
                }),
            (Value::Array(xa), Value::Array(xb)) if xa.len() == xb.len() => xa
                .iter()
                .zip(xb)
                .enumerate()
                .find_map(|(i, (x, y))| first(format!("{path}[{i}]"), x, y)),
            (Value::Array(xa), Value::Array(xb)) => Some((
                format!("{path}.len()"),
                xa.len().to_string(),
                xb.len().to_string(),
            )),
            _ if a == b => None,
            _ => Some((path, a.to_string(), b.to_string())),
        }
    }
    let (ja, jb) = (serde_json::to_value(a).ok()?, serde_json::to_value(b).ok()?);
    first("run".into(), &ja, &jb)
}
