//! The report folder: every file is written, parses, and holds what the data says; no text
//! from the data can inject markup into the page.

mod common;

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_ipc::reader::FileReader;
use arrow_schema::DataType;
use common::{CELL_MARKUP, KINDS, SLUGS};
use influence_report::{Cell, ReportData, ReportError, Table, write_report};

fn written() -> (tempfile::TempDir, ReportData, influence_report::ReportFiles) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::report();
    let files = write_report(&data, &dir.path().join("report")).expect("write_report");
    (dir, data, files)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn writes_the_page_figures_tables_and_json() {
    let (dir, data, files) = written();
    let root = dir.path().join("report");
    assert_eq!(files.index, root.join("index.html"));
    assert!(files.index.is_file());
    assert!(root.join("report.json").is_file());
    let mut expected_figures = Vec::new();
    for slug in SLUGS {
        for kind in KINDS {
            expected_figures.push(root.join("figures").join(format!("{kind}-{slug}.svg")));
        }
    }
    assert_eq!(files.figures, expected_figures);
    let mut expected_tables = Vec::new();
    for (run, slug) in data.runs.iter().zip(SLUGS) {
        for t in &run.tables {
            for ext in ["csv", "json", "arrow"] {
                expected_tables.push(
                    root.join("tables")
                        .join(slug)
                        .join(format!("{}.{ext}", t.name)),
                );
            }
        }
    }
    assert_eq!(files.tables, expected_tables);
    for f in files.figures.iter().chain(&files.tables) {
        assert!(f.is_file(), "{}", f.display());
    }
}

#[test]
fn report_json_reads_back_as_the_data() {
    let (dir, data, _) = written();
    let back: ReportData = serde_json::from_str(&read(&dir.path().join("report/report.json")))
        .expect("report.json parses as ReportData");
    assert_eq!(back.runs.len(), 2);
    assert_eq!(back.title, data.title);
    assert_eq!(back.runs[1].tables, data.runs[1].tables);
    // serde_json parses floats to within an ulp; compare numbers with a tolerance.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs() || (a.is_nan() && b.is_nan());
    for (run, orig) in back.runs.iter().zip(&data.runs) {
        assert_eq!(run.name, orig.name);
        assert_eq!(run.summary, orig.summary);
        assert_eq!(run.queries.len(), orig.queries.len());
        for (q, o) in run.queries.iter().zip(&orig.queries) {
            assert_eq!(
                (&q.id, &q.prompt, &q.completion),
                (&o.id, &o.prompt, &o.completion)
            );
            assert_eq!((q.correct, q.answer_found), (o.correct, o.answer_found));
            for (d, e) in q
                .top
                .iter()
                .chain(&q.bottom)
                .zip(o.top.iter().chain(&o.bottom))
            {
                assert_eq!(
                    (d.rank, d.doc_id, &d.source, &d.text),
                    (e.rank, e.doc_id, &e.source, &e.text)
                );
                assert!(close(d.score, e.score));
                assert_eq!(d.tokens.len(), e.tokens.len());
                for (t, u) in d.tokens.iter().zip(&e.tokens) {
                    assert!(t.text == u.text && close(t.score, u.score));
                }
            }
        }
        // The undefined correlations (NaN, written as null) read back as NaN.
        for (row, orig_row) in run.correlation.values.iter().zip(&orig.correlation.values) {
            for (v, o) in row.iter().zip(orig_row) {
                assert!(close(*v, *o), "{v} vs {o}");
            }
        }
        assert_eq!(run.multipliers.len(), orig.multipliers.len());
        assert_eq!(run.layer_shares.len(), orig.layer_shares.len());
        assert_eq!(run.curves.len(), orig.curves.len());
    }
}

