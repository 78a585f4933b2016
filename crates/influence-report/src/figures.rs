//! The SVG figures of a run, drawn with plotters' SVG backend (no fonts needed: text is SVG
//! `<text>`, laid out by the browser).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::data::{GroupCurve, Heatmap, RunSection};
use crate::error::ReportError;
use crate::{Palette, fmt_num};

/// A figure that was drawn, as the page shows it.
pub(crate) struct Figure {
    /// The run's index.
    pub run: usize,
    /// `correlation`, `topk-absolute`, `topk-relative`, `multipliers-top`,
    /// `multipliers-bottom` or `layers`.
    pub kind: &'static str,
    /// The file relative to the report folder: `figures/<kind>-<run slug>.svg`.
    pub src: String,
    /// The `id` of the `<img>`: `fig-<kind>-<run slug>`.
    pub id: String,
    /// The `alt` text.
    pub alt: String,
    /// The caption.
    pub caption: String,
}

const FONT: &str = "sans-serif";
/// plotters writes `font-size = size / 1.24` into the SVG; this gives `px` pixels.
/// Draws the series legend at `position` and writes the figure.
fn finish_with_legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(font(12.0))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    root.present()?;
    Ok(())
}

fn font(px: f64) -> TextStyle<'static> {
    (FONT, px * 1.24).into_font().into()
}

fn rgb((r, g, b): (u8, u8, u8)) -> RGBColor {
    RGBColor(r, g, b)
}

/// Draws every figure of `run` that has data into `dir`.
pub(crate) fn draw_run(
    run: &RunSection,
    index: usize,
    slug: &str,
    palette: &Palette,
    dir: &Path,
) -> Result<Vec<Figure>, ReportError> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, alt: String, caption: String| {
        let file = format!("{kind}-{slug}.svg");
        let path = dir.join(&file);
        out.push(Figure {
            run: index,
            kind,
            src: format!("figures/{file}"),
            id: format!("fig-{kind}-{slug}"),
            alt,
            caption,
        });
        path
    };
    let name = &run.name;

    if !run.correlation.labels.is_empty() {
        let path = add(
            "correlation",
            format!(
                "Heatmap of the Pearson correlation of influence scores between the {} queries of run {name}",
                run.correlation.labels.len()
            ),
            "Pearson r between the influence scores of every pair of queries over all documents; \
             red: the same documents help both, blue: opposite. Labels are coloured by group, \
             lines separate the groups."
                .into(),
        );
        heatmap(&path, name, &run.correlation, palette).map_err(fig_err(&path))?;
    }

    if !run.curves.is_empty() {
        let path = add(
            "topk-absolute",
            format!("Line chart of the cumulative positive influence of the top k percent of documents per nat, per group, run {name}"),
            "Cumulative positive influence of the top k % of positively influential documents, per nat of the completion, mean per group.".into(),
        );
        curves(
            &path,
            &format!("Top-k % influence per nat — {name}"),
            "cumulative influence per nat",
            &run.curves,
            |c| &c.absolute,
            palette,
        )
        .map_err(fig_err(&path))?;
        let path = add(
            "topk-relative",
            format!("Line chart of the share of the total positive influence held by the top k percent of documents, per group, run {name}"),
            "The same as a share of the total positive influence: how concentrated the influence is.".into(),
        );
        curves(
            &path,
            &format!("Top-k % share of positive influence — {name}"),
            "share of total positive influence",
            &run.curves,
            |c| &c.relative,
            palette,
        )
        .map_err(fig_err(&path))?;
    }

    for side in ["top", "bottom"] {
        let of_side: Vec<_> = run.multipliers.iter().filter(|m| m.side == side).collect();
        let Some(k) = of_side.iter().map(|m| m.k).min() else {
            continue;
        };
        let at_k: Vec<_> = of_side.into_iter().filter(|m| m.k == k).collect();
        let mut sources: Vec<&str> = Vec::new();
        for m in &at_k {
            if !sources.contains(&m.source.as_str()) {
                sources.push(&m.source);
            }
        }
        let groups = palette.order(at_k.iter().map(|m| m.group.as_str()));
        let series = groups
            .iter()
            .map(|g| {
                let values = sources
                    .iter()
                    .map(|s| {
                        at_k.iter()
                            .find(|m| &m.group == g && m.source == *s)
                            .map(|m| m.multiplier)
                    })
                    .collect();
                (g.clone(), values)
            })
            .collect::<Vec<_>>();
        let kind = if side == "top" {
            "multipliers-top"
        } else {
            "multipliers-bottom"
        };
        let path = add(
            kind,
            format!(
                "Bar chart of how over-represented each source is in the {side} {k} documents, per group, run {name}"
            ),
            format!(
                "Source multipliers of the {side} {k} documents: the count of each source over the count expected from the corpus mix (1×: as expected, 0×: absent), mean per group."
            ),
        );
        bars(
            &path,
            &format!("Sources of the {side} {k} documents — {name}"),
            "observed / expected",
            &sources,
            &series,
            Some(1.0),
            |v| format!("{}×", fmt_num(round2(v))),
            palette,
        )
        .map_err(fig_err(&path))?;
    }

    if !run.layer_shares.is_empty() {
        let mut layers: Vec<&str> = Vec::new();
        for l in &run.layer_shares {
            if !layers.contains(&l.layer.as_str()) {
                layers.push(&l.layer);
            }
        }
        let groups = palette.order(run.layer_shares.iter().map(|l| l.group.as_str()));
        let series = groups
            .iter()
            .map(|g| {
                let values = layers
                    .iter()
                    .map(|layer| {
                        run.layer_shares
                            .iter()
                            .find(|l| &l.group == g && l.layer == *layer)
                            .map(|l| l.share)
                    })
                    .collect();
                (g.clone(), values)
            })
            .collect::<Vec<_>>();
        let path = add(
            "layers",
            format!(
                "Bar chart of the mean share of influence in each layer, per group, run {name}"
            ),
            "Mean share of each tracked layer in a completion's influence, per group.".into(),
        );
        bars(
            &path,
            &format!("Share of influence per layer — {name}"),
            "mean share of influence",
            &layers,
            &series,
            None,
            |v| format!("{}%", fmt_num(round2(v * 100.0))),
            palette,
        )
        .map_err(fig_err(&path))?;
    }
    Ok(out)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn fig_err(path: &Path) -> impl FnOnce(Box<dyn std::error::Error>) -> ReportError {
    let path: PathBuf = path.to_path_buf();
    move |e| ReportError::Figure {
        path,
        message: e.to_string(),
    }
}

