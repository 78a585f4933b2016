//! The comparison with kronfluence (the PyTorch EK-FAC reference): exports a trained model of
//! the example, its documents and queries for `tools/kronfluence/kronfluence_scores.py`, and
//! computes our side of the comparison — exact-gradient post-hoc EK-FAC scores at the same
//! checkpoint ([`our_scores`]).
//!
//! The bundle (`examples/tiny-gpt/validate/kronfluence/`, written by [`export`]):
//!
//! | file | what |
//! | --- | --- |
//! | `config.json`, `tokenizer.json`, `model.bpk` | the run: [`GptTask::from_run_dir`] loads it, `model.bpk` is the checkpoint |
//! | `weights.safetensors` | every parameter under PyTorch's names and layout ([`crate::model::Gpt::named_tensors`]) |
//! | `documents.jsonl` | per document: `id`, `source`, `text`, `tokens` (as packed for training: the text's tokens, EOS, at most `seq_len + 1`) |
//! | `queries.jsonl` | the queries, with `prompt_tokens` and `completion_tokens` |
//! | `reference_logits.safetensors` | burn's logits on the first documents and queries (`documents.{i}`, `queries.{i}`: `[tokens − 1, vocab]`) — the replica's first check |
//! | `ours.arrow` | our scores ([`our_scores`]), in the format `influence query --out FILE.arrow` writes |
//! | `kronfluence.arrow` | kronfluence's scores, written by the Python script, same format |
//!
//! Matched settings (`docs/accuracy.md` (vii)): empirical Fisher; the 8 Linear layers of the
//! blocks tracked (head untracked), biases as an appended constant input on both sides; `A`
//! and `S` over every non-padding token; eigenvalue correction `Λ` from every document's
//! summed-loss gradient, divided by documents; damping `0.1 × mean Λ` per layer; the
//! measurement the summed completion loss; plain (not normalised) scores; f64 throughout in
//! kronfluence.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use burn::module::Module;
use burn::tensor::Device;
use influence_analyzer::{Query, ScoreConfig, Task, analyze, write_scores_arrow};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Serialize;

use crate::data::{LmBatch, PackedSeq};
use crate::model::NamedTensor;
use crate::task::GptTask;
use crate::train::{TrainConfig, prepare, train};
use crate::validate::{StudyConfig, exact_store};

/// Documents and queries whose logits are exported for the replica's check.
pub const LOGIT_CHECKS: usize = 2;

/// The exported setting: the reduced validation study's model and corpus
/// ([`StudyConfig::ci`]: d = 32, 2 blocks, 368 documents).
pub fn default_config() -> TrainConfig {
    StudyConfig::ci().train
}

#[derive(Serialize)]
struct DocLine<'a> {
    id: u64,
    source: &'a str,
    text: &'a str,
    tokens: &'a [u32],
}

#[derive(Serialize)]
struct QueryLine<'a> {
    #[serde(flatten)]
    query: &'a Query,
    prompt_tokens: Vec<u32>,
    completion_tokens: Vec<u32>,
}

