//! Score matrices computed elsewhere (kronfluence, TRAK, any other tool), read from Arrow IPC or
//! CSV so that the paper's analyses and the report run on them.
//!
//! The layout is the one [`crate::write_scores_arrow`] writes: one row per document with
//! `doc_id` (unsigned or signed integer, ≥ 0), `source` (string), optional `text` (string),
//! optional `rows` (integer), and one `score:<query id>` float column per query. An Arrow file
//! may carry the queries' `−log p(completion | prompt)` in the schema metadata
//! `burn_influence.nats` (a JSON object, query id → nats). See `docs/format.md`, "External score
//! matrices".

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, UInt32Array, UInt64Array,
};
use arrow_schema::DataType;

use crate::AnalyzerError;
use crate::analyze::Analysis;
use crate::query::PreparedQueries;
use crate::scorer::{DocInfo, ScoreStats, Scores};
use crate::task::{Document, Query};

/// The one layer name an [`Analysis`] built from external scores has.
pub const EXTERNAL_LAYER: &str = "external";

/// The schema metadata key holding the queries' nats (a JSON object, query id → nats).
pub const NATS_METADATA: &str = "burn_influence.nats";

/// The prefix of a score column's name: `score:<query id>`.
pub const SCORE_PREFIX: &str = "score:";

/// A score matrix read from a file: documents × queries.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalScores {
    /// The file it was read from.
    pub path: PathBuf,
    /// The documents, in file order (`rows` from the file's `rows` column, or 1; `tokens` 0).
    pub docs: Vec<DocInfo>,
    /// Per document: its text, when the file has a `text` column and the value is not null.
    pub texts: Vec<Option<String>>,
    /// Per score column, in file order: the query id and the score of every document.
    pub columns: Vec<(String, Vec<f64>)>,
    /// The queries' nats from the `burn_influence.nats` metadata (Arrow only), when present.
    pub nats: Option<HashMap<String, f64>>,
}

fn bad(path: &Path, location: impl Into<String>, message: impl Into<String>) -> AnalyzerError {
    AnalyzerError::Scores {
        path: path.to_path_buf(),
        location: location.into(),
        message: message.into(),
    }
}

/// Columns of the file, as raw per-row values, before the checks common to both formats.
struct Raw {
    ids: Vec<u64>,
    sources: Vec<String>,
    texts: Option<Vec<Option<String>>>,
    rows: Option<Vec<u32>>,
    scores: Vec<(String, Vec<f64>)>,
    nats: Option<HashMap<String, f64>>,
}

impl Raw {
    /// Empty columns for a file with (or without) `text` and `rows` columns and these score
    /// columns.
    fn new(
        text: bool,
        rows: bool,
        score_cols: &[(usize, String)],
        nats: Option<HashMap<String, f64>>,
    ) -> Self {
        Self {
            ids: Vec::new(),
            sources: Vec::new(),
            texts: text.then(Vec::new),
            rows: rows.then(Vec::new),
            scores: score_cols
                .iter()
                .map(|(_, q)| (q.clone(), Vec::new()))
                .collect(),
            nats,
        }
    }
}

