//! The Arrow schema of sketch shards, and conversion between [`SketchBatch`]es and record batches.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, DictionaryArray, FixedSizeListArray, Float16Array, Float32Array, Float64Array,
    Int32Array, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use half::{bf16, f16};
use influence_core::{RunInfo, SketchBatch};

use crate::{SketchDtype, StoreError};

/// Schema metadata key: the store version.
pub const META_STORE_VERSION: &str = "burn_influence.store_version";
/// Schema metadata key: the run info (JSON), so that a shard describes itself.
pub const META_RUN: &str = "burn_influence.run";
/// Schema and field metadata key: the sketch value type (`f32`, `f16`, `bf16`).
pub const META_DTYPE: &str = "burn_influence.dtype";
/// Field metadata key: the sketch shape `k_g,k_a` (row-major).
pub const META_SHAPE: &str = "burn_influence.shape";

/// Names of the metadata columns, in order; sketch columns follow.
pub const META_COLUMNS: [&str; 7] = [
    "doc_id",
    "step",
    "window",
    "learning_rate",
    "loss",
    "tokens",
    "source",
];

/// Column name of a layer's sketches.
pub fn sketch_column(layer: &str) -> String {
    format!("sketch.{layer}")
}

/// Column name of a layer's per-row scales (dtype `i8` only; these columns follow the sketch
/// columns, in layer order).
pub fn scale_column(layer: &str) -> String {
    format!("scale.{layer}")
}

/// Indices of the columns of a shard that hold what [`decode`] needs for `layers` (indices into
/// `run.layers`): the metadata columns, the layers' sketch columns and, for `i8`, their scales.
pub fn projection(run: &RunInfo, dtype: SketchDtype, layers: &[usize]) -> Vec<usize> {
    let meta = META_COLUMNS.len();
    let mut p: Vec<usize> = (0..meta).chain(layers.iter().map(|&l| meta + l)).collect();
    if dtype.row_overhead() > 0 {
        p.extend(layers.iter().map(|&l| meta + run.layers.len() + l));
    }
    p.sort_unstable();
    p.dedup();
    p
}

/// Absmax quantisation of one row to `i8`: pushes the codes and returns the scale and the row's
/// non-finite values (with any, the scale is `NaN`, so that the row decodes as NaN, never as
/// numbers).
fn quantize_row(row: &[f32], codes: &mut Vec<i8>) -> (f32, u64) {
    let non_finite = row.iter().filter(|v| !v.is_finite()).count() as u64;
    if non_finite > 0 {
        codes.extend(std::iter::repeat_n(0, row.len()));
        return (f32::NAN, non_finite);
    }
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
    // |v · inv| ≤ 127 up to rounding; the clamp makes the cast exact.
    codes.extend(
        row.iter()
            .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8),
    );
    (scale, 0)
}

/// The value type of a sketch column's list items.
fn item_type(dtype: SketchDtype) -> DataType {
    match dtype {
        SketchDtype::F32 => DataType::Float32,
        SketchDtype::F16 => DataType::Float16,
        SketchDtype::Bf16 => DataType::UInt16,
        SketchDtype::I8 => DataType::Int8,
    }
}

fn item_field(dtype: SketchDtype) -> Arc<Field> {
    Arc::new(Field::new("item", item_type(dtype), false))
}

