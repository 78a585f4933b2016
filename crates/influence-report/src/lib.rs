//! The report of burn-influence, rendered from plain data.
//!
//! An influence analysis (Ruis et al. 2024, *Procedural Knowledge in Pretraining Drives
//! Reasoning in Large Language Models*) asks which training documents shaped a model's answers.
//! The analyzer computes the numbers; this crate only shows them. [`write_report`] turns a
//! [`ReportData`] — one [`RunSection`] per run (model size) — into a folder:
//!
//! | path | what |
//! |---|---|
//! | `index.html` | one static page: inline CSS, no script, nothing fetched but the figures |
//! | `figures/<kind>-<run>.svg` | the figures of each run, drawn with plotters' SVG backend |
//! | `tables/<run>/<name>.csv`, `.json`, `.arrow` | every [`Table`] as CSV (RFC 4180, CRLF), a JSON array of objects and an Arrow IPC file |
//! | `report.json` | the whole [`ReportData`] |
//!
//! `<run>` is the run's *slug*: its name lower-cased, every run of characters other than
//! `a-z0-9` turned into one `-` (`small (4 blocks, d=128)` → `small-4-blocks-d-128`; `run` if
//! nothing is left; `-2`, `-3`… appended to repeats). `<kind>` is one of
//!
//! | kind | figure |
//! |---|---|
//! | `correlation` | query × query Pearson r, diverging colours −1…1 with a colour bar, labels coloured by group |
//! | `topk-absolute`, `topk-relative` | cumulative positive influence of the top k % of documents, one line per group |
//! | `multipliers-top`, `multipliers-bottom` | source multipliers at the smallest k of each side, grouped bars, values written on the bars |
//! | `layers` | mean share of influence per layer, grouped bars per group |
//!
//! A figure without data (no curves, say) is not drawn and the page says so.
//!
//! # The page
//!
//! Sections follow one another; within each, the runs stand side by side in columns (one
//! column for one run). Elements a test (or a reader's stylesheet) can rely on:
//!
//! | selector | element |
//! |---|---|
//! | `#title` | the `<h1>` |
//! | `.note` | each note paragraph |
//! | `#sec-summary`, `#sec-correlation`, `#sec-concentration`, `#sec-sources`, `#sec-layers`, `#sec-tables`, `#sec-queries` | the sections |
//! | `.run-cell[data-run="<run>"]` | a run's column within a section |
//! | `#summary-<run>` | the run's summary table |
//! | `img#fig-<kind>-<run>` | each figure, `src="figures/<kind>-<run>.svg"`, with an `alt` text and a `<figcaption>` |
//! | `#table-<run>-<name>` | each table's block (a `<details>`, open unless long), `table.data` inside, with links to its files |
//! | `section.query#q-<run>-<query>` | each query (`<query>`: the slug of its id, unique within the run), with `data-group` |
//! | `.prompt`, `.completion` | its prompt and completion, whitespace kept |
//! | `.kind.kind-model`, `.kind.kind-reference` | whether the completion is the model's or the reference |
//! | `.grade.correct`, `.grade.wrong`, `.grade.ungraded` | ✓ / ✗ / not graded |
//! | `.found.yes`, `.found.no`, `.found.unknown` | whether the answer is in the top documents |
//! | `.top-doc` (`#q-<run>-<query>-top-<rank>`) | each top document: `.rank`, `.source`, `.score`, `.doc-id`, then its text |
//! | `details.bottom-docs` › `.bottom-doc` | the bottom documents, collapsed |
//! | `.tokens` › `span.tok` | a document's tokens: green background for positive, red for negative, opacity ∝ \|score\| / max \|score\| in that document; `title` holds the score |
//! | `details.plain` › `.doc-text` | the document's plain text, under its highlighted tokens |
//! | `.doc-text` | a document's text when it has no token scores |
//!
//! Every piece of text from the data is HTML-escaped (`& < > " '`), so a document holding
//! `<script>` shows as text; a Content-Security-Policy forbids scripts besides. Whitespace is
//! kept (`white-space: pre-wrap`), so code and line breaks show as written.
//!
//! # Example
//!
//! ```
//! use influence_report::{Cell, ReportData, RunSection, Table, write_report};
//!
//! let data = ReportData {
//!     title: "Which documents shaped the answers".into(),
//!     notes: vec!["Scores: EK-FAC influence.".into()],
//!     runs: vec![RunSection {
//!         name: "small".into(),
//!         summary: vec![("documents".into(), "40".into())],
//!         tables: vec![Table {
//!             name: "queries".into(),
//!             title: "Queries".into(),
//!             columns: vec!["id".into(), "nats".into()],
//!             rows: vec![vec![Cell::Text("q1".into()), Cell::Number(1.5)]],
//!         }],
//!         ..Default::default()
//!     }],
//! };
//! let dir = tempfile::tempdir()?;
//! let files = write_report(&data, dir.path())?;
//! assert!(files.index.ends_with("index.html"));
//! assert!(dir.path().join("tables/small/queries.arrow").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`browser`] opens the page in headless Chromium, for tests and screenshots.

