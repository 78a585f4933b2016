//! The page: one static HTML file with inline CSS and no script.
//!
//! Every string that comes from the data goes through [`esc`]; the markup around it is ours.

use std::borrow::Cow;

use crate::data::{Cell, DocView, QuerySection, ReportData, RunSection, Table};
use crate::figures::Figure;
use crate::{Layout, fmt_num};

/// Escapes `& < > " '` so that `s` is text both between tags and in a quoted attribute.
pub(crate) fn esc(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

const CSS: &str = r#"
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  margin: 0 auto; padding: 1.5rem 2rem 4rem; max-width: 2200px; background: #fff; }
h1 { font-size: 1.7rem; margin: 0 0 .6rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .8rem; padding-bottom: .3rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: .4rem 0; }
h4 { font-size: .95rem; margin: .9rem 0 .4rem; }
a { color: #0969da; }
.note { color: var(--muted); max-width: 75em; margin: .3rem 0; }
nav.toc { margin: 1rem 0; font-size: .9rem; }
nav.toc a { margin-right: 1rem; }
.runs { display: grid; gap: 1.5rem; align-items: start; }
.run-cell { min-width: 0; }
.run-label { font-size: .8rem; font-weight: 600; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); margin-bottom: .3rem; }
.missing { color: var(--muted); font-style: italic; }
figure { margin: 0 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption, .caption { font-size: .85rem; color: var(--muted); margin-top: .3rem; }
.no-data { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border: 1px solid var(--line); padding: .2rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--soft); position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary th { position: static; }
.scroll { overflow: auto; max-height: 32rem; border: 1px solid var(--line); }
.scroll table { border: 0; }
details.table-block { margin: 0 0 1rem; }
details.table-block > summary { cursor: pointer; font-weight: 600; }
.files { font-weight: normal; font-size: .8rem; margin-left: .5rem; }
.qindex { font-size: .85rem; line-height: 1.8; }
.qindex a { margin-right: .7rem; white-space: nowrap; }
section.query { border: 1px solid var(--line); border-left: 4px solid var(--group, #888);
  border-radius: 6px; padding: .7rem 1rem; margin: 0 0 1.2rem; min-width: 0; }
.badge { display: inline-block; font-size: .75rem; font-weight: 600; border-radius: 1em;
  padding: 0 .6em; border: 1px solid var(--line); color: var(--muted); vertical-align: middle; }
.badge.group { color: #fff; border: 0; }
.label { font-size: .8rem; font-weight: 600; color: var(--muted); margin: .6rem 0 .2rem; }
.pre { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, "SFMono-Regular",
  Menlo, Consolas, monospace; font-size: .82rem; background: var(--soft); border-radius: 4px;
  padding: .4rem .6rem; margin: 0; }
.kind, .grade, .found { font-size: .75rem; font-weight: 600; border-radius: 3px; padding: 0 .4em; margin-left: .3em; }
.kind-model { background: #ddf4ff; color: #0550ae; }
.kind-reference { background: #fbefff; color: #8250df; }
.grade.correct, .found.yes { background: #dafbe1; color: #116329; }
.grade.wrong, .found.no { background: #ffebe9; color: #a40e26; }
.grade.ungraded, .found.unknown { background: var(--soft); color: var(--muted); }
.facts { font-size: .85rem; margin: .5rem 0; }
.doc { border-top: 1px solid var(--line); padding: .5rem 0; }
.doc-head { font-size: .82rem; margin-bottom: .3rem; }
.doc-head .rank { font-weight: 700; }
.doc-head .source { font-weight: 600; }
.doc-head .score, .doc-head .doc-id { color: var(--muted); margin-left: .6rem; font-variant-numeric: tabular-nums; }
.tokens { max-height: 22rem; overflow: auto; }
.tok { border-radius: 2px; }
details.plain > summary, details.bottom-docs > summary { cursor: pointer; font-size: .8rem; color: var(--muted); }
details.bottom-docs { margin-top: .6rem; }
details.bottom-docs > summary { font-size: .95rem; font-weight: 600; color: var(--ink); }
"#;

/// The whole page.
pub(crate) fn page(data: &ReportData, layout: &Layout, figures: &[Figure]) -> String {
    let mut p = Page {
        out: String::with_capacity(1 << 20),
        layout,
        runs: &data.runs,
    };
    let title = esc(&data.title);
    let columns = data.runs.len().max(1);
    let min = if columns > 2 { "26rem" } else { "0" };
    p.raw(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{CSS}.runs {{ grid-template-columns: repeat({columns}, minmax({min}, 1fr)); }}\n</style>\n\
         </head>\n<body>\n<header>\n<h1 id=\"title\">{title}</h1>\n"
    ));
    for note in &data.notes {
        p.raw(&format!("<p class=\"note\">{}</p>\n", esc(note)));
    }
    p.raw(
        "<nav class=\"toc\"><a href=\"#sec-summary\">Summary</a><a href=\"#sec-correlation\">Correlations</a>\
         <a href=\"#sec-concentration\">Concentration</a><a href=\"#sec-sources\">Sources</a>\
         <a href=\"#sec-layers\">Layers</a><a href=\"#sec-tables\">Tables</a><a href=\"#sec-queries\">Queries</a></nav>\n\
         </header>\n<main>\n",
    );
    if data.runs.is_empty() {
        p.raw("<p class=\"no-data\">No runs.</p>\n");
    }

    p.section("sec-summary", "Summary", None, |p, r, run| {
        let slug = &p.layout.runs[r];
        p.raw(&format!(
            "<table class=\"summary\" id=\"summary-{slug}\"><tbody>\n"
        ));
        for (k, v) in &run.summary {
            p.raw(&format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>\n",
                esc(k),
                esc(v)
            ));
        }
        p.raw("</tbody></table>\n");
    });
    let figure_section = |p: &mut Page, id: &str, heading: &str, lead: &str, kinds: &[&str]| {
        p.section(id, heading, Some(lead), |p, r, _| {
            for kind in kinds {
                match figures.iter().find(|f| f.run == r && f.kind == *kind) {
                    Some(f) => p.raw(&format!(
                        "<figure><img id=\"{}\" class=\"fig\" src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
                        esc(&f.id),
                        esc(&f.src),
                        esc(&f.alt),
                        esc(&f.caption)
                    )),
                    None => p.raw(&format!(
                        "<p class=\"no-data\">No data for this figure ({kind}).</p>\n"
                    )),
                }
            }
        });
    };
    figure_section(
        &mut p,
        "sec-correlation",
        "Correlation of influence between queries",
        "Queries that rely on the same documents have correlated influence scores. The paper finds \
         strong correlations between reasoning queries of the same task (shared procedures) and \
         weak ones between factual queries.",
        &["correlation"],
    );
    figure_section(
        &mut p,
        "sec-concentration",
        "How concentrated the influence is",
        "A flat curve: influence spread over many documents (procedural knowledge); a steep one: \
         a few documents carry it (retrieval of facts).",
        &["topk-absolute", "topk-relative"],
    );
    figure_section(
        &mut p,
        "sec-sources",
        "Which sources the influential documents come from",
        "Above 1×: a source is over-represented among a query's most (least) influential documents.",
        &["multipliers-top", "multipliers-bottom"],
    );
    figure_section(
        &mut p,
        "sec-layers",
        "Where in the network the influence is",
        "Mean share of each layer in the influence of a completion.",
        &["layers"],
    );
    p.tables();
    p.queries();
    p.raw("</main>\n</body>\n</html>\n");
    p.out
}

struct Page<'a> {
    out: String,
    layout: &'a Layout,
    runs: &'a [RunSection],
}

impl Page<'_> {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A section with one column per run, each filled by `cell`.
    fn section(
        &mut self,
        id: &str,
        heading: &str,
        lead: Option<&str>,
        mut cell: impl FnMut(&mut Self, usize, &RunSection),
    ) {
        self.raw(&format!(
            "<section class=\"compare\" id=\"{id}\">\n<h2>{}</h2>\n",
            esc(heading)
        ));
        if let Some(lead) = lead {
            self.raw(&format!("<p class=\"caption\">{}</p>\n", esc(lead)));
        }
        self.raw("<div class=\"runs\">\n");
        let runs = self.runs;
        for (r, run) in runs.iter().enumerate() {
            self.open_cell(r);
            cell(self, r, run);
            self.raw("</div>\n");
        }
        self.raw("</div>\n</section>\n");
    }

    fn open_cell(&mut self, r: usize) {
        self.raw(&format!(
            "<div class=\"run-cell\" data-run=\"{}\">\n<div class=\"run-label\">{}</div>\n",
            self.layout.runs[r],
            esc(&self.runs[r].name)
        ));
    }

    /// Tables with the same name in several runs share a row.
    fn tables(&mut self) {
        self.raw("<section class=\"compare\" id=\"sec-tables\">\n<h2>Tables</h2>\n\
                  <p class=\"caption\">Each table is also written as CSV, JSON and Arrow IPC under <code>tables/</code>.</p>\n");
        let mut names: Vec<&str> = Vec::new();
        for run in self.runs {
            for t in &run.tables {
                if !names.contains(&t.name.as_str()) {
                    names.push(&t.name);
                }
            }
        }
        let runs = self.runs;
        for name in names {
            self.raw("<div class=\"runs\">\n");
            for (r, run) in runs.iter().enumerate() {
                self.open_cell(r);
                match run.tables.iter().find(|t| t.name == name) {
                    Some(t) => self.table(r, t),
                    None => self.raw(&format!(
                        "<p class=\"missing\">No table {} in this run.</p>\n",
                        esc(name)
                    )),
                }
                self.raw("</div>\n");
            }
            self.raw("</div>\n");
        }
        self.raw("</section>\n");
    }

    fn table(&mut self, r: usize, t: &Table) {
        let slug = &self.layout.runs[r];
        let open = if t.rows.len() <= 40 { " open" } else { "" };
        let base = format!("tables/{slug}/{}", t.name);
        self.raw(&format!(
            "<details class=\"table-block\" id=\"table-{slug}-{name}\"{open}>\n<summary>{title} \
             <span class=\"files\">({rows} rows; <a href=\"{base}.csv\">csv</a> · <a href=\"{base}.json\">json</a> · \
             <a href=\"{base}.arrow\">arrow</a>)</span></summary>\n<div class=\"scroll\"><table class=\"data\">\n<thead><tr>",
            name = t.name,
            title = esc(&t.title),
            rows = t.rows.len(),
        ));
        for c in &t.columns {
            self.raw(&format!("<th>{}</th>", esc(c)));
        }
        self.raw("</tr></thead>\n<tbody>\n");
        for row in &t.rows {
            self.raw("<tr>");
            for cell in row {
                match cell {
                    Cell::Number(v) => {
                        self.raw(&format!("<td class=\"num\">{}</td>", esc(&fmt_num(*v))))
                    }
                    Cell::Int(v) => self.raw(&format!("<td class=\"num\">{v}</td>")),
                    Cell::Bool(b) => self.raw(&format!("<td>{b}</td>")),
                    Cell::Text(s) => self.raw(&format!("<td>{}</td>", esc(s))),
                    Cell::Empty => self.raw("<td></td>"),
                }
            }
            self.raw("</tr>\n");
        }
        self.raw("</tbody></table></div>\n</details>\n");
    }

    /// One row per query id; the runs' sections for that id side by side.
    fn queries(&mut self) {
        self.raw("<section class=\"compare\" id=\"sec-queries\">\n<h2>Queries and their most influential documents</h2>\n\
                  <p class=\"caption\">Token colours: green pushed the completion up, red down; the stronger the colour, \
                  the larger the token's share of the document's influence (hover for the value).</p>\n<div class=\"runs\">\n");
        let runs = self.runs;
        for (r, run) in runs.iter().enumerate() {
            self.open_cell(r);
            self.raw("<div class=\"qindex\">");
            for (q, query) in run.queries.iter().enumerate() {
                let grade = match query.correct {
                    Some(true) => " ✓",
                    Some(false) => " ✗",
                    None => "",
                };
                self.raw(&format!(
                    "<a href=\"#q-{}-{}\">{}{grade}</a> ",
                    self.layout.runs[r],
                    self.layout.queries[r][q],
                    esc(&query.id)
                ));
            }
            self.raw("</div>\n</div>\n");
        }
        self.raw("</div>\n");

        let mut ids: Vec<&str> = Vec::new();
        for run in runs {
            for q in &run.queries {
                if !ids.contains(&q.id.as_str()) {
                    ids.push(&q.id);
                }
            }
        }
        for id in ids {
            self.raw("<div class=\"runs query-row\">\n");
            for (r, run) in runs.iter().enumerate() {
                match run.queries.iter().position(|q| q.id == id) {
                    Some(q) => self.query(r, q, &run.queries[q]),
                    None => {
                        self.open_cell(r);
                        self.raw(&format!(
                            "<p class=\"missing\">{} was not scored in this run.</p>\n</div>\n",
                            esc(id)
                        ));
                    }
                }
            }
            self.raw("</div>\n");
        }
        self.raw("</section>\n");
    }

    fn query(&mut self, r: usize, q: usize, query: &QuerySection) {
        let anchor = format!("q-{}-{}", self.layout.runs[r], self.layout.queries[r][q]);
        let colour = self.layout.palette.css(&query.group);
        self.raw(&format!(
            "<div class=\"run-cell\" data-run=\"{}\">\n<section class=\"query\" id=\"{anchor}\" data-group=\"{}\" style=\"--group: {colour}\">\n\
             <div class=\"run-label\">{}</div>\n\
             <h3><a href=\"#{anchor}\">{}</a> <span class=\"badge group\" style=\"background: {colour}\">{}</span> \
             <span class=\"badge task\">{}</span></h3>\n",
            self.layout.runs[r],
            esc(&query.group),
            esc(&self.runs[r].name),
            esc(&query.id),
            esc(&query.group),
            esc(&query.task),
        ));
        self.raw(&format!(
            "<div class=\"label\">Prompt</div>\n<div class=\"pre prompt\">{}</div>\n",
            esc(&query.prompt)
        ));
        let kind = match query.completion_kind.as_str() {
            "model" => "<span class=\"kind kind-model\">the model's answer</span>".to_string(),
            "reference" => {
                "<span class=\"kind kind-reference\">reference answer</span>".to_string()
            }
            other => format!("<span class=\"kind\">{}</span>", esc(other)),
        };
        let grade = match query.correct {
            Some(true) => "<span class=\"grade correct\">✓ correct</span>",
            Some(false) => "<span class=\"grade wrong\">✗ wrong</span>",
            None => "<span class=\"grade ungraded\">not graded</span>",
        };
        self.raw(&format!(
            "<div class=\"label\">Completion {kind}{grade}</div>\n<div class=\"pre completion\">{}</div>\n",
            esc(&query.completion)
        ));
        let found = match query.answer_found {
            Some(true) => "<span class=\"found yes\">✓ found in the top documents</span>",
            Some(false) => "<span class=\"found no\">✗ not found in the top documents</span>",
            None => "<span class=\"found unknown\">not searched</span>",
        };
        let answer = match &query.answer {
            Some(a) => format!("answer <code>{}</code>", esc(a)),
            None => "no answer given".into(),
        };
        self.raw(&format!(
            "<p class=\"facts\">{answer} {found} · loss {} nats</p>\n",
            esc(&fmt_num(query.nats))
        ));

        self.raw(&format!(
            "<h4>Top {} documents</h4>\n<div class=\"doc-list top-docs\">\n",
            query.top.len()
        ));
        for d in &query.top {
            self.doc(&anchor, "top", d);
        }
        if query.top.is_empty() {
            self.raw("<p class=\"no-data\">No documents.</p>\n");
        }
        self.raw("</div>\n");
        if !query.bottom.is_empty() {
            self.raw(&format!(
                "<details class=\"bottom-docs\">\n<summary>Bottom {} documents (most negative influence)</summary>\n\
                 <div class=\"doc-list\">\n",
                query.bottom.len()
            ));
            for d in &query.bottom {
                self.doc(&anchor, "bottom", d);
            }
            self.raw("</div>\n</details>\n");
        }
        self.raw("</section>\n</div>\n");
    }

    fn doc(&mut self, anchor: &str, side: &str, d: &DocView) {
        self.raw(&format!(
            "<div class=\"{side}-doc doc\" id=\"{anchor}-{side}-{rank}\">\n<div class=\"doc-head\">\
             <span class=\"rank\">#{rank}</span> <span class=\"source\">{source}</span>\
             <span class=\"score\">score {score}</span><span class=\"doc-id\">doc {id}</span></div>\n",
            rank = d.rank,
            source = esc(&d.source),
            score = esc(&format!("{:+.3e}", d.score)),
            id = d.doc_id,
        ));
        if d.tokens.is_empty() {
            self.raw(&format!(
                "<div class=\"pre doc-text\">{}</div>\n",
                esc(&d.text)
            ));
        } else {
            self.raw("<div class=\"pre tokens\">");
            let max = d
                .tokens
                .iter()
                .map(|t| t.score.abs())
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            for t in &d.tokens {
                let style = token_background(t.score, max);
                self.raw(&format!(
                    "<span class=\"tok\"{style} title=\"{}\">{}</span>",
                    esc(&format!("{:+.3e}", t.score)),
                    esc(&t.text)
                ));
            }
            self.raw(&format!(
                "</div>\n<details class=\"plain\"><summary>plain text</summary>\
                 <div class=\"pre doc-text\">{}</div></details>\n",
                esc(&d.text)
            ));
        }
        self.raw("</div>\n");
    }
}

/// ` style="background: rgba(…)"`: green for a positive score, red for a negative one, opacity
/// ∝ |score| / max (up to 0.85); nothing for a zero or undefined score.
pub(crate) fn token_background(score: f64, max: f64) -> String {
    if !(score.is_finite() && max > 0.0) || score == 0.0 {
        return String::new();
    }
    let alpha = (score.abs() / max).min(1.0) * 0.85;
    let (r, g, b) = if score > 0.0 {
        (22, 163, 74)
    } else {
        (220, 38, 38)
    };
    format!(" style=\"background: rgba({r}, {g}, {b}, {alpha:.3})\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert!(matches!(esc("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn token_colour_follows_sign_and_size() {
        assert!(token_background(2.0, 2.0).contains("rgba(22, 163, 74, 0.850)"));
        assert!(token_background(-1.0, 2.0).contains("rgba(220, 38, 38, 0.425)"));
        assert_eq!(token_background(0.0, 2.0), "");
        assert_eq!(token_background(1.0, 0.0), "");
        assert_eq!(token_background(f64::NAN, 1.0), "");
    }
}
