//! The drawing of each chart type with plotters' SVG backend: axes and marks through its chart
//! builder, KPI tiles, tables, funnels and donuts from its elements on a plain drawing area.

use std::collections::HashMap;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::format::Format;
use super::theme::{Colours, parse_hex};
use super::{Cell, Chart, ChartError, ChartKind, FONT_FAMILY, Frame, Hit, MAX_CATEGORIES, MAX_DONUT_SLICES};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
/// A box in pixels: left, top, width, height.
type PixelBox = (i32, i32, i32, i32);

const PAD: i32 = 12;
const TITLE_SIZE: f64 = 15.0;
const LABEL_SIZE: f64 = 12.0;

fn failed(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

fn font(size: f64, bold: bool) -> FontDesc<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    (FONT_FAMILY, size).into_font().style(style)
}

fn text_style(size: f64, bold: bool, colour: RGBColor) -> TextStyle<'static> {
    TextStyle { font: font(size, bold), color: colour.to_backend_color(), pos: Pos::new(HPos::Left, VPos::Top) }
}

fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

/// The series colour `index`: the encoding's own colour when it gives one, else the palette's.
fn colour_of(chart: &Chart, colours: &Colours, index: usize) -> RGBColor {
    chart.encoding.colours.get(index).and_then(|c| parse_hex(c)).unwrap_or_else(|| colours.series(index))
}

/// `colour` with `share` of it left, the rest `background`.
fn blend(colour: RGBColor, background: RGBColor, share: f64) -> RGBColor {
    let mix = |a: u8, b: u8| (f64::from(a) * share + f64::from(b) * (1.0 - share)).round() as u8;
    RGBColor(mix(colour.0, background.0), mix(colour.1, background.1), mix(colour.2, background.2))
}

/// Text cut to about `width` pixels at `size`, with an ellipsis when cut.
fn fit(text: &str, width: i32, size: f64) -> String {
    let per_char = size * 0.6;
    let room = ((f64::from(width) / per_char).floor() as usize).max(1);
    if text.chars().count() <= room {
        return text.to_string();
    }
    let kept: String = text.chars().take(room.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// The drawing of a chart: the SVG, its hit regions and a sentence describing the data.
pub(super) fn chart(chart: &Chart) -> Result<(String, Vec<Hit>, String), ChartError> {
    let mut svg = String::new();
    let (hits, summary) = {
        let root = SVGBackend::with_string(&mut svg, (chart.width, chart.height)).into_drawing_area();
        let colours = chart.theme.colours();
        root.fill(&colours.background).map_err(failed)?;
        let out = match chart.kind {
            ChartKind::Kpi => kpi(chart, &root, &colours)?,
            ChartKind::Line | ChartKind::Area | ChartKind::Bar => xy(chart, &root, &colours)?,
            ChartKind::Heatmap => heatmap(chart, &root, &colours)?,
            ChartKind::Donut => donut(chart, &root, &colours)?,
            ChartKind::Funnel => funnel(chart, &root, &colours)?,
            ChartKind::Table => table(chart, &root, &colours)?,
        };
        root.present().map_err(failed)?;
        out
    };
    Ok((svg, hits, summary))
}

/// A panel holding only its title and a message (no data, or an error).
pub(super) fn message(chart: &Chart, text: &str, error: bool) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (chart.width, chart.height)).into_drawing_area();
        let colours = chart.theme.colours();
        root.fill(&colours.background).map_err(failed)?;
        let body = title(chart, &root, &colours)?;
        let (w, h) = body.dim_in_pixel();
        let colour = if error { colours.bad } else { colours.muted };
        let size = LABEL_SIZE + 1.0;
        let line = fit(&format!("{}{text}", if error { "⚠ " } else { "" }), w as i32 - 2 * PAD, size);
        body.draw(&Text::new(
            line,
            (w as i32 / 2, h as i32 / 2),
            anchored(text_style(size, false, colour), HPos::Center, VPos::Center),
        ))
        .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// Draws the title; returns the area below it.
fn title<'a>(chart: &Chart, root: &Area<'a>, colours: &Colours) -> Result<Area<'a>, ChartError> {
    let (w, _) = root.dim_in_pixel();
    root.draw(&Text::new(
        fit(chart.title, w as i32 - 2 * PAD, TITLE_SIZE),
        (PAD, PAD),
        anchored(text_style(TITLE_SIZE, true, colours.text), HPos::Left, VPos::Top),
    ))
    .map_err(failed)?;
    let (_, body) = root.split_vertically(PAD + TITLE_SIZE as i32 + 8);
    Ok(body)
}

/// Draws a legend of `items` along the bottom; returns the area above it and each item's box.
fn legend<'a>(
    area: &Area<'a>,
    items: &[(String, RGBColor)],
    colours: &Colours,
) -> Result<(Area<'a>, Vec<PixelBox>), ChartError> {
    if items.len() < 2 {
        return Ok((area.clone(), Vec::new()));
    }
    let (w, h) = area.dim_in_pixel();
    let row_height = 18;
    // Lay out first to know how many rows it takes.
    let mut rows = 1;
    let mut x = PAD;
    let widths: Vec<i32> =
        items.iter().map(|(label, _)| 14 + (label.chars().count() as f64 * LABEL_SIZE * 0.6) as i32 + 14).collect();
    for width in &widths {
        if x + width > w as i32 - PAD && x > PAD {
            rows += 1;
            x = PAD;
        }
        x += width;
    }
    let rows = rows.min(3);
    let (upper, lower) = area.split_vertically(h as i32 - rows * row_height - 4);
    let mut boxes = Vec::new();
    let (mut x, mut y) = (PAD, 2);
    let (_, top) = lower.get_base_pixel();
    for ((label, colour), width) in items.iter().zip(widths) {
        if x + width > w as i32 - PAD && x > PAD {
            x = PAD;
            y += row_height;
            if y >= rows * row_height {
                break;
            }
        }
        lower.draw(&Rectangle::new([(x, y + 3), (x + 10, y + 13)], colour.filled())).map_err(failed)?;
        lower
            .draw(&Text::new(
                label.clone(),
                (x + 14, y + 8),
                anchored(text_style(LABEL_SIZE, false, colours.muted), HPos::Left, VPos::Center),
            ))
            .map_err(failed)?;
        boxes.push((x, top + y, width, row_height));
        x += width;
    }
    Ok((upper, boxes))
}

/// Distinct values of column `index` in the order they first appear.
fn distinct(frame: &Frame, index: usize) -> Vec<Cell> {
    let mut seen = Vec::new();
    for row in &frame.rows {
        let cell = row.get(index).cloned().unwrap_or(Cell::Null);
        if !seen.contains(&cell) {
            seen.push(cell);
        }
    }
    seen
}

