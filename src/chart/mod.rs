//! Charts drawn in Rust: a table of values and an encoding in, an SVG out (and PNG, rasterised
//! from that SVG), so that the web page, the PNG export and the PDF report show the same picture.
//! KPI tiles, line and area, bar (grouped, stacked, horizontal), table, funnel, heatmap and donut;
//! one theme, light and dark; number formats; empty and error states; a title and a description
//! for screen readers in every SVG; hit regions carrying each mark's values, for tooltips and
//! drill-down. It knows nothing of where data comes from: no queries, no metrics, no HTTP.

mod draw;
pub mod format;
pub mod theme;

use std::sync::Once;

use serde::{Deserialize, Serialize};

pub use format::Format;
pub use theme::Theme;

/// One value of a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Number(f64),
    Text(String),
}

impl Cell {
    pub fn number(&self) -> Option<f64> {
        match self {
            Cell::Number(n) if n.is_finite() => Some(*n),
            _ => None,
        }
    }

    /// The value as a label: text as it is, numbers in full, NULL as "(none)".
    pub fn label(&self) -> String {
        match self {
            Cell::Null => "(none)".into(),
            Cell::Number(n) => Format::Number.full(*n),
            Cell::Text(t) => t.clone(),
        }
    }

    /// The value as a drill-down filter takes it (NULL as empty).
    pub fn raw(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Number(n) => n.to_string(),
            Cell::Text(t) => t.clone(),
        }
    }
}

/// A column of a frame: its name, what readers call it, and for measures how values read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    pub label: String,
    /// Set for measures (numbers); `None` for dimensions and periods.
    pub format: Option<Format>,
    /// Whether a rise is good news (KPI arrows, table colours); measures only.
    #[serde(default)]
    pub higher_is_better: Option<bool>,
}

/// The values a chart draws: columns and rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub fields: Vec<Field>,
    pub rows: Vec<Vec<Cell>>,
}

impl Frame {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    /// One number, its change against the previous period, and a sparkline.
    Kpi,
    Line,
    Area,
    Bar,
    Table,
    Funnel,
    Heatmap,
    Donut,
}

impl ChartKind {
    pub fn name(self) -> &'static str {
        match self {
            ChartKind::Kpi => "KPI",
            ChartKind::Line => "Line chart",
            ChartKind::Area => "Area chart",
            ChartKind::Bar => "Bar chart",
            ChartKind::Table => "Table",
            ChartKind::Funnel => "Funnel",
            ChartKind::Heatmap => "Heatmap",
            ChartKind::Donut => "Donut chart",
        }
    }
}

/// Which columns a chart draws, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// The category or period along the x axis (the stages of a funnel, the slices of a donut).
    pub x: Option<String>,
    /// The measures drawn (the first only, where a chart draws one).
    #[serde(default)]
    pub y: Vec<String>,
    /// A column whose values split one measure into series (the rows of a heatmap).
    pub series: Option<String>,
    /// Bars stacked rather than side by side; areas stacked.
    #[serde(default)]
    pub stacked: bool,
    /// Bars along the y axis, categories down the side.
    #[serde(default)]
    pub horizontal: bool,
    /// A target drawn as a line across the chart (or shown under a KPI).
    pub target: Option<f64>,
    /// Series colours as `#rrggbb`, in series order; the palette fills in the rest.
    #[serde(default)]
    pub colours: Vec<String>,
    /// Tables: the column rows are sorted by, and the direction.
    pub sort: Option<String>,
    #[serde(default)]
    pub descending: bool,
    /// Tables: rows per page.
    pub page_size: Option<usize>,
}

/// The most slices a donut shows: beyond this a reader cannot tell them apart.
pub const MAX_DONUT_SLICES: usize = 12;
/// The most categories a bar chart or a heatmap axis shows.
pub const MAX_CATEGORIES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartError {
    /// The encoding names a column the data does not have.
    #[error("{role}: no column {name:?} in the data (it has {available})")]
    UnknownField { role: &'static str, name: String, available: String },
    /// The encoding names a column of the wrong kind (a dimension where a measure is needed).
    #[error("{role}: column {name:?} is {found}, and a {kind} needs {needed} there")]
    WrongKind { role: &'static str, name: String, found: &'static str, needed: &'static str, kind: &'static str },
    /// The encoding lacks what the chart needs.
    #[error("{0}")]
    Incomplete(String),
    /// The data does not fit the chart (too many slices or categories).
    #[error("{0}")]
    DoesNotFit(String),
    #[error("drawing the chart: {0}")]
    Draw(String),
    #[error("rasterising the chart: {0}")]
    Raster(String),
}

/// What a column is, as an encoding check needs to know it before any data arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Measure,
    Dimension,
}

