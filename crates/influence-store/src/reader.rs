//! Opening a store, verifying it, and streaming its sketches.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use influence_core::{RunInfo, WindowRecord};

use crate::manifest::{FileEntry, MANIFEST, Manifest, ShardEntry, WindowEntry};
use crate::schema::{self, SketchChunk};
use crate::{StoreError, factors, ipc};

/// Which part of the store to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Layer names to read sketches of (all when `None`), in the order given.
    pub layers: Option<Vec<String>>,
    /// Windows to read (all when `None`).
    pub windows: Option<Vec<u32>>,
}

impl ReadOptions {
    /// Only these layers.
    pub fn layers<S: Into<String>>(mut self, layers: impl IntoIterator<Item = S>) -> Self {
        self.layers = Some(layers.into_iter().map(Into::into).collect());
        self
    }

    /// Only these windows.
    pub fn windows(mut self, windows: impl IntoIterator<Item = u32>) -> Self {
        self.windows = Some(windows.into_iter().collect());
        self
    }
}

/// What [`Store::verify`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Shards read, checksummed and decoded.
    pub shards: usize,
    /// Rows decoded.
    pub rows: u64,
    /// Factor files read and decoded.
    pub factor_files: usize,
    /// Checkpoints checksummed.
    pub checkpoints: usize,
    /// Bytes read.
    pub bytes: u64,
}

/// A store opened for reading. Opening validates the manifest and that every file it names exists
/// with its recorded size; each file's checksum is verified whenever it is read.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
}

impl Store {
    /// Opens the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        let manifest = Manifest::load(&dir)?;
        manifest.check_files(&dir)?;
        Ok(Self { dir, manifest })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Layers, projections, loss reduction of the run.
    pub fn run(&self) -> &RunInfo {
        &self.manifest.run
    }

    /// Windows with factors and a checkpoint.
    pub fn complete_windows(&self) -> impl Iterator<Item = &WindowEntry> {
        self.manifest.windows.iter().filter(|w| w.is_complete())
    }

    fn window(&self, window: u32) -> Result<&WindowEntry, StoreError> {
        self.manifest
            .windows
            .iter()
            .find(|w| w.window == window)
            .ok_or_else(|| StoreError::Argument {
                name: "window",
                message: format!(
                    "{window} is not a closed window of {} ({} windows)",
                    self.dir.display(),
                    self.manifest.windows.len()
                ),
            })
    }

    /// The factors of a closed window (checksum verified).
    pub fn factors(&self, window: u32) -> Result<WindowRecord, StoreError> {
        read_factors(&self.dir, &self.manifest, self.window(window)?)
    }
}

/// The factors of window entry `w` of the store in `dir` with manifest `manifest` (checksum
/// verified, checked against the manifest).
pub(crate) fn read_factors(
    dir: &Path,
    manifest: &Manifest,
    w: &WindowEntry,
) -> Result<WindowRecord, StoreError> {
    let path = dir.join(&w.factors.file);
    let bytes = ipc::read_verified(dir, &w.factors)?;
    let (schema, batches) = ipc::decode(bytes, None, &path)?;
    let record = factors::decode(&schema, &batches, &path)?;
    if (record.window, record.first_step, record.last_step) != (w.window, w.first_step, w.last_step)
    {
        return Err(StoreError::invalid(
            path,
            "burn_influence.window",
            format!(
                "window {} steps {}..={}, the manifest says window {} steps {}..={}",
                record.window,
                record.first_step,
                record.last_step,
                w.window,
                w.first_step,
                w.last_step
            ),
        ));
    }
    let layers = &manifest.run.layers;
    if !record.layers.is_empty() {
        if record.layers.len() != layers.len() {
            return Err(StoreError::invalid(
                path,
                "layer",
                format!(
                    "{} layers, the run has {}",
                    record.layers.len(),
                    layers.len()
                ),
            ));
        }
        for (f, l) in record.layers.iter().zip(layers) {
            if f.name != l.name || f.eig_a.dim != l.d_in_aug() || f.eig_s.dim != l.d_out {
                return Err(StoreError::invalid(
                    &path,
                    format!("layer[{}]", f.name),
                    format!(
                        "{} with A {}², S {}², the manifest's layer is {} with {}², {}²",
                        f.name,
                        f.eig_a.dim,
                        f.eig_s.dim,
                        l.name,
                        l.d_in_aug(),
                        l.d_out
                    ),
                ));
            }
        }
    }
    Ok(record)
}

