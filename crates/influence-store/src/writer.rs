//! The background writer: the training step enqueues, one thread encodes, compresses and
//! commits shards, factor files, checkpoints and the manifest.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arrow_schema::SchemaRef;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use influence_core::{RunInfo, Sink, SinkError, SketchBatch, WindowRecord};
use serde::Serialize;

use crate::ipc::{self, IpcFile};
use crate::manifest::{DroppedStep, MANIFEST, Manifest, ResumeEntry, ShardEntry, WindowEntry};
use crate::{Overflow, StoreConfig, StoreError, factors, fsutil, schema};

/// Sub-directory of sketch shards.
pub const SHARDS: &str = "shards";
/// Sub-directory of factor files.
pub const FACTORS: &str = "factors";
/// Sub-directory of checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";

/// Counters shared between the training thread and the writer thread.
#[derive(Debug, Default)]
struct Counters {
    rows_enqueued: AtomicU64,
    rows_written: AtomicU64,
    shards: AtomicU64,
    bytes_written: AtomicU64,
    raw_bytes: AtomicU64,
    dropped_rows: AtomicU64,
    stall_ns: AtomicU64,
    stalls: AtomicU64,
    max_queue: AtomicU64,
    overflowed: AtomicU64,
    encode_ns: AtomicU64,
}

/// A snapshot of the writer's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WriterStats {
    /// Rows handed to the writer (dropped ones included).
    pub rows_enqueued: u64,
    /// Rows in committed shards.
    pub rows_written: u64,
    /// Committed shards.
    pub shards: u64,
    /// Bytes of committed shards (compressed, with Arrow framing).
    pub bytes_written: u64,
    /// Bytes of the sketch values of committed rows before compression, at the stored dtype.
    pub raw_bytes: u64,
    /// Rows dropped because the queue was full (only with `overflow = drop_rows`).
    pub dropped_rows: u64,
    /// Seconds the training thread waited for queue space.
    pub stall_seconds: f64,
    /// How many enqueues had to wait.
    pub stalls: u64,
    /// Deepest queue seen, in messages.
    pub max_queue_depth: u64,
    /// Values stored as ±inf because they exceed the dtype's range.
    pub overflowed_values: u64,
    /// Seconds the writer thread spent encoding, compressing and writing.
    pub writer_busy_seconds: f64,
}

/// A cloneable handle on a writer's counters that outlives the writer (which the hook owns).
#[derive(Clone, Debug, Default)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> WriterStats {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            rows_enqueued: get(&c.rows_enqueued),
            rows_written: get(&c.rows_written),
            shards: get(&c.shards),
            bytes_written: get(&c.bytes_written),
            raw_bytes: get(&c.raw_bytes),
            dropped_rows: get(&c.dropped_rows),
            stall_seconds: get(&c.stall_ns) as f64 * 1e-9,
            stalls: get(&c.stalls),
            max_queue_depth: get(&c.max_queue),
            overflowed_values: get(&c.overflowed),
            writer_busy_seconds: get(&c.encode_ns) as f64 * 1e-9,
        }
    }
}

/// Where a resumed run continues.
#[derive(Clone, Debug, PartialEq)]
pub struct ResumePoint {
    /// The factors of the last complete window (verified), which an eigenbasis-sketching hook
    /// continues from (`Hook::basis_from`); `None` when starting from scratch.
    pub factors: Option<WindowRecord>,
    /// The first step to run (a window boundary; 0 when no window was complete).
    pub step: u64,
    /// The checkpoint to load before continuing (the model after step `step - 1`), its bytes
    /// already verified against the manifest; `None` when starting from scratch.
    pub checkpoint: Option<PathBuf>,
    /// Rows of steps `>= step` removed from the store (the resumed run writes them again).
    pub removed_rows: u64,
    /// Files removed: rolled-back shards and factors, temporaries, orphans of a crash.
    pub removed_files: Vec<PathBuf>,
}

enum Msg {
    Begin(RunInfo),
    Batch(SketchBatch),
    Window(WindowRecord),
    Checkpoint(u32, Vec<u8>),
    Finish,
}

