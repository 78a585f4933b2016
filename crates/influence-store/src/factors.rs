//! Factor files: one Arrow IPC file per window, one row per layer (f64 lists), window metadata in
//! the schema metadata. pyarrow reads them as they are.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::types::{Float64Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, Float64Array, ListArray, PrimitiveArray, RecordBatch,
    StringArray, UInt32Array, UInt64Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use influence_core::{Eigenbasis, LayerFactors, SketchBasis, WindowRecord};

use crate::StoreError;
use crate::schema::{column, no_nulls};

const META_WINDOW: &str = "burn_influence.window";

#[derive(serde::Serialize, serde::Deserialize)]
struct WindowMeta {
    window: u32,
    first_step: u64,
    last_step: u64,
    learning_rates: Vec<f64>,
}

/// The list columns, in order.
const LISTS: [&str; 7] = [
    "a",
    "s",
    "eig_a_values",
    "eig_a_vectors",
    "eig_s_values",
    "eig_s_vectors",
    "corrected",
];

/// `list<T>` with non-null items.
fn list_type<T: ArrowPrimitiveType>() -> DataType {
    DataType::List(Arc::new(Field::new("item", T::DATA_TYPE, false)))
}

fn f64_list() -> DataType {
    list_type::<Float64Type>()
}

/// The schema of a factor file.
pub fn factor_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("layer", DataType::Utf8, false),
        Field::new("d_in_aug", DataType::UInt32, false),
        Field::new("d_out", DataType::UInt32, false),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("tokens_per_example", DataType::Float64, false),
        Field::new("corrected_examples", DataType::UInt64, false),
    ];
    for name in LISTS {
        fields.push(Field::new(name, f64_list(), name == "corrected"));
    }
    // Store version 2: the eigenbasis projection of the window's sketches (null: seeded).
    fields.extend([
        Field::new("basis_from_window", DataType::UInt32, true),
        Field::new("basis_k_a", DataType::UInt32, true),
        Field::new("basis_k_g", DataType::UInt32, true),
        Field::new("basis_rows", DataType::UInt64, true),
        Field::new("basis_p_a", f64_list(), true),
        Field::new("basis_p_g", f64_list(), true),
        Field::new("basis_coords", list_type::<UInt32Type>(), true),
        Field::new("basis_second_moment", f64_list(), true),
    ]);
    Arc::new(Schema::new(fields))
}

/// A nullable `list<T>` column, one row per entry (`None`: a null row).
fn list_of<T: ArrowPrimitiveType>(
    rows: Vec<Option<&[T::Native]>>,
) -> Result<ArrayRef, arrow_schema::ArrowError> {
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.map_or(0, <[_]>::len)));
    let values = PrimitiveArray::<T>::from_iter_values(
        rows.iter().flat_map(|r| r.unwrap_or_default()).copied(),
    );
    let nulls = rows
        .iter()
        .any(Option::is_none)
        .then(|| rows.iter().map(Option::is_some).collect());
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new("item", T::DATA_TYPE, false)),
        offsets,
        Arc::new(values),
        nulls,
    )?))
}

fn list(rows: Vec<Option<&[f64]>>) -> Result<ArrayRef, arrow_schema::ArrowError> {
    list_of::<Float64Type>(rows)
}

/// The store version that last changed the factor files' layout (the sketch-basis columns); factor
/// files say it in their schema metadata.
const FACTOR_LAYOUT_VERSION: u32 = 2;