/// Category labels, dates shortened the way a time axis reads them.
fn category_labels(cells: &[Cell]) -> Vec<String> {
    let dates: Option<Vec<chrono::NaiveDate>> = cells
        .iter()
        .map(|c| match c {
            Cell::Text(t) => chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d").ok(),
            _ => None,
        })
        .collect();
    match dates {
        Some(dates) if !dates.is_empty() => {
            use chrono::Datelike;
            let firsts = dates.iter().all(|d| d.day() == 1);
            let januaries = firsts && dates.iter().all(|d| d.month() == 1);
            let pattern = if januaries {
                "%Y"
            } else if firsts {
                "%b %Y"
            } else {
                "%b %-d, %Y"
            };
            dates.iter().map(|d| d.format(pattern).to_string()).collect()
        }
        _ => cells.iter().map(Cell::label).collect(),
    }
}

/// A series: its name (a measure's label or a value of the series column), its raw value for
/// drill-down, its format, and one value per category.
struct Series {
    label: String,
    raw: Option<String>,
    format: Format,
    values: Vec<Option<f64>>,
}

/// The categories along x (their values and their labels) and the series over them.
struct Layers {
    categories: Vec<Cell>,
    labels: Vec<String>,
    series: Vec<Series>,
    band: Option<Band>,
    capacity: Option<Series>,
}

/// A forecast along the x axis after the data: per category, the point and its 80 % and 95 %
/// bounds (`None` before the forecast starts).
struct Band {
    points: Vec<Option<[f64; 5]>>,
}

/// The forecast's rows as a band: at their period's place when the data has it (a period in
/// progress), else appended to `categories`.
fn band_of(chart: &Chart, categories: &mut Vec<Cell>) -> Option<Band> {
    let frame = chart.forecast.filter(|_| matches!(chart.kind, ChartKind::Line | ChartKind::Area))?;
    let columns: Vec<usize> = ["period", "value", "lower_80", "upper_80", "lower_95", "upper_95"]
        .iter()
        .map(|name| frame.index(name))
        .collect::<Option<_>>()?;
    let mut points = vec![None; categories.len()];
    for row in &frame.rows {
        let numbers: Option<Vec<f64>> = columns[1..].iter().map(|&i| row.get(i).and_then(Cell::number)).collect();
        let (Some(period), Some(numbers)) = (row.get(columns[0]), numbers) else { continue };
        let at = match categories.iter().position(|c| c.raw() == period.raw()) {
            Some(at) => at,
            None => {
                categories.push(period.clone());
                points.push(None);
                categories.len() - 1
            }
        };
        points[at] = Some([numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]]);
    }
    points.iter().any(Option::is_some).then_some(Band { points })
}

/// The capacity per category (`None` where it has no row), when there is a forecast to hold
/// against it.
fn capacity_of(chart: &Chart, categories: &[Cell]) -> Option<Series> {
    let frame = chart.capacity?;
    let (period, value) = (frame.index("period")?, frame.index("capacity")?);
    let at: HashMap<String, usize> = categories.iter().enumerate().map(|(i, c)| (c.raw(), i)).collect();
    let mut values = vec![None; categories.len()];
    for row in &frame.rows {
        if let (Some(&i), Some(v)) =
            (row.get(period).and_then(|p| at.get(&p.raw())), row.get(value).and_then(Cell::number))
        {
            values[i] = Some(v);
        }
    }
    let field = &frame.fields[value];
    Some(Series { label: field.label.clone(), raw: None, format: field.format.unwrap_or_default(), values })
}

/// The categories where the forecast's 95 % upper bound is over the capacity.
fn over_capacity(band: Option<&Band>, capacity: Option<&Series>) -> Vec<usize> {
    let (Some(band), Some(capacity)) = (band, capacity) else { return Vec::new() };
    band.points
        .iter()
        .zip(&capacity.values)
        .enumerate()
        .filter_map(|(i, (point, cap))| match (point, cap) {
            (Some([_, _, _, _, upper]), Some(cap)) if upper > cap => Some(i),
            _ => None,
        })
        .collect()
}

fn series_of(chart: &Chart) -> Result<Layers, ChartError> {
    let frame = chart.data;
    let x_name = chart.encoding.x.as_deref().unwrap_or_default();
    let x = frame.index(x_name).ok_or_else(|| ChartError::Incomplete("x: no column".into()))?;
    let mut categories = distinct(frame, x);
    let data_categories = categories.len();
    let band = band_of(chart, &mut categories);
    if categories.len() > MAX_CATEGORIES {
        return Err(ChartError::DoesNotFit(format!(
            "{} categories along x; a {} shows at most {MAX_CATEGORIES} (filter the data or use a table)",
            categories.len(),
            chart.kind.name()
        )));
    }
    let labels = category_labels(&categories);
    let position: HashMap<String, usize> =
        categories.iter().take(data_categories).enumerate().map(|(i, c)| (c.raw(), i)).collect();
    let mut series = Vec::new();
    match chart.encoding.series.as_deref().and_then(|s| frame.index(s)) {
        Some(split) => {
            let y = chart
                .encoding
                .y
                .first()
                .and_then(|y| frame.index(y))
                .ok_or_else(|| ChartError::Incomplete("y".into()))?;
            let format = frame.fields[y].format.unwrap_or_default();
            // Series in alphabetical order: a category keeps its colour from panel to panel.
            let mut names = distinct(frame, split);
            names.sort_by_key(Cell::label);
            let at: HashMap<String, usize> = names.iter().enumerate().map(|(i, c)| (c.raw(), i)).collect();
            series = names
                .iter()
                .map(|n| Series { label: n.label(), raw: Some(n.raw()), format, values: vec![None; categories.len()] })
                .collect();
            for row in &frame.rows {
                let (Some(c), Some(s)) = (row.get(x).map(Cell::raw), row.get(split).map(Cell::raw)) else { continue };
                if let (Some(&ci), Some(&si)) = (position.get(&c), at.get(&s)) {
                    series[si].values[ci] = row.get(y).and_then(Cell::number);
                }
            }
        }
        None => {
            for name in &chart.encoding.y {
                let Some(y) = frame.index(name) else { continue };
                let field = &frame.fields[y];
                let mut values = vec![None; categories.len()];
                for row in &frame.rows {
                    if let Some(&ci) = row.get(x).map(Cell::raw).and_then(|c| position.get(&c)) {
                        values[ci] = row.get(y).and_then(Cell::number);
                    }
                }
                series.push(Series {
                    label: field.label.clone(),
                    raw: None,
                    format: field.format.unwrap_or_default(),
                    values,
                });
            }
        }
    }
    let capacity = band.as_ref().and_then(|_| capacity_of(chart, &categories));
    Ok(Layers { categories, labels, series, band, capacity })
}