impl Store {
    fn checkpoint_entry(&self, window: u32) -> Result<&FileEntry, StoreError> {
        self.window(window)?
            .checkpoint
            .as_ref()
            .ok_or_else(|| StoreError::Missing {
                path: self.dir.join(MANIFEST),
                what: format!("checkpoint of window {window}"),
            })
    }

    /// The path of a window's checkpoint (a burnpack `.bpk` file for `Module::load_file`).
    pub fn checkpoint_path(&self, window: u32) -> Result<PathBuf, StoreError> {
        Ok(self.dir.join(&self.checkpoint_entry(window)?.file))
    }

    /// A window's checkpoint bytes (checksum verified).
    pub fn checkpoint(&self, window: u32) -> Result<Vec<u8>, StoreError> {
        ipc::read_verified(&self.dir, self.checkpoint_entry(window)?)
    }

    /// Layer indices for `names` (all layers for `None`).
    pub fn layer_indices(&self, names: Option<&[String]>) -> Result<Vec<usize>, StoreError> {
        let layers = &self.manifest.run.layers;
        match names {
            None => Ok((0..layers.len()).collect()),
            Some(names) => names
                .iter()
                .map(|n| {
                    layers
                        .iter()
                        .position(|l| &l.name == n)
                        .ok_or_else(|| StoreError::Argument {
                            name: "layers",
                            message: format!("no layer {n:?} in {}", self.dir.display()),
                        })
                })
                .collect(),
        }
    }

    /// The raw record batches of a shard (checksum verified), all columns.
    pub fn record_batches(
        &self,
        shard: &ShardEntry,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), StoreError> {
        let path = self.dir.join(&shard.file.file);
        let bytes = ipc::read_verified(&self.dir, &shard.file)?;
        ipc::decode(bytes, None, &path)
    }

    /// Reads, verifies and decodes one shard, keeping the sketches of `layers`.
    pub fn read_shard(
        &self,
        shard: &ShardEntry,
        layers: &[usize],
    ) -> Result<Vec<SketchChunk>, StoreError> {
        let path = self.dir.join(&shard.file.file);
        let bytes = ipc::read_verified(&self.dir, &shard.file)?;
        decode_shard(bytes, &self.manifest, shard, layers, &path)
    }

    /// The shards `options` selects.
    pub fn shards(&self, options: &ReadOptions) -> Vec<&ShardEntry> {
        self.manifest
            .shards
            .iter()
            .filter(|s| {
                options
                    .windows
                    .as_ref()
                    .is_none_or(|w| w.contains(&s.window))
            })
            .collect()
    }

    /// Streams the selected sketches, one shard in memory at a time.
    pub fn sketches(&self, options: &ReadOptions) -> Result<SketchStream<'_>, StoreError> {
        let layers = self.layer_indices(options.layers.as_deref())?;
        Ok(SketchStream {
            store: self,
            shards: self.shards(options).into(),
            layers,
            chunks: VecDeque::new(),
            failed: false,
        })
    }

    /// Reads every file the manifest names, checks its checksum, and decodes every shard and
    /// factor file completely.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut r = VerifyReport::default();
        let all = self.layer_indices(None)?;
        for s in &self.manifest.shards {
            r.rows += self
                .read_shard(s, &all)?
                .iter()
                .map(|c| c.len() as u64)
                .sum::<u64>();
            r.shards += 1;
            r.bytes += s.file.bytes;
        }
        for w in &self.manifest.windows {
            self.factors(w.window)?;
            r.factor_files += 1;
            r.bytes += w.factors.bytes;
            if let Some(c) = &w.checkpoint {
                ipc::read_verified(&self.dir, c)?;
                r.checkpoints += 1;
                r.bytes += c.bytes;
            }
        }
        Ok(r)
    }
}