/// Writes a store in the background; a [`Sink`] for the hook.
///
/// Dropping it without [`Sink::finish`] (a training loop that fails or panics) still commits the
/// rows already queued, waiting at most `finish_timeout_secs`; the manifest then says
/// `finished: false` and [`StoreWriter::resume`] continues the run.
#[must_use = "dropping the writer ends the store; hand it to the hook as its sink"]
pub struct StoreWriter {
    dir: PathBuf,
    config: StoreConfig,
    tx: Option<Sender<Msg>>,
    done: Receiver<Result<(), StoreError>>,
    failed: Arc<Mutex<Option<StoreError>>>,
    failed_msg: Option<String>,
    stats: StatsHandle,
    dropped: Arc<Mutex<Vec<DroppedStep>>>,
    thread: Option<JoinHandle<()>>,
    /// The run a resumed store was written with; `begin` must match it.
    expected_run: Option<RunInfo>,
    run: Option<RunInfo>,
    next_step: u64,
    finished: bool,
}

impl StoreWriter {
    /// Creates a new store in `dir` (created if missing). Fails if `dir` already holds a
    /// manifest; stray temporaries or orphans there are removed.
    pub fn create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        config.validate()?;
        if dir.join(MANIFEST).exists() {
            return Err(StoreError::Exists {
                path: dir.to_owned(),
            });
        }
        prepare_dirs(dir)?;
        clean(dir, None)?;
        Ok(Self::start(dir, config, None, 0))
    }

    /// Reopens the store in `dir` to continue a crashed or stopped run from its last complete
    /// window: later rows and files are removed (the resumed run writes them again), temporaries
    /// and orphans are cleaned up, and the resume is recorded in the manifest. Load the model from
    /// [`ResumePoint::checkpoint`] and continue training at [`ResumePoint::step`]
    /// (`Hook::resume_at`). A directory without a manifest starts from scratch.
    pub fn resume(
        dir: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<(Self, ResumePoint), StoreError> {
        let dir = dir.as_ref();
        config.validate()?;
        prepare_dirs(dir)?;
        if !dir.join(MANIFEST).exists() {
            let removed_files = clean(dir, None)?;
            let point = ResumePoint {
                factors: None,
                step: 0,
                checkpoint: None,
                removed_rows: 0,
                removed_files,
            };
            return Ok((Self::start(dir, config, None, 0), point));
        }
        let mut m = Manifest::load(dir)?;
        let mpath = dir.join(MANIFEST);
        if m.finished {
            return Err(StoreError::invalid(
                mpath,
                "finished",
                "the run finished normally; there is nothing to resume",
            ));
        }
        let (step, checkpoint, factors) = match m.last_complete_window() {
            Some(w) => {
                let c = w
                    .checkpoint
                    .clone()
                    .ok_or_else(|| StoreError::invalid(&mpath, "windows.checkpoint", "missing"))?;
                ipc::read_verified(dir, &c)?;
                let factors = crate::reader::read_factors(dir, &m, w)?;
                (w.last_step + 1, Some(dir.join(&c.file)), Some(factors))
            }
            None => (0, None, None),
        };
        let mut removed_rows = 0;
        m.shards.retain(|s| {
            let keep = s.last_step < step;
            if !keep {
                removed_rows += s.rows;
            }
            keep
        });
        m.windows.retain(|w| w.last_step < step);
        m.dropped.retain(|d| d.step < step);
        m.non_finite.retain(|d| d.step < step);
        m.resumes.push(ResumeEntry {
            step,
            removed_rows,
            removed_files: Vec::new(),
        });
        // Commit the rolled-back manifest first: a crash from here on leaves a valid store (files
        // no manifest names are only leftovers); then remove what it no longer names.
        m.save(dir, config.fsync)?;
        let removed_files = clean(dir, Some(&m))?;
        if let Some(r) = m.resumes.last_mut() {
            r.removed_files = removed_files
                .iter()
                .map(|p| {
                    p.strip_prefix(dir)
                        .unwrap_or(p)
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
        }
        m.save(dir, config.fsync)?;
        tracing::info!(
            store = %dir.display(),
            step,
            removed_rows,
            removed_files = removed_files.len(),
            "store resumed"
        );
        let run = m.run.clone();
        let mut w = Self::start(dir, config, Some(m), step);
        w.expected_run = Some(run);
        Ok((
            w,
            ResumePoint {
                factors,
                step,
                checkpoint,
                removed_rows,
                removed_files,
            },
        ))
    }

    fn start(dir: &Path, config: StoreConfig, manifest: Option<Manifest>, next_step: u64) -> Self {
        let (tx, rx) = bounded(config.queue_steps);
        let (done_tx, done) = bounded(1);
        let failed = Arc::new(Mutex::new(None));
        let stats = StatsHandle::default();
        let dropped = Arc::new(Mutex::new(Vec::new()));
        let worker = Worker {
            dir: dir.to_owned(),
            config: config.clone(),
            manifest,
            schema: None,
            pending: Vec::new(),
            pending_rows: 0,
            open: None,
            sources: schema::SourceDictionary::default(),
            stats: stats.clone(),
            dropped: dropped.clone(),
            rx,
        };
        let slot = failed.clone();
        let thread = std::thread::Builder::new()
            .name("influence-store-writer".into())
            .spawn(move || {
                let result = worker.run();
                let report = match result {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::error!(error = %e, "store writer failed");
                        let msg = e.to_string();
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Err(StoreError::Closed(msg))
                    }
                };
                let _ = done_tx.send(report);
            })
            .ok();
        Self {
            dir: dir.to_owned(),
            config,
            tx: thread.is_some().then_some(tx),
            done,
            failed,
            failed_msg: thread
                .is_none()
                .then(|| "could not start the writer thread".into()),
            stats,
            dropped,
            thread,
            expected_run: None,
            run: None,
            next_step,
            finished: false,
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A handle on the counters (keep it to read them after handing the writer to the hook).
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// The writer thread's error, once (typed); later calls get [`StoreError::Closed`].
    fn check(&mut self) -> Result<(), StoreError> {
        if let Some(msg) = &self.failed_msg {
            return Err(StoreError::Closed(msg.clone()));
        }
        let taken = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = taken {
            self.failed_msg = Some(format!("after an earlier error: {e}"));
            self.tx = None;
            return Err(e);
        }
        Ok(())
    }

    fn closed(&mut self) -> StoreError {
        // The thread hung up: wait for its report so that the typed error is returned.
        let _ = self.done.recv_timeout(self.config.finish_timeout());
        match self.check() {
            Err(e) => e,
            Ok(()) => StoreError::Closed("the writer thread is gone".into()),
        }
    }

    fn send(&mut self, msg: Msg, droppable: Option<(u64, u64)>) -> Result<(), StoreError> {
        self.check()?;
        let Some(tx) = self.tx.clone() else {
            return Err(StoreError::Closed("the store is finished".into()));
        };
        let c = &self.stats.0;
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => match (self.config.overflow, droppable) {
                (Overflow::DropRows, Some((step, rows))) => {
                    c.dropped_rows.fetch_add(rows, Ordering::Relaxed);
                    let mut d = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
                    d.push(DroppedStep { step, rows });
                    let total = c.dropped_rows.load(Ordering::Relaxed);
                    if total.is_power_of_two() || d.len() == 1 {
                        tracing::warn!(step, rows, total, "store queue full: sketch rows dropped");
                    }
                }
                _ => {
                    let t = Instant::now();
                    if tx.send(msg).is_err() {
                        return Err(self.closed());
                    }
                    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    c.stall_ns.fetch_add(ns, Ordering::Relaxed);
                    c.stalls.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        stall_ms = ns as f64 * 1e-6,
                        queue_steps = self.config.queue_steps,
                        "store queue full: the training step waited for the writer"
                    );
                }
            },
            Err(TrySendError::Disconnected(_)) => return Err(self.closed()),
        }
        c.max_queue.fetch_max(tx.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends `Finish` (or just hangs up) and waits for the thread, at most the configured time.
    fn shut_down(&mut self, finish: bool) -> Result<(), StoreError> {
        if finish {
            self.send(Msg::Finish, None)?;
        }
        self.tx = None;
        let timeout = self.config.finish_timeout();
        let result = match self.done.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Closed(format!(
                "the writer thread did not finish within {} s; uncommitted rows are cleaned up on resume",
                self.config.finish_timeout_secs
            ))),
        };
        if result.is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
        self.check()?;
        result
    }

    fn run(&self) -> Result<&RunInfo, StoreError> {
        self.run
            .as_ref()
            .ok_or_else(|| StoreError::Record("record before begin".into()))
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if self.finished || self.tx.is_none() {
            return;
        }
        if let Err(e) = self.shut_down(false) {
            tracing::error!(error = %e, store = %self.dir.display(), "store writer dropped unfinished");
        }
    }
}

impl Sink for StoreWriter {
    fn begin(&mut self, run: &RunInfo) -> Result<(), SinkError> {
        if self.run.is_some() {
            return Err(StoreError::Record("begin called twice".into()).into());
        }
        Manifest::new(run.clone(), self.config.dtype).validate(Path::new("<run info>"))?;
        if let Some(expected) = &self.expected_run
            && expected != run
        {
            let what = crate::manifest::run_difference(expected, run).map_or_else(
                || "run info".into(),
                |(f, a, b)| format!("{f}: store has {a}, this run has {b}"),
            );
            return Err(StoreError::invalid(
                self.dir.join(MANIFEST),
                "run",
                format!("the resumed run does not match the store: {what}"),
            )
            .into());
        }
        self.run = Some(run.clone());
        self.send(Msg::Begin(run.clone()), None)?;
        Ok(())
    }

    fn sketches(&mut self, batch: SketchBatch) -> Result<(), SinkError> {
        let run = self.run()?;
        if batch.sketches.len() != run.layers.len() {
            return Err(StoreError::Record(format!(
                "step {}: {} sketch layers, the run has {}",
                batch.step,
                batch.sketches.len(),
                run.layers.len()
            ))
            .into());
        }
        for (l, s) in run.layers.iter().zip(&batch.sketches) {
            if s.len() != batch.rows.len() * l.sketch_len() {
                return Err(StoreError::Record(format!(
                    "step {}: layer {}: {} values for {} rows of {}",
                    batch.step,
                    l.name,
                    s.len(),
                    batch.rows.len(),
                    l.sketch_len()
                ))
                .into());
            }
        }
        if !(batch.learning_rate.is_finite() && batch.learning_rate >= 0.0) {
            return Err(StoreError::Record(format!(
                "step {}: learning rate {}: it must be finite and non-negative",
                batch.step, batch.learning_rate
            ))
            .into());
        }
        if batch.step < self.next_step {
            return Err(StoreError::Record(format!(
                "step {} is already stored (steps must increase; next is {})",
                batch.step, self.next_step
            ))
            .into());
        }
        let window = batch.step / run.window_steps;
        if u64::from(batch.window) != window {
            return Err(StoreError::Record(format!(
                "step {} is in window {window}, the batch says {}",
                batch.step, batch.window
            ))
            .into());
        }
        self.next_step = batch.step + 1;
        if batch.rows.is_empty() {
            return Ok(());
        }
        let rows = batch.rows.len() as u64;
        self.stats
            .0
            .rows_enqueued
            .fetch_add(rows, Ordering::Relaxed);
        let step = batch.step;
        self.send(Msg::Batch(batch), Some((step, rows)))?;
        Ok(())
    }

    fn window(&mut self, record: WindowRecord) -> Result<(), SinkError> {
        let run = self.run()?;
        if !record.layers.is_empty() && record.layers.len() != run.layers.len() {
            return Err(StoreError::Record(format!(
                "window {}: factors of {} layers, the run has {}",
                record.window,
                record.layers.len(),
                run.layers.len()
            ))
            .into());
        }
        self.send(Msg::Window(record), None)?;
        Ok(())
    }

    fn checkpoint(&mut self, window: u32, bytes: Vec<u8>) -> Result<(), SinkError> {
        self.run()?;
        self.send(Msg::Checkpoint(window, bytes), None)?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.finished {
            return Ok(());
        }
        let r = self.shut_down(true);
        self.finished = true;
        let s = self.stats.snapshot();
        tracing::info!(
            store = %self.dir.display(),
            rows = s.rows_written,
            shards = s.shards,
            bytes = s.bytes_written,
            raw_bytes = s.raw_bytes,
            dropped_rows = s.dropped_rows,
            stall_seconds = s.stall_seconds,
            max_queue_depth = s.max_queue_depth,
            "store finished"
        );
        Ok(r?)
    }
}

fn prepare_dirs(dir: &Path) -> Result<(), StoreError> {
    for sub in [SHARDS, FACTORS, CHECKPOINTS] {
        let p = dir.join(sub);
        std::fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Removes every file in the store's sub-directories that `manifest` does not name (temporaries
/// and files renamed into place just before a crash, before the manifest named them), and a
/// leftover manifest temporary. Returns what was removed.
fn clean(dir: &Path, manifest: Option<&Manifest>) -> Result<Vec<PathBuf>, StoreError> {
    let mut named = std::collections::HashSet::new();
    if let Some(m) = manifest {
        named.extend(m.shards.iter().map(|s| dir.join(&s.file.file)));
        for w in &m.windows {
            named.insert(dir.join(&w.factors.file));
            named.extend(w.checkpoint.as_ref().map(|c| dir.join(&c.file)));
        }
    }
    let mut removed = Vec::new();
    for sub in [SHARDS, FACTORS, CHECKPOINTS] {
        let d = dir.join(sub);
        for entry in std::fs::read_dir(&d).map_err(StoreError::io(&d))? {
            let path = entry.map_err(StoreError::io(&d))?.path();
            if path.is_file() && !named.contains(&path) {
                remove(&path)?;
                removed.push(path);
            }
        }
    }
    let tmp = fsutil::tmp_path(&dir.join(MANIFEST));
    if tmp.exists() {
        remove(&tmp)?;
        removed.push(tmp);
    }
    if !removed.is_empty() {
        tracing::warn!(
            store = %dir.display(),
            files = ?removed,
            "removed files not named by the manifest (left by an interrupted run)"
        );
    }
    Ok(removed)
}

struct OpenShard {
    file: IpcFile,
    window: u32,
    first_step: u64,
    last_step: u64,
    rows: u64,
    raw_bytes: u64,
}

struct Worker {
    dir: PathBuf,
    config: StoreConfig,
    manifest: Option<Manifest>,
    schema: Option<SchemaRef>,
    pending: Vec<SketchBatch>,
    pending_rows: usize,
    open: Option<OpenShard>,
    sources: schema::SourceDictionary,
    stats: StatsHandle,
    dropped: Arc<Mutex<Vec<DroppedStep>>>,
    rx: Receiver<Msg>,
}

impl Worker {
    fn run(mut self) -> Result<(), StoreError> {
        while let Ok(msg) = self.rx.recv() {
            let t = Instant::now();
            let finish = matches!(msg, Msg::Finish);
            self.handle(msg)?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats.0.encode_ns.fetch_add(ns, Ordering::Relaxed);
            if finish {
                return Ok(());
            }
        }
        // The writer was dropped without finish: commit what arrived.
        self.commit_shard()?;
        Ok(())
    }

    fn manifest(&mut self) -> Result<&mut Manifest, StoreError> {
        self.manifest
            .as_mut()
            .ok_or_else(|| StoreError::Record("record before begin".into()))
    }

    fn save(&mut self) -> Result<(), StoreError> {
        let dropped: Vec<_> =
            std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()));
        let overflowed = self.stats.0.overflowed.load(Ordering::Relaxed);
        let (dir, fsync) = (self.dir.clone(), self.config.fsync);
        let m = self.manifest()?;
        m.dropped.extend(dropped);
        m.overflowed_values = overflowed;
        m.save(&dir, fsync)
    }

    fn handle(&mut self, msg: Msg) -> Result<(), StoreError> {
        match msg {
            Msg::Begin(run) => {
                self.schema = Some(schema::sketch_schema(&run, self.config.dtype));
                if let Some(m) = &self.manifest {
                    // Resumed: keep the manifest's dtype (all shards of a store share it).
                    if m.dtype != self.config.dtype {
                        tracing::warn!(
                            store = m.dtype.name(),
                            config = self.config.dtype.name(),
                            "resumed store keeps its dtype; the configured one is ignored"
                        );
                        self.schema = Some(schema::sketch_schema(&run, m.dtype));
                        self.config.dtype = m.dtype;
                    }
                } else {
                    self.manifest = Some(Manifest::new(run, self.config.dtype));
                }
                self.save()
            }
            Msg::Batch(mut b) => {
                // Saved with the next manifest, like the rows (a resume rolls both back).
                let skipped = std::mem::take(&mut b.skipped);
                self.manifest()?.non_finite.extend(skipped);
                if self.open.as_ref().is_some_and(|s| s.window != b.window)
                    || self.pending.first().is_some_and(|p| p.window != b.window)
                {
                    self.commit_shard()?;
                }
                self.pending_rows += b.rows.len();
                self.pending.push(b);
                let row_bytes = self.row_bytes()?;
                if self.pending_rows >= self.config.batch_rows
                    || self.pending_rows * row_bytes >= self.config.batch_bytes
                {
                    self.write_pending()?;
                }
                let full = self.open.as_ref().is_some_and(|s| {
                    s.rows as usize >= self.config.shard_rows
                        || s.raw_bytes as usize >= self.config.shard_bytes
                });
                if full {
                    self.commit_shard()?;
                }
                Ok(())
            }
            Msg::Window(record) => {
                self.commit_shard()?;
                let name = format!("window-{:05}.arrow", record.window);
                let path = self.dir.join(FACTORS).join(name);
                let batch = factors::encode(&record).map_err(StoreError::arrow(&path))?;
                let entry = ipc::write_file(
                    &self.dir,
                    &path,
                    &batch,
                    self.config.zstd_level,
                    self.config.fsync,
                )?;
                let m = self.manifest()?;
                m.windows.retain(|w| w.window != record.window);
                m.windows.push(WindowEntry {
                    window: record.window,
                    first_step: record.first_step,
                    last_step: record.last_step,
                    learning_rates: record.learning_rates,
                    factors: entry,
                    checkpoint: None,
                });
                self.save()
            }
            Msg::Checkpoint(window, bytes) => {
                let name = format!("window-{window:05}.bpk");
                let path = self.dir.join(CHECKPOINTS).join(&name);
                let sha256 = fsutil::write_atomic(&path, &bytes, self.config.fsync)?;
                let mpath = self.dir.join(MANIFEST);
                let m = self.manifest()?;
                let w = m
                    .windows
                    .iter_mut()
                    .find(|w| w.window == window)
                    .ok_or_else(|| {
                        StoreError::invalid(
                            mpath,
                            "windows",
                            format!("checkpoint of window {window} before its factors"),
                        )
                    })?;
                w.checkpoint = Some(crate::manifest::FileEntry {
                    file: crate::manifest::rel(CHECKPOINTS, &name),
                    bytes: bytes.len() as u64,
                    sha256,
                });
                self.save()
            }
            Msg::Finish => {
                self.commit_shard()?;
                self.manifest()?.finished = true;
                self.save()
            }
        }
    }

    /// Uncompressed bytes of one row's sketch values, all layers.
    fn row_bytes(&mut self) -> Result<usize, StoreError> {
        let m = self.manifest()?;
        Ok(m.run
            .layers
            .iter()
            .map(|l| m.dtype.row_bytes(l.sketch_len()))
            .sum())
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| StoreError::Record("sketches before begin".into()))?;
        let (run, dtype) = {
            let m = self.manifest()?;
            (m.run.clone(), m.dtype)
        };
        if self.sources.extend(&self.pending) {
            // A new source label: the open shard's dictionary is final, start a new shard.
            self.commit_open()?;
        }
        let first = &self.pending[0];
        let last_step = self.pending.last().map_or(first.step, |b| b.step);
        let (window, first_step) = (first.window, first.step);
        if self.open.is_none() {
            let name = format!("sketches-w{window:05}-s{first_step:010}.arrow");
            let path = self.dir.join(SHARDS).join(name);
            self.open = Some(OpenShard {
                file: IpcFile::create(&path, &schema, self.config.zstd_level)?,
                window,
                first_step,
                last_step,
                rows: 0,
                raw_bytes: 0,
            });
        }
        let (batch, overflowed) =
            schema::encode(&schema, &run, dtype, &self.sources, &self.pending)
                .map_err(StoreError::arrow(self.dir.join(SHARDS)))?;
        let per_row = self.row_bytes()?;
        if let Some(s) = self.open.as_mut() {
            s.file.write(&batch)?;
            s.rows += self.pending_rows as u64;
            s.raw_bytes += (self.pending_rows * per_row) as u64;
            s.last_step = last_step;
        }
        if overflowed > 0 {
            let total = self
                .stats
                .0
                .overflowed
                .fetch_add(overflowed, Ordering::Relaxed)
                + overflowed;
            tracing::warn!(
                overflowed,
                total,
                dtype = dtype.name(),
                "sketch values beyond the dtype's range stored as ±inf"
            );
        }
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }

    /// Writes what is pending and commits the open shard.
    fn commit_shard(&mut self) -> Result<(), StoreError> {
        self.write_pending()?;
        self.commit_open()
    }

    /// Commits the open shard: footer, fsync, rename, manifest.
    fn commit_open(&mut self) -> Result<(), StoreError> {
        let Some(s) = self.open.take() else {
            return Ok(());
        };
        let entry = s.file.publish(&self.dir, self.config.fsync)?;
        let c = &self.stats.0;
        c.rows_written.fetch_add(s.rows, Ordering::Relaxed);
        c.shards.fetch_add(1, Ordering::Relaxed);
        c.bytes_written.fetch_add(entry.bytes, Ordering::Relaxed);
        c.raw_bytes.fetch_add(s.raw_bytes, Ordering::Relaxed);
        tracing::debug!(
            shard = %entry.file,
            rows = s.rows,
            bytes = entry.bytes,
            raw_bytes = s.raw_bytes,
            queue_depth = self.rx.len(),
            "shard committed"
        );
        self.manifest()?.shards.push(ShardEntry {
            file: entry,
            window: s.window,
            first_step: s.first_step,
            last_step: s.last_step,
            rows: s.rows,
        });
        self.save()
    }
}