/// Checks `encoding` for a `kind` chart against the columns its data will have (name, kind):
/// every column named exists and is of the kind the chart needs there.
pub fn check(kind: ChartKind, encoding: &Encoding, fields: &[(String, FieldKind)]) -> Result<(), ChartError> {
    let available = || fields.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let find = |role: &'static str, name: &str| {
        fields.iter().find(|(n, _)| n == name).map(|(_, k)| *k).ok_or_else(|| ChartError::UnknownField {
            role,
            name: name.to_string(),
            available: available(),
        })
    };
    let want = |role: &'static str, name: &str, needed: FieldKind| -> Result<(), ChartError> {
        let found = find(role, name)?;
        if found == needed {
            return Ok(());
        }
        let word = |k: FieldKind| if k == FieldKind::Measure { "a measure" } else { "a dimension or period" };
        Err(ChartError::WrongKind {
            role,
            name: name.to_string(),
            found: word(found),
            needed: word(needed),
            kind: kind.name(),
        })
    };
    if kind != ChartKind::Table && encoding.y.is_empty() {
        return Err(ChartError::Incomplete(format!("y: a {} needs at least one measure", kind.name())));
    }
    for y in &encoding.y {
        want("y", y, FieldKind::Measure)?;
    }
    if let Some(x) = &encoding.x {
        want("x", x, FieldKind::Dimension)?;
    }
    if let Some(series) = &encoding.series {
        want("series", series, FieldKind::Dimension)?;
    }
    if let Some(sort) = &encoding.sort {
        find("sort", sort)?;
    }
    let needs_x =
        matches!(kind, ChartKind::Line | ChartKind::Area | ChartKind::Bar | ChartKind::Heatmap | ChartKind::Donut);
    if needs_x && encoding.x.is_none() {
        return Err(ChartError::Incomplete(format!("x: a {} needs a category or period column", kind.name())));
    }
    if kind == ChartKind::Heatmap && encoding.series.is_none() {
        return Err(ChartError::Incomplete("series: a Heatmap needs a second dimension for its rows".into()));
    }
    if kind == ChartKind::Funnel && encoding.x.is_none() && encoding.y.len() < 2 {
        return Err(ChartError::Incomplete(
            "a Funnel needs either x (a stage column) or at least two measures (one per stage)".into(),
        ));
    }
    if encoding.series.is_some() && encoding.y.len() > 1 {
        return Err(ChartError::Incomplete(
            "series: split one measure into series, or draw several measures, not both".into(),
        ));
    }
    for colour in &encoding.colours {
        if theme::parse_hex(colour).is_none() {
            return Err(ChartError::Incomplete(format!("colours: {colour:?} is not a colour like #0072b2")));
        }
    }
    Ok(())
}

/// Everything one drawing needs.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Unique within a page: the SVG's element ids start with it.
    pub id: &'a str,
    pub kind: ChartKind,
    pub title: &'a str,
    pub description: &'a str,
    pub encoding: &'a Encoding,
    pub data: &'a Frame,
    /// The previous period's data (KPI change).
    pub previous: Option<&'a Frame>,
    /// A time series of the KPI's measure (its sparkline).
    pub trend: Option<&'a Frame>,
    /// Line and area charts: the measure forecast past the data, columns `period`, `value`,
    /// `lower_80`, `upper_80`, `lower_95`, `upper_95`; drawn as a dashed line in its bands.
    pub forecast: Option<&'a Frame>,
    /// With a forecast: what its demand is held against, columns `period` and `capacity`; drawn
    /// as a step line, with the periods whose 95 % upper bound is over it flagged.
    pub capacity: Option<&'a Frame>,
    pub theme: Theme,
    pub width: u32,
    pub height: u32,
    /// Tables: the page shown, from 0.
    pub page: usize,
}