/// The schema of the sketch shards of `run` at `dtype`.
pub fn sketch_schema(run: &RunInfo, dtype: SketchDtype) -> SchemaRef {
    let mut fields = vec![
        Field::new("doc_id", DataType::UInt64, false),
        Field::new("step", DataType::UInt64, false),
        Field::new("window", DataType::UInt32, false),
        Field::new("learning_rate", DataType::Float64, false),
        Field::new("loss", DataType::Float32, true),
        Field::new("tokens", DataType::UInt32, false),
        Field::new(
            "source",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
    ];
    let dtype_meta = || HashMap::from([(META_DTYPE.to_owned(), dtype.name().to_owned())]);
    for l in &run.layers {
        let k = i32::try_from(l.sketch_len()).unwrap_or(i32::MAX);
        fields.push(
            Field::new(
                sketch_column(&l.name),
                DataType::FixedSizeList(item_field(dtype), k),
                false,
            )
            .with_metadata(HashMap::from([
                (META_DTYPE.to_owned(), dtype.name().to_owned()),
                (META_SHAPE.to_owned(), format!("{},{}", l.k_g, l.k_a)),
            ])),
        );
    }
    if dtype.row_overhead() > 0 {
        for l in &run.layers {
            fields.push(
                Field::new(scale_column(&l.name), DataType::Float32, false)
                    .with_metadata(dtype_meta()),
            );
        }
    }
    let run_json = serde_json::to_string(run).unwrap_or_default();
    Arc::new(Schema::new(fields).with_metadata(HashMap::from([
        (
            META_STORE_VERSION.to_owned(),
            dtype.min_store_version().to_string(),
        ),
        (META_RUN.to_owned(), run_json),
        (META_DTYPE.to_owned(), dtype.name().to_owned()),
    ])))
}

/// The source labels of a shard: an Arrow IPC *file* allows one dictionary per column for all its
/// batches, so the writer keeps the labels in first-seen order and starts a new shard when a new
/// label appears (in practice only during the first steps).
#[derive(Clone, Debug, Default)]
pub struct SourceDictionary {
    labels: Vec<String>,
    index: HashMap<String, i32>,
    values: Option<ArrayRef>,
}

impl SourceDictionary {
    /// Adds the labels of `batches`; returns whether any was new.
    pub fn extend(&mut self, batches: &[SketchBatch]) -> bool {
        let before = self.labels.len();
        for r in batches.iter().flat_map(|b| &b.rows) {
            if !self.index.contains_key(&r.source) {
                let key = i32::try_from(self.labels.len()).unwrap_or(i32::MAX);
                self.index.insert(r.source.clone(), key);
                self.labels.push(r.source.clone());
            }
        }
        let grew = self.labels.len() != before;
        if grew || self.values.is_none() {
            self.values = Some(Arc::new(StringArray::from_iter_values(&self.labels)));
        }
        grew
    }

    fn column(
        &self,
        batches: &[SketchBatch],
    ) -> Result<DictionaryArray<Int32Type>, arrow_schema::ArrowError> {
        let missing =
            || arrow_schema::ArrowError::InvalidArgumentError("unknown source label".into());
        let keys = batches
            .iter()
            .flat_map(|b| &b.rows)
            .map(|r| self.index.get(&r.source).copied().ok_or_else(missing))
            .collect::<Result<Vec<i32>, _>>()?;
        let values = self.values.clone().ok_or_else(missing)?;
        DictionaryArray::try_new(Int32Array::from(keys), values)
    }
}

/// Encodes buffered sketch batches (all of the same run) into one record batch, with `sources`
/// already extended by them. Returns the batch and how many values overflowed the dtype's range.
pub fn encode(
    schema: &SchemaRef,
    run: &RunInfo,
    dtype: SketchDtype,
    sources: &SourceDictionary,
    batches: &[SketchBatch],
) -> Result<(RecordBatch, u64), arrow_schema::ArrowError> {
    let rows = || {
        batches
            .iter()
            .flat_map(|b| b.rows.iter().map(move |r| (b, r)))
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows().map(|(_, r)| r.doc_id))),
        Arc::new(UInt64Array::from_iter_values(rows().map(|(b, _)| b.step))),
        Arc::new(UInt32Array::from_iter_values(rows().map(|(b, _)| b.window))),
        Arc::new(Float64Array::from_iter_values(
            rows().map(|(b, _)| b.learning_rate),
        )),
        Arc::new(Float32Array::from_iter(rows().map(|(_, r)| r.loss))),
        Arc::new(UInt32Array::from_iter_values(rows().map(|(_, r)| r.tokens))),
        Arc::new(sources.column(batches)?),
    ];
    let mut overflowed = 0u64;
    let mut scales: Vec<ArrayRef> = Vec::new();
    for (i, l) in run.layers.iter().enumerate() {
        let k = l.sketch_len();
        let values = batches.iter().flat_map(|b| {
            b.sketches
                .get(i)
                .map(|s| &s[..s.len().min(b.rows.len() * k)])
                .unwrap_or_default()
                .iter()
                .copied()
        });
        let items: ArrayRef = match dtype {
            SketchDtype::F32 => Arc::new(Float32Array::from_iter_values(values)),
            SketchDtype::F16 => Arc::new(Float16Array::from_iter_values(values.map(|v| {
                let h = f16::from_f32(v);
                overflowed += u64::from(h.is_infinite() && v.is_finite());
                h
            }))),
            SketchDtype::Bf16 => Arc::new(UInt16Array::from_iter_values(values.map(|v| {
                let h = bf16::from_f32(v);
                overflowed += u64::from(h.is_infinite() && v.is_finite());
                h.to_bits()
            }))),
            SketchDtype::I8 => {
                let values: Vec<f32> = values.collect();
                let mut codes = Vec::with_capacity(values.len());
                let mut row_scales = Vec::with_capacity(values.len() / k.max(1));
                for row in values.chunks(k.max(1)) {
                    let (s, non_finite) = quantize_row(row, &mut codes);
                    overflowed += non_finite;
                    row_scales.push(s);
                }
                scales.push(Arc::new(Float32Array::from(row_scales)));
                Arc::new(arrow_array::Int8Array::from(codes))
            }
        };
        let k = i32::try_from(k).map_err(|_| {
            arrow_schema::ArrowError::InvalidArgumentError(format!("{}: sketch too long", l.name))
        })?;
        columns.push(Arc::new(FixedSizeListArray::try_new(
            item_field(dtype),
            k,
            items,
            None,
        )?));
    }
    columns.extend(scales);
    Ok((RecordBatch::try_new(schema.clone(), columns)?, overflowed))
}