/// Decodes the bytes of `shard` (already checked against its checksum, or untrusted: this never
/// panics) and validates them against the manifest: schema, dtype, sketch sizes, steps, window and
/// row count. `path` names the file in errors. Keeps the sketches of `layers`.
pub fn decode_shard(
    bytes: Vec<u8>,
    manifest: &Manifest,
    shard: &ShardEntry,
    layers: &[usize],
    path: &Path,
) -> Result<Vec<SketchChunk>, StoreError> {
    let projection = schema::projection(&manifest.run, manifest.dtype, layers);
    let expected = schema::sketch_schema(&manifest.run, manifest.dtype);
    let expected = expected
        .project(&projection)
        .map_err(StoreError::arrow(path))?;
    let (schema, batches) = ipc::decode(bytes, Some(projection), path)?;
    // The shard describes its run (layers, projection seed and kind, reduction): it must be the
    // manifest's, or its sketches were made with other projections.
    let field = schema::META_RUN;
    let text = schema
        .metadata()
        .get(field)
        .ok_or_else(|| StoreError::invalid(path, field, "schema metadata missing"))?;
    let shard_run: RunInfo =
        serde_json::from_str(text).map_err(|e| StoreError::invalid(path, field, e.to_string()))?;
    if let Some((f, m, s)) = crate::manifest::run_difference(&manifest.run, &shard_run) {
        return Err(StoreError::invalid(
            path,
            format!("{field}: {f}"),
            format!("the shard says {s}, the manifest says {m}"),
        ));
    }
    if schema.fields().len() != expected.fields().len() {
        return Err(StoreError::invalid(
            path,
            "schema",
            format!(
                "{} columns, expected {}",
                schema.fields().len(),
                expected.fields().len()
            ),
        ));
    }
    for (f, e) in schema.fields().iter().zip(expected.fields()) {
        if f.name() != e.name() || f.data_type() != e.data_type() {
            return Err(StoreError::invalid(
                path,
                e.name(),
                format!(
                    "column {} of type {}, expected {}",
                    f.name(),
                    f.data_type(),
                    e.data_type()
                ),
            ));
        }
    }
    let mut rows = 0u64;
    let mut prev = shard.first_step;
    let mut chunks = Vec::with_capacity(batches.len());
    for b in &batches {
        let c = schema::decode(b, &manifest.run, manifest.dtype, layers, path)?;
        for (&s, &w) in c.steps.iter().zip(&c.windows) {
            if s < prev || s > shard.last_step {
                return Err(StoreError::invalid(
                    path,
                    "step",
                    format!(
                        "step {s} out of order or outside the manifest's {}..={}",
                        shard.first_step, shard.last_step
                    ),
                ));
            }
            if w != shard.window {
                return Err(StoreError::invalid(
                    path,
                    "window",
                    format!("window {w}, the manifest says {}", shard.window),
                ));
            }
            prev = s;
        }
        rows += c.len() as u64;
        chunks.push(c);
    }
    if rows != shard.rows {
        return Err(StoreError::invalid(
            path,
            "rows",
            format!("{rows} rows, the manifest says {}", shard.rows),
        ));
    }
    Ok(chunks)
}

/// An iterator over the sketches of a store (see [`Store::sketches`]); stops after the first
/// error.
pub struct SketchStream<'a> {
    store: &'a Store,
    shards: VecDeque<&'a ShardEntry>,
    layers: Vec<usize>,
    chunks: VecDeque<SketchChunk>,
    failed: bool,
}

impl Iterator for SketchStream<'_> {
    type Item = Result<SketchChunk, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.chunks.pop_front() {
                return Some(Ok(c));
            }
            if self.failed {
                return None;
            }
            let shard = self.shards.pop_front()?;
            match self.store.read_shard(shard, &self.layers) {
                Ok(chunks) => self.chunks = chunks.into(),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
