//! Checking a store's checkpoints with the model that wrote them: each loads, matches the
//! store's tracked layers, and holds only finite parameters (`influence inspect --verify`).
//!
//! The store crate checks a checkpoint's checksum and length but cannot read it (it has no
//! burn); a checkpoint truncated or overwritten with NaN and its manifest entry re-signed — a
//! buggy writer, a hand edit — passes that check and only shows up here.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use influence_store::Store;

use crate::AnalyzerError;
use crate::query::load_window_model;
use crate::task::Task;

/// What [`verify_checkpoints`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Checkpoints loaded.
    pub checkpoints: usize,
    /// Float parameters checked, summed over checkpoints.
    pub parameters: usize,
    /// Parameter values checked, summed over checkpoints.
    pub values: u64,
}

/// Loads every window checkpoint of `store` with `task`'s model on `device` and checks that it
/// loads, that its tracked layers are the store's, and that every float parameter is finite.
/// The first failure is an error naming the checkpoint file, the window and, for a non-finite
/// value, the parameter's module path and the count of bad values.
pub fn verify_checkpoints<T: Task>(
    task: &T,
    store: &Store,
    device: &Device,
) -> Result<CheckpointReport, AnalyzerError> {
    let mut report = CheckpointReport::default();
    for w in &store.manifest().windows {
        if w.checkpoint.is_none() {
            continue;
        }
        let path = store.checkpoint_path(w.window)?;
        let (model, _) = load_window_model(task, store, w.window, device)?;
        let mut check = Finite::default();
        model.visit(&mut check);
        if let Some((param, bad, total)) = check.first_bad {
            return Err(AnalyzerError::NonFinite(format!(
                "checkpoint {} (window {}): parameter {param} has {bad} NaN or ∞ values of {total}",
                path.display(),
                w.window
            )));
        }
        report.checkpoints += 1;
        report.parameters += check.parameters;
        report.values += check.values;
    }
    Ok(report)
}

/// Counts parameters and finds the first with a non-finite value, by module path.
#[derive(Default)]
struct Finite {
    path: Vec<String>,
    parameters: usize,
    values: u64,
    first_bad: Option<(String, usize, usize)>,
}

impl ModuleVisitor for Finite {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // In f64 whatever the stored float dtype (f16, bf16, f32 convert exactly).
        let (total, bad) = match param.val().into_data().convert::<f64>().try_to_vec::<f64>() {
            Ok(v) => (v.len(), v.iter().filter(|x| !x.is_finite()).count()),
            Err(_) => (1, 1),
        };
        self.parameters += 1;
        self.values += total as u64;
        if bad > 0 && self.first_bad.is_none() {
            let name = if self.path.is_empty() {
                "(root)".to_owned()
            } else {
                self.path.join(".")
            };
            self.first_bad = Some((name, bad, total));
        }
    }
}