/// A value range from 0 (or below, for negatives) to a little above the largest value.
fn value_range(low: f64, high: f64) -> (f64, f64) {
    let low = low.min(0.0);
    let high = high.max(0.0);
    if (high - low).abs() < f64::EPSILON {
        return (low, low + 1.0);
    }
    (if low < 0.0 { low * 1.1 } else { low }, high * 1.08)
}

fn xy(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let Layers { categories, labels, series, band, capacity } = series_of(chart)?;
    let body = title(chart, root, colours)?;
    let mut items: Vec<(String, RGBColor)> =
        series.iter().enumerate().map(|(i, s)| (s.label.clone(), colour_of(chart, colours, i))).collect();
    if band.is_some() {
        // The band's own tint, so that the legend tells the forecast from the series.
        let swatch = blend(colour_of(chart, colours, 0), colours.background, 0.45);
        items.push(("Forecast (80 % and 95 % intervals)".to_string(), swatch));
    }
    let over = over_capacity(band.as_ref(), capacity.as_ref());
    if let Some(capacity) = &capacity {
        items.push((format!("Capacity: {}", capacity.label), colours.target));
        if !over.is_empty() {
            items.push(("Over capacity at the 95 % upper bound".to_string(), colours.bad));
        }
    }
    let (plot, legend_boxes) = legend(&body, &items, colours)?;
    let n = categories.len();
    let stacked = chart.encoding.stacked && series.len() > 1 && chart.kind != ChartKind::Line;
    let (mut low, mut high) = (0.0f64, 0.0f64);
    for ci in 0..n {
        let (mut up, mut down) = (0.0, 0.0);
        for s in &series {
            let v = s.values[ci].unwrap_or(0.0);
            if stacked {
                if v >= 0.0 { up += v } else { down += v }
            } else {
                high = high.max(v);
                low = low.min(v);
            }
        }
        if stacked {
            high = high.max(up);
            low = low.min(down);
        }
    }
    if let Some(target) = chart.encoding.target {
        high = high.max(target);
        low = low.min(target);
    }
    for [_, _, _, lower, upper] in band.iter().flat_map(|b| b.points.iter().flatten()) {
        high = high.max(*upper);
        low = low.min(*lower);
    }
    for v in capacity.iter().flat_map(|c| c.values.iter().flatten()) {
        high = high.max(*v);
        low = low.min(*v);
    }
    let (v0, v1) = value_range(low, high);
    let format = series.first().map(|s| s.format).unwrap_or_default();
    let horizontal = chart.kind == ChartKind::Bar && chart.encoding.horizontal;
    let label_style = text_style(LABEL_SIZE, false, colours.muted);
    let category_at = |v: f64| -> String {
        let i = v.round();
        if (v - i).abs() > 0.01 || i < 0.0 || i as usize >= n {
            return String::new();
        }
        labels[i as usize].clone()
    };
    let mut hits = Vec::new();
    let widest_label = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).min(24) as i32;
    let mut builder = ChartBuilder::on(&plot);
    builder.margin_left(PAD).margin_right(PAD + 4).margin_top(4).margin_bottom(4);
    if horizontal {
        let rows = n as f64;
        builder.x_label_area_size(22).y_label_area_size((widest_label as f64 * LABEL_SIZE * 0.62) as i32 + 10);
        let mut c = builder.build_cartesian_2d(v0..v1, -0.5..rows - 0.5).map_err(failed)?;
        let flip = |i: usize| (n - 1 - i) as f64;
        c.configure_mesh()
            .disable_y_mesh()
            .bold_line_style(colours.grid)
            .light_line_style(TRANSPARENT)
            .axis_style(colours.axis)
            .label_style(label_style.clone())
            .y_labels(n.min(30))
            .x_labels(5)
            .y_label_formatter(&|v| fit(&category_at(rows - 1.0 - *v), 24 * 8, LABEL_SIZE))
            .x_label_formatter(&|v| format.compact(*v))
            .draw()
            .map_err(failed)?;
        let m = series.len().max(1) as f64;
        for (si, s) in series.iter().enumerate() {
            let colour = colour_of(chart, colours, si);
            let mut offsets = vec![0.0; n];
            if stacked {
                for prior in &series[..si] {
                    for (ci, o) in offsets.iter_mut().enumerate() {
                        *o += prior.values[ci].unwrap_or(0.0);
                    }
                }
            }
            for (ci, value) in s.values.iter().enumerate() {
                let Some(v) = value else { continue };
                let (lo, hi) = if stacked {
                    (flip(ci) - 0.38, flip(ci) + 0.38)
                } else {
                    let band = 0.76 / m;
                    let lo = flip(ci) + 0.38 - band * (si as f64 + 1.0);
                    (lo, lo + band)
                };
                let base = offsets[ci];
                if *v != 0.0 {
                    c.draw_series(std::iter::once(Rectangle::new([(base, lo), (base + v, hi)], colour.filled())))
                        .map_err(failed)?;
                }
                let (ax, ay) = c.backend_coord(&(base.min(base + v), hi));
                let (bx, by) = c.backend_coord(&(base.max(base + v), lo));
                hits.push(hit((ax, ay, bx - ax, by - ay), &labels[ci], &categories[ci], s, *v));
            }
        }
    } else {
        let cols = n as f64;
        let y_label_width = (format.compact(v1).chars().count().max(format.compact(v0).chars().count()) as f64
            * LABEL_SIZE
            * 0.62) as i32
            + 10;
        // Room on the right for the half of the last x label that overhangs its column (weekly
        // charts have columns narrower than their labels).
        let (width, _) = plot.dim_in_pixel();
        let column = f64::from(width.saturating_sub(y_label_width as u32)) / cols.max(1.0);
        let overhang = (widest_label as f64 * LABEL_SIZE * 0.62 / 2.0 - column / 2.0).max(0.0) as i32;
        builder.margin_right(PAD + 4 + overhang);
        builder.x_label_area_size(26).y_label_area_size(y_label_width);
        let mut c = builder.build_cartesian_2d(-0.5..cols - 0.5, v0..v1).map_err(failed)?;
        // As many x labels as fit side by side.
        let label_px = (widest_label.max(4) as f64 * LABEL_SIZE * 0.62) as u32 + 12;
        let (plot_w, _) = plot.dim_in_pixel();
        let fits = ((plot_w.saturating_sub(y_label_width as u32)) / label_px.max(1)).max(2) as usize;
        c.configure_mesh()
            .disable_x_mesh()
            .bold_line_style(colours.grid)
            .light_line_style(TRANSPARENT)
            .axis_style(colours.axis)
            .label_style(label_style.clone())
            .x_labels(n.min(fits))
            .y_labels(5)
            .x_label_formatter(&|v| category_at(*v))
            .y_label_formatter(&|v| format.compact(*v))
            .draw()
            .map_err(failed)?;
        // The periods over capacity are shaded under the band, so that it shows through.
        for &i in &over {
            let x = i as f64;
            c.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.5, v0), (x + 0.5, v1)],
                colours.bad.mix(0.12).filled(),
            )))
            .map_err(failed)?;
        }
        if let (Some(band), Some(first)) = (&band, series.first()) {
            draw_band(&mut c, band, first, colour_of(chart, colours, 0), &labels, &mut hits)?;
        }
        if let (Some(capacity), Some(band)) = (&capacity, &band) {
            draw_capacity(&mut c, capacity, band, &over, colours.target, &labels, &mut hits)?;
        }
        let m = series.len().max(1) as f64;
        let mut baseline = vec![0.0; n];
        for (si, s) in series.iter().enumerate() {
            let colour = colour_of(chart, colours, si);
            match chart.kind {
                ChartKind::Bar => {
                    for (ci, value) in s.values.iter().enumerate() {
                        let Some(v) = value else { continue };
                        let (left, right, base) = if stacked {
                            (ci as f64 - 0.38, ci as f64 + 0.38, baseline[ci])
                        } else {
                            let band = 0.76 / m;
                            let left = ci as f64 - 0.38 + band * si as f64;
                            (left, left + band, 0.0)
                        };
                        // A bar of nothing is no rectangle (a zero height is invalid SVG); its hit stays.
                        if *v != 0.0 {
                            c.draw_series(std::iter::once(Rectangle::new(
                                [(left, base), (right, base + v)],
                                colour.filled(),
                            )))
                            .map_err(failed)?;
                        }
                        let (ax, ay) = c.backend_coord(&(left, base.max(base + v)));
                        let (bx, by) = c.backend_coord(&(right, base.min(base + v)));
                        hits.push(hit((ax, ay, bx - ax, by - ay), &labels[ci], &categories[ci], s, *v));
                        if stacked {
                            baseline[ci] += v;
                        }
                    }
                }
                _ => {
                    let points: Vec<(f64, f64)> = s
                        .values
                        .iter()
                        .enumerate()
                        .filter_map(|(ci, v)| v.map(|v| (ci as f64, v + if stacked { baseline[ci] } else { 0.0 })))
                        .collect();
                    // One point is a dot: a line or an area needs two.
                    let joined = points.len() > 1;
                    if chart.kind == ChartKind::Area && joined {
                        let floor: Vec<(f64, f64)> = s
                            .values
                            .iter()
                            .enumerate()
                            .filter(|(_, v)| v.is_some())
                            .map(|(ci, _)| (ci as f64, if stacked { baseline[ci] } else { 0.0 }))
                            .rev()
                            .collect();
                        let outline: Vec<(f64, f64)> = points.iter().copied().chain(floor).collect();
                        c.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.28).filled())))
                            .map_err(failed)?;
                    }
                    if joined {
                        c.draw_series(std::iter::once(PathElement::new(points.clone(), colour.stroke_width(2))))
                            .map_err(failed)?;
                    }
                    if points.len() <= 60 {
                        c.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled()))).map_err(failed)?;
                    }
                    for (ci, v) in s.values.iter().enumerate() {
                        let Some(v) = v else { continue };
                        let (px, py) = c.backend_coord(&(ci as f64, v + if stacked { baseline[ci] } else { 0.0 }));
                        hits.push(hit((px - 8, py - 8, 16, 16), &labels[ci], &categories[ci], s, *v));
                        if stacked {
                            baseline[ci] += v;
                        }
                    }
                }
            }
        }
        if let Some(target) = chart.encoding.target {
            c.draw_series(DashedLineSeries::new(
                [(-0.5, target), (cols - 0.5, target)],
                6,
                4,
                colours.target.stroke_width(2),
            ))
            .map_err(failed)?;
            let (tx, ty) = c.backend_coord(&(cols - 0.5, target));
            let (px, py) = plot.get_base_pixel();
            let (tx, ty) = (tx - px, ty - py);
            plot.draw(&Text::new(
                format!("Target {}", format.compact(target)),
                (tx - 4, ty - 4),
                anchored(text_style(LABEL_SIZE - 1.0, false, colours.target), HPos::Right, VPos::Bottom),
            ))
            .map_err(failed)?;
        }
    }
    // Legend entries drill down by series too.
    for ((x, y, w, h), s) in legend_boxes.into_iter().zip(&series) {
        hits.push(Hit {
            x,
            y,
            width: w,
            height: h,
            tooltip: s.label.clone(),
            category: None,
            series: s.raw.clone(),
            value: None,
        });
    }
    let mut summary = describe_series(chart.kind, &labels, &series);
    let forecast: Vec<(usize, [f64; 5])> =
        band.iter().flat_map(|b| b.points.iter().enumerate().filter_map(|(i, p)| p.map(|p| (i, p)))).collect();
    if let (Some((first, _)), Some((last, [value, _, _, lower, upper])), Some(s)) =
        (forecast.first(), forecast.last(), series.first())
    {
        summary.push_str(&format!(
            " Forecast from {} to {}: {} at the end (95 % interval {} to {}).",
            labels[*first],
            labels[*last],
            s.format.full(*value),
            s.format.full(*lower),
            s.format.full(*upper)
        ));
    }
    if let (Some(capacity), Some(s)) = (&capacity, series.first()) {
        let ahead = forecast.last().and_then(|(i, _)| capacity.values[*i]);
        if let Some(ahead) = ahead {
            summary.push_str(&format!(" {} ahead: {}", capacity.label, capacity.format.full(ahead)));
        }
        if over.is_empty() {
            summary.push_str(&format!("; {} stays under it at the 95 % upper bound.", s.label));
        } else {
            let periods: Vec<&str> = over.iter().map(|i| labels[*i].as_str()).collect();
            summary.push_str(&format!(
                "; over it at the 95 % upper bound in {} of {} periods ahead: {}.",
                over.len(),
                forecast.len(),
                periods.join(", ")
            ));
        }
    }
    Ok((hits, summary))
}