pub mod browser;
mod data;
mod error;
mod figures;
mod html;
mod tables;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use data::{
    Cell, DocView, GroupCurve, Heatmap, LayerShare, Multiplier, QuerySection, ReportData,
    RunSection, Table, TokenScore,
};
pub use error::ReportError;

/// What [`write_report`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    /// `dir/index.html`.
    pub index: PathBuf,
    /// Every SVG figure, run by run.
    pub figures: Vec<PathBuf>,
    /// Every table file (CSV, JSON and Arrow of each table), run by run.
    pub tables: Vec<PathBuf>,
}

/// Writes the report of `data` into `dir` (created if missing; files already there are
/// overwritten, others left alone). See the [crate docs](crate) for the layout.
///
/// # Errors
///
/// [`ReportError::Invalid`] before anything is written when the data is inconsistent (a
/// heatmap that is not square, a table row of the wrong length, a table name other than
/// `[a-z0-9_-]+` or repeated within a run, a multiplier side other than `top`/`bottom`…);
/// [`ReportError::Io`], [`ReportError::Json`], [`ReportError::Arrow`] or
/// [`ReportError::Figure`] naming the file that could not be written.
pub fn write_report(data: &ReportData, dir: &Path) -> Result<ReportFiles, ReportError> {
    let layout = Layout::new(data)?;
    let figures_dir = dir.join("figures");
    std::fs::create_dir_all(&figures_dir).map_err(ReportError::io(&figures_dir))?;

    let mut figures = Vec::new();
    let mut table_files = Vec::new();
    for (r, run) in data.runs.iter().enumerate() {
        let slug = &layout.runs[r];
        figures.extend(figures::draw_run(
            run,
            r,
            slug,
            &layout.palette,
            &figures_dir,
        )?);
        let tables_dir = dir.join("tables").join(slug);
        std::fs::create_dir_all(&tables_dir).map_err(ReportError::io(&tables_dir))?;
        for table in &run.tables {
            table_files.extend(tables::write_table(table, &tables_dir)?);
        }
    }

    let json = dir.join("report.json");
    tables::write_file(&json, |w| {
        serde_json::to_writer_pretty(&mut *w, data).map_err(std::io::Error::from)
    })?;

    let index = dir.join("index.html");
    let page = html::page(data, &layout, &figures);
    std::fs::write(&index, page).map_err(ReportError::io(&index))?;
    Ok(ReportFiles {
        index,
        figures: figures.into_iter().map(|f| dir.join(f.src)).collect(),
        tables: table_files,
    })
}

/// Names and colours decided once for the whole report, after checking the data.
pub(crate) struct Layout {
    /// The slug of each run.
    pub runs: Vec<String>,
    /// The slug of each query, per run (unique within the run).
    pub queries: Vec<Vec<String>>,
    /// One colour per query group, the same in every run.
    pub palette: Palette,
}

impl Layout {
    fn new(data: &ReportData) -> Result<Self, ReportError> {
        for run in &data.runs {
            validate(run)?;
        }
        let runs = unique_slugs(data.runs.iter().map(|r| r.name.as_str()), "run");
        let queries = data
            .runs
            .iter()
            .map(|r| unique_slugs(r.queries.iter().map(|q| q.id.as_str()), "query"))
            .collect();
        let mut groups: Vec<&str> = Vec::new();
        for run in &data.runs {
            let all = run
                .correlation
                .groups
                .iter()
                .chain(run.curves.iter().map(|c| &c.group))
                .chain(run.multipliers.iter().map(|m| &m.group))
                .chain(run.layer_shares.iter().map(|l| &l.group))
                .chain(run.queries.iter().map(|q| &q.group));
            for g in all {
                if !groups.contains(&g.as_str()) {
                    groups.push(g);
                }
            }
        }
        Ok(Self {
            runs,
            queries,
            palette: Palette {
                groups: groups.into_iter().map(String::from).collect(),
            },
        })
    }
}