/// Trains `config`'s model (no hook: the comparison is post hoc at the final checkpoint) and
/// writes the bundle described in the module docs to `out`, with `queries` (each must fit the
/// context). Returns our scores' file, `out/ours.arrow`.
pub fn export(
    config: &TrainConfig,
    queries: &[Query],
    out: &Path,
    log: &dyn Fn(String),
) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let mut config = config.clone();
    config.log_every = 0;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let prepared = prepare(&config)?;
    prepared.bpe.save(&out.join("tokenizer.json"))?;
    let t = std::time::Instant::now();
    let report = train(&config, &prepared, &Device::flex().autodiff(), None)?;
    let loss = report.losses.last().copied().unwrap_or(f32::NAN);
    log(format!(
        "trained d={} layers={} on {} documents, {} steps in {:.1} s (last loss {loss:.3})",
        config.d_model,
        config.n_layers,
        prepared.tokens.len(),
        config.steps,
        t.elapsed().as_secs_f64()
    ));
    let model = report.model.valid();
    model
        .clone()
        .save_file(out.join("model"))
        .map_err(|e| anyhow!("{}: {e}", out.join("model.bpk").display()))?;
    write_safetensors(&out.join("weights.safetensors"), &model.named_tensors()?)?;

    let task = GptTask::from_run_dir(out)?;
    let device = Device::flex();
    // Documents exactly as `pack` feeds them: at most seq_len + 1 tokens.
    let mut lines = String::new();
    let mut doc_tokens = Vec::new();
    for (doc, tok) in prepared.docs.iter().zip(&prepared.tokens) {
        let n = tok.tokens.len().min(config.seq_len + 1);
        let line = DocLine {
            id: doc.id,
            source: &doc.source,
            text: &doc.text,
            tokens: &tok.tokens[..n],
        };
        lines.push_str(&serde_json::to_string(&line)?);
        lines.push('\n');
        doc_tokens.push(tok.tokens[..n].to_vec());
    }
    std::fs::write(out.join("documents.jsonl"), lines)?;

    task.query_batch(queries, &device)
        .map_err(|e| anyhow!("queries: {e}"))?;
    let mut lines = String::new();
    let mut query_tokens = Vec::new();
    for q in queries {
        let prompt_tokens = task.bpe.encode(&q.prompt)?;
        let completion_tokens = task.bpe.encode(&q.completion)?;
        query_tokens.push([prompt_tokens.clone(), completion_tokens.clone()].concat());
        // A query file read back from a bundle carries the token fields already.
        let mut query = q.clone();
        query.extra.remove("prompt_tokens");
        query.extra.remove("completion_tokens");
        lines.push_str(&serde_json::to_string(&QueryLine {
            query: &query,
            prompt_tokens,
            completion_tokens,
        })?);
        lines.push('\n');
    }
    std::fs::write(out.join("queries.jsonl"), lines)?;

    // burn's logits on whole sequences, each alone.
    let mut logits = Vec::new();
    for (kind, seqs) in [("documents", &doc_tokens), ("queries", &query_tokens)] {
        for (i, tokens) in seqs.iter().take(LOGIT_CHECKS).enumerate() {
            let values = sequence_logits(&model, tokens, &device)?;
            let len = tokens.len() - 1;
            logits.push(NamedTensor {
                name: format!("{kind}.{i}"),
                shape: vec![len, values.len() / len.max(1)],
                values,
            });
        }
    }
    write_safetensors(&out.join("reference_logits.safetensors"), &logits)?;

    let t = std::time::Instant::now();
    let ours = out.join("ours.arrow");
    let scratch = out.join(".exact-store");
    our_scores(&task, &out.join("model.bpk"), queries, &scratch, &ours)?;
    let _ = std::fs::remove_dir_all(&scratch);
    log(format!(
        "our exact-gradient EK-FAC scores: {} queries × {} documents in {:.1} s → {}",
        queries.len(),
        prepared.docs.len(),
        t.elapsed().as_secs_f64(),
        ours.display()
    ));
    Ok(ours)
}

/// Our side of the comparison: every document's exact gradient at `checkpoint`, EK-FAC fitted on
/// the whole corpus there with `Λ` from every document ([`exact_store`], written to `scratch`),
/// scored plain against `queries`; written to `path` (`write_scores_arrow`'s format) and
/// returned as `queries × documents` in the corpus's order, with the document ids.
pub fn our_scores(
    task: &GptTask,
    checkpoint: &Path,
    queries: &[Query],
    scratch: &Path,
    path: &Path,
) -> Result<(Vec<u64>, Vec<Vec<f64>>)> {
    let store = exact_store(task, checkpoint, scratch, &task.config.hook)?;
    let config = ScoreConfig::default().normalize(false);
    let analysis = analyze(task, &store, queries, &config, &Device::flex(), &mut |_| {})?;
    write_scores_arrow(&analysis, path)?;
    let s = &analysis.scores;
    let ids: Vec<u64> = s.docs.iter().map(|d| d.id).collect();
    let matrix = (0..s.queries).map(|q| s.column(q)).collect();
    Ok((ids, matrix))
}

/// Logits `[tokens − 1, vocab]` (row-major) of `tokens[..len−1]` run alone.
fn sequence_logits(model: &crate::model::Gpt, tokens: &[u32], device: &Device) -> Result<Vec<f32>> {
    let len = tokens.len().saturating_sub(1);
    if len == 0 {
        return Err(anyhow!(
            "a sequence of {} token(s) has no logits",
            tokens.len()
        ));
    }
    let seq = PackedSeq {
        spans: vec![(0, 0, len)],
        inputs: tokens[..len].iter().map(|&t| i64::from(t)).collect(),
        targets: tokens[1..].iter().map(|&t| i64::from(t)).collect(),
        positions: (0..len as i64).collect(),
        slot: vec![0; len],
        docs: vec![influence_hook::DocRef {
            id: 0,
            source: "check".into(),
        }],
    };
    let batch = LmBatch::new(&[seq], device);
    model
        .forward(&batch)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow!("reading logits: {e:?}"))
}

/// Writes `tensors` (f32) to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| anyhow!("{}: tensor {}: {e}", path.display(), t.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}