/// Decoded rows of a shard (or part of one): metadata per row and, for each selected layer, the
/// sketches as f32 (`rows × k_g × k_a`, row-major per row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SketchChunk {
    /// Document id per row.
    pub doc_ids: Vec<u64>,
    /// Step per row.
    pub steps: Vec<u64>,
    /// Window per row.
    pub windows: Vec<u32>,
    /// Learning rate of the row's step.
    pub learning_rates: Vec<f64>,
    /// Mean training loss of the document in its step, when recorded.
    pub losses: Vec<Option<f32>>,
    /// Loss-bearing tokens per row.
    pub tokens: Vec<u32>,
    /// Source label per row.
    pub sources: Vec<Arc<str>>,
    /// Indices (into `RunInfo::layers`) of the layers in `sketches`.
    pub layers: Vec<usize>,
    /// Per selected layer: `rows × k` values.
    pub sketches: Vec<Vec<f32>>,
}

impl SketchChunk {
    /// Rows.
    pub fn len(&self) -> usize {
        self.doc_ids.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.doc_ids.is_empty()
    }
}

/// The column `name` of `batch` as an array of type `T`; errors name the file and column.
pub(crate) fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a T, StoreError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| StoreError::invalid(path, name, "column missing"))?;
    col.as_any().downcast_ref::<T>().ok_or_else(|| {
        StoreError::invalid(path, name, format!("unexpected type {}", col.data_type()))
    })
}

/// Fails if `a` (the column `name`) holds nulls.
pub(crate) fn no_nulls(a: &dyn Array, name: &str, path: &Path) -> Result<(), StoreError> {
    if a.null_count() > 0 {
        return Err(StoreError::invalid(
            path,
            name,
            format!("{} null values in a non-nullable column", a.null_count()),
        ));
    }
    Ok(())
}

/// Learning rates must be finite and non-negative (a schedule may start at 0): a negative one
/// would flip the sign of every LR-weighted score silently. The error names the file, the field
/// and the first bad item.
pub(crate) fn check_learning_rates(
    values: &[f64],
    path: &Path,
    field: &str,
) -> Result<(), StoreError> {
    match values.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        None => Ok(()),
        Some(i) => Err(StoreError::invalid(
            path,
            field,
            format!(
                "item {i} is {}: a learning rate must be finite and non-negative",
                values[i]
            ),
        )),
    }
}