impl ExternalScores {
    /// Reads a score matrix: `.arrow`, `.ipc` or `.feather` (Arrow IPC file, compressed or
    /// not) or `.csv` (a header line, RFC 4180 quoting). Errors name the file, the column and
    /// the row: a missing `doc_id`/`source` column or no score column, a null or unparsable
    /// value, a negative or repeated document id, a non-finite score (naming the document).
    pub fn read(path: &Path) -> Result<Self, AnalyzerError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let raw = match ext.as_str() {
            "arrow" | "ipc" | "feather" => read_arrow(path)?,
            "csv" => read_csv(path)?,
            _ => {
                return Err(bad(
                    path,
                    "file name",
                    format!(
                        "unknown extension {:?}: a score matrix is .arrow, .ipc, .feather (Arrow IPC) or .csv",
                        ext
                    ),
                ));
            }
        };
        Self::check(path, raw)
    }

    fn check(path: &Path, raw: Raw) -> Result<Self, AnalyzerError> {
        let n = raw.ids.len();
        if n == 0 {
            return Err(bad(path, "rows", "the file has no documents"));
        }
        if raw.scores.is_empty() {
            return Err(bad(
                path,
                "columns",
                format!("no score column (named {SCORE_PREFIX}<query id>)"),
            ));
        }
        let mut seen: HashMap<u64, usize> = HashMap::with_capacity(n);
        for (r, &id) in raw.ids.iter().enumerate() {
            if let Some(first) = seen.insert(id, r) {
                return Err(bad(
                    path,
                    format!("column doc_id, row {}", r + 1),
                    format!("document {id} repeats row {}", first + 1),
                ));
            }
        }
        for (q, values) in &raw.scores {
            if let Some(r) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(
                    path,
                    format!("column {SCORE_PREFIX}{q}, row {}", r + 1),
                    format!("document {}: score {} is not finite", raw.ids[r], values[r]),
                ));
            }
        }
        if let Some(nats) = &raw.nats {
            for (q, &v) in nats {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(
                        path,
                        format!("metadata {NATS_METADATA}"),
                        format!("query {q:?}: {v} is not a finite positive number of nats"),
                    ));
                }
            }
        }
        let rows = raw.rows.unwrap_or_else(|| vec![1; n]);
        let mut interned: HashMap<String, Arc<str>> = HashMap::new();
        let docs = raw
            .ids
            .iter()
            .zip(raw.sources)
            .zip(rows)
            .map(|((&id, source), rows)| DocInfo {
                id,
                source: interned
                    .entry(source.clone())
                    .or_insert_with(|| Arc::from(source))
                    .clone(),
                rows,
                tokens: 0,
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            docs,
            texts: raw.texts.unwrap_or_else(|| vec![None; n]),
            columns: raw.scores,
            nats: raw.nats,
        })
    }

    /// The query ids of the score columns, in file order.
    pub fn query_ids(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(q, _)| q.as_str())
    }

    /// Query `id`'s score of every document, in [`ExternalScores::docs`] order.
    pub fn column(&self, id: &str) -> Option<&[f64]> {
        self.columns
            .iter()
            .find(|(q, _)| q == id)
            .map(|(_, v)| v.as_slice())
    }

    /// The documents with their texts (empty where the file has none), for answer search.
    pub fn documents(&self) -> Vec<Document> {
        self.docs
            .iter()
            .zip(&self.texts)
            .map(|(d, t)| Document {
                id: d.id,
                source: d.source.to_string(),
                text: t.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Whether query `q`'s nats come from the file or its query line (else they are taken
    /// as 1 by [`ExternalScores::analysis`]).
    pub fn nats_known(&self, q: &Query) -> bool {
        self.nats_of(q).is_some()
    }

    fn nats_of(&self, q: &Query) -> Option<f64> {
        self.nats
            .as_ref()
            .and_then(|m| m.get(&q.id).copied())
            .or_else(|| q.extra.get("nats").and_then(serde_json::Value::as_f64))
            .filter(|v| v.is_finite() && *v > 0.0)
    }

    /// The [`Analysis`] of `queries` (in their order) over these scores: one layer
    /// ([`EXTERNAL_LAYER`]) whose per-layer split is the total, `rows` from the file, no row
    /// weights (nothing to re-rank), and one [`PreparedQueries`] (window 0, no sketches) that
    /// carries the nats: from the file's metadata, else a numeric `nats` field of the query's
    /// line, else 1 (per-nat quantities are then the plain scores; see
    /// [`ExternalScores::nats_known`]).
    ///
    /// Every query needs a `score:<id>` column (else an error naming the file and the query);
    /// columns of other queries are ignored with a warning.
    pub fn analysis(&self, queries: &[Query]) -> Result<Analysis, AnalyzerError> {
        let mut cols = Vec::with_capacity(queries.len());
        for q in queries {
            let col = self.column(&q.id).ok_or_else(|| {
                bad(
                    &self.path,
                    format!("column {SCORE_PREFIX}{}", q.id),
                    format!(
                        "no score column for query {:?} (the file scores: {})",
                        q.id,
                        self.query_ids().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            cols.push(col);
        }
        let wanted: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
        let extra: Vec<&str> = self.query_ids().filter(|q| !wanted.contains(q)).collect();
        if !extra.is_empty() {
            tracing::warn!(
                file = %self.path.display(),
                columns = ?extra,
                "score columns of queries not in the query list are ignored"
            );
        }
        let nq = queries.len();
        let nd = self.docs.len();
        let mut totals = vec![0.0; nd * nq];
        for (q, col) in cols.iter().enumerate() {
            for (d, &v) in col.iter().enumerate() {
                totals[d * nq + q] = v;
            }
        }
        let nats: Vec<f64> = queries
            .iter()
            .map(|q| self.nats_of(q).unwrap_or(1.0))
            .collect();
        let per_nat = totals
            .iter()
            .enumerate()
            .map(|(i, v)| v / nats[i % nq])
            .collect();
        let scores = Scores {
            layers: vec![EXTERNAL_LAYER.to_string()],
            queries: nq,
            docs: self.docs.clone(),
            per_nat,
            layer_totals: (0..nq)
                .map(|q| (0..nd).map(|d| totals[d * nq + q]).sum())
                .collect(),
            splits: HashMap::new(),
            totals,
            row_weights: vec![Vec::new(); nd],
            stats: ScoreStats {
                rows: self.docs.iter().map(|d| u64::from(d.rows)).sum(),
                ..ScoreStats::default()
            },
        };
        let prepared = PreparedQueries {
            window: 0,
            sketches: vec![Vec::new()],
            preconditioned: vec![Vec::new()],
            nats,
            damping: vec![0.0],
            row_metric: vec![Vec::new()],
        };
        Ok(Analysis {
            queries: queries.to_vec(),
            prepared: vec![prepared],
            scores,
        })
    }
}

fn read_arrow(path: &Path) -> Result<Raw, AnalyzerError> {
    let file = std::fs::File::open(path).map_err(AnalyzerError::io(path))?;
    let reader = arrow_ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| bad(path, "file", format!("not an Arrow IPC file: {e}")))?;
    let schema = reader.schema();
    let nats = match schema.metadata().get(NATS_METADATA) {
        None => None,
        Some(text) => Some(parse_nats(path, text)?),
    };
    let batches = reader
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(|e| bad(path, "file", format!("reading a record batch: {e}")))?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    check_names(path, &names)?;
    let find = |name: &str| names.iter().position(|n| n == name);
    let need = |name: &str| {
        find(name).ok_or_else(|| bad(path, format!("column {name}"), "missing column"))
    };
    let id_col = need("doc_id")?;
    let source_col = need("source")?;
    let text_col = find("text");
    let rows_col = find("rows");
    let score_cols: Vec<(usize, String)> = score_columns(&names);

    let mut raw = Raw::new(text_col.is_some(), rows_col.is_some(), &score_cols, nats);
    let mut offset = 0;
    for batch in &batches {
        let col = |i: usize| Column {
            path,
            name: &names[i],
            array: batch.column(i).as_ref(),
            offset,
        };
        for r in 0..batch.num_rows() {
            raw.ids.push(col(id_col).integer(r)?);
            raw.sources.push(col(source_col).string(r)?.ok_or_else(|| {
                bad(
                    path,
                    format!("column source, row {}", offset + r + 1),
                    "null",
                )
            })?);
            if let (Some(i), Some(texts)) = (text_col, raw.texts.as_mut()) {
                texts.push(col(i).string(r)?);
            }
            if let (Some(i), Some(rows)) = (rows_col, raw.rows.as_mut()) {
                let v = col(i).integer(r)?;
                rows.push(u32::try_from(v).map_err(|_| {
                    bad(
                        path,
                        format!("column rows, row {}", offset + r + 1),
                        format!("{v} does not fit a u32"),
                    )
                })?);
            }
            for ((i, _), (_, values)) in score_cols.iter().zip(raw.scores.iter_mut()) {
                values.push(col(*i).float(r, raw.ids[offset + r])?);
            }
        }
        offset += batch.num_rows();
    }
    Ok(raw)
}

fn parse_nats(path: &Path, text: &str) -> Result<HashMap<String, f64>, AnalyzerError> {
    let loc = format!("metadata {NATS_METADATA}");
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(path, loc.clone(), format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad(path, loc.clone(), "not a JSON object (query id → nats)"))?;
    let mut out = HashMap::with_capacity(obj.len());
    for (q, v) in obj {
        match v {
            // `write_scores_arrow` writes a NaN as null: unknown.
            serde_json::Value::Null => {}
            v => {
                let n = v.as_f64().ok_or_else(|| {
                    bad(
                        path,
                        loc.clone(),
                        format!("query {q:?}: {v} is not a number"),
                    )
                })?;
                out.insert(q.clone(), n);
            }
        }
    }
    Ok(out)
}

/// Repeated column names are refused: which one would be meant?
fn check_names(path: &Path, names: &[String]) -> Result<(), AnalyzerError> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n.as_str()) {
            return Err(bad(path, format!("column {n}"), "the column appears twice"));
        }
    }
    Ok(())
}

fn score_columns(names: &[String]) -> Vec<(usize, String)> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.strip_prefix(SCORE_PREFIX).map(|q| (i, q.to_string())))
        .collect()
}