#[test]
fn csv_files_follow_rfc_4180() {
    let (dir, data, _) = written();
    let table = &data.runs[0].tables[0];
    let path = dir
        .path()
        .join("report/tables")
        .join(SLUGS[0])
        .join("queries.csv");
    let bytes = std::fs::read(&path).expect("csv");
    assert!(bytes.windows(2).any(|w| w == b"\r\n"), "CRLF line ends");
    let mut reader = csv::Reader::from_reader(bytes.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    assert_eq!(header, table.columns);
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("record")).collect();
    assert_eq!(records.len(), table.rows.len());
    assert_eq!(&records[0][0], "capital-france");
    assert_eq!(&records[0][8], CELL_MARKUP);
    assert_eq!(&records[1][8], "a, \"quoted\" note\nover two lines");
    assert_eq!(&records[3][3], "", "an empty cell is an empty field");
    assert_eq!(&records[0][4], "false");
    assert_eq!(records[1][3].parse::<f64>().expect("number"), 1.6);
}

#[test]
fn json_tables_are_arrays_of_objects() {
    let (dir, data, _) = written();
    let table = &data.runs[1].tables[0];
    let path = dir
        .path()
        .join("report/tables")
        .join(SLUGS[1])
        .join("queries.json");
    let text = read(&path);
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(&text).expect("an array of objects");
    assert_eq!(rows.len(), table.rows.len());
    assert_eq!(rows[0]["completion"], "capital-france");
    assert_eq!(rows[0]["rank"], 0);
    assert_eq!(rows[3]["nats"], serde_json::Value::Null);
    assert_eq!(rows[1]["correct"], true);
    assert_eq!(rows[1]["int_float"], 0.25);
    // Keys keep the column order.
    let first_keys: Vec<&str> = text
        .split('\n')
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .take(table.columns.len())
        .collect();
    assert_eq!(first_keys, table.columns);
}

#[test]
fn arrow_files_read_back_with_inferred_types() {
    let (dir, data, _) = written();
    let table = &data.runs[0].tables[0];
    let path = dir
        .path()
        .join("report/tables")
        .join(SLUGS[0])
        .join("queries.arrow");
    let reader = FileReader::try_new(File::open(&path).expect("open"), None).expect("arrow file");
    let schema = reader.schema();
    let types: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        [
            ("completion", &DataType::Utf8),
            ("group", &DataType::Utf8),
            ("rank", &DataType::Int64),
            ("nats", &DataType::Float64),
            ("correct", &DataType::Boolean),
            ("mixed", &DataType::Utf8),
            ("int_float", &DataType::Float64),
            ("empty", &DataType::Utf8),
            ("note", &DataType::Utf8),
        ]
    );
    assert!(schema.fields().iter().all(|f| f.is_nullable()));
    let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, table.rows.len());
    let b = &batches[0];
    let col = |name: &str| b.column(schema.index_of(name).expect("column")).clone();
    let rank = col("rank");
    let rank = rank.as_any().downcast_ref::<Int64Array>().expect("i64");
    assert_eq!(rank.value(4), 4);
    let nats = col("nats");
    let nats = nats.as_any().downcast_ref::<Float64Array>().expect("f64");
    assert!(nats.is_null(3));
    assert_eq!(nats.value(1), 1.6);
    let correct = col("correct");
    let correct = correct
        .as_any()
        .downcast_ref::<BooleanArray>()
        .expect("bool");
    assert!(!correct.value(0) && correct.value(1));
    assert!(correct.is_null(8), "control queries are not graded");
    let mixed = col("mixed");
    let mixed = mixed.as_any().downcast_ref::<StringArray>().expect("utf8");
    assert_eq!((mixed.value(0), mixed.value(1)), ("x", "0.5"));
    let int_float = col("int_float");
    let int_float = int_float
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    assert_eq!((int_float.value(0), int_float.value(1)), (2.0, 0.25));
    assert_eq!(col("empty").null_count(), table.rows.len());
    let note = col("note");
    let note = note.as_any().downcast_ref::<StringArray>().expect("utf8");
    assert_eq!(note.value(0), CELL_MARKUP);
}

