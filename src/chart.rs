//! Charts as SVG for `kiln report` and `kiln train`'s `plot.svg`, drawn
//! with `plotters`' SVG backend: axes with ticks,
//! tick labels and a description with its unit, a legend when there is
//! more than one series, and every plotted value as a `<title>` that the
//! browser shows on hover (no script). Each chart is an
//! `<svg class="chart" data-x-axis=".." data-y-axis="..">`, which the
//! browser test reads.

use plotters::prelude::*;

/// Text made safe inside HTML or SVG elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The colours of the series, in order (colour-blind safe, Okabe-Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

/// At most this many hover points a series (evenly spaced).
const HOVER_POINTS: usize = 400;

pub const WIDTH: u32 = 720;
pub const HEIGHT: u32 = 300;

/// A line of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart: `x_label` and `y_label` name the axes with their units.
pub struct Lines<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
    /// Dashed vertical lines with a label at the top (epoch starts, chunk
    /// windows).
    pub markers: Vec<(f64, String)>,
}

/// A number as a tick label: at most 4 significant digits.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (
            lo - 0.5_f64.max(lo.abs() * 0.1),
            hi + 0.5_f64.max(hi.abs() * 0.1),
        )
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// The `<svg>` opening tag marked as a chart, the hover points added.
fn finish(svg: String, x_label: &str, y_label: &str, hover: &[(i32, i32, String)]) -> String {
    let mut svg = svg.replacen(
        "<svg ",
        &format!(
            "<svg class=\"chart\" data-x-axis=\"{}\" data-y-axis=\"{}\" ",
            escape(x_label),
            escape(y_label)
        ),
        1,
    );
    let mut dots = String::new();
    for (x, y, label) in hover {
        dots.push_str(&format!(
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"4\" fill=\"#000\" fill-opacity=\"0\"><title>{}</title></circle>\n",
            escape(label)
        ));
    }
    if let Some(end) = svg.rfind("</svg>") {
        svg.insert_str(end, &dots);
    }
    svg
}

type Res<T> = std::result::Result<T, String>;

type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;
type Ctx<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart's frame: its caption, margins and label areas, on `x` by `y`.
fn frame<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
    x_area: u32,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Res<Ctx<'a, 'b>> {
    ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(x_area)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(err)
}

/// Axes with numeric ticks and their descriptions, a light grid (without
/// its vertical lines unless `x_grid`).
fn numeric_mesh<'a, 'b: 'a>(
    chart: &mut Ctx<'a, 'b>,
    x_label: &str,
    y_label: &str,
    x_grid: bool,
) -> Res<()> {
    let mut mesh = chart.configure_mesh();
    if !x_grid {
        mesh.disable_x_mesh();
    }
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| num(*v))
        .y_label_formatter(&|v| num(*v))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)
}

/// The legend box, top right.
fn legend<'a, 'b: 'a>(chart: &mut Ctx<'a, 'b>) -> Res<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)
}

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("cannot draw a chart: {e:?}")
}

/// A line chart as SVG.
pub fn lines(c: &Lines) -> Res<String> {
    let (x0, x1) = range(c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = range(c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut svg = String::new();
    let mut hover = Vec::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = frame(&root, c.title, 40, x0..x1, y0..y1)?;
        numeric_mesh(&mut chart, c.x_label, c.y_label, true)?;
        for (at, label) in &c.markers {
            let style = ShapeStyle::from(RGBColor(150, 150, 150)).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new([(*at, y0), (*at, y1)], 4, 4, style))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*at, y1),
                    ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
                )))
                .map_err(err)?;
        }
        for (i, s) in c.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            let drawn = chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?;
            if c.series.len() > 1 {
                drawn.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
            if points.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(points[0], 3, color.filled())))
                    .map_err(err)?;
            }
            let every = points.len().div_ceil(HOVER_POINTS).max(1);
            for (k, &(x, y)) in points.iter().enumerate() {
                if k % every == 0 || k + 1 == points.len() {
                    let (px, py) = chart.backend_coord(&(x, y));
                    hover.push((
                        px,
                        py,
                        format!(
                            "{}: {} = {}, {} = {}",
                            s.name,
                            c.x_label,
                            num(x),
                            c.y_label,
                            num(y)
                        ),
                    ));
                }
            }
        }
        if c.series.len() > 1 {
            legend(&mut chart)?;
        }
        root.present().map_err(err)?;
    }
    Ok(finish(svg, c.x_label, c.y_label, &hover))
}