/// One column of one record batch, for typed reads that name the column and row.
struct Column<'a> {
    path: &'a Path,
    name: &'a str,
    array: &'a dyn Array,
    offset: usize,
}

impl Column<'_> {
    fn loc(&self, r: usize) -> String {
        format!("column {}, row {}", self.name, self.offset + r + 1)
    }

    fn err(&self, r: usize, message: impl Into<String>) -> AnalyzerError {
        bad(self.path, self.loc(r), message)
    }

    fn wrong_type(&self, r: usize, want: &str) -> AnalyzerError {
        self.err(
            r,
            format!("type {} (expected {want})", self.array.data_type()),
        )
    }

    fn downcast<T: 'static>(&self) -> Option<&T> {
        self.array.as_any().downcast_ref::<T>()
    }

    fn integer(&self, r: usize) -> Result<u64, AnalyzerError> {
        if self.array.is_null(r) {
            return Err(self.err(r, "null"));
        }
        let signed = |v: i64| u64::try_from(v).map_err(|_| self.err(r, format!("{v} is negative")));
        match self.array.data_type() {
            DataType::UInt64 => Ok(self.downcast::<UInt64Array>().map(|a| a.value(r))),
            DataType::UInt32 => Ok(self
                .downcast::<UInt32Array>()
                .map(|a| u64::from(a.value(r)))),
            DataType::Int64 => self
                .downcast::<Int64Array>()
                .map(|a| signed(a.value(r)))
                .transpose(),
            DataType::Int32 => self
                .downcast::<Int32Array>()
                .map(|a| signed(i64::from(a.value(r))))
                .transpose(),
            _ => Ok(None),
        }?
        .ok_or_else(|| self.wrong_type(r, "an integer: uint64, int64, uint32 or int32"))
    }

    fn string(&self, r: usize) -> Result<Option<String>, AnalyzerError> {
        if self.array.is_null(r) {
            return Ok(None);
        }
        let v = match self.array.data_type() {
            DataType::Utf8 => self.downcast::<StringArray>().map(|a| a.value(r)),
            DataType::LargeUtf8 => self.downcast::<LargeStringArray>().map(|a| a.value(r)),
            DataType::Utf8View => self.downcast::<StringViewArray>().map(|a| a.value(r)),
            _ => None,
        };
        v.map(|s| Some(s.to_string()))
            .ok_or_else(|| self.wrong_type(r, "a string: utf8, large_utf8 or utf8_view"))
    }

    fn float(&self, r: usize, doc: u64) -> Result<f64, AnalyzerError> {
        if self.array.is_null(r) {
            return Err(self.err(r, format!("document {doc}: null score")));
        }
        let v = match self.array.data_type() {
            DataType::Float64 => self.downcast::<Float64Array>().map(|a| a.value(r)),
            DataType::Float32 => self
                .downcast::<Float32Array>()
                .map(|a| f64::from(a.value(r))),
            _ => None,
        };
        v.ok_or_else(|| self.wrong_type(r, "a float: float64 or float32"))
    }
}

