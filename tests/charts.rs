//! Every chart type drawn from a small frame, in both themes: the SVG holds its data points (as
//! hit regions with their values), its axes' and legends' labels, a title and a description for
//! screen readers; encodings that do not fit their data are errors naming the field; the PNG
//! rasterised from the SVG is a picture of the stated size. The PNGs are kept as test artifacts
//! in `target/chart-artifacts/` for people to look at.

use sokana::chart::{self, Cell, Chart, ChartError, ChartKind, Encoding, Field, Format, Frame, Theme};

fn measure(name: &str, label: &str, format: Format) -> Field {
    Field { name: name.into(), label: label.into(), format: Some(format), higher_is_better: Some(true) }
}

fn dimension(name: &str, label: &str) -> Field {
    Field { name: name.into(), label: label.into(), format: None, higher_is_better: None }
}

fn text(t: &str) -> Cell {
    Cell::Text(t.into())
}

/// Monthly revenue by payment method: periods × two series.
fn revenue() -> Frame {
    let mut rows = Vec::new();
    for (i, month) in ["2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"].iter().enumerate() {
        rows.push(vec![text(month), text("card"), Cell::Number(20_000.0 + 5_000.0 * i as f64)]);
        rows.push(vec![text(month), text("cash"), Cell::Number(4_000.0 + 250.5 * i as f64)]);
    }
    Frame {
        fields: vec![
            dimension("period", "Month"),
            dimension("method", "Payment method"),
            measure("collected", "Revenue collected", Format::Usd),
        ],
        rows,
    }
}

fn stages() -> Frame {
    Frame {
        fields: vec![dimension("stage", "Stage"), measure("clients", "Clients", Format::Count)],
        rows: vec![
            vec![text("Lead"), Cell::Number(1500.0)],
            vec![text("Matched"), Cell::Number(900.0)],
            vec![text("Contract"), Cell::Number(420.0)],
            vec![text("Active"), Cell::Number(55.0)],
        ],
    }
}

/// Whether the SVG draws `text` as one text element (plotters writes each on its own line).
fn shows(svg: &str, text: &str) -> bool {
    svg.contains(&format!(">\n{text}\n</text>"))
}

fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn draw(id: &str, kind: ChartKind, encoding: &Encoding, data: &Frame, theme: Theme) -> Result<String, ChartError> {
    chart::render_svg(&Chart {
        id,
        kind,
        title: "Revenue collected",
        description: "",
        encoding,
        data,
        previous: None,
        trend: None,
        forecast: None,
        capacity: None,
        theme,
        width: 640,
        height: 320,
        page: 0,
    })
}

/// Draws in both themes, keeps the PNGs, and returns the light SVG.
fn drawn(id: &str, kind: ChartKind, encoding: &Encoding, data: &Frame) -> String {
    let mut light = String::new();
    for theme in [Theme::Light, Theme::Dark] {
        let svg = draw(id, kind, encoding, data, theme).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(svg.contains(&format!("<title id=\"{id}-title\">Revenue collected</title>")), "{id}: {svg}");
        assert!(svg.contains(&format!("aria-labelledby=\"{id}-title {id}-desc\"")), "{id}");
        assert!(svg.contains(&format!("<desc id=\"{id}-desc\">")), "{id}");
        let png = chart::render_png(&svg, 1.0).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(&png[1..4], b"PNG");
        // The PNG's width and height (IHDR) are the chart's.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().expect("width")), 640);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().expect("height")), 320);
        let name = format!("{id}-{}.png", if theme == Theme::Light { "light" } else { "dark" });
        std::fs::write(artifacts().join(name), png).expect("write artifact");
        if theme == Theme::Light {
            light = svg;
        }
    }
    light
}

fn enc(x: Option<&str>, y: &[&str], series: Option<&str>) -> Encoding {
    Encoding {
        x: x.map(String::from),
        y: y.iter().map(|s| s.to_string()).collect(),
        series: series.map(String::from),
        ..Encoding::default()
    }
}