/// The capacity as a step line (each period level across its width), with a tooltip per period
/// that says when the forecast's 95 % upper bound is over it (the periods in `over`).
fn draw_capacity(
    c: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    capacity: &Series,
    band: &Band,
    over: &[usize],
    colour: RGBColor,
    labels: &[String],
    hits: &mut Vec<Hit>,
) -> Result<(), ChartError> {
    // Runs of consecutive periods with a capacity, each drawn as one stepped path.
    let mut run: Vec<(f64, f64)> = Vec::new();
    let mut runs = Vec::new();
    for (i, value) in capacity.values.iter().enumerate() {
        match value {
            Some(v) => {
                let x = i as f64;
                run.extend([(x - 0.5, *v), (x + 0.5, *v)]);
            }
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    runs.push(run);
    for run in runs.into_iter().filter(|r| !r.is_empty()) {
        c.draw_series(std::iter::once(PathElement::new(run, colour.stroke_width(2)))).map_err(failed)?;
    }
    let f = |v: f64| capacity.format.full(v);
    for (i, value) in capacity.values.iter().enumerate() {
        let Some(cap) = value else { continue };
        let (px, py) = c.backend_coord(&(i as f64, *cap));
        let tooltip = match band.points.get(i).copied().flatten() {
            Some([_, _, _, _, upper]) if over.contains(&i) => {
                format!(
                    "{} · {}: {}; the forecast's 95 % upper bound, {}, is over it",
                    labels[i],
                    capacity.label,
                    f(*cap),
                    f(upper)
                )
            }
            _ => format!("{} · {}: {}", labels[i], capacity.label, f(*cap)),
        };
        hits.push(Hit {
            x: px - 8,
            y: py - 6,
            width: 16,
            height: 12,
            tooltip,
            category: None,
            series: None,
            value: Some(*cap),
        });
    }
    Ok(())
}

/// The forecast's 95 % band, its 80 % band inside it, and its point forecast dashed on from the
/// series' last value; a hit per forecast period with the point and both intervals.
fn draw_band(
    c: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    band: &Band,
    series: &Series,
    colour: RGBColor,
    labels: &[String],
    hits: &mut Vec<Hit>,
) -> Result<(), ChartError> {
    let at: Vec<(usize, [f64; 5])> = band.points.iter().enumerate().filter_map(|(i, p)| p.map(|p| (i, p))).collect();
    let polygon = |lower: usize, upper: usize| -> Vec<(f64, f64)> {
        let top = at.iter().map(|(i, p)| (*i as f64, p[upper]));
        let bottom = at.iter().rev().map(|(i, p)| (*i as f64, p[lower]));
        top.chain(bottom).collect()
    };
    c.draw_series(std::iter::once(Polygon::new(polygon(3, 4), colour.mix(0.14).filled()))).map_err(failed)?;
    c.draw_series(std::iter::once(Polygon::new(polygon(1, 2), colour.mix(0.26).filled()))).map_err(failed)?;
    // Joined to the last value before the forecast starts (not to a period in progress under it).
    let start = at.first().map_or(0, |(i, _)| *i);
    let last = series.values[..start].iter().enumerate().rev().find_map(|(i, v)| v.map(|v| (i as f64, v)));
    let line: Vec<(f64, f64)> = last.into_iter().chain(at.iter().map(|(i, p)| (*i as f64, p[0]))).collect();
    c.draw_series(DashedLineSeries::new(line, 6, 4, colour.stroke_width(2))).map_err(failed)?;
    for (i, [value, lower_80, upper_80, lower_95, upper_95]) in &at {
        let (px, py) = c.backend_coord(&(*i as f64, *value));
        let f = |v: f64| series.format.full(v);
        hits.push(Hit {
            x: px - 8,
            y: py - 8,
            width: 16,
            height: 16,
            tooltip: format!(
                "{} · {} forecast: {} (80 %: {} – {}; 95 %: {} – {})",
                labels[*i],
                series.label,
                f(*value),
                f(*lower_80),
                f(*upper_80),
                f(*lower_95),
                f(*upper_95)
            ),
            category: None,
            series: None,
            value: Some(*value),
        });
    }
    Ok(())
}

fn hit((x, y, width, height): PixelBox, label: &str, category: &Cell, s: &Series, value: f64) -> Hit {
    Hit {
        x,
        y,
        width,
        height,
        tooltip: format!("{label} · {}: {}", s.label, s.format.full(value)),
        category: Some(category.raw()),
        series: s.raw.clone(),
        value: Some(value),
    }
}

fn describe_series(kind: ChartKind, labels: &[String], series: &[Series]) -> String {
    let mut parts = Vec::new();
    for s in series {
        let values: Vec<f64> = s.values.iter().flatten().copied().collect();
        let (Some(low), Some(high)) =
            (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max))
        else {
            continue;
        };
        parts.push(format!("{} from {} to {}", s.label, s.format.full(low), s.format.full(high)));
    }
    let span = match (labels.first(), labels.last()) {
        (Some(first), Some(last)) if labels.len() > 1 => {
            format!(" over {} categories, {first} to {last}", labels.len())
        }
        (Some(first), _) => format!(" for {first}"),
        _ => String::new(),
    };
    format!("{}{span}: {}.", kind.name(), parts.join("; "))
}

fn heatmap(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let Layers { categories, labels, series, .. } = series_of(chart)?;
    if series.len() > MAX_CATEGORIES {
        return Err(ChartError::DoesNotFit(format!("{} rows; a Heatmap shows at most {MAX_CATEGORIES}", series.len())));
    }
    let body = title(chart, root, colours)?;
    let (nx, ny) = (categories.len(), series.len());
    let values: Vec<f64> = series.iter().flat_map(|s| s.values.iter().flatten().copied()).collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if high > low { high - low } else { 1.0 };
    let widest = series.iter().map(|s| s.label.chars().count()).max().unwrap_or(4).min(20);
    let mut c = ChartBuilder::on(&body)
        .margin_left(PAD)
        .margin_right(PAD)
        .margin_bottom(4)
        .x_label_area_size(26)
        .y_label_area_size((widest as f64 * LABEL_SIZE * 0.62) as i32 + 10)
        .build_cartesian_2d(-0.5..nx as f64 - 0.5, -0.5..ny as f64 - 0.5)
        .map_err(failed)?;
    let category_at = |v: f64, n: usize, names: &dyn Fn(usize) -> String| -> String {
        let i = v.round();
        if (v - i).abs() > 0.01 || i < 0.0 || i as usize >= n { String::new() } else { names(i as usize) }
    };
    let row_name = |i: usize| series[ny - 1 - i].label.clone();
    let column_name = |i: usize| labels[i].clone();
    c.configure_mesh()
        .disable_mesh()
        .axis_style(colours.axis)
        .label_style(text_style(LABEL_SIZE, false, colours.muted))
        .x_labels(nx.min(12))
        .y_labels(ny.min(30))
        .x_label_formatter(&|v| category_at(*v, nx, &column_name))
        .y_label_formatter(&|v| category_at(*v, ny, &row_name))
        .draw()
        .map_err(failed)?;
    let mut hits = Vec::new();
    for (si, s) in series.iter().enumerate() {
        let row = (ny - 1 - si) as f64;
        for (ci, v) in s.values.iter().enumerate() {
            let Some(v) = v else { continue };
            let fill = colours.ramp((v - low) / span);
            let x = ci as f64;
            c.draw_series(std::iter::once(Rectangle::new(
                [(x - 0.48, row - 0.48), (x + 0.48, row + 0.48)],
                fill.filled(),
            )))
            .map_err(failed)?;
            let (ax, ay) = c.backend_coord(&(x - 0.5, row + 0.5));
            let (bx, by) = c.backend_coord(&(x + 0.5, row - 0.5));
            if bx - ax >= 40 && by - ay >= 16 {
                let ink = if (v - low) / span > 0.55 { colours.background } else { colours.text };
                body.draw(&Text::new(
                    s.format.compact(*v),
                    ((ax + bx) / 2 - body.get_base_pixel().0, (ay + by) / 2 - body.get_base_pixel().1),
                    anchored(text_style(LABEL_SIZE - 1.0, false, ink), HPos::Center, VPos::Center),
                ))
                .map_err(failed)?;
            }
            hits.push(hit((ax, ay, bx - ax, by - ay), &labels[ci], &categories[ci], s, *v));
        }
    }
    let format = series.first().map(|s| s.format).unwrap_or_default();
    let summary = format!(
        "Heatmap of {} rows by {} columns, values from {} to {}.",
        ny,
        nx,
        format.full(if low.is_finite() { low } else { 0.0 }),
        format.full(if high.is_finite() { high } else { 0.0 })
    );
    Ok((hits, summary))
}

/// Slices or stages: a label column's values with the first measure's, or one per measure.
fn parts(chart: &Chart) -> Vec<(String, Option<String>, f64, Format)> {
    let frame = chart.data;
    match chart.encoding.x.as_deref().and_then(|x| frame.index(x)) {
        Some(x) => {
            let Some(y) = chart.encoding.y.first().and_then(|y| frame.index(y)) else { return Vec::new() };
            let format = frame.fields[y].format.unwrap_or_default();
            frame
                .rows
                .iter()
                .map(|row| {
                    let cell = row.get(x).cloned().unwrap_or(Cell::Null);
                    (cell.label(), Some(cell.raw()), row.get(y).and_then(Cell::number).unwrap_or(0.0), format)
                })
                .collect()
        }
        None => chart
            .encoding
            .y
            .iter()
            .filter_map(|name| {
                let y = frame.index(name)?;
                let field = &frame.fields[y];
                let total = frame.rows.iter().filter_map(|r| r.get(y).and_then(Cell::number)).sum();
                Some((field.label.clone(), None, total, field.format.unwrap_or_default()))
            })
            .collect(),
    }
}

fn donut(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let slices = parts(chart);
    if slices.len() > MAX_DONUT_SLICES {
        return Err(ChartError::DoesNotFit(format!(
            "a Donut chart shows at most {MAX_DONUT_SLICES} slices and this data has {}; use a bar chart or a table",
            slices.len()
        )));
    }
    let body = title(chart, root, colours)?;
    let (w, h) = body.dim_in_pixel();
    let (bx, by) = body.get_base_pixel();
    let total: f64 = slices.iter().map(|s| s.2.max(0.0)).sum();
    let format = slices.first().map(|s| s.3).unwrap_or_default();
    let diameter = (h as i32 - 2 * PAD).min(w as i32 / 2).max(40);
    let radius = f64::from(diameter) / 2.0;
    let centre = (PAD + diameter / 2, (h as i32) / 2);
    let sizes: Vec<f64> = slices.iter().map(|s| s.2.max(0.0)).collect();
    // Without colours of its own, a slice takes its name's place in alphabetical order, as a
    // series does, so that a category has one colour on every panel.
    let mut names: Vec<&str> = slices.iter().map(|s| s.0.as_str()).collect();
    names.sort_unstable();
    let fills: Vec<RGBColor> = slices
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let rank =
                if chart.encoding.colours.is_empty() { names.binary_search(&s.0.as_str()).unwrap_or(i) } else { i };
            colour_of(chart, colours, rank)
        })
        .collect();
    let blanks: Vec<String> = vec![String::new(); slices.len()];
    // Pie takes backend coordinates: it is not moved with the area it is drawn on.
    let absolute = (bx + centre.0, by + centre.1);
    if total > 0.0 {
        let mut pie = Pie::new(&absolute, &radius, &sizes, &fills, &blanks);
        pie.start_angle(-90.0);
        pie.donut_hole(radius * 0.6);
        pie.label_style(text_style(1.0, false, colours.background));
        body.draw(&pie).map_err(failed)?;
    }
    body.draw(&Text::new(
        format.compact(total),
        centre,
        anchored(text_style(TITLE_SIZE + 3.0, true, colours.text), HPos::Center, VPos::Center),
    ))
    .map_err(failed)?;
    let mut hits = Vec::new();
    let left = PAD * 2 + diameter;
    let row = 20;
    let top = (h as i32 - row * slices.len() as i32).max(0) / 2;
    for (i, (label, raw, value, format)) in slices.iter().enumerate() {
        let y = top + i as i32 * row;
        body.draw(&Rectangle::new([(left, y + 4), (left + 10, y + 14)], fills[i].filled())).map_err(failed)?;
        let share = if total > 0.0 { value / total } else { 0.0 };
        let text = format!("{label} · {} ({})", format.compact(*value), Format::Percent.compact(share));
        body.draw(&Text::new(
            fit(&text, w as i32 - left - 14 - PAD, LABEL_SIZE),
            (left + 14, y + 9),
            anchored(text_style(LABEL_SIZE, false, colours.text), HPos::Left, VPos::Center),
        ))
        .map_err(failed)?;
        hits.push(Hit {
            x: bx + left,
            y: by + y,
            width: w as i32 - left - PAD,
            height: row,
            tooltip: format!("{label}: {} ({})", format.full(*value), Format::Percent.compact(share)),
            category: raw.clone(),
            series: None,
            value: Some(*value),
        });
    }
    let summary = format!(
        "Donut chart of {} slices totalling {}: {}.",
        slices.len(),
        format.full(total),
        slices.iter().map(|s| format!("{} {}", s.0, s.3.full(s.2))).collect::<Vec<_>>().join(", ")
    );
    Ok((hits, summary))
}