/// Bars: one group per category (`labels`), one bar per series in each
/// group (for example a class's count before and after balancing).
pub fn bars(
    title: &str,
    x_label: &str,
    y_label: &str,
    labels: &[String],
    series: &[(&str, Vec<f64>)],
) -> Res<String> {
    let n = labels.len().max(1) as f64;
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut svg = String::new();
    let mut hover = Vec::new();
    let height = HEIGHT + if labels.len() > 12 { 60 } else { 0 };
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let x_area = if labels.len() > 12 { 100 } else { 40 };
        let mut chart = frame(&root, title, x_area, -0.5..n - 0.5, 0.0..top)?;
        let name = |v: &f64| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len().clamp(1, 40))
            .x_label_formatter(&name)
            .y_label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .x_label_style(if labels.len() > 12 {
                ("sans-serif", 13)
                    .into_font()
                    .transform(FontTransform::Rotate90)
            } else {
                ("sans-serif", 14).into_font()
            })
            .y_label_formatter(&|v| num(*v))
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        let width = 0.8 / series.len().max(1) as f64;
        for (k, (sname, values)) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let drawn = chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let left = i as f64 - 0.4 + k as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, v)], color.filled())
                }))
                .map_err(err)?;
            if series.len() > 1 {
                drawn.label(*sname).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            }
            for (i, &v) in values.iter().enumerate() {
                let left = i as f64 - 0.4 + k as f64 * width;
                let (px, py) = chart.backend_coord(&(left + width / 2.0, v));
                let label = labels.get(i).map(String::as_str).unwrap_or("");
                hover.push((px, py, format!("{sname}: {label} = {}", num(v))));
            }
        }
        if series.len() > 1 {
            legend(&mut chart)?;
        }
        root.present().map_err(err)?;
    }
    Ok(finish(svg, x_label, y_label, &hover))
}

/// A histogram of `(low, high, count)` bins, with dashed markers.
pub fn histogram(
    title: &str,
    x_label: &str,
    bins: &[(f64, f64, u64)],
    markers: &[(f64, String)],
) -> Res<String> {
    let (x0, x1) = match (bins.first(), bins.last()) {
        (Some(a), Some(b)) => (a.0, b.1.max(a.0 + 1.0)),
        _ => (0.0, 1.0),
    };
    let (x0, x1) = markers
        .iter()
        .fold((x0, x1), |(lo, hi), m| (lo.min(m.0), hi.max(m.0 * 1.02)));
    let top = bins.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut svg = String::new();
    let mut hover = Vec::new();
    let y_label = "rows";
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = frame(&root, title, 40, x0..x1, 0.0..top)?;
        numeric_mesh(&mut chart, x_label, y_label, false)?;
        let color = PALETTE[0];
        chart
            .draw_series(bins.iter().map(|&(lo, hi, c)| {
                Rectangle::new([(lo, 0.0), (hi, c as f64)], color.mix(0.8).filled())
            }))
            .map_err(err)?;
        for &(lo, hi, c) in bins {
            let (px, py) = chart.backend_coord(&((lo + hi) / 2.0, c as f64));
            hover.push((px, py, format!("{} to {}: {c} rows", num(lo), num(hi))));
        }
        for (k, (at, label)) in markers.iter().enumerate() {
            let color = PALETTE[(k + 1) % PALETTE.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    [(*at, 0.0), (*at, top)],
                    5,
                    4,
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        if !markers.is_empty() {
            legend(&mut chart)?;
        }
        root.present().map_err(err)?;
    }
    Ok(finish(svg, x_label, y_label, &hover))
}

/// `counts` (value -> rows) in at most `max_bins` equal bins of whole
/// numbers.
pub fn bin_counts(
    counts: &std::collections::BTreeMap<u64, u64>,
    max_bins: u64,
) -> Vec<(f64, f64, u64)> {
    let (Some((&lo, _)), Some((&hi, _))) = (counts.first_key_value(), counts.last_key_value())
    else {
        return Vec::new();
    };
    let width = (hi - lo + 1).div_ceil(max_bins).max(1);
    let mut bins: Vec<(f64, f64, u64)> = Vec::new();
    for (&v, &c) in counts {
        let b = (v - lo) / width;
        let start = (lo + b * width) as f64;
        match bins.last_mut() {
            Some(last) if last.0 == start => last.2 += c,
            _ => bins.push((start, start + width as f64, c)),
        }
    }
    bins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_has_axes_ticks_a_legend_and_hover_values() {
        let svg = lines(&Lines {
            title: "loss",
            x_label: "step",
            y_label: "loss (nats)",
            series: vec![
                Series {
                    name: "train".into(),
                    points: (1..=50).map(|s| (s as f64, 1.0 / s as f64)).collect(),
                },
                Series {
                    name: "validation".into(),
                    points: vec![(10.0, 0.3), (50.0, 0.2)],
                },
            ],
            markers: vec![(25.0, "epoch 1".into())],
        })
        .unwrap();
        assert!(svg.starts_with("<svg class=\"chart\" data-x-axis=\"step\""));
        for text in [
            "step",
            "loss (nats)",
            "train",
            "validation",
            "epoch 1",
            "20",
        ] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "{text} missing"
            );
        }
        assert!(svg.contains("<title>validation: step = 50, loss (nats) = 0.2</title>"));
    }

    #[test]
    fn bins_cover_every_value_once() {
        let counts: std::collections::BTreeMap<u64, u64> =
            (3..=250).map(|v| (v, v % 7 + 1)).collect();
        let bins = bin_counts(&counts, 40);
        assert!(bins.len() <= 40);
        assert_eq!(
            bins.iter().map(|b| b.2).sum::<u64>(),
            counts.values().sum::<u64>()
        );
        assert_eq!(bins[0].0, 3.0);
        assert!(bins.last().unwrap().1 > 250.0);
    }
}