#[test]
fn figures_are_well_formed_svg_with_their_labels() {
    let (_dir, data, files) = written();
    for f in &files.figures {
        let svg = read(f);
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{}",
            f.display()
        );
        assert!(common::check_xml(&svg) > 10, "{}", f.display());
        assert!(!svg.contains("NaN"), "{}: a NaN coordinate", f.display());
    }
    let svg =
        |kind: &str| read(&files.figures[KINDS.iter().position(|k| *k == kind).expect("kind")]);
    let heat = svg("correlation");
    for label in &data.runs[0].correlation.labels {
        let escaped = label.replace('&', "&amp;");
        assert!(heat.contains(&escaped), "heatmap label {label}");
    }
    assert!(
        heat.contains("Pearson r") && heat.contains("+1.0") && heat.contains("-1.0"),
        "colour bar"
    );
    for kind in ["topk-absolute", "topk-relative"] {
        let s = svg(kind);
        for g in ["factual", "reasoning", "control"] {
            assert!(s.contains(g), "{kind} legend has {g}");
        }
        assert!(s.contains("<polyline"), "{kind} has lines");
    }
    for kind in ["multipliers-top", "multipliers-bottom"] {
        let s = svg(kind);
        for source in common::SOURCES {
            assert!(s.contains(source), "{kind} has source {source}");
        }
        assert!(s.contains("\n0×\n"), "{kind}: a zero multiplier is written");
        assert!(s.contains(" 10 documents"), "{kind}: the smallest k, 10");
    }
    let layers = svg("layers");
    for layer in common::LAYERS {
        assert!(layers.contains(layer), "layers figure has {layer}");
    }
}

#[test]
fn page_escapes_all_text_from_the_data() {
    let (dir, _, _) = written();
    let html = read(&dir.path().join("report/index.html"));
    assert!(!html.contains("<script"), "no script element at all");
    assert!(!html.contains("<img src=x"), "table cells are escaped");
    assert!(!html.contains("<b>capital"), "prompts are escaped");
    assert!(
        !html.contains("<i>negative"),
        "bottom documents are escaped"
    );
    assert!(!html.contains("<test>"), "the title is escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("Fish &amp; chips cost &#39;five&#39; &quot;dollars&quot;."));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("q&amp;a-author"));
    assert!(html.contains("white-space: pre-wrap"));
}

#[test]
fn page_has_ids_for_figures_queries_and_documents() {
    let (dir, data, files) = written();
    let root = dir.path().join("report");
    let html = read(&files.index);
    for slug in SLUGS {
        assert!(html.contains(&format!("id=\"summary-{slug}\"")));
        for kind in KINDS {
            let img = format!(
                "<img id=\"fig-{kind}-{slug}\" class=\"fig\" src=\"figures/{kind}-{slug}.svg\" alt=\""
            );
            assert!(html.contains(&img), "{img}");
        }
        assert!(html.contains(&format!("id=\"table-{slug}-queries\"")));
    }
    // Every image is a relative path to a file that exists.
    let srcs: Vec<&str> = html
        .split("<img ")
        .skip(1)
        .map(|s| {
            let s = &s[s.find("src=\"").expect("src") + 5..];
            &s[..s.find('"').expect("end of src")]
        })
        .collect();
    assert_eq!(srcs.len(), 12);
    for src in srcs {
        assert!(
            !src.starts_with('/') && !src.contains(':'),
            "{src} is relative"
        );
        assert!(root.join(src).is_file(), "{src}");
    }
    for (run, slug) in data.runs.iter().zip(SLUGS) {
        for q in &run.queries {
            let anchor = format!("q-{slug}-{}", slug_of(&q.id));
            assert!(
                html.contains(&format!("<section class=\"query\" id=\"{anchor}\"")),
                "{anchor}"
            );
            assert!(html.contains(&format!("href=\"#{anchor}\"")));
            for d in &q.top {
                assert!(html.contains(&format!(
                    "<div class=\"top-doc doc\" id=\"{anchor}-top-{}\"",
                    d.rank
                )));
            }
        }
    }
    assert_eq!(html.matches("class=\"query\"").count(), 21);
    assert_eq!(html.matches("class=\"top-doc doc\"").count(), 21 * 3);
    assert_eq!(html.matches("class=\"bottom-doc doc\"").count(), 21 * 2);
    assert_eq!(html.matches("<details class=\"bottom-docs\">").count(), 21);
    assert!(html.contains("class=\"kind kind-reference\""));
    assert!(html.contains("class=\"grade wrong\">✗ wrong"));
    assert!(html.contains("class=\"grade correct\">✓ correct"));
    assert!(html.contains("class=\"grade ungraded\""));
    assert!(html.contains("class=\"found no\"") && html.contains("class=\"found yes\""));
    // Token highlights: green and red backgrounds, the score in the title.
    assert!(html.contains("<span class=\"tok\" style=\"background: rgba(22, 163, 74, "));
    assert!(html.contains("<span class=\"tok\" style=\"background: rgba(220, 38, 38, "));
    assert!(html.contains(" title=\"+"));
    // A document without token scores shows its plain text only.
    assert!(
        html.contains(
            "<div class=\"pre doc-text\">Document 3 for query 0:\nplain words only\n</div>"
        )
    );
    // The runs stand side by side.
    assert!(html.contains("grid-template-columns: repeat(2,"));
}

fn slug_of(id: &str) -> String {
    let mut out = String::new();
    for part in id
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(part);
    }
    out
}

