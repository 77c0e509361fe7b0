//! `sokana dashboard list` and `sokana dashboard render`: the dashboards of the project, and one
//! dashboard or panel drawn to SVG or PNG from the command line (as the administrator at the
//! terminal, who can read the warehouse's files anyway).

use std::path::Path;

use anyhow::{Context, Result, bail};
use sokana::chart::Theme;
use sokana::dashboard::{self, Catalog, Selection, Sources};
use sokana::pipeline::Project;
use sokana::query::engine::Caller;

/// The project's dashboards (and their reports); a file that did not load is a warning.
pub fn catalog(project: &Project) -> Catalog {
    let catalog = Catalog::load(&project.config().dashboards_dir());
    for problem in catalog.problems() {
        eprintln!("warning: {problem}");
    }
    catalog
}

pub fn list(project: &Project) -> Result<()> {
    for d in catalog(project).dashboards() {
        println!("{:<18} {:<24} {} panel(s)  {}", d.id, d.file.title, d.file.panels.len(), d.path.display());
    }
    Ok(())
}

/// What `render` draws, and where.
pub struct Render<'a> {
    pub id: &'a str,
    pub panel: Option<&'a str>,
    pub png: bool,
    pub dark: bool,
    pub output: &'a Path,
    /// `NAME=VALUE` filter values, as in the dashboard's URL.
    pub filters: &'a [String],
}

pub async fn render(project: &Project, what: Render<'_>) -> Result<()> {
    let config = project.config();
    let dashboards = catalog(project);
    let dashboard = dashboards.get(what.id)?;
    let pairs: Vec<(String, String)> = what
        .filters
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--filter {f:?}: expected NAME=VALUE"))
        })
        .collect::<Result<_>>()?;
    let selection =
        Selection::from_pairs(dashboard, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), dashboard::today())?;
    let engine = project.query_engine()?;
    let views = sokana::metrics::Catalog::load(&config.metrics_dir());
    let queries_dir = config.queries_dir();
    let sources = Sources { engine: &engine, views: &views, queries_dir: &queries_dir };
    let caller = Caller { origin: "dashboard", ..Caller::cli() };
    dashboard::check_values(&engine, &views, dashboard, &selection, &caller).await?;
    let theme = if what.dark { Theme::Dark } else { Theme::Light };
    let panels: Vec<&dashboard::PanelSpec> = match what.panel {
        Some(id) => match dashboard.panel(id) {
            Some(panel) => vec![panel],
            None => bail!("dashboard {} has no panel {id:?}; it has {}", dashboard.id, panel_ids(dashboard)),
        },
        None => dashboard.file.panels.iter().collect(),
    };
    let mut drawn = Vec::new();
    for panel in &panels {
        let svg = match dashboard::panel_data(&sources, dashboard, panel, &selection, &caller).await {
            Ok(data) => dashboard::render(dashboard, panel, &data, theme, None, 0)?,
            Err(e) if what.panel.is_none() => {
                eprintln!("warning: panel {}: {e}", panel.id);
                dashboard::render_error(dashboard, panel, &e.to_string(), theme)
            }
            Err(e) => return Err(e.into()),
        };
        drawn.push(svg);
    }
    let svg = match what.panel {
        Some(_) => drawn.into_iter().next().unwrap_or_default(),
        None => dashboard::compose(dashboard, &drawn, theme),
    };
    let bytes = if what.png { sokana::chart::render_png(&svg, 2.0)? } else { svg.into_bytes() };
    std::fs::write(what.output, bytes).with_context(|| format!("writing {}", what.output.display()))?;
    eprintln!("wrote {}", what.output.display());
    Ok(())
}

fn panel_ids(dashboard: &dashboard::Dashboard) -> String {
    dashboard.file.panels.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
}