/// The font every chart is measured and rasterised with (DejaVu Sans, shipped in the `dejavu`
/// crate; SVG in a browser uses the page's sans-serif, with the same metrics to within a few %).
const FONT_FAMILY: &str = "sans-serif";

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        use plotters::style::FontStyle;
        // The bytes are a valid font shipped in the crate; a failure would leave text unmeasured,
        // which plotters reports as a drawing error on first use.
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT_FAMILY, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Escapes text for SVG/XML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A mark a reader can point at or focus: its box, what its tooltip says, and the values it
/// stands for (for drill-down).
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub x: i32,
    pub y: i32,
    pub width: i32,
    pub height: i32,
    pub tooltip: String,
    pub category: Option<String>,
    pub series: Option<String>,
    pub value: Option<f64>,
}

/// Draws `chart` as SVG: checked first (a mistake in the encoding is an error, not a blank
/// picture); no rows is the empty state.
pub fn render_svg(chart: &Chart) -> Result<String, ChartError> {
    register_fonts();
    let fields: Vec<(String, FieldKind)> = chart
        .data
        .fields
        .iter()
        .map(|f| (f.name.clone(), if f.format.is_some() { FieldKind::Measure } else { FieldKind::Dimension }))
        .collect();
    check(chart.kind, chart.encoding, &fields)?;
    let (svg, hits, summary) = if chart.data.rows.is_empty() && chart.kind != ChartKind::Kpi {
        let svg = draw::message(chart, "No data for these filters", false)?;
        (svg, Vec::new(), "No data for these filters.".to_string())
    } else {
        draw::chart(chart)?
    };
    Ok(accessible(chart, svg, &hits, &summary))
}

/// The error state: the panel's title and what went wrong, in the same frame as a chart.
pub fn render_error(chart: &Chart, message: &str) -> String {
    register_fonts();
    let svg = draw::message(chart, message, true).unwrap_or_default();
    accessible(chart, svg, &[], &format!("This panel could not be drawn: {message}"))
}

/// Adds the title and description screen readers announce, and the hit regions.
fn accessible(chart: &Chart, svg: String, hits: &[Hit], summary: &str) -> String {
    let id = escape(chart.id);
    let description =
        if chart.description.is_empty() { summary.to_string() } else { format!("{} {summary}", chart.description) };
    let head = format!(
        "<title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc>",
        escape(chart.title),
        escape(&description)
    );
    let mut regions = String::new();
    if !hits.is_empty() {
        regions.push_str("<g class=\"hits\">");
        for hit in hits {
            regions.push_str(&format!(
                "<rect class=\"hit\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"transparent\" tabindex=\"0\"",
                hit.x,
                hit.y,
                hit.width.max(1),
                hit.height.max(1)
            ));
            if let Some(category) = &hit.category {
                regions.push_str(&format!(" data-x=\"{}\"", escape(category)));
            }
            if let Some(series) = &hit.series {
                regions.push_str(&format!(" data-series=\"{}\"", escape(series)));
            }
            if let Some(value) = hit.value {
                regions.push_str(&format!(" data-value=\"{value}\""));
            }
            regions.push_str(&format!("><title>{}</title></rect>", escape(&hit.tooltip)));
        }
        regions.push_str("</g>");
    }
    // A picture is one image to a screen reader; with focusable marks it is a group of them
    // (an image's content is presentational, so focusable marks inside one are unreachable).
    let role = if hits.is_empty() { "img" } else { "group" };
    let opened = svg.find("<svg").and_then(|start| svg[start..].find('>').map(|end| start + end));
    match (opened, svg.rfind("</svg>")) {
        (Some(open_end), Some(close)) if close > open_end => format!(
            "{} role=\"{role}\" aria-labelledby=\"{id}-title {id}-desc\" class=\"chart chart-{kind}\">{head}{}{regions}</svg>\n",
            &svg[..open_end],
            &svg[open_end + 1..close],
            kind = chart.kind.name().to_lowercase().replace(' ', "-"),
        ),
        _ => svg,
    }
}

/// The SVG as PNG at `scale` (2 for sharp screens), text in the shipped font.
pub fn render_png(svg: &str, scale: f32) -> Result<Vec<u8>, ChartError> {
    use resvg::{tiny_skia, usvg};
    let mut options = usvg::Options::default();
    let fonts = options.fontdb_mut();
    fonts.load_font_data(dejavu::sans::regular().to_vec());
    fonts.load_font_data(dejavu::sans::bold().to_vec());
    fonts.set_sans_serif_family("DejaVu Sans");
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| ChartError::Raster(e.to_string()))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or_else(|| ChartError::Raster("empty picture".into()))?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| ChartError::Raster(format!("a {}×{} picture", size.width(), size.height())))?;
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| ChartError::Raster(e.to_string()))
}
