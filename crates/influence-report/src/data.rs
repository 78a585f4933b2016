//! The plain data a report is rendered from.
//!
//! Everything here is `serde` (de)serialisable; `report.json` holds one [`ReportData`]. JSON has
//! no NaN or infinity: `serde_json` writes a non-finite number as `null`, and the `f64` fields
//! read `null` back as NaN, so a report with undefined values (a correlation of a constant
//! query, say) still loads. A [`Cell::Number`] that is not finite reads back as [`Cell::Empty`].

use serde::{Deserialize, Serialize};

/// A whole report: a title, notes on method, and one section per run (model size).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// The page title.
    pub title: String,
    /// Paragraphs shown under the title (how the scores were computed, caveats).
    pub notes: Vec<String>,
    /// One section per run; several runs are shown side by side, section by section.
    pub runs: Vec<RunSection>,
}

/// Everything shown for one run: one model, its store and its queries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSection {
    /// The run's name, e.g. `small (4 blocks, d=128)`; its slug names the run's files.
    pub name: String,
    /// Key/value facts (steps, final loss, documents, rows, time), in order.
    pub summary: Vec<(String, String)>,
    /// Pearson r of influence between every pair of queries.
    pub correlation: Heatmap,
    /// Cumulative positive influence of the top k % of documents, mean per query group.
    pub curves: Vec<GroupCurve>,
    /// Over-representation of each source in the top (bottom) k documents, per group.
    pub multipliers: Vec<Multiplier>,
    /// Mean share of each layer in the influence, per group.
    pub layer_shares: Vec<LayerShare>,
    /// Tables, shown on the page and written as CSV, JSON and Arrow files.
    pub tables: Vec<Table>,
    /// One section per scored completion.
    pub queries: Vec<QuerySection>,
}

/// A square matrix of values in `[-1, 1]` over labelled items (queries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// The label of each row (and column).
    pub labels: Vec<String>,
    /// The group of each row; as long as `labels`, or empty when there are no groups.
    pub groups: Vec<String>,
    /// `values[i][j]`: row `i`, column `j`; NaN (or `null` in JSON) for undefined.
    #[serde(deserialize_with = "nullable::matrix")]
    pub values: Vec<Vec<f64>>,
}

/// One group's mean concentration curve.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupCurve {
    /// The query group.
    pub group: String,
    /// The percentages k of the positively scored documents (x axis).
    #[serde(deserialize_with = "nullable::vector")]
    pub percent: Vec<f64>,
    /// Cumulative positive influence of the top k %, per nat of the completion.
    #[serde(deserialize_with = "nullable::vector")]
    pub absolute: Vec<f64>,
    /// The same as a share of the total positive influence.
    #[serde(deserialize_with = "nullable::vector")]
    pub relative: Vec<f64>,
}

/// How over-represented a source is in a group's top or bottom k documents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Multiplier {
    /// The query group.
    pub group: String,
    /// `"top"` or `"bottom"`.
    pub side: String,
    /// How many documents of the ranking were counted.
    pub k: usize,
    /// The source (a corpus name such as `code` or `wiki`).
    pub source: String,
    /// Observed count over the count expected from the corpus mix (1: as expected).
    #[serde(deserialize_with = "nullable::number")]
    pub multiplier: f64,
}

/// A group's mean share of influence in one layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerShare {
    /// The query group.
    pub group: String,
    /// The layer's name.
    pub layer: String,
    /// The share, usually in `[0, 1]`.
    #[serde(deserialize_with = "nullable::number")]
    pub share: f64,
}

/// A table: shown on the page and written as `<name>.csv`, `<name>.json` and `<name>.arrow`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// The file stem: non-empty, only `a-z`, `0-9`, `_` and `-`, unique within a run.
    pub name: String,
    /// A one-line description shown above the table.
    pub title: String,
    /// Column names, unique and at least one.
    pub columns: Vec<String>,
    /// Rows, each exactly as long as `columns`.
    pub rows: Vec<Vec<Cell>>,
}

