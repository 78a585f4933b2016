//! The whole query path: per window, the checkpoint's query gradients, preconditioned with the
//! window's factors and projected; then one streaming pass over the shards.

use burn::tensor::Device;
use influence_store::Store;

use crate::AnalyzerError;
use crate::config::ScoreConfig;
use crate::query::{PreparedQueries, load_window_model, prepare_with, query_gradients};
use crate::scorer::{Scores, score_store, sketch_fisher};
use crate::task::{Query, Task};

/// Queries with their scores.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The queries, in input order.
    pub queries: Vec<Query>,
    /// Per scored window: the prepared query gradients (last = latest checkpoint).
    pub prepared: Vec<PreparedQueries>,
    /// Scores of every document.
    pub scores: Scores,
}

impl Analysis {
    /// `−log p(completion | prompt)` of each query at the latest scored checkpoint.
    pub fn nats(&self) -> &[f64] {
        self.prepared.last().map_or(&[], |p| &p.nats)
    }
}

/// Progress of a long analysis, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// Query gradients of window `window` (the `done`-th of `total`) are ready.
    Window {
        /// Window index.
        window: u32,
        /// Windows done.
        done: usize,
        /// Windows in all.
        total: usize,
    },
    /// Rows scored so far, of `total`.
    Rows {
        /// Rows done.
        done: u64,
        /// Rows in all.
        total: u64,
    },
}

/// The windows `config` selects: every complete window by default; a named window must exist
/// and be complete.
pub fn windows(store: &Store, config: &ScoreConfig) -> Result<Vec<u32>, AnalyzerError> {
    let complete: Vec<u32> = store.complete_windows().map(|w| w.window).collect();
    let out = match &config.windows {
        None => complete,
        Some(ws) => {
            for w in ws {
                if !complete.contains(w) {
                    return Err(AnalyzerError::argument(
                        "windows",
                        format!(
                            "window {w} is not a complete window of {} (complete: {complete:?})",
                            store.dir().display()
                        ),
                    ));
                }
            }
            ws.clone()
        }
    };
    if out.is_empty() {
        return Err(AnalyzerError::argument(
            "store",
            format!(
                "{} has no complete window (checkpoint and factors)",
                store.dir().display()
            ),
        ));
    }
    Ok(out)
}

/// Query gradients of every selected window, preconditioned and projected.
pub fn prepare_queries<T: Task>(
    task: &T,
    store: &Store,
    queries: &[Query],
    config: &ScoreConfig,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<PreparedQueries>, AnalyzerError> {
    config.validate()?;
    let windows = windows(store, config)?;
    let mut out = Vec::with_capacity(windows.len());
    for (i, &w) in windows.iter().enumerate() {
        let span = tracing::info_span!("query_gradients", window = w);
        let _enter = span.enter();
        let (model, probe) = load_window_model(task, store, w, device)?;
        let grads = query_gradients(task, &model, &probe, queries, config.query_batch, device)?;
        let factors = store.factors(w)?;
        let random_layers = factors.layers.iter().any(|l| l.sketch_basis.is_none())
            && store.run().projection != influence_core::ProjectionKind::Identity;
        let fisher = if config.sketch_curvature && random_layers {
            Some(sketch_fisher(store, w, config, device)?.0)
        } else {
            None
        };
        out.push(prepare_with(
            store.run(),
            &factors,
            &grads,
            config,
            fisher.as_deref(),
        )?);
        progress(Progress::Window {
            window: w,
            done: i + 1,
            total: windows.len(),
        });
    }
    Ok(out)
}

/// Scores `queries` against every stored document: [`prepare_queries`], then
/// [`score_store`].
pub fn analyze<T: Task>(
    task: &T,
    store: &Store,
    queries: &[Query],
    config: &ScoreConfig,
    device: &Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Analysis, AnalyzerError> {
    let prepared = prepare_queries(task, store, queries, config, device, progress)?;
    let total: u64 = store
        .manifest()
        .shards
        .iter()
        .filter(|s| prepared.iter().any(|p| p.window == s.window))
        .map(|s| s.rows)
        .sum();
    let scores = score_store(store, &prepared, config, device, &mut |done| {
        progress(Progress::Rows { done, total });
    })?;
    tracing::info!(
        rows = scores.stats.rows,
        docs = scores.docs.len(),
        seconds = scores.stats.wall_seconds,
        "scored"
    );
    Ok(Analysis {
        queries: queries.to_vec(),
        prepared,
        scores,
    })
}