/// Encodes a window's factors as a record batch (with the window's metadata on the schema).
pub fn encode(record: &WindowRecord) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let meta = WindowMeta {
        window: record.window,
        first_step: record.first_step,
        last_step: record.last_step,
        learning_rates: record.learning_rates.clone(),
    };
    let schema = Arc::new(
        factor_schema()
            .as_ref()
            .clone()
            .with_metadata(HashMap::from([
                (
                    META_WINDOW.to_owned(),
                    serde_json::to_string(&meta).unwrap_or_default(),
                ),
                (
                    crate::schema::META_STORE_VERSION.to_owned(),
                    FACTOR_LAYOUT_VERSION.to_string(),
                ),
            ])),
    );
    let ls = &record.layers;
    let dim = |d: usize| u32::try_from(d).unwrap_or(u32::MAX);
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(ls.iter().map(|l| &l.name))),
        Arc::new(UInt32Array::from_iter_values(
            ls.iter().map(|l| dim(l.eig_a.dim)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            ls.iter().map(|l| dim(l.eig_s.dim)),
        )),
        Arc::new(UInt64Array::from_iter_values(ls.iter().map(|l| l.tokens))),
        Arc::new(Float64Array::from_iter_values(
            ls.iter().map(|l| l.tokens_per_example),
        )),
        Arc::new(UInt64Array::from_iter_values(
            ls.iter().map(|l| l.corrected_examples),
        )),
    ];
    type Get = fn(&LayerFactors) -> Option<&[f64]>;
    let getters: [Get; 7] = [
        |l| Some(&l.a),
        |l| Some(&l.s),
        |l| Some(&l.eig_a.values),
        |l| Some(&l.eig_a.vectors),
        |l| Some(&l.eig_s.values),
        |l| Some(&l.eig_s.vectors),
        |l| l.corrected.as_deref(),
    ];
    for get in getters {
        columns.push(list(ls.iter().map(get).collect())?);
    }
    let basis: Vec<Option<&SketchBasis>> = ls.iter().map(|l| l.sketch_basis.as_ref()).collect();
    columns.push(Arc::new(UInt32Array::from(
        basis
            .iter()
            .map(|b| b.map(|b| b.from_window))
            .collect::<Vec<_>>(),
    )));
    for get in [|b: &SketchBasis| b.k_a, |b: &SketchBasis| b.k_g] {
        columns.push(Arc::new(UInt32Array::from(
            basis
                .iter()
                .map(|b| b.map(|b| dim(get(b))))
                .collect::<Vec<_>>(),
        )));
    }
    columns.push(Arc::new(UInt64Array::from(
        basis.iter().map(|b| b.map(|b| b.rows)).collect::<Vec<_>>(),
    )));
    columns.push(list(basis.iter().map(|b| b.map(|b| &b.p_a[..])).collect())?);
    columns.push(list(basis.iter().map(|b| b.map(|b| &b.p_g[..])).collect())?);
    columns.push(list_of::<UInt32Type>(
        basis.iter().map(|b| b.map(|b| &b.coords[..])).collect(),
    )?);
    columns.push(list(
        basis
            .iter()
            .map(|b| b.and_then(|b| b.second_moment.as_deref()))
            .collect(),
    )?);
    RecordBatch::try_new(schema, columns)
}

/// Decodes a factor file's record batches (and its schema metadata) back into a window record,
/// checking every matrix's size.
pub fn decode(
    schema: &Schema,
    batches: &[RecordBatch],
    path: &Path,
) -> Result<WindowRecord, StoreError> {
    let meta_json = schema
        .metadata()
        .get(META_WINDOW)
        .ok_or_else(|| StoreError::invalid(path, META_WINDOW, "schema metadata missing"))?;
    let meta: WindowMeta = serde_json::from_str(meta_json)
        .map_err(|e| StoreError::invalid(path, META_WINDOW, e.to_string()))?;
    let mut layers = Vec::new();
    for b in batches {
        let name = column::<StringArray>(b, "layer", path)?;
        let d_a = column::<UInt32Array>(b, "d_in_aug", path)?;
        let d_s = column::<UInt32Array>(b, "d_out", path)?;
        let tokens = column::<UInt64Array>(b, "tokens", path)?;
        let tpe = column::<Float64Array>(b, "tokens_per_example", path)?;
        let ce = column::<UInt64Array>(b, "corrected_examples", path)?;
        let lists = LISTS
            .iter()
            .map(|n| column::<ListArray>(b, n, path))
            .collect::<Result<Vec<_>, _>>()?;
        for (n, a) in [
            ("layer", name as &dyn Array),
            ("d_in_aug", d_a),
            ("d_out", d_s),
            ("tokens", tokens),
            ("tokens_per_example", tpe),
            ("corrected_examples", ce),
        ] {
            no_nulls(a, n, path)?;
        }
        for r in 0..b.num_rows() {
            let layer = name.value(r).to_owned();
            finite(
                &[tpe.value(r)],
                path,
                &format!("tokens_per_example[{layer}]"),
            )?;
            let (da, ds) = (d_a.value(r) as usize, d_s.value(r) as usize);
            let get = |i: usize, len: usize| -> Result<Option<Vec<f64>>, StoreError> {
                let field = format!("{}[{layer}]", LISTS[i]);
                let l = lists[i];
                if l.is_null(r) {
                    return if LISTS[i] == "corrected" {
                        Ok(None)
                    } else {
                        Err(StoreError::invalid(path, field, "null"))
                    };
                }
                let v = l.value(r);
                let v = v
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| StoreError::invalid(path, &field, "items are not f64"))?;
                if v.len() != len || v.null_count() > 0 {
                    return Err(StoreError::invalid(
                        path,
                        field,
                        format!("{} values, expected {len}", v.len()),
                    ));
                }
                finite(v.values(), path, &field)?;
                Ok(Some(v.values().to_vec()))
            };
            let need = |i: usize, len: usize| {
                get(i, len)?.ok_or_else(|| StoreError::invalid(path, LISTS[i], "null"))
            };
            let sketch_basis = decode_basis(b, r, &layer, path)?;
            layers.push(LayerFactors {
                a: need(0, da * da)?,
                s: need(1, ds * ds)?,
                eig_a: Eigenbasis {
                    dim: da,
                    values: need(2, da)?,
                    vectors: need(3, da * da)?,
                },
                eig_s: Eigenbasis {
                    dim: ds,
                    values: need(4, ds)?,
                    vectors: need(5, ds * ds)?,
                },
                corrected: get(6, ds * da)?,
                tokens: tokens.value(r),
                tokens_per_example: tpe.value(r),
                corrected_examples: ce.value(r),
                sketch_basis,
                name: layer,
            });
        }
    }
    crate::schema::check_learning_rates(
        &meta.learning_rates,
        path,
        "burn_influence.window.learning_rates",
    )?;
    Ok(WindowRecord {
        window: meta.window,
        first_step: meta.first_step,
        last_step: meta.last_step,
        learning_rates: meta.learning_rates,
        layers,
    })
}