/// One value of a [`Table`]. Untagged in JSON: a string, a number, a boolean or `null`.
///
/// A JSON integer reads back as [`Cell::Int`], any other number as [`Cell::Number`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    /// Text.
    Text(String),
    /// An integer (tried before [`Cell::Number`] when reading JSON).
    Int(i64),
    /// A floating-point number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// No value: an empty CSV field, JSON `null`, an Arrow null.
    #[default]
    Empty,
}

/// One scored completion: the query, its completion and the documents that shaped it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuerySection {
    /// The query's id (shown, and slugged into the section's anchor).
    pub id: String,
    /// Its group (e.g. `factual`, `reasoning`, `control`).
    pub group: String,
    /// Its task within the group.
    pub task: String,
    /// The prompt.
    pub prompt: String,
    /// The completion that was scored.
    pub completion: String,
    /// `"model"` (the model's own answer) or `"reference"` (the correct worked answer).
    pub completion_kind: String,
    /// Whether the completion's answer is right; `None` when not graded.
    pub correct: Option<bool>,
    /// The expected final answer, if any.
    pub answer: Option<String>,
    /// The completion's loss in nats.
    #[serde(deserialize_with = "nullable::number")]
    pub nats: f64,
    /// Whether the answer was found in the top documents; `None` when not searched.
    pub answer_found: Option<bool>,
    /// The most positively influential documents, most influential first.
    pub top: Vec<DocView>,
    /// The most negatively influential documents, most negative first.
    pub bottom: Vec<DocView>,
}

/// A training document as shown under a query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DocView {
    /// Its rank in the list (1 first).
    pub rank: usize,
    /// The document's id in the store.
    pub doc_id: u64,
    /// Its source.
    pub source: String,
    /// Its influence on the completion.
    #[serde(deserialize_with = "nullable::number")]
    pub score: f64,
    /// Its text.
    pub text: String,
    /// Its tokens with each one's share of the score; empty when not split (then `text` is
    /// shown plainly).
    pub tokens: Vec<TokenScore>,
}

/// One token of a document and its share of the document's influence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    /// The token's text, exactly as it appears in the document.
    pub text: String,
    /// Its influence.
    #[serde(deserialize_with = "nullable::number")]
    pub score: f64,
}

/// `null` → NaN for the `f64` fields (`serde_json` writes NaN and infinities as `null`).
mod nullable {
    use serde::{Deserialize, Deserializer};

    fn nan(v: Option<f64>) -> f64 {
        v.unwrap_or(f64::NAN)
    }

    pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Option::<f64>::deserialize(d).map(nan)
    }

    pub fn vector<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(nan)
            .collect())
    }

    pub fn matrix<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        Ok(Vec::<Vec<Option<f64>>>::deserialize(d)?
            .into_iter()
            .map(|row| row.into_iter().map(nan).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_back_as_written() {
        let cells = vec![
            Cell::Text("3".into()),
            Cell::Int(-4),
            Cell::Number(3.0),
            Cell::Number(0.25),
            Cell::Bool(true),
            Cell::Empty,
        ];
        let json = serde_json::to_string(&cells).expect("json");
        assert_eq!(json, r#"["3",-4,3.0,0.25,true,null]"#);
        let back: Vec<Cell> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, cells);
    }

    #[test]
    fn non_finite_numbers_read_back_as_nan() {
        let h = Heatmap {
            labels: vec!["a".into(), "b".into()],
            groups: vec![],
            values: vec![vec![1.0, f64::NAN], vec![f64::INFINITY, 1.0]],
        };
        let json = serde_json::to_string(&h).expect("json");
        let back: Heatmap = serde_json::from_str(&json).expect("parse");
        assert!(back.values[0][1].is_nan() && back.values[1][0].is_nan());
        assert_eq!(back.values[1][1], 1.0);
    }
}