#[test]
fn inconsistent_data_is_rejected_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report");
    type Breaker = Box<dyn Fn(&mut ReportData)>;
    let cases: Vec<(Breaker, &str)> = vec![
        (
            Box::new(|d| {
                d.runs[0].tables[0].rows[2].pop();
            }),
            "row 2 of table \"queries\" has 8 cells for 9 columns",
        ),
        (
            Box::new(|d| d.runs[1].tables[1].name = "Bad Name".into()),
            "table name \"Bad Name\"",
        ),
        (
            Box::new(|d| {
                let t: Table = d.runs[0].tables[0].clone();
                d.runs[0].tables.push(t);
            }),
            "used twice",
        ),
        (
            Box::new(|d| d.runs[0].correlation.values[3].push(0.0)),
            "not 10×10",
        ),
        (
            Box::new(|d| d.runs[0].multipliers[0].side = "middle".into()),
            "\"middle\"",
        ),
        (
            Box::new(|d| {
                d.runs[0].curves[1].relative.pop();
            }),
            "group \"reasoning\"",
        ),
        (
            Box::new(|d| d.runs[0].tables[1].rows[0][0] = Cell::Empty),
            "",
        ),
    ];
    for (break_it, message) in cases {
        let mut data = common::report();
        break_it(&mut data);
        let result = write_report(&data, &out);
        if message.is_empty() {
            assert!(result.is_ok(), "an empty cell is fine");
            std::fs::remove_dir_all(&out).expect("clean");
            continue;
        }
        match result {
            Err(ReportError::Invalid { what, .. }) => {
                assert!(
                    what.contains(message),
                    "{what:?} should mention {message:?}"
                );
            }
            other => panic!("expected Invalid for {message:?}, got {other:?}"),
        }
        assert!(!out.exists(), "nothing written for {message:?}");
    }
}

#[test]
fn a_run_without_analyses_still_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = ReportData {
        title: "bare".into(),
        notes: vec![],
        runs: vec![influence_report::RunSection {
            name: "∑".into(),
            ..Default::default()
        }],
    };
    let files = write_report(&data, dir.path()).expect("write");
    assert!(files.figures.is_empty() && files.tables.is_empty());
    let html = read(&files.index);
    assert!(
        html.contains("data-run=\"run\""),
        "an empty slug falls back to \"run\""
    );
    assert!(html.contains("No data for this figure (correlation)."));
}