fn funnel(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let stages = parts(chart);
    if stages.len() > MAX_CATEGORIES {
        return Err(ChartError::DoesNotFit(format!(
            "{} stages; a Funnel shows at most {MAX_CATEGORIES}",
            stages.len()
        )));
    }
    let body = title(chart, root, colours)?;
    let (w, h) = body.dim_in_pixel();
    let (bx, by) = body.get_base_pixel();
    let first = stages.first().map(|s| s.2).unwrap_or(0.0);
    let widest = stages.iter().map(|s| s.2).fold(0.0, f64::max);
    let label_width =
        (stages.iter().map(|s| s.0.chars().count()).max().unwrap_or(4).min(22) as f64 * LABEL_SIZE * 0.62) as i32 + PAD;
    let value_width = 130;
    let bar_room = (w as i32 - label_width - value_width - 2 * PAD).max(40);
    let row = ((h as i32 - PAD) / stages.len().max(1) as i32).clamp(14, 44);
    let mut hits = Vec::new();
    for (i, (label, raw, value, format)) in stages.iter().enumerate() {
        let y = 4 + i as i32 * row;
        let width = if widest > 0.0 { ((value / widest) * f64::from(bar_room)) as i32 } else { 0 };
        let centre = PAD + label_width + bar_room / 2;
        let colour = colour_of(chart, colours, 0).mix(1.0 - 0.5 * i as f64 / stages.len().max(1) as f64);
        body.draw(&Rectangle::new([(centre - width / 2, y), (centre + width / 2 + 1, y + row - 4)], colour.filled()))
            .map_err(failed)?;
        body.draw(&Text::new(
            fit(label, label_width - 6, LABEL_SIZE),
            (PAD, y + (row - 4) / 2),
            anchored(text_style(LABEL_SIZE, false, colours.text), HPos::Left, VPos::Center),
        ))
        .map_err(failed)?;
        let share = if first > 0.0 { format!(" ({})", Format::Percent.compact(value / first)) } else { String::new() };
        let text = format!("{}{share}", format.full(*value));
        body.draw(&Text::new(
            text.clone(),
            (PAD + label_width + bar_room + 8, y + (row - 4) / 2),
            anchored(text_style(LABEL_SIZE, false, colours.muted), HPos::Left, VPos::Center),
        ))
        .map_err(failed)?;
        hits.push(Hit {
            x: bx,
            y: by + y,
            width: w as i32,
            height: row - 4,
            tooltip: format!("{label}: {text} of the first stage"),
            category: raw.clone(),
            series: None,
            value: Some(*value),
        });
    }
    let summary = format!(
        "Funnel of {} stages: {}.",
        stages.len(),
        stages.iter().map(|s| format!("{} {}", s.0, s.3.full(s.2))).collect::<Vec<_>>().join(", ")
    );
    Ok((hits, summary))
}

