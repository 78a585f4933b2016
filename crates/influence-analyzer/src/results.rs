//! What a query's analysis reports, and writing it as JSON, CSV or Arrow.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use serde::Serialize;

use crate::AnalyzerError;
use crate::analyze::Analysis;
use crate::rerank::Reranked;

/// One ranked document of a query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranked {
    /// 1-based rank (from the top, or from the bottom for the bottom list).
    pub rank: usize,
    /// Document id.
    pub doc_id: u64,
    /// Source label.
    pub source: String,
    /// Influence: positive means training on the document made the completion more likely
    /// (nats, to first order). The sketch score.
    pub score: f64,
    /// The exact score of an exact re-ranking ([`crate::rerank()`]), when the document was a
    /// candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<f64>,
    /// The influence per nat: each scored window's part of the score (the exact one when
    /// re-ranked) divided by the completion's nats `−log p(completion | prompt)` at that
    /// window's checkpoint, summed over windows ([`crate::Scores::per_nat`]); `score / nats`
    /// with one window.
    pub score_per_nat: f64,
    /// The sketch score split by layer (store order): present with one layer, and for the
    /// documents whose split was computed ([`Analysis::add_layer_splits`]; `influence query`
    /// does it for every document it lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_layer: Option<Vec<f64>>,
    /// Rows (training steps) of the document that were scored.
    pub rows: u32,
}

/// The analysis of one query.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryResult {
    /// Query id.
    pub id: String,
    /// Prompt.
    pub prompt: String,
    /// Completion.
    pub completion: String,
    /// `−log p(completion | prompt)` at the latest scored checkpoint.
    pub nats: f64,
    /// Sum of the positive scores.
    pub total_positive: f64,
    /// Sum of the negative scores.
    pub total_negative: f64,
    /// Per layer (store order): the sum of all documents' scores.
    pub layer_totals: Vec<f64>,
    /// Highest-scoring documents, best first.
    pub top: Vec<Ranked>,
    /// Lowest-scoring documents, most negative first.
    pub bottom: Vec<Ranked>,
    /// The query's other fields.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Everything `influence query` writes as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Layer names, in store order (the order of every `per_layer` list).
    pub layers: Vec<String>,
    /// Scored documents.
    pub documents: usize,
    /// Windows scored.
    pub windows: Vec<u32>,
    /// Counters of the scoring pass.
    pub stats: crate::scorer::ScoreStats,
    /// Which scores the `top` and `bottom` lists are ranked by: `sketch`, or `exact` (the
    /// re-ranked candidates, [`Analysis::report_reranked`]).
    pub ranking: String,
    /// The re-ranking pass, when the lists are exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank: Option<crate::rerank::RerankStats>,
    /// One entry per query.
    pub queries: Vec<QueryResult>,
}

impl Analysis {
    fn ranked(&self, q: usize, d: usize, rank: usize, exact: Option<&Reranked>) -> Ranked {
        let s = &self.scores;
        let score = s.score(d, q);
        let per_nat = exact
            .and_then(|r| r.exact_score_per_nat(d, q))
            .unwrap_or_else(|| s.score_per_nat(d, q));
        let exact = exact.and_then(|r| r.exact_score(d, q));
        Ranked {
            rank,
            doc_id: s.docs[d].id,
            source: s.docs[d].source.to_string(),
            score,
            exact,
            score_per_nat: per_nat,
            per_layer: s.layer_scores(d, q),
            rows: s.docs[d].rows,
        }
    }

    /// The report of every query with its top-`top_k` and bottom-`bottom_k` documents by
    /// sketch score.
    pub fn report(&self, top_k: usize, bottom_k: usize) -> Report {
        self.report_with(top_k, bottom_k, None)
    }

    /// The report with each query's lists ranked by the exact scores of `reranked` (computed
    /// from this analysis by [`crate::rerank()`]): the top list is the N candidates of highest
    /// exact score, then sketch order beyond them ([`Reranked::merged_top`]), the bottom list
    /// likewise from the lowest. A re-scored document carries both its sketch and its exact
    /// score, and `score_per_nat` is the exact one's.
    pub fn report_reranked(&self, reranked: &Reranked, top_k: usize, bottom_k: usize) -> Report {
        self.report_with(top_k, bottom_k, Some(reranked))
    }

    /// Query `q`'s top and bottom lists: by sketch score, or by exact score where re-ranked.
    fn lists(
        &self,
        q: usize,
        top_k: usize,
        bottom_k: usize,
        exact: Option<&Reranked>,
    ) -> (Vec<usize>, Vec<usize>) {
        let s = &self.scores;
        match exact {
            Some(r) => (r.merged_top(s, q, top_k), r.merged_bottom(s, q, bottom_k)),
            None => (s.top(q, top_k), s.bottom(q, bottom_k)),
        }
    }

    /// The `(document, query)` pairs a report with these lists shows.
    pub fn listed_pairs(
        &self,
        reranked: Option<&Reranked>,
        top_k: usize,
        bottom_k: usize,
    ) -> Vec<(usize, usize)> {
        (0..self.queries.len())
            .flat_map(|q| {
                let (top, bottom) = self.lists(q, top_k, bottom_k, reranked);
                top.into_iter().chain(bottom).map(move |d| (d, q))
            })
            .collect()
    }

    /// Computes the per-layer splits of `pairs` ([`crate::layer_splits`], one more pass over
    /// the shards) and keeps them in [`crate::Scores::splits`], where the reports find them.
    /// `store` and `config` must be the ones the analysis was scored with.
    pub fn add_layer_splits(
        &mut self,
        store: &influence_store::Store,
        config: &crate::ScoreConfig,
        device: &burn::tensor::Device,
        pairs: &[(usize, usize)],
    ) -> Result<(), AnalyzerError> {
        let splits =
            crate::layer_splits(store, &self.prepared, config, device, &self.scores, pairs)?;
        self.scores.splits.extend(splits);
        Ok(())
    }