fn validate(run: &RunSection) -> Result<(), ReportError> {
    let bad = |what: String| Err(ReportError::invalid(&run.name, what));
    let h = &run.correlation;
    let n = h.labels.len();
    if h.values.len() != n || h.values.iter().any(|row| row.len() != n) {
        return bad(format!(
            "the correlation heatmap has {n} labels but its values are not {n}×{n}"
        ));
    }
    if !h.groups.is_empty() && h.groups.len() != n {
        return bad(format!(
            "the correlation heatmap has {n} labels but {} groups",
            h.groups.len()
        ));
    }
    for c in &run.curves {
        if c.absolute.len() != c.percent.len() || c.relative.len() != c.percent.len() {
            return bad(format!(
                "the curve of group {:?} has {} percentages, {} absolute and {} relative values",
                c.group,
                c.percent.len(),
                c.absolute.len(),
                c.relative.len()
            ));
        }
    }
    if let Some(m) = run
        .multipliers
        .iter()
        .find(|m| m.side != "top" && m.side != "bottom")
    {
        return bad(format!(
            "multiplier side {:?} (group {:?}, source {:?}) is neither \"top\" nor \"bottom\"",
            m.side, m.group, m.source
        ));
    }
    let mut names = HashSet::new();
    for t in &run.tables {
        let valid = !t.name.is_empty()
            && t.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return bad(format!(
                "table name {:?} must be non-empty and only a-z, 0-9, '_' and '-'",
                t.name
            ));
        }
        if !names.insert(t.name.as_str()) {
            return bad(format!("table name {:?} is used twice", t.name));
        }
        if t.columns.is_empty() {
            return bad(format!("table {:?} has no columns", t.name));
        }
        let mut seen = HashSet::new();
        if let Some(c) = t.columns.iter().find(|c| !seen.insert(c.as_str())) {
            return bad(format!("table {:?} has column {c:?} twice", t.name));
        }
        if let Some((i, row)) = t
            .rows
            .iter()
            .enumerate()
            .find(|(_, row)| row.len() != t.columns.len())
        {
            return bad(format!(
                "row {i} of table {:?} has {} cells for {} columns",
                t.name,
                row.len(),
                t.columns.len()
            ));
        }
    }
    Ok(())
}

/// `text` lower-cased, every run of characters other than `a-z0-9` turned into one `-`,
/// trimmed of `-` at both ends.
pub(crate) fn slug(text: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c);
        } else {
            dash = true;
        }
    }
    out
}

/// Slugs of `names`, `fallback` for an empty one, with `-2`, `-3`… added to repeats.
fn unique_slugs<'a>(names: impl Iterator<Item = &'a str>, fallback: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .map(|name| {
            let base = Some(slug(name))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| fallback.to_string());
            let mut candidate = base.clone();
            let mut i = 2;
            while !seen.insert(candidate.clone()) {
                candidate = format!("{base}-{i}");
                i += 1;
            }
            candidate
        })
        .collect()
}

/// One colour per query group (Tableau 10, then repeating), in order of first appearance.
pub(crate) struct Palette {
    groups: Vec<String>,
}

const TABLEAU: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

impl Palette {
    /// The colour of `group` (grey for a group not seen when the palette was made).
    pub fn rgb(&self, group: &str) -> (u8, u8, u8) {
        self.groups
            .iter()
            .position(|g| g == group)
            .map_or((90, 90, 90), |i| TABLEAU[i % TABLEAU.len()])
    }

    /// The colour as CSS `#rrggbb`.
    pub fn css(&self, group: &str) -> String {
        let (r, g, b) = self.rgb(group);
        format!("#{r:02x}{g:02x}{b:02x}")
    }

    /// The groups among `present`, in palette order.
    pub fn order<'a>(&self, present: impl Iterator<Item = &'a str>) -> Vec<String> {
        let present: HashSet<&str> = present.collect();
        self.groups
            .iter()
            .filter(|g| present.contains(g.as_str()))
            .cloned()
            .collect()
    }
}

/// A number for people: four significant digits, scientific notation when very small or
/// large.
pub(crate) fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞" } else { "−∞" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_words_joined_by_dashes() {
        assert_eq!(slug("small (4 blocks, d=128)"), "small-4-blocks-d-128");
        assert_eq!(slug("  Große Welt!  "), "gro-e-welt");
        assert_eq!(slug("<script>"), "script");
        assert_eq!(slug("∑"), "");
        let s = unique_slugs(["a", "A", "", "a!"].into_iter(), "run");
        assert_eq!(s, ["a", "a-2", "run", "a-3"]);
    }

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.0), "1");
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(-12.5), "-12.5");
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(1.5e-7), "1.500e-7");
        assert_eq!(fmt_num(f64::NAN), "NaN");
    }
}