#[test]
fn line_and_area_charts_show_every_point_their_axes_and_legend() {
    for kind in [ChartKind::Line, ChartKind::Area] {
        let mut encoding = enc(Some("period"), &["collected"], Some("method"));
        encoding.target = Some(30_000.0);
        let svg = drawn(&format!("{kind:?}").to_lowercase(), kind, &encoding, &revenue());
        for month in ["Jan 2026", "Feb 2026", "Mar 2026", "Apr 2026"] {
            assert!(svg.contains(month), "{kind:?}: x axis label {month}");
        }
        assert!(svg.contains("$20k") || svg.contains("$10k"), "{kind:?}: y axis in dollars");
        assert!(shows(&svg, "card") && shows(&svg, "cash"), "{kind:?}: legend");
        assert!(svg.contains("Target $30k"), "{kind:?}: target line");
        assert_eq!(svg.matches("class=\"hit\"").count(), 8 + 2, "{kind:?}: a hit region per point and legend entry");
        assert!(svg.contains("data-x=\"2026-03-01\" data-series=\"card\" data-value=\"30000\""), "{kind:?}");
        assert!(svg.contains("<title>Mar 2026 · card: $30,000.00</title>"), "{kind:?}: tooltip");
    }
}

#[test]
fn bar_charts_group_stack_and_lie_down() {
    let grouped =
        drawn("bar-grouped", ChartKind::Bar, &enc(Some("period"), &["collected"], Some("method")), &revenue());
    assert_eq!(grouped.matches("class=\"hit\"").count(), 10);
    assert!(grouped.contains("data-value=\"4751.5\""), "the last cash bar");
    let mut stacked = enc(Some("period"), &["collected"], Some("method"));
    stacked.stacked = true;
    let svg = drawn("bar-stacked", ChartKind::Bar, &stacked, &revenue());
    // Stacked, the axis reaches the largest total ($34,751.50), not the largest bar.
    assert!(svg.contains("$30k"), "stacked axis");
    let mut horizontal = enc(Some("stage"), &["clients"], None);
    horizontal.horizontal = true;
    let svg = drawn("bar-horizontal", ChartKind::Bar, &horizontal, &stages());
    for stage in ["Lead", "Matched", "Contract", "Active"] {
        assert!(shows(&svg, stage), "category {stage} down the side");
    }
    assert!(svg.contains("<title>Lead · Clients: 1,500</title>"));
}

#[test]
fn tables_sort_page_and_format() {
    let mut encoding =
        Encoding { sort: Some("collected".into()), descending: true, page_size: Some(5), ..Encoding::default() };
    let svg = drawn("table", ChartKind::Table, &encoding, &revenue());
    assert!(shows(&svg, "Revenue collected ▼"), "header marks the sort");
    assert!(shows(&svg, "$35,000.00") && shows(&svg, "$20,000.00"), "formatted numbers");
    assert!(svg.contains("Rows 1–5 of 8 · page 1 of 2"), "paged");
    assert!(!shows(&svg, "$4,000.00"), "the smallest row is on page 2");
    encoding.descending = false;
    let svg = draw("table2", ChartKind::Table, &encoding, &revenue(), Theme::Light).expect("table");
    assert!(shows(&svg, "$4,000.00"), "ascending, the smallest comes first");
}

#[test]
fn funnels_and_donuts_show_each_part_and_its_share() {
    let svg = drawn("funnel", ChartKind::Funnel, &enc(Some("stage"), &["clients"], None), &stages());
    assert!(shows(&svg, "Matched") && svg.contains("900 (60%)"), "stage, value and share of the first");
    assert_eq!(svg.matches("class=\"hit\"").count(), 4);
    let svg = drawn("donut", ChartKind::Donut, &enc(Some("stage"), &["clients"], None), &stages());
    assert!(svg.contains("Lead · 1.5k (52%)"), "legend with value and share: {svg}");
    assert!(shows(&svg, "2.9k"), "total in the middle");
    let many = Frame {
        fields: stages().fields,
        rows: (0..500).map(|i| vec![text(&format!("category {i}")), Cell::Number(1.0)]).collect(),
    };
    let e =
        draw("donut-many", ChartKind::Donut, &enc(Some("stage"), &["clients"], None), &many, Theme::Light).unwrap_err();
    assert!(matches!(e, ChartError::DoesNotFit(_)) && e.to_string().contains("500"), "{e}");
}