/// RdBu reversed: blue for −1, white for 0, red for +1.
const DIVERGING: [(u8, u8, u8); 11] = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
];

/// The colour of `v` in `[-1, 1]` (clamped); light grey for NaN.
pub(crate) fn diverging(v: f64) -> (u8, u8, u8) {
    if v.is_nan() {
        return (210, 210, 210);
    }
    let t = (v.clamp(-1.0, 1.0) + 1.0) / 2.0 * (DIVERGING.len() - 1) as f64;
    let i = (t.floor() as usize).min(DIVERGING.len() - 2);
    let f = t - i as f64;
    let (a, b) = (DIVERGING[i], DIVERGING[i + 1]);
    let mix = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn text_width(text: &str, px: f64) -> f64 {
    text.chars().count() as f64 * px * 0.6
}

fn heatmap(path: &Path, run: &str, h: &Heatmap, palette: &Palette) -> DrawResult {
    let n = h.labels.len();
    let cell = (640 / n as i32).clamp(14, 56);
    let label_px = (f64::from(cell) * 0.7).clamp(8.0, 13.0);
    let label_w = h
        .labels
        .iter()
        .map(|l| text_width(l, label_px))
        .fold(0.0, f64::max)
        .ceil() as i32
        + 8;
    let grid = cell * n as i32;
    let groups: Vec<&str> = if h.groups.len() == n {
        h.groups.iter().map(String::as_str).collect()
    } else {
        vec![""; n]
    };
    let legend = palette.order(groups.iter().copied().filter(|g| !g.is_empty()));

    let left = label_w + 12;
    let top = 70;
    let bar_x = left + grid + 24;
    let width = (bar_x + 90).max(520);
    let height = top + grid + label_w + 20;
    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw(&Text::new(
        format!("Correlation of influence between queries — {run}"),
        (12, 10),
        font(16.0).pos(Pos::new(HPos::Left, VPos::Top)),
    ))?;
    // Group legend under the title.
    let mut x = 12;
    for g in &legend {
        let c = rgb(palette.rgb(g));
        root.draw(&Rectangle::new([(x, 40), (x + 12, 52)], c.filled()))?;
        root.draw(&Text::new(
            g.clone(),
            (x + 16, 46),
            font(12.0).color(&c).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += 16 + text_width(g, 12.0) as i32 + 18;
    }

    let annotate = n <= 16;
    for (i, row) in h.values.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                rgb(diverging(v)).filled(),
            ))?;
            if annotate {
                let ink = if v.abs() > 0.6 { WHITE } else { BLACK };
                let label = if v.is_nan() {
                    "n/a".to_string()
                } else {
                    format!("{v:.2}")
                };
                root.draw(&Text::new(
                    label,
                    (x0 + cell / 2, y0 + cell / 2),
                    font((f64::from(cell) * 0.28).clamp(7.0, 12.0))
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))?;
            }
        }
    }
    // Lines between groups (the rows are expected to be sorted by group).
    for i in 1..n {
        if groups[i] != groups[i - 1] {
            let at = i as i32 * cell;
            let ink = BLACK.stroke_width(2);
            root.draw(&PathElement::new(
                vec![(left + at, top), (left + at, top + grid)],
                ink,
            ))?;
            root.draw(&PathElement::new(
                vec![(left, top + at), (left + grid, top + at)],
                ink,
            ))?;
        }
    }
    root.draw(&Rectangle::new(
        [(left, top), (left + grid, top + grid)],
        BLACK.stroke_width(1),
    ))?;
    for (i, label) in h.labels.iter().enumerate() {
        let c = if groups[i].is_empty() {
            BLACK
        } else {
            rgb(palette.rgb(groups[i]))
        };
        let mid = i as i32 * cell + cell / 2;
        root.draw(&Text::new(
            label.clone(),
            (left - 6, top + mid),
            font(label_px)
                .color(&c)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        root.draw(&Text::new(
            label.clone(),
            (left + mid, top + grid + 6),
            font(label_px)
                .color(&c)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
    }

    // Colour bar: +1 at the top, −1 at the bottom.
    let steps = 100;
    for s in 0..steps {
        let y0 = top + grid * s / steps;
        let y1 = top + grid * (s + 1) / steps;
        let v = 1.0 - 2.0 * (f64::from(s) + 0.5) / f64::from(steps);
        root.draw(&Rectangle::new(
            [(bar_x, y0), (bar_x + 16, y1.max(y0 + 1))],
            rgb(diverging(v)).filled(),
        ))?;
    }
    root.draw(&Rectangle::new(
        [(bar_x, top), (bar_x + 16, top + grid)],
        BLACK.stroke_width(1),
    ))?;
    for tick in [1.0, 0.5, 0.0, -0.5, -1.0] {
        let y = top + ((1.0 - tick) / 2.0 * f64::from(grid)).round() as i32;
        root.draw(&PathElement::new(
            vec![(bar_x + 16, y), (bar_x + 20, y)],
            BLACK,
        ))?;
        root.draw(&Text::new(
            format!("{tick:+.1}"),
            (bar_x + 23, y),
            font(11.0).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    root.draw(&Text::new(
        "Pearson r",
        (bar_x, top - 8),
        font(11.0).pos(Pos::new(HPos::Left, VPos::Bottom)),
    ))?;
    root.present()?;
    Ok(())
}

fn finite_max(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::max)
}

fn finite_min(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::min)
}

fn curves(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: &[GroupCurve],
    pick: fn(&GroupCurve) -> &Vec<f64>,
    palette: &Palette,
) -> DrawResult {
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = || curves.iter().flat_map(|c| c.percent.iter().copied());
    let ys = || curves.iter().flat_map(|c| pick(c).iter().copied());
    let x0 = finite_min(xs()).unwrap_or(0.0).min(0.0);
    let x1 = finite_max(xs()).unwrap_or(100.0).max(x0 + 1e-9);
    let y0 = finite_min(ys()).unwrap_or(0.0).min(0.0);
    let y1 = finite_max(ys()).unwrap_or(1.0);
    let y1 = if y1 > y0 {
        y1 + (y1 - y0) * 0.05
    } else {
        y0 + 1.0
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(16.0))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .light_line_style(RGBColor(244, 244, 244))
        .x_desc("top k % of the positively influential documents")
        .x_label_formatter(&|v| fmt_num(*v))
        .y_desc(y_desc)
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style(font(11.0))
        .axis_desc_style(font(12.0))
        .draw()?;
    for c in curves {
        let colour = rgb(palette.rgb(&c.group));
        let points: Vec<(f64, f64)> = c
            .percent
            .iter()
            .zip(pick(c))
            .map(|(&x, &y)| (x, y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(c.group.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    finish_with_legend(&mut chart, &root, SeriesLabelPosition::LowerRight)
}

/// Grouped bars: one group of bars per category, one bar per series; a missing value draws no
/// bar, a zero value a bar of height zero with its value written.
#[allow(clippy::too_many_arguments)]
fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[&str],
    series: &[(String, Vec<Option<f64>>)],
    reference: Option<f64>,
    value_label: fn(f64) -> String,
    palette: &Palette,
) -> DrawResult {
    let n = categories.len().max(1);
    let g = series.len().max(1);
    let width = (120 + n * (g * 18 + 26)).clamp(640, 1800);
    let plot_w = (width - 110) as f64;
    let longest = categories
        .iter()
        .map(|c| text_width(c, 11.0))
        .fold(0.0, f64::max);
    let rotate = longest > plot_w / n as f64 - 6.0;
    let x_area = if rotate {
        (longest.ceil() as u32 + 16).min(260)
    } else {
        34
    };
    let height = 440 + x_area;
    let values = || series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let top = finite_max(values().chain(reference))
        .unwrap_or(1.0)
        .max(0.0);
    let bottom = finite_min(values()).unwrap_or(0.0).min(0.0);
    // Headroom for the values written above the bars and for the legend.
    let y1 = if top > bottom {
        top + (top - bottom) * 0.5
    } else {
        1.0
    };

    let root = SVGBackend::new(path, (width as u32, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, font(16.0))
        .margin(12)
        .x_label_area_size(x_area)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, bottom..y1)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(TRANSPARENT)
        .y_desc(y_desc)
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style(font(11.0))
        .axis_desc_style(font(12.0))
        .draw()?;
    let bar_w = 0.8 / g as f64;
    let annotate = n * g <= 48;
    for (s, (group, vals)) in series.iter().enumerate() {
        let colour = rgb(palette.rgb(group));
        let rects = vals.iter().enumerate().filter_map(|(i, v)| {
            let v = v.filter(|v| v.is_finite())?;
            let x0 = i as f64 + 0.1 + s as f64 * bar_w;
            Some(Rectangle::new(
                [(x0, 0.0), (x0 + bar_w, v)],
                colour.filled(),
            ))
        });
        chart
            .draw_series(rects)?
            .label(group.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        if annotate {
            for (i, v) in vals.iter().enumerate() {
                let Some(v) = v else { continue };
                let x = i as f64 + 0.1 + (s as f64 + 0.5) * bar_w;
                let at = chart.backend_coord(&(x, v.max(0.0)));
                let label = if v.is_finite() {
                    value_label(*v)
                } else {
                    "n/a".into()
                };
                root.draw(&Text::new(
                    label,
                    (at.0, at.1 - 3),
                    font(10.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
                ))?;
            }
        }
    }
    if let Some(r) = reference {
        let ink = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, r), (n as f64, r)],
                6,
                4,
                ink.stroke_width(1),
            ))?
            .label(format!("expected ({}×)", fmt_num(r)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], ink));
    }
    for (i, c) in categories.iter().enumerate() {
        let at = chart.backend_coord(&(i as f64 + 0.5, bottom));
        let style = font(11.0);
        let style = if rotate {
            style
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center))
        } else {
            style.pos(Pos::new(HPos::Center, VPos::Top))
        };
        root.draw(&Text::new(c.to_string(), (at.0, at.1 + 6), style))?;
    }
    finish_with_legend(&mut chart, &root, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_colours_run_from_blue_through_white_to_red() {
        assert_eq!(diverging(-1.0), DIVERGING[0]);
        assert_eq!(diverging(0.0), (247, 247, 247));
        assert_eq!(diverging(1.0), DIVERGING[10]);
        assert_eq!(diverging(7.0), DIVERGING[10]);
        assert_eq!(diverging(f64::NAN), (210, 210, 210));
        let (r, _, b) = diverging(0.5);
        assert!(r > b);
    }
}