/// The rows of a table in the order asked, as indices into the frame's rows.
fn sorted_rows(chart: &Chart) -> Vec<usize> {
    let frame = chart.data;
    let mut order: Vec<usize> = (0..frame.rows.len()).collect();
    if let Some(column) = chart.encoding.sort.as_deref().and_then(|s| frame.index(s)) {
        let key = |i: &usize| frame.rows[*i].get(column).cloned().unwrap_or(Cell::Null);
        order.sort_by(|a, b| {
            let (a, b) = (key(a), key(b));
            let ordering = match (&a, &b) {
                (Cell::Number(x), Cell::Number(y)) => x.total_cmp(y),
                (Cell::Null, Cell::Null) => std::cmp::Ordering::Equal,
                // NULLs last, whatever the direction.
                (Cell::Null, _) => return std::cmp::Ordering::Greater,
                (_, Cell::Null) => return std::cmp::Ordering::Less,
                _ => a.label().cmp(&b.label()),
            };
            if chart.encoding.descending { ordering.reverse() } else { ordering }
        });
    }
    order
}

/// Rows per table page unless the encoding says.
const PAGE_SIZE: usize = 10;

fn table(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let frame = chart.data;
    let named: Vec<&String> =
        chart.encoding.x.iter().chain(chart.encoding.series.iter()).chain(chart.encoding.y.iter()).collect();
    let columns: Vec<usize> = if named.is_empty() {
        (0..frame.fields.len()).collect()
    } else {
        named.iter().filter_map(|n| frame.index(n)).collect()
    };
    let body = title(chart, root, colours)?;
    let (w, h) = body.dim_in_pixel();
    let (bx, by) = body.get_base_pixel();
    let row_height = 24;
    let page_size = chart.encoding.page_size.unwrap_or(PAGE_SIZE).max(1);
    let order = sorted_rows(chart);
    let pages = order.len().div_ceil(page_size).max(1);
    let page = chart.page.min(pages - 1);
    let shown = &order[(page * page_size).min(order.len())..((page + 1) * page_size).min(order.len())];
    // Column widths: each column's widest text, scaled to the width there is.
    let text_of = |row: usize, column: usize| -> String {
        let cell = frame.rows[row].get(column).cloned().unwrap_or(Cell::Null);
        match (frame.fields[column].format, cell.number()) {
            (Some(format), Some(n)) => format.full(n),
            _ => cell.label(),
        }
    };
    let natural: Vec<f64> = columns
        .iter()
        .map(|&c| {
            let widest = shown
                .iter()
                .map(|&r| text_of(r, c).chars().count())
                .chain([frame.fields[c].label.chars().count()])
                .max()
                .unwrap_or(4);
            widest.clamp(4, 40) as f64 * LABEL_SIZE * 0.62 + 16.0
        })
        .collect();
    let room = f64::from(w as i32 - 2 * PAD);
    let scale = room / natural.iter().sum::<f64>().max(1.0);
    let widths: Vec<i32> = natural.iter().map(|n| (n * scale) as i32).collect();
    let maxima: Vec<f64> = columns
        .iter()
        .map(|&c| frame.rows.iter().filter_map(|r| r.get(c).and_then(Cell::number)).map(f64::abs).fold(0.0, f64::max))
        .collect();
    let header = text_style(LABEL_SIZE, true, colours.text);
    let mut x = PAD;
    for (k, &c) in columns.iter().enumerate() {
        let numeric = frame.fields[c].format.is_some();
        let sorted_here = chart.encoding.sort.as_deref() == Some(frame.fields[c].name.as_str());
        let arrow = if sorted_here { if chart.encoding.descending { " ▼" } else { " ▲" } } else { "" };
        let label = fit(&format!("{}{arrow}", frame.fields[c].label), widths[k] - 8, LABEL_SIZE);
        let (tx, anchor) = if numeric { (x + widths[k] - 6, HPos::Right) } else { (x + 6, HPos::Left) };
        body.draw(&Text::new(label, (tx, row_height / 2), anchored(header.clone(), anchor, VPos::Center)))
            .map_err(failed)?;
        x += widths[k];
    }
    body.draw(&PathElement::new(vec![(PAD, row_height), (w as i32 - PAD, row_height)], colours.axis))
        .map_err(failed)?;
    let mut hits = Vec::new();
    let tint = colour_of(chart, colours, 0);
    let max_rows = ((h as i32 - 2 * row_height) / row_height).max(1) as usize;
    for (line, &r) in shown.iter().take(max_rows).enumerate() {
        let y = row_height * (line as i32 + 1);
        if line % 2 == 1 {
            body.draw(&Rectangle::new([(PAD, y), (w as i32 - PAD, y + row_height)], colours.grid.mix(0.35).filled()))
                .map_err(failed)?;
        }
        let mut x = PAD;
        for (k, &c) in columns.iter().enumerate() {
            let field = &frame.fields[c];
            let cell = frame.rows[r].get(c).cloned().unwrap_or(Cell::Null);
            let text = fit(&text_of(r, c), widths[k] - 10, LABEL_SIZE);
            match (field.format, cell.number()) {
                (Some(_), Some(n)) => {
                    // Conditional colour: a bar behind each number, its length the value's share of
                    // the column's largest; negative values in the "worse" colour.
                    if maxima[k] > 0.0 {
                        let length = ((n.abs() / maxima[k]) * f64::from(widths[k] - 8)) as i32;
                        let bar = if n < 0.0 { colours.bad } else { tint };
                        body.draw(&Rectangle::new(
                            [(x + widths[k] - 4 - length, y + 4), (x + widths[k] - 4, y + row_height - 4)],
                            bar.mix(0.18).filled(),
                        ))
                        .map_err(failed)?;
                    }
                    let ink = if n < 0.0 { colours.bad } else { colours.text };
                    body.draw(&Text::new(
                        text,
                        (x + widths[k] - 6, y + row_height / 2),
                        anchored(text_style(LABEL_SIZE, false, ink), HPos::Right, VPos::Center),
                    ))
                    .map_err(failed)?;
                    let category = chart
                        .encoding
                        .x
                        .as_deref()
                        .and_then(|x| frame.index(x))
                        .and_then(|i| frame.rows[r].get(i))
                        .map(Cell::raw);
                    hits.push(Hit {
                        x: bx + x,
                        y: by + y,
                        width: widths[k],
                        height: row_height,
                        tooltip: format!("{}: {}", field.label, field.format.unwrap_or_default().full(n)),
                        category,
                        series: None,
                        value: Some(n),
                    });
                }
                _ => {
                    body.draw(&Text::new(
                        text,
                        (x + 6, y + row_height / 2),
                        anchored(text_style(LABEL_SIZE, false, colours.text), HPos::Left, VPos::Center),
                    ))
                    .map_err(failed)?;
                }
            }
            x += widths[k];
        }
    }
    let first = page * page_size + 1;
    let last = page * page_size + shown.len().min(max_rows);
    let footer = format!("Rows {first}–{last} of {} · page {} of {pages}", order.len(), page + 1);
    body.draw(&Text::new(
        footer.clone(),
        (w as i32 - PAD, h as i32 - row_height / 2),
        anchored(text_style(LABEL_SIZE - 1.0, false, colours.muted), HPos::Right, VPos::Center),
    ))
    .map_err(failed)?;
    let summary = format!(
        "Table of {} rows and {} columns ({}); {footer}.",
        order.len(),
        columns.len(),
        columns.iter().map(|&c| frame.fields[c].label.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok((hits, summary))
}

fn kpi(chart: &Chart, root: &Area, colours: &Colours) -> Result<(Vec<Hit>, String), ChartError> {
    let frame = chart.data;
    let name = chart.encoding.y.first().map(String::as_str).unwrap_or_default();
    let index = frame.index(name);
    let field = index.map(|i| &frame.fields[i]);
    let format = field.and_then(|f| f.format).unwrap_or_default();
    let value = index.and_then(|i| frame.rows.first().and_then(|r| r.get(i)).and_then(Cell::number));
    let previous = chart
        .previous
        .and_then(|p| p.index(name).and_then(|i| p.rows.first().and_then(|r| r.get(i)).and_then(Cell::number)));
    let body = title(chart, root, colours)?;
    let (w, h) = body.dim_in_pixel();
    let (bx, by) = body.get_base_pixel();
    let big = (f64::from(h) * 0.32).clamp(20.0, 40.0);
    let shown = value.map(|v| format.compact(v)).unwrap_or_else(|| "–".into());
    body.draw(&Text::new(
        shown.clone(),
        (PAD, 2),
        anchored(text_style(big, true, colours.text), HPos::Left, VPos::Top),
    ))
    .map_err(failed)?;
    let mut summary =
        format!("{}: {}", chart.title, value.map(|v| format.full(v)).unwrap_or_else(|| "no value".into()));
    let mut line_y = 2 + big as i32 + 8;
    if let (Some(now), Some(before)) = (value, previous) {
        let change = if before != 0.0 { Some((now - before) / before.abs()) } else { None };
        let better = field.and_then(|f| f.higher_is_better).unwrap_or(true);
        let (arrow, colour) = if now > before {
            ("▲", if better { colours.good } else { colours.bad })
        } else if now < before {
            ("▼", if better { colours.bad } else { colours.good })
        } else {
            ("●", colours.muted)
        };
        let amount = match change {
            Some(c) => Format::Percent.compact(c.abs()),
            None => format.compact((now - before).abs()),
        };
        let text = format!("{arrow} {amount} vs previous period ({})", format.compact(before));
        body.draw(&Text::new(
            fit(&text, w as i32 - 2 * PAD, LABEL_SIZE),
            (PAD, line_y),
            anchored(text_style(LABEL_SIZE, false, colour), HPos::Left, VPos::Top),
        ))
        .map_err(failed)?;
        summary.push_str(&format!(
            ", {} from {} in the previous period",
            if now >= before { "up" } else { "down" },
            format.full(before)
        ));
        line_y += LABEL_SIZE as i32 + 6;
    }
    if let Some(target) = chart.encoding.target {
        let text = format!("Target {}", format.compact(target));
        body.draw(&Text::new(
            text,
            (PAD, line_y),
            anchored(text_style(LABEL_SIZE, false, colours.target), HPos::Left, VPos::Top),
        ))
        .map_err(failed)?;
        summary.push_str(&format!(", target {}", format.full(target)));
        line_y += LABEL_SIZE as i32 + 6;
    }
    if let Some(trend) = chart.trend
        && let Some(i) = trend.index(name)
    {
        let points: Vec<f64> = trend.rows.iter().filter_map(|r| r.get(i).and_then(Cell::number)).collect();
        let room = h as i32 - line_y - 4;
        if points.len() > 1 && room >= 16 {
            let (low, high) =
                points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
            let span = if high > low { high - low } else { 1.0 };
            let step = f64::from(w as i32 - 2 * PAD) / (points.len() - 1) as f64;
            let path: Vec<(i32, i32)> = points
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    (PAD + (step * k as f64) as i32, h as i32 - 4 - (((v - low) / span) * f64::from(room - 2)) as i32)
                })
                .collect();
            let colour = colour_of(chart, colours, 0);
            body.draw(&PathElement::new(path.clone(), colour.stroke_width(2))).map_err(failed)?;
            if let Some(end) = path.last() {
                body.draw(&Circle::new(*end, 3, colour.filled())).map_err(failed)?;
            }
            summary.push_str(&format!(
                "; trend over {} periods from {} to {}",
                points.len(),
                format.full(low),
                format.full(high)
            ));
        }
    }
    summary.push('.');
    let hits = vec![Hit {
        x: bx,
        y: by,
        width: w as i32,
        height: h as i32,
        tooltip: format!("{}: {}", chart.title, value.map(|v| format.full(v)).unwrap_or_else(|| "no value".into())),
        category: None,
        series: None,
        value,
    }];
    Ok((hits, summary))
}