#[test]
fn heatmaps_colour_each_cell() {
    let svg = drawn("heatmap", ChartKind::Heatmap, &enc(Some("period"), &["collected"], Some("method")), &revenue());
    assert_eq!(svg.matches("class=\"hit\"").count(), 8);
    assert!(shows(&svg, "card") && shows(&svg, "cash") && shows(&svg, "Jan 2026"));
}

#[test]
fn kpi_tiles_show_value_change_target_and_trend() {
    let now = Frame {
        fields: vec![measure("collected", "Revenue collected", Format::Usd)],
        rows: vec![vec![Cell::Number(39_378.43)]],
    };
    let before = Frame { fields: now.fields.clone(), rows: vec![vec![Cell::Number(26_644.71)]] };
    let trend = Frame {
        fields: vec![dimension("period", "Month"), measure("collected", "Revenue collected", Format::Usd)],
        rows: (0..12)
            .map(|i| vec![text(&format!("2025-{:02}-01", i + 1)), Cell::Number(20_000.0 + 1_000.0 * i as f64)])
            .collect(),
    };
    let encoding = Encoding { y: vec!["collected".into()], target: Some(40_000.0), ..Encoding::default() };
    for theme in [Theme::Light, Theme::Dark] {
        let svg = chart::render_svg(&Chart {
            id: "kpi",
            kind: ChartKind::Kpi,
            title: "Revenue collected",
            description: "March 2026",
            encoding: &encoding,
            data: &now,
            previous: Some(&before),
            trend: Some(&trend),
            forecast: None,
            capacity: None,
            theme,
            width: 320,
            height: 160,
            page: 0,
        })
        .expect("kpi");
        assert!(shows(&svg, "$39.4k"), "the value");
        assert!(svg.contains("▲ 48% vs previous period ($26.6k)"), "the change: {svg}");
        assert!(svg.contains("Target $40k"));
        assert!(svg.contains("March 2026 Revenue collected: $39,378.43, up from $26,644.71"), "description");
        let png = chart::render_png(&svg, 2.0).expect("png");
        std::fs::write(artifacts().join(format!("kpi-{theme:?}.png").to_lowercase()), png).expect("artifact");
    }
}

#[test]
fn empty_error_and_mismatched_charts_say_so() {
    let empty = Frame { fields: revenue().fields, rows: Vec::new() };
    let svg = drawn("empty", ChartKind::Line, &enc(Some("period"), &["collected"], Some("method")), &empty);
    assert!(svg.contains("No data for these filters"));
    let e =
        draw("wrong", ChartKind::Line, &enc(Some("period"), &["amount"], None), &revenue(), Theme::Light).unwrap_err();
    assert_eq!(e.to_string(), "y: no column \"amount\" in the data (it has period, method, collected)");
    let e = draw("kind", ChartKind::Bar, &enc(Some("collected"), &["collected"], None), &revenue(), Theme::Light)
        .unwrap_err();
    assert!(e.to_string().starts_with("x: column \"collected\" is a measure"), "{e}");
    let e = draw("x", ChartKind::Line, &enc(None, &["collected"], None), &revenue(), Theme::Light).unwrap_err();
    assert!(e.to_string().starts_with("x: a Line chart needs"), "{e}");
    let chart = Chart {
        id: "error",
        kind: ChartKind::Bar,
        title: "Revenue collected",
        description: "",
        encoding: &Encoding::default(),
        data: &empty,
        previous: None,
        trend: None,
        forecast: None,
        capacity: None,
        theme: Theme::Light,
        width: 640,
        height: 320,
        page: 0,
    };
    let svg = chart::render_error(&chart, "the query ran longer than its limit <of 60 s>");
    assert!(svg.contains("⚠ the query ran longer than its limit &lt;of 60 s&gt;"), "{svg}");
    assert!(svg.contains("This panel could not be drawn"));
    std::fs::write(artifacts().join("error.png"), chart::render_png(&svg, 1.0).expect("png")).expect("artifact");
}