fn read_csv(path: &Path) -> Result<Raw, AnalyzerError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    check_names(path, &names)?;
    let find = |name: &str| names.iter().position(|n| n == name);
    let need = |name: &str| {
        find(name).ok_or_else(|| {
            bad(
                path,
                format!("column {name} (header line)"),
                "missing column",
            )
        })
    };
    let id_col = need("doc_id")?;
    let source_col = need("source")?;
    let text_col = find("text");
    let rows_col = find("rows");
    let score_cols = score_columns(&names);
    let mut raw = Raw::new(text_col.is_some(), rows_col.is_some(), &score_cols, None);
    for (r, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let loc = |c: usize| format!("column {}, row {} (line {line})", names[c], r + 1);
        let get = |c: usize| record.get(c).unwrap_or("");
        let id = get(id_col).trim();
        let id: u64 = id.parse().map_err(|_| {
            bad(
                path,
                loc(id_col),
                format!("{id:?} is not a non-negative integer"),
            )
        })?;
        raw.ids.push(id);
        raw.sources.push(get(source_col).to_string());
        if let (Some(c), Some(texts)) = (text_col, raw.texts.as_mut()) {
            texts.push(Some(get(c).to_string()));
        }
        if let (Some(c), Some(rows)) = (rows_col, raw.rows.as_mut()) {
            let v = get(c).trim();
            rows.push(if v.is_empty() {
                1
            } else {
                v.parse()
                    .map_err(|_| bad(path, loc(c), format!("{v:?} is not a row count (u32)")))?
            });
        }
        for ((c, _), (_, values)) in score_cols.iter().zip(raw.scores.iter_mut()) {
            let v = get(*c).trim();
            values.push(v.parse().map_err(|_| {
                bad(
                    path,
                    loc(*c),
                    format!("document {id}: {v:?} is not a number"),
                )
            })?);
        }
    }
    Ok(raw)
}