/// Every factor value must be finite: a NaN or ∞ (a buggy writer, a hand edit, an overflowed
/// accumulation) is an error naming the file, the field with its layer, and the first bad item.
fn finite(values: &[f64], path: &Path, field: &str) -> Result<(), StoreError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(StoreError::invalid(
            path,
            field,
            format!(
                "item {i} of {} is {}: factor values must be finite",
                values.len(),
                values[i]
            ),
        )),
    }
}

/// The sketch basis of row `r` (`None` when null, or in a store-version-1 file without the
/// columns); every part must be present together.
fn decode_basis(
    b: &RecordBatch,
    r: usize,
    layer: &str,
    path: &Path,
) -> Result<Option<SketchBasis>, StoreError> {
    if b.column_by_name("basis_p_a").is_none() {
        return Ok(None);
    }
    let from = column::<UInt32Array>(b, "basis_from_window", path)?;
    if from.is_null(r) {
        return Ok(None);
    }
    let field = |n: &str| format!("{n}[{layer}]");
    let scalar_u32 = |n: &str| -> Result<u32, StoreError> {
        let c = column::<UInt32Array>(b, n, path)?;
        if c.is_null(r) {
            return Err(StoreError::invalid(path, field(n), "null in a basis row"));
        }
        Ok(c.value(r))
    };
    let rows = column::<UInt64Array>(b, "basis_rows", path)?;
    if rows.is_null(r) {
        return Err(StoreError::invalid(
            path,
            field("basis_rows"),
            "null in a basis row",
        ));
    }
    let f64s = |n: &str, required: bool| -> Result<Option<Vec<f64>>, StoreError> {
        let l = column::<ListArray>(b, n, path)?;
        if l.is_null(r) {
            return if required {
                Err(StoreError::invalid(path, field(n), "null in a basis row"))
            } else {
                Ok(None)
            };
        }
        let v = l.value(r);
        let v = v
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| StoreError::invalid(path, field(n), "items are not f64"))?;
        if v.null_count() > 0 {
            return Err(StoreError::invalid(path, field(n), "null items"));
        }
        finite(v.values(), path, &field(n))?;
        Ok(Some(v.values().to_vec()))
    };
    let coords = column::<ListArray>(b, "basis_coords", path)?;
    if coords.is_null(r) {
        return Err(StoreError::invalid(
            path,
            field("basis_coords"),
            "null in a basis row",
        ));
    }
    let coords = coords.value(r);
    let coords = coords
        .as_any()
        .downcast_ref::<UInt32Array>()
        .ok_or_else(|| StoreError::invalid(path, field("basis_coords"), "items are not u32"))?;
    let (k_a, k_g) = (
        scalar_u32("basis_k_a")? as usize,
        scalar_u32("basis_k_g")? as usize,
    );
    let missing = |n: &str| StoreError::invalid(path, field(n), "null in a basis row");
    Ok(Some(SketchBasis {
        from_window: from.value(r),
        k_a,
        k_g,
        p_a: f64s("basis_p_a", true)?.ok_or_else(|| missing("basis_p_a"))?,
        p_g: f64s("basis_p_g", true)?.ok_or_else(|| missing("basis_p_g"))?,
        coords: coords.values().to_vec(),
        second_moment: f64s("basis_second_moment", false)?,
        rows: rows.value(r),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(basis: Option<SketchBasis>) -> LayerFactors {
        let eig = |d: usize| Eigenbasis {
            dim: d,
            vectors: (0..d * d).map(|i| i as f64).collect(),
            values: (0..d).map(|i| i as f64).collect(),
        };
        LayerFactors {
            name: "fc".into(),
            a: vec![1.0; 9],
            s: vec![2.0; 4],
            tokens: 10,
            tokens_per_example: 2.5,
            eig_a: eig(3),
            eig_s: eig(2),
            corrected: Some(vec![0.5; 6]),
            corrected_examples: 4,
            sketch_basis: basis,
        }
    }

    fn record(basis: Option<SketchBasis>) -> WindowRecord {
        WindowRecord {
            window: 1,
            first_step: 4,
            last_step: 7,
            learning_rates: vec![0.1; 4],
            layers: vec![layer(basis), layer(None)],
        }
    }

    /// A basis round-trips; a store-version-1 factor file (no `basis_*` columns) reads as
    /// seeded projections.
    #[test]
    fn basis_round_trips_and_version_1_files_have_none() {
        let basis = SketchBasis {
            from_window: 0,
            k_a: 2,
            k_g: 1,
            p_a: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            p_g: vec![0.7, 0.8],
            coords: vec![1, 0],
            second_moment: Some(vec![3.0, 4.0]),
            rows: 9,
        };
        let r = record(Some(basis));
        let b = encode(&r).expect("encode");
        let path = Path::new("window-00001.arrow");
        assert_eq!(
            decode(&b.schema(), std::slice::from_ref(&b), path).expect("decode"),
            r
        );

        let v1: Vec<usize> = (0..b.num_columns())
            .filter(|&i| !b.schema().field(i).name().starts_with("basis_"))
            .collect();
        assert_eq!(v1.len(), 13, "the version-1 columns");
        let old = b.project(&v1).expect("project");
        let got = decode(&old.schema(), std::slice::from_ref(&old), path).expect("decode v1");
        assert!(got.layers.iter().all(|l| l.sketch_basis.is_none()));
        assert_eq!(got.layers[1], r.layers[1]);

        // A basis row with a part missing is an error naming the column and layer.
        let mut cols = b.columns().to_vec();
        let i = b.schema().index_of("basis_coords").expect("column");
        cols[i] = list_of::<UInt32Type>(vec![None, None]).expect("nulls");
        let broken = RecordBatch::try_new(b.schema(), cols).expect("batch");
        let err = decode(&broken.schema(), &[broken], path).expect_err("null coords");
        assert!(err.to_string().contains("basis_coords[fc]"), "{err}");
    }

    /// A NaN or ∞ anywhere in the factors, the eigen-decompositions, the corrected eigenvalues,
    /// the basis or the token scale is an error naming the file, the field and its layer.
    #[test]
    fn non_finite_values_are_errors_naming_file_field_and_layer() {
        let basis = SketchBasis {
            from_window: 0,
            k_a: 1,
            k_g: 1,
            p_a: vec![0.1, 0.2, 0.3],
            p_g: vec![0.7, 0.8],
            coords: vec![0],
            second_moment: None,
            rows: 9,
        };
        let path = Path::new("factors/window-00001.arrow");
        type Poison = fn(&mut LayerFactors, f64);
        let cases: [(&str, Poison); 8] = [
            ("a[fc]", |l, v| l.a[4] = v),
            ("s[fc]", |l, v| l.s[0] = v),
            ("eig_a_values[fc]", |l, v| l.eig_a.values[2] = v),
            ("eig_s_vectors[fc]", |l, v| l.eig_s.vectors[1] = v),
            ("corrected[fc]", |l, v| {
                if let Some(c) = l.corrected.as_mut() {
                    c[5] = v
                }
            }),
            ("basis_p_a[fc]", |l, v| {
                if let Some(b) = l.sketch_basis.as_mut() {
                    b.p_a[1] = v
                }
            }),
            ("basis_p_g[fc]", |l, v| {
                if let Some(b) = l.sketch_basis.as_mut() {
                    b.p_g[0] = v
                }
            }),
            ("tokens_per_example[fc]", |l, v| l.tokens_per_example = v),
        ];
        for (field, poison) in cases {
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let mut r = record(Some(basis.clone()));
                poison(&mut r.layers[0], bad);
                let b = encode(&r).expect("encode");
                let err =
                    decode(&b.schema(), std::slice::from_ref(&b), path).expect_err("non-finite");
                let msg = err.to_string();
                assert!(
                    msg.contains("window-00001.arrow")
                        && msg.contains(field)
                        && msg.contains("must be finite"),
                    "{field} = {bad}: {msg}"
                );
            }
        }
        let ok = record(Some(basis));
        let b = encode(&ok).expect("encode");
        assert_eq!(
            decode(&b.schema(), std::slice::from_ref(&b), path).expect("finite"),
            ok
        );
    }
}
