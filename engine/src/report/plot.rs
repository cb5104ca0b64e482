//! The report's figures, drawn with `plotters` into SVG strings. Every
//! figure's root `<svg>` carries a stable `id`; every point of a line series
//! is a filled circle in its series colour (tests count them).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::html::escape;
use super::ReportError;

/// Series colours in run order (Tableau 10).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1F, 0x77, 0xB4),
    RGBColor(0xD6, 0x27, 0x28),
    RGBColor(0x2C, 0xA0, 0x2C),
    RGBColor(0xFF, 0x7F, 0x0E),
    RGBColor(0x94, 0x67, 0xBD),
    RGBColor(0x8C, 0x56, 0x4B),
    RGBColor(0xE3, 0x77, 0xC2),
    RGBColor(0x17, 0xBE, 0xCF),
];

/// Rollout / scoring / update colours of the time split.
pub const PHASES: [(&str, RGBColor); 3] = [
    ("rollout", RGBColor(0x4E, 0x79, 0xA7)),
    ("scoring", RGBColor(0xF2, 0x8E, 0x2B)),
    ("update", RGBColor(0x59, 0xA1, 0x4F)),
];

/// `#RRGGBB` as the SVG backend writes it.
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The colour of run `i`.
pub fn run_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub const WIDTH: u32 = 600;
pub const HEIGHT: u32 = 340;

/// One line of a figure.
pub struct Series {
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
    /// A confidence band `(x, lo, hi)` drawn under the line, translucent
    /// (empty: none).
    pub band: Vec<(f64, f64, f64)>,
}

/// A line figure.
pub struct LineFigure<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// A fixed y range (e.g. 0..1 for ratios); otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

fn plot_err<E: std::fmt::Debug>(id: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot(format!("figure {id}: {e:?}"))
}

/// Puts `id`, `role` and an accessible label on the root `<svg>`.
fn tag_root(svg: String, id: &str, label: &str) -> String {
    svg.replacen(
        "<svg ",
        &format!(
            "<svg id=\"{}\" class=\"figure\" role=\"img\" aria-label=\"{}\" ",
            escape(id),
            escape(label)
        ),
        1,
    )
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        if lo.abs() <= 1e-12 {
            return (-0.05, 1.0);
        }
        let pad = lo.abs() * 0.1;
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.06;
    (lo - pad, hi + pad)
}

/// Tick labels that stay short for tiny and large values alike.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    }
}

/// Draws a line figure: one polyline plus one circle per point per series.
pub fn line_figure(fig: &LineFigure) -> Result<String, ReportError> {
    let pts = || fig.series.iter().flat_map(|s| s.points.iter());
    let finite = |v: &f64| v.is_finite();
    // The y range fits the lines, not the bands: two seeds' interval is
    // +-12.7 standard errors and would squash every line flat.
    let xs: Vec<f64> = pts().map(|p| p.0).filter(finite).collect();
    let ys: Vec<f64> = pts().map(|p| p.1).filter(finite).collect();
    let (x0, x1) = if xs.is_empty() {
        (0.0, 1.0)
    } else {
        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if hi > lo {
            (lo.min(0.0), hi + (hi - lo.min(0.0)) * 0.02)
        } else {
            (lo - 1.0, hi + 1.0)
        }
    };
    let (y0, y1) = match fig.y_range {
        Some(r) => r,
        None if ys.is_empty() => (0.0, 1.0),
        None => padded(
            ys.iter().cloned().fold(f64::INFINITY, f64::min),
            ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ),
    };
    let err = plot_err(fig.id);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(fig.title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc(fig.x_desc)
            .y_desc(fig.y_desc)
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .light_line_style(RGBColor(0xEE, 0xEE, 0xEE))
            .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
        let (ylo, yhi) = (y0.min(y1), y0.max(y1));
        for s in &fig.series {
            // The band: the upper edge left to right, the lower back.
            let band: Vec<(f64, f64, f64)> = s
                .band
                .iter()
                .copied()
                .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
                .collect();
            if band.len() >= 2 {
                let outline: Vec<(f64, f64)> = band
                    .iter()
                    .map(|b| (b.0, b.2.clamp(ylo, yhi)))
                    .chain(band.iter().rev().map(|b| (b.0, b.1.clamp(ylo, yhi))))
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        outline,
                        s.color.mix(0.18).filled(),
                    )))
                    .map_err(&err)?;
            }
        }
        for s in &fig.series {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                // A point outside a fixed y range (a ratio of -1e19 in a
                // hand-edited metrics.jsonl) is drawn at the edge: far
                // outside, plotters' pixel arithmetic overflows i32.
                .map(|(x, y)| (x, y.clamp(ylo, yhi)))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    s.color.stroke_width(2),
                ))
                .map_err(&err)?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, s.color.filled())))
                .map_err(&err)?;
        }
        if fig.series.iter().all(|s| s.points.is_empty()) {
            root.draw(&Text::new(
                "no data in these runs",
                (WIDTH as i32 / 2 - 70, HEIGHT as i32 / 2),
                ("sans-serif", 15)
                    .into_font()
                    .color(&RGBColor(0x88, 0x88, 0x88)),
            ))
            .map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    Ok(tag_root(buf, fig.id, fig.title))
}

/// Horizontal stacked bars: total seconds of rollout / scoring / update per
/// run (`rows[i] = (name, [rollout, scoring, update])`).
pub fn time_split_figure(id: &str, rows: &[(String, [f64; 3])]) -> Result<String, ReportError> {
    let err = plot_err(id);
    let n = rows.len().max(1);
    let total = rows
        .iter()
        .map(|(_, t)| t.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let x1 = if total > 0.0 { total * 1.05 } else { 1.0 };
    let height = (90 + 46 * n as u32).max(170);
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let title = "Time per phase (s, whole run)";
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(150)
            .build_cartesian_2d(0f64..x1, (0usize..n).into_segmented())
            .map_err(&err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let y_fmt = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("seconds")
            .x_labels(8)
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&y_fmt)
            .light_line_style(RGBColor(0xEE, 0xEE, 0xEE))
            .bold_line_style(RGBColor(0xDD, 0xDD, 0xDD))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(&err)?;
        for (i, (_, times)) in rows.iter().enumerate() {
            let mut x = 0.0;
            for (k, &t) in times.iter().enumerate() {
                let c = PHASES[k].1;
                let mut bar = Rectangle::new(
                    [
                        (x, SegmentValue::Exact(i)),
                        (x + t, SegmentValue::Exact(i + 1)),
                    ],
                    c.filled(),
                );
                bar.set_margin(8, 8, 0, 0);
                chart.draw_series(std::iter::once(bar)).map_err(&err)?;
                x += t;
            }
        }
        root.present().map_err(&err)?;
    }
    Ok(tag_root(buf, id, "Time per phase"))
}