    fn report_with(&self, top_k: usize, bottom_k: usize, exact: Option<&Reranked>) -> Report {
        let s = &self.scores;
        let queries = self
            .queries
            .iter()
            .enumerate()
            .map(|(q, query)| {
                let col = s.column(q);
                let rank = |list: Vec<usize>| {
                    list.into_iter()
                        .enumerate()
                        .map(|(i, d)| self.ranked(q, d, i + 1, exact))
                        .collect()
                };
                let (top, bottom) = self.lists(q, top_k, bottom_k, exact);
                QueryResult {
                    id: query.id.clone(),
                    prompt: query.prompt.clone(),
                    completion: query.completion.clone(),
                    nats: self.nats()[q],
                    total_positive: col.iter().filter(|v| **v > 0.0).sum(),
                    total_negative: col.iter().filter(|v| **v < 0.0).sum(),
                    layer_totals: s.layer_total(q).to_vec(),
                    top: rank(top),
                    bottom: rank(bottom),
                    extra: query.extra.clone(),
                }
            })
            .collect();
        Report {
            layers: s.layers.clone(),
            documents: s.docs.len(),
            windows: self.prepared.iter().map(|p| p.window).collect(),
            stats: s.stats.clone(),
            ranking: if exact.is_some() { "exact" } else { "sketch" }.into(),
            rerank: exact.map(|r| r.stats.clone()),
            queries,
        }
    }
}

impl Report {
    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), AnalyzerError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| AnalyzerError::Output {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(AnalyzerError::io(path))
    }

    /// Writes one CSV line per (query, ranked document): `query_id, list, rank, doc_id, source,
    /// score, score_per_nat, rows, exact` (`exact` empty unless re-ranked), then one column per
    /// layer.
    pub fn write_csv(&self, path: &Path) -> Result<(), AnalyzerError> {
        let mut out =
            String::from("query_id,list,rank,doc_id,source,score,score_per_nat,rows,exact");
        for l in &self.layers {
            out.push(',');
            out.push_str(&csv_field(&format!("layer:{l}")));
        }
        out.push('\n');
        for q in &self.queries {
            for (list, items) in [("top", &q.top), ("bottom", &q.bottom)] {
                for r in items {
                    out.push_str(&format!(
                        "{},{list},{},{},{},{},{},{},{}",
                        csv_field(&q.id),
                        r.rank,
                        r.doc_id,
                        csv_field(&r.source),
                        r.score,
                        r.score_per_nat,
                        r.rows,
                        r.exact.map(|v| v.to_string()).unwrap_or_default()
                    ));
                    match &r.per_layer {
                        Some(split) => {
                            for v in split {
                                out.push_str(&format!(",{v}"));
                            }
                        }
                        None => out.push_str(&",".repeat(self.layers.len())),
                    }
                    out.push('\n');
                }
            }
        }
        std::fs::write(path, out).map_err(AnalyzerError::io(path))
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Documents per record batch of [`write_scores_arrow`].
const SCORE_BATCH_ROWS: usize = 65_536;

/// Writes the full score vectors as a zstd Arrow IPC file: one row per document (`doc_id`,
/// `source`, `rows`) and one `score:<query id>` f64 column per query; the query nats are in
/// the schema metadata (`burn_influence.nats`, a JSON object). Streamed in record batches of
/// 65,536 documents, so writing holds one batch's columns beside the scores, not a copy of all.
pub fn write_scores_arrow(analysis: &Analysis, path: &Path) -> Result<(), AnalyzerError> {
    let s = &analysis.scores;
    let out_err = |e: &dyn std::fmt::Display| AnalyzerError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut fields = vec![
        Field::new("doc_id", DataType::UInt64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("rows", DataType::UInt32, false),
    ];
    for query in &analysis.queries {
        fields.push(Field::new(
            format!("score:{}", query.id),
            DataType::Float64,
            false,
        ));
    }
    let nats: serde_json::Map<String, serde_json::Value> = analysis
        .queries
        .iter()
        .zip(analysis.nats())
        .map(|(q, n)| (q.id.clone(), serde_json::Value::from(*n)))
        .collect();
    let meta = [(
        "burn_influence.nats".to_string(),
        serde_json::Value::Object(nats).to_string(),
    )];
    let schema = Arc::new(
        Schema::new(fields).with_metadata(
            meta.into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        ),
    );
    let file = std::fs::File::create(path).map_err(AnalyzerError::io(path))?;
    let options = arrow_ipc::writer::IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::ZSTD))
        .map_err(|e| out_err(&e))?;
    let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(file, &schema, options)
        .map_err(|e| out_err(&e))?;
    let nd = s.docs.len();
    // At least one (possibly empty) batch, so that a store without documents still reads back.
    let mut start = 0;
    loop {
        let end = (start + SCORE_BATCH_ROWS).min(nd);
        let docs = &s.docs[start..end];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(docs.iter().map(|d| d.id))),
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.source.as_ref()),
            )),
            Arc::new(UInt32Array::from_iter_values(docs.iter().map(|d| d.rows))),
        ];
        for q in 0..analysis.queries.len() {
            columns.push(Arc::new(Float64Array::from_iter_values(
                (start..end).map(|d| s.score(d, q)),
            )));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| out_err(&e))?;
        w.write(&batch).map_err(|e| out_err(&e))?;
        start = end;
        if start >= nd {
            break;
        }
    }
    w.finish().map_err(|e| out_err(&e))?;
    Ok(())
}
