//! Tables as files: CSV (RFC 4180), JSON (an array of objects) and Arrow IPC.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::writer::FileWriter;
use arrow_schema::{DataType, Field, Schema};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::data::{Cell, Table};
use crate::error::ReportError;

/// Writes `<dir>/<name>.csv`, `.json` and `.arrow`; returns the three paths.
pub(crate) fn write_table(table: &Table, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let csv = dir.join(format!("{}.csv", table.name));
    write_file(&csv, |w| write_csv(table, w))?;
    let json = dir.join(format!("{}.json", table.name));
    write_file(&json, |w| {
        serde_json::to_writer_pretty(&mut *w, &Rows(table)).map_err(std::io::Error::from)?;
        w.write_all(b"\n")
    })?;
    let arrow = dir.join(format!("{}.arrow", table.name));
    write_arrow(table, &arrow)?;
    Ok(vec![csv, json, arrow])
}

/// Creates `path` and hands a buffered writer to `body`, mapping I/O errors to the path.
pub(crate) fn write_file(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), ReportError> {
    let file = File::create(path).map_err(ReportError::io(path))?;
    let mut w = BufWriter::new(file);
    body(&mut w)
        .and_then(|()| w.flush())
        .map_err(ReportError::io(path))
}

/// A cell as text: what CSV files and Arrow text columns hold. Numbers keep every digit
/// (Rust's shortest round-trip form, `NaN` and `inf` included); [`Cell::Empty`] is `""`.
pub(crate) fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Text(s) => s.clone(),
        Cell::Int(v) => v.to_string(),
        Cell::Number(v) => format!("{v:?}"),
        Cell::Bool(b) => b.to_string(),
        Cell::Empty => String::new(),
    }
}

fn write_csv(table: &Table, w: &mut impl Write) -> std::io::Result<()> {
    let line = |w: &mut dyn Write, fields: &mut dyn Iterator<Item = String>| {
        for (i, f) in fields.enumerate() {
            if i > 0 {
                w.write_all(b",")?;
            }
            w.write_all(csv_field(&f).as_bytes())?;
        }
        w.write_all(b"\r\n")
    };
    line(w, &mut table.columns.iter().cloned())?;
    for row in &table.rows {
        line(w, &mut row.iter().map(cell_text))?;
    }
    Ok(())
}

/// RFC 4180: a field holding a comma, a quote or a line break is quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as a JSON array of objects whose keys keep the column order.
struct Rows<'a>(&'a Table);

struct Row<'a>(&'a [String], &'a [Cell]);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.rows.len()))?;
        for row in &self.0.rows {
            seq.serialize_element(&Row(&self.0.columns, row))?;
        }
        seq.end()
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter().zip(self.1) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The Arrow type of a column: `Float64`, `Int64` or `Boolean` when every non-empty cell is of
/// that kind (integers mixed with floats make `Float64`), else `Utf8` (an all-empty column too).
pub(crate) fn column_type(table: &Table, col: usize) -> DataType {
    let (mut ints, mut floats, mut bools, mut other) = (0, 0, 0, 0);
    for row in &table.rows {
        match &row[col] {
            Cell::Int(_) => ints += 1,
            Cell::Number(_) => floats += 1,
            Cell::Bool(_) => bools += 1,
            Cell::Text(_) => other += 1,
            Cell::Empty => {}
        }
    }
    match (ints, floats, bools, other) {
        (0, 0, 0, 0) => DataType::Utf8,
        (_, _, 0, 0) if floats > 0 => DataType::Float64,
        (_, 0, 0, 0) => DataType::Int64,
        (0, 0, _, 0) => DataType::Boolean,
        _ => DataType::Utf8,
    }
}

fn column_array(table: &Table, col: usize, ty: &DataType) -> ArrayRef {
    let cells = table.rows.iter().map(|r| &r[col]);
    match ty {
        DataType::Float64 => Arc::new(
            cells
                .map(|c| match c {
                    Cell::Number(v) => Some(*v),
                    Cell::Int(v) => Some(*v as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        DataType::Int64 => Arc::new(
            cells
                .map(|c| match c {
                    Cell::Int(v) => Some(*v),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Boolean => Arc::new(
            cells
                .map(|c| match c {
                    Cell::Bool(v) => Some(*v),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        _ => Arc::new(
            cells
                .map(|c| match c {
                    Cell::Empty => None,
                    c => Some(cell_text(c)),
                })
                .collect::<StringArray>(),
        ),
    }
}

fn write_arrow(table: &Table, path: &Path) -> Result<(), ReportError> {
    let arrow_err = |source| ReportError::Arrow {
        path: path.to_path_buf(),
        source,
    };
    let types: Vec<DataType> = (0..table.columns.len())
        .map(|c| column_type(table, c))
        .collect();
    let schema = Arc::new(Schema::new(
        table
            .columns
            .iter()
            .zip(&types)
            .map(|(name, ty)| Field::new(name, ty.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let columns = types
        .iter()
        .enumerate()
        .map(|(c, ty)| column_array(table, c, ty))
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?;
    let file = File::create(path).map_err(ReportError::io(path))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), &schema).map_err(arrow_err)?;
    writer.write(&batch).map_err(arrow_err)?;
    writer.finish().map_err(arrow_err)?;
    let mut inner = writer.into_inner().map_err(arrow_err)?;
    inner.flush().map_err(ReportError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: Vec<Vec<Cell>>) -> Table {
        Table {
            name: "t".into(),
            title: String::new(),
            columns: vec!["a".into()],
            rows,
        }
    }

    #[test]
    fn csv_fields_are_quoted_per_rfc_4180() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn column_types_follow_the_non_empty_cells() {
        use Cell::*;
        let ty = |rows| column_type(&table(rows), 0);
        assert_eq!(ty(vec![vec![Int(1)], vec![Empty]]), DataType::Int64);
        assert_eq!(ty(vec![vec![Int(1)], vec![Number(0.5)]]), DataType::Float64);
        assert_eq!(ty(vec![vec![Bool(true)], vec![Empty]]), DataType::Boolean);
        assert_eq!(ty(vec![vec![Bool(true)], vec![Int(1)]]), DataType::Utf8);
        assert_eq!(
            ty(vec![vec![Text("x".into())], vec![Number(1.0)]]),
            DataType::Utf8
        );
        assert_eq!(ty(vec![vec![Empty]]), DataType::Utf8);
        assert_eq!(ty(vec![]), DataType::Utf8);
    }

    #[test]
    fn json_rows_keep_the_column_order() {
        let t = Table {
            name: "t".into(),
            title: String::new(),
            columns: vec!["z".into(), "a".into()],
            rows: vec![vec![Cell::Number(f64::NAN), Cell::Text("x".into())]],
        };
        let json = serde_json::to_string(&Rows(&t)).expect("json");
        assert_eq!(json, r#"[{"z":null,"a":"x"}]"#);
    }
}