/// Weekly postpartum hours, their forecast three weeks on, and the capacity they are held
/// against: the forecast draws its bands, the capacity a step line, and the weeks whose 95 %
/// upper bound is over it are shaded, named in the description and in their tooltips.
#[test]
fn a_forecast_is_held_against_its_capacity_and_the_weeks_over_it_are_flagged() {
    let weeks = ["2026-09-28", "2026-10-05", "2026-10-12", "2026-10-19", "2026-10-26", "2026-11-02", "2026-11-09"];
    let hours = Field { higher_is_better: None, ..measure("postpartum_hours", "Postpartum hours", Format::Hours) };
    let data = Frame {
        fields: vec![dimension("period", "Week"), hours.clone()],
        rows: [150.0, 170.0, 160.0, 180.0].iter().zip(weeks).map(|(v, w)| vec![text(w), Cell::Number(*v)]).collect(),
    };
    let bound = |name: &str| Field { name: name.into(), ..hours.clone() };
    let forecast = Frame {
        fields: ["value", "lower_80", "upper_80", "lower_95", "upper_95"].iter().fold(
            vec![dimension("period", "Period")],
            |mut f, n| {
                f.push(bound(n));
                f
            },
        ),
        rows: [(weeks[4], 185.0), (weeks[5], 190.0), (weeks[6], 195.0)]
            .iter()
            .map(|(w, v)| {
                let mut row = vec![text(w)];
                row.extend([*v, v - 20.0, v + 20.0, v - 35.0, v + 35.0].map(Cell::Number));
                row
            })
            .collect(),
    };
    // Capacity 200 h before and 220 h ahead: 225 and 230 (upper 95) are over, 220 is not.
    let capacity = Frame {
        fields: vec![
            dimension("period", "Period"),
            Field { name: "capacity".into(), ..measure("a", "Hours available", Format::Hours) },
        ],
        rows: weeks
            .iter()
            .enumerate()
            .map(|(i, w)| vec![text(w), Cell::Number(if i < 4 { 200.0 } else { 220.0 })])
            .collect(),
    };
    let encoding = enc(Some("period"), &["postpartum_hours"], None);
    let chart = |theme| Chart {
        id: "capacity",
        kind: ChartKind::Line,
        title: "Postpartum hours against capacity",
        description: "",
        encoding: &encoding,
        data: &data,
        previous: None,
        trend: None,
        forecast: Some(&forecast),
        capacity: Some(&capacity),
        theme,
        width: 800,
        height: 360,
        page: 0,
    };
    let svg = chart::render_svg(&chart(Theme::Light)).expect("svg");
    for legend in
        ["Capacity: Hours available", "Over capacity at the 95 % upper bound", "Forecast (80 % and 95 % intervals)"]
    {
        assert!(shows(&svg, legend), "{legend}: {svg}");
    }
    assert!(
        svg.contains("Hours available ahead: 220.0 h; over it at the 95 % upper bound in 2 of 3 periods ahead"),
        "{svg}"
    );
    assert!(
        svg.contains("Hours available: 220.0 h; the forecast&#39;s 95 % upper bound, 225.0 h, is over it"),
        "{svg}"
    );
    assert!(!svg.contains("upper bound, 220.0 h, is over it"), "{svg}");
    for (theme, name) in [(Theme::Light, "capacity-light.png"), (Theme::Dark, "capacity-dark.png")] {
        let svg = chart::render_svg(&chart(theme)).expect("svg");
        std::fs::write(artifacts().join(name), chart::render_png(&svg, 1.0).expect("png")).expect("artifact");
    }
}