/// Decodes a record batch of a shard at `path`, keeping the sketches of `layers` (indices into
/// `run.layers`).
pub fn decode(
    batch: &RecordBatch,
    run: &RunInfo,
    dtype: SketchDtype,
    layers: &[usize],
    path: &Path,
) -> Result<SketchChunk, StoreError> {
    let doc_id = column::<UInt64Array>(batch, "doc_id", path)?;
    let step = column::<UInt64Array>(batch, "step", path)?;
    let window = column::<UInt32Array>(batch, "window", path)?;
    let lr = column::<Float64Array>(batch, "learning_rate", path)?;
    let loss = column::<Float32Array>(batch, "loss", path)?;
    let tokens = column::<UInt32Array>(batch, "tokens", path)?;
    let source = column::<DictionaryArray<Int32Type>>(batch, "source", path)?;
    for (name, a) in [
        ("doc_id", doc_id as &dyn Array),
        ("step", step),
        ("window", window),
        ("learning_rate", lr),
        ("tokens", tokens),
        ("source", source),
    ] {
        no_nulls(a, name, path)?;
    }
    check_learning_rates(lr.values(), path, "learning_rate")?;
    let dict = source
        .values()
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| StoreError::invalid(path, "source", "dictionary values are not utf8"))?;
    let names: Vec<Arc<str>> = (0..dict.len()).map(|i| Arc::from(dict.value(i))).collect();
    let sources = source
        .keys()
        .values()
        .iter()
        .map(|&k| {
            usize::try_from(k)
                .ok()
                .and_then(|k| names.get(k).cloned())
                .ok_or_else(|| {
                    StoreError::invalid(path, "source", format!("dictionary key {k} out of range"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut sketches = Vec::with_capacity(layers.len());
    for &li in layers {
        let l = run
            .layers
            .get(li)
            .ok_or_else(|| StoreError::Record(format!("layer index {li} out of range")))?;
        let name = sketch_column(&l.name);
        let list = column::<FixedSizeListArray>(batch, &name, path)?;
        no_nulls(list, &name, path)?;
        let k = l.sketch_len();
        if usize::try_from(list.value_length()).ok() != Some(k) {
            return Err(StoreError::invalid(
                path,
                &name,
                format!(
                    "sketches of {} values, manifest says k_g × k_a = {k}",
                    list.value_length()
                ),
            ));
        }
        let start = list.value_offset_at(0);
        let range = start..start + list.len() * k;
        let items = list.values();
        no_nulls(items.as_ref(), &name, path)?;
        let wrong = || {
            StoreError::invalid(
                path,
                &name,
                format!(
                    "items are {}, manifest says {}",
                    items.data_type(),
                    dtype.name()
                ),
            )
        };
        let short = || StoreError::invalid(path, &name, "fewer values than rows × k");
        let values: Vec<f32> = match dtype {
            SketchDtype::F32 => {
                let a = items
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .ok_or_else(wrong)?;
                a.values().get(range).ok_or_else(short)?.to_vec()
            }
            SketchDtype::F16 => {
                let a = items
                    .as_any()
                    .downcast_ref::<Float16Array>()
                    .ok_or_else(wrong)?;
                let v = a.values().get(range).ok_or_else(short)?;
                v.iter().map(|h| h.to_f32()).collect()
            }
            SketchDtype::Bf16 => {
                let a = items
                    .as_any()
                    .downcast_ref::<UInt16Array>()
                    .ok_or_else(wrong)?;
                let v = a.values().get(range).ok_or_else(short)?;
                v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
            }
            SketchDtype::I8 => {
                let a = items
                    .as_any()
                    .downcast_ref::<arrow_array::Int8Array>()
                    .ok_or_else(wrong)?;
                let v = a.values().get(range).ok_or_else(short)?;
                let scale_name = scale_column(&l.name);
                let s = column::<Float32Array>(batch, &scale_name, path)?;
                no_nulls(s, &scale_name, path)?;
                if s.len() != list.len() {
                    return Err(StoreError::invalid(
                        path,
                        &scale_name,
                        format!("{} scales for {} rows", s.len(), list.len()),
                    ));
                }
                v.chunks(k.max(1))
                    .zip(s.values().iter())
                    .flat_map(|(q, &s)| q.iter().map(move |&q| f32::from(q) * s))
                    .collect()
            }
        };
        sketches.push(values);
    }
    Ok(SketchChunk {
        doc_ids: doc_id.values().to_vec(),
        steps: step.values().to_vec(),
        windows: window.values().to_vec(),
        learning_rates: lr.values().to_vec(),
        losses: loss.iter().collect(),
        tokens: tokens.values().to_vec(),
        sources,
        layers: layers.to_vec(),
        sketches,
    })
}