fn csv_error(path: &Path, e: csv::Error) -> AnalyzerError {
    let location = match e.position() {
        Some(p) => format!("line {}", p.line()),
        None => "file".to_string(),
    };
    match e.into_kind() {
        csv::ErrorKind::Io(source) => AnalyzerError::Io {
            path: path.to_path_buf(),
            source,
        },
        kind => bad(path, location, csv_kind_message(kind)),
    }
}

fn csv_kind_message(kind: csv::ErrorKind) -> String {
    match kind {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8: {err}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::write_scores_arrow;

    fn query(id: &str) -> Query {
        Query {
            id: id.into(),
            prompt: "p".into(),
            completion: "c".into(),
            extra: serde_json::Map::new(),
        }
    }

    /// A hand-built analysis: 3 documents, 2 queries, 2 layers.
    fn analysis() -> Analysis {
        let docs = [(7u64, "wiki", 2u32), (3, "code", 1), (11, "wiki", 4)]
            .map(|(id, s, rows)| DocInfo {
                id,
                source: Arc::from(s),
                rows,
                tokens: 10,
            })
            .to_vec();
        let per_layer = vec![
            0.5, 0.25, -1.0, 0.0, // doc 7: q1 (2 layers), q2
            2.0, 1.0, 0.125, 0.125, // doc 3
            -0.5, -0.5, 3.0, -1.0, // doc 11
        ];
        let totals: Vec<f64> = per_layer.chunks(2).map(|c| c[0] + c[1]).collect();
        let per_nat = totals
            .iter()
            .enumerate()
            .map(|(i, v)| v / [1.5, 4.0][i % 2])
            .collect();
        Analysis {
            queries: vec![query("q1"), query("q2")],
            prepared: vec![PreparedQueries {
                window: 3,
                sketches: vec![Vec::new(); 2],
                preconditioned: vec![Vec::new(); 2],
                nats: vec![1.5, 4.0],
                damping: vec![0.0; 2],
                row_metric: vec![Vec::new(); 2],
            }],
            scores: Scores {
                layers: vec!["a".into(), "b".into()],
                queries: 2,
                docs,
                totals,
                per_nat,
                // Query-major sums over the documents, per layer.
                layer_totals: (0..4)
                    .map(|i| (0..3).map(|d| per_layer[d * 4 + i]).sum())
                    .collect(),
                splits: (0..3)
                    .flat_map(|d| (0..2).map(move |q| (d, q)))
                    .map(|(d, q)| ((d, q), per_layer[d * 4 + q * 2..d * 4 + q * 2 + 2].to_vec()))
                    .collect(),
                row_weights: vec![Vec::new(); 3],
                stats: ScoreStats::default(),
            },
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn message(e: AnalyzerError) -> String {
        e.to_string()
    }

    /// More documents than one record batch of the streamed writer: the file holds several
    /// batches and reads back whole, in order.
    #[test]
    fn arrow_of_many_documents_is_streamed_in_batches_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scores.arrow");
        let n = 70_001;
        let mut a = analysis();
        a.queries.truncate(1);
        a.scores.queries = 1;
        a.scores.layers.truncate(1);
        a.scores.docs = (0..n as u64)
            .map(|id| DocInfo {
                id: id * 3,
                source: Arc::from(["a", "b"][(id % 2) as usize]),
                rows: 1,
                tokens: 1,
            })
            .collect();
        a.scores.totals = (0..n).map(|d| d as f64 * 0.5 - 7.0).collect();
        a.scores.per_nat = a.scores.totals.clone();
        write_scores_arrow(&a, &path).expect("write");
        let batches =
            arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&path).expect("open"), None)
                .expect("reader")
                .count();
        assert_eq!(batches, 2, "streamed in two record batches");
        let ext = ExternalScores::read(&path).expect("read");
        assert_eq!(ext.docs.len(), n);
        assert_eq!(ext.docs[n - 1].id, (n as u64 - 1) * 3);
        assert_eq!(ext.column("q1"), Some(a.scores.totals.as_slice()));
    }

    #[test]
    fn arrow_written_by_query_reads_back_with_equal_scores_and_nats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scores.arrow");
        let a = analysis();
        write_scores_arrow(&a, &path).expect("write");
        let ext = ExternalScores::read(&path).expect("read");
        assert_eq!(
            ext.docs.iter().map(|d| d.id).collect::<Vec<_>>(),
            [7, 3, 11]
        );
        assert_eq!(ext.docs[2].rows, 4);
        assert_eq!(&*ext.docs[1].source, "code");
        assert!(ext.texts.iter().all(Option::is_none));
        assert_eq!(ext.column("q1"), Some(a.scores.column(0).as_slice()));
        assert_eq!(ext.column("q2"), Some(a.scores.column(1).as_slice()));

        // Read back for the queries in another order: the columns follow the queries.
        let b = ext.analysis(&[query("q2"), query("q1")]).expect("analysis");
        assert_eq!(b.nats(), [4.0, 1.5]);
        assert_eq!(b.scores.layers, [EXTERNAL_LAYER]);
        for d in 0..3 {
            assert_eq!(b.scores.score(d, 0), a.scores.score(d, 1));
            assert_eq!(b.scores.score(d, 1), a.scores.score(d, 0));
            assert_eq!(
                b.scores.layer_scores(d, 0),
                Some(vec![a.scores.score(d, 1)])
            );
        }
        assert_eq!(b.scores.top(1, 1), a.scores.top(0, 1));
        let report = b.report(2, 1);
        assert_eq!(report.queries[1].top[0].doc_id, 3);
        assert_eq!(report.queries[0].bottom[0].doc_id, 7);
        assert_eq!(report.queries[0].top[0].doc_id, 11);
        assert_eq!(report.queries[0].top[0].score_per_nat, 2.0 / 4.0);
    }

    #[test]
    fn csv_with_quoted_text_and_no_nats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "s.csv",
            "doc_id,source,text,score:q1,score:other\n\
             5,facts,\"The capital of Peru is Lima, \"\"on the coast\"\".\nA second line.\",0.5,1\n\
             9,code,,-2.5e-1,2\n",
        );
        let ext = ExternalScores::read(&path).expect("read");
        assert_eq!(
            ext.texts[0].as_deref(),
            Some("The capital of Peru is Lima, \"on the coast\".\nA second line.")
        );
        assert_eq!(ext.column("q1"), Some([0.5, -0.25].as_slice()));
        assert_eq!(ext.nats, None);
        let docs = ext.documents();
        assert_eq!((docs[1].id, docs[1].text.as_str()), (9, ""));
        // No nats anywhere: 1; a query line's `nats` field is used.
        let mut q = query("q1");
        assert!(!ext.nats_known(&q));
        assert_eq!(
            ext.analysis(std::slice::from_ref(&q)).expect("a").nats(),
            [1.0]
        );
        q.extra.insert("nats".into(), serde_json::json!(2.5));
        assert!(ext.nats_known(&q));
        let a = ext.analysis(&[q]).expect("analysis");
        assert_eq!(a.nats(), [2.5]);
        assert_eq!(a.scores.docs[0].rows, 1);
        assert_eq!(a.scores.column(0), [0.5, -0.25]);
    }

    #[test]
    fn a_query_without_its_column_is_an_error_naming_file_and_query() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "s.csv", "doc_id,source,score:q1\n1,a,0.5\n");
        let ext = ExternalScores::read(&path).expect("read");
        let e = message(
            ext.analysis(&[query("q1"), query("q9")])
                .expect_err("missing"),
        );
        assert!(
            e.contains("s.csv") && e.contains("score:q9") && e.contains("\"q9\""),
            "{e}"
        );
    }

    #[test]
    fn damaged_files_are_refused_naming_column_and_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("source,score:q1\na,1\n", "column doc_id"),
            ("doc_id,source\n1,a\n", "no score column"),
            ("doc_id,source,score:q1\n", "no documents"),
            (
                "doc_id,source,score:q1\n1,a,0.5\n2,b,zero\n",
                "column score:q1, row 2 (line 3): document 2: \"zero\" is not a number",
            ),
            (
                "doc_id,source,score:q1\n1,a,0.5\n2,b,NaN\n",
                "column score:q1, row 2: document 2: score NaN is not finite",
            ),
            (
                "doc_id,source,score:q1\n1,a,inf\n",
                "document 1: score inf is not finite",
            ),
            ("doc_id,source,score:q1\n-1,a,0.5\n", "column doc_id, row 1"),
            (
                "doc_id,source,score:q1\n4,a,0.5\n4,b,1\n",
                "document 4 repeats row 1",
            ),
            (
                "doc_id,source,score:q1\n4,a\n",
                "2 fields where the header has 3",
            ),
            (
                "doc_id,source,score:q1,score:q1\n4,a,1,2\n",
                "appears twice",
            ),
            (
                "doc_id,source,rows,score:q1\n4,a,x,2\n",
                "column rows, row 1",
            ),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = write(dir.path(), &format!("bad{i}.csv"), text);
            let e = message(ExternalScores::read(&path).expect_err(want));
            assert!(
                e.contains(&format!("bad{i}.csv")) && e.contains(want),
                "{i}: {e}"
            );
        }
        let path = write(dir.path(), "scores.parquet", "x");
        let e = message(ExternalScores::read(&path).expect_err("extension"));
        assert!(
            e.contains("unknown extension") && e.contains("parquet"),
            "{e}"
        );
        let path = write(dir.path(), "scores.arrow", "not arrow at all");
        let e = message(ExternalScores::read(&path).expect_err("not arrow"));
        assert!(e.contains("not an Arrow IPC file"), "{e}");
        let e = message(ExternalScores::read(&dir.path().join("absent.csv")).expect_err("io"));
        assert!(e.contains("absent.csv"), "{e}");
    }

    fn write_batch(path: &Path, batch: &RecordBatch) {
        let file = std::fs::File::create(path).expect("create");
        let mut w = arrow_ipc::writer::FileWriter::try_new(file, &batch.schema()).expect("writer");
        w.write(batch).expect("write");
        w.finish().expect("finish");
    }

    #[test]
    fn arrow_accepts_int64_ids_f32_scores_and_refuses_damage() {
        use arrow_array::ArrayRef;
        use arrow_schema::{Field, Schema};
        let dir = tempfile::tempdir().expect("tempdir");
        let batch = |ids: ArrayRef, scores: ArrayRef, meta: Option<&str>| {
            let fields = vec![
                Field::new("doc_id", ids.data_type().clone(), true),
                Field::new("source", DataType::Utf8, true),
                Field::new("text", DataType::LargeUtf8, true),
                Field::new("score:q1", scores.data_type().clone(), true),
            ];
            let mut schema = Schema::new(fields);
            if let Some(m) = meta {
                schema = schema.with_metadata(
                    [(NATS_METADATA.to_string(), m.to_string())]
                        .into_iter()
                        .collect::<HashMap<_, _>>(),
                );
            }
            let n = ids.len();
            RecordBatch::try_new(
                Arc::new(schema),
                vec![
                    ids,
                    Arc::new(StringArray::from(vec!["s"; n])),
                    Arc::new(LargeStringArray::from(
                        (0..n)
                            .map(|i| (i > 0).then_some("text"))
                            .collect::<Vec<_>>(),
                    )),
                    scores,
                ],
            )
            .expect("batch")
        };
        let good = dir.path().join("good.feather");
        write_batch(
            &good,
            &batch(
                Arc::new(Int64Array::from(vec![4, 2])),
                Arc::new(Float32Array::from(vec![0.5f32, -1.0])),
                Some(r#"{"q1": 2.0, "q2": null}"#),
            ),
        );
        let ext = ExternalScores::read(&good).expect("read");
        assert_eq!(ext.docs.iter().map(|d| d.id).collect::<Vec<_>>(), [4, 2]);
        assert_eq!(ext.column("q1"), Some([0.5, -1.0].as_slice()));
        assert_eq!(ext.texts, [None, Some("text".to_string())]);
        assert_eq!(ext.analysis(&[query("q1")]).expect("a").nats(), [2.0]);

        let damaged = [
            (
                batch(
                    Arc::new(Int64Array::from(vec![4, -2])),
                    Arc::new(Float64Array::from(vec![0.5, 1.0])),
                    None,
                ),
                "column doc_id, row 2: -2 is negative",
            ),
            (
                batch(
                    Arc::new(UInt64Array::from(vec![4, 2])),
                    Arc::new(Float64Array::from(vec![Some(0.5), None])),
                    None,
                ),
                "column score:q1, row 2: document 2: null score",
            ),
            (
                batch(
                    Arc::new(UInt64Array::from(vec![4, 2])),
                    Arc::new(Float64Array::from(vec![f64::NEG_INFINITY, 1.0])),
                    None,
                ),
                "column score:q1, row 1: document 4: score -inf is not finite",
            ),
            (
                batch(
                    Arc::new(UInt64Array::from(vec![4, 2])),
                    Arc::new(Int32Array::from(vec![1, 2])),
                    None,
                ),
                "column score:q1, row 1: type Int32 (expected a float",
            ),
            (
                batch(
                    Arc::new(UInt64Array::from(vec![4, 2])),
                    Arc::new(Float64Array::from(vec![1.0, 2.0])),
                    Some(r#"{"q1": -1}"#),
                ),
                "metadata burn_influence.nats: query \"q1\": -1 is not a finite positive",
            ),
            (
                batch(
                    Arc::new(UInt64Array::from(vec![4, 2])),
                    Arc::new(Float64Array::from(vec![1.0, 2.0])),
                    Some("[1, 2]"),
                ),
                "not a JSON object",
            ),
        ];
        for (i, (b, want)) in damaged.iter().enumerate() {
            let path = dir.path().join(format!("bad{i}.arrow"));
            write_batch(&path, b);
            let e = message(ExternalScores::read(&path).expect_err(want));
            assert!(
                e.contains(&format!("bad{i}.arrow")) && e.contains(want),
                "{i}: {e}"
            );
        }
    }
}
