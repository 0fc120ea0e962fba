//! One SVG per measure, drawn with `plotters` (SVG backend: no fonts or
//! system libraries needed; text is left to the SVG viewer).

use std::path::Path;

use anyhow::anyhow;
use plotters::{coord::Shift, prelude::*};

use super::samples::{Stat, Table};

/// Colours per mechanism, the same in every plot.
pub fn colour(variant: &str) -> RGBColor {
    match variant {
        "ours" => RGBColor(0x1f, 0x77, 0xb4),
        "iptables" => RGBColor(0xd6, 0x27, 0x28),
        // iptables' family, lighter: the same list behind conntrack.
        "iptables-est" => RGBColor(0xe3, 0x77, 0xc2),
        "nftables" => RGBColor(0xff, 0x7f, 0x0e),
        "direct" | "none" => RGBColor(0x55, 0x55, 0x55),
        _ => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

/// One series of a bar panel: a name and, per group, its figure if any.
pub struct Bars {
    pub name: String,
    pub colour: RGBColor,
    pub stats: Vec<Option<Stat>>,
}

/// A reference line across a panel (a target).
pub struct Line {
    pub label: String,
    pub value: f64,
}

pub struct Panel<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub groups: Vec<String>,
    pub series: Vec<Bars>,
    pub log: bool,
    /// Lines across the groups (a trend) instead of grouped bars.
    pub lines: bool,
    pub line: Option<Line>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws `panels` side by side into `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let width = 520 * u32::try_from(panels.len().max(1)).unwrap_or(1);
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow!("{e}"))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        if panel.lines {
            lines(area, panel)?;
        } else {
            bars(area, panel)?;
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// An axis value without needless decimals.
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn top(panel: &Panel) -> f64 {
    let data = panel
        .series
        .iter()
        .flat_map(|s| s.stats.iter().flatten())
        .map(|s| s.max)
        .fold(0.0_f64, f64::max);
    let line = panel.line.as_ref().map_or(0.0, |l| l.value);
    data.max(line).max(f64::MIN_POSITIVE)
}

fn bottom_for_log(panel: &Panel) -> f64 {
    let low = panel
        .series
        .iter()
        .flat_map(|s| s.stats.iter().flatten())
        .map(|s| s.min)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let low = low.min(panel.line.as_ref().map_or(f64::INFINITY, |l| l.value));
    if low.is_finite() {
        10f64.powf(low.log10().floor())
    } else {
        0.1
    }
}

/// Grouped bars (median) with min–max whiskers.
fn bars(area: &Area, panel: &Panel) -> anyhow::Result<()> {
    let groups = panel.groups.len().max(1);
    let x_range = 0.0..groups as f64;
    let top = top(panel);
    if panel.log {
        let low = bottom_for_log(panel);
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range, (low..top * 10.0).log_scale())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| tick(*v))
            .y_desc(panel.y_label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        draw_bars(&mut chart, panel, low)?;
        draw_line(&mut chart, panel, groups)?;
        legend(&mut chart)?;
    } else {
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(x_range, 0.0..top * 1.5)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| tick(*v))
            .y_desc(panel.y_label)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        draw_bars(&mut chart, panel, 0.0)?;
        draw_line(&mut chart, panel, groups)?;
        legend(&mut chart)?;
    }
    Ok(())
}

type Chart<'a, 'b, Y> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn draw_bars<Y>(chart: &mut Chart<'_, '_, Y>, panel: &Panel, base: f64) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    let per = panel.series.len().max(1) as f64;
    let width = 0.8 / per;
    for (si, series) in panel.series.iter().enumerate() {
        let c = series.colour;
        let mut first = true;
        for (gi, stat) in series.stats.iter().enumerate() {
            let Some(stat) = stat else { continue };
            let x0 = gi as f64 + 0.1 + si as f64 * width;
            let x1 = x0 + width * 0.9;
            let mid = (x0 + x1) / 2.0;
            let rect = Rectangle::new([(x0, base), (x1, stat.median)], c.mix(0.8).filled());
            let anno = chart
                .draw_series(std::iter::once(rect))
                .map_err(|e| anyhow!("{e}"))?;
            if first {
                anno.label(series.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled())
                });
                first = false;
            }
            if stat.n > 1 {
                let whisker = vec![
                    PathElement::new(vec![(mid, stat.min), (mid, stat.max)], BLACK),
                    PathElement::new(
                        vec![(mid - width * 0.2, stat.max), (mid + width * 0.2, stat.max)],
                        BLACK,
                    ),
                    PathElement::new(
                        vec![(mid - width * 0.2, stat.min), (mid + width * 0.2, stat.min)],
                        BLACK,
                    ),
                ];
                chart.draw_series(whisker).map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    // Group names under each group, drawn as text in data coordinates.
    let (y_low, _) = (chart.y_range().start, ());
    let labels: Vec<_> = panel
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            Text::new(
                g.clone(),
                (i as f64 + 0.4, y_low),
                ("sans-serif", 13).into_font().color(&BLACK),
            )
        })
        .collect();
    chart.draw_series(labels).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn draw_line<Y>(chart: &mut Chart<'_, '_, Y>, panel: &Panel, groups: usize) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    if let Some(line) = &panel.line {
        let style = ShapeStyle::from(&RGBColor(0x2c, 0xa0, 0x2c)).stroke_width(2);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, line.value), (groups as f64, line.value)],
                style,
            )))
            .map_err(|e| anyhow!("{e}"))?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], style));
    }
    Ok(())
}

fn legend<'a, 'b: 'a, Y>(chart: &mut Chart<'a, 'b, Y>) -> anyhow::Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))
}

/// One line per series across the groups (e.g. CIDR counts), with
/// min–max whiskers at each point.
fn lines(area: &Area, panel: &Panel) -> anyhow::Result<()> {
    let groups = panel.groups.len().max(1);
    let top = top(panel);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3..(groups as f64 - 0.7), 0.0..top * 1.15)
        .map_err(|e| anyhow!("{e}"))?;
    let names = panel.groups.clone();
    let formatter = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&formatter)
        .x_desc("CIDR rules in force")
        .y_label_formatter(&|v| tick(*v))
        .y_desc(panel.y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for series in &panel.series {
        let c = series.colour;
        let points: Vec<(f64, f64)> = series
            .stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as f64, s.as_ref()?.median)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(series.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], c.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(|e| anyhow!("{e}"))?;
        let whiskers: Vec<_> = series
            .stats
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref().filter(|s| s.n > 1)?;
                Some(PathElement::new(
                    vec![(i as f64, s.min), (i as f64, s.max)],
                    c.stroke_width(1),
                ))
            })
            .collect();
        chart.draw_series(whiskers).map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Bars for `variants` × `groups` of one metric, from a summary table.
pub fn bars_of(
    table: &Table,
    metric: &str,
    variants: &[&str],
    groups: &[(String, usize)],
) -> Vec<Bars> {
    variants
        .iter()
        .map(|v| Bars {
            name: (*v).to_owned(),
            colour: colour(v),
            stats: groups
                .iter()
                .map(|(_, n)| table.get(metric, v, *n).cloned())
                .collect(),
        })
        .collect()
}
