//! `sokana report list` and `sokana report run`: the reports of the project's dashboards, and
//! one report made now, as its role, into a directory (the PDF and CSV files it would send).

use std::path::Path;

use anyhow::{Context, Result};
use sokana::dashboard::Sources;
use sokana::pipeline::Project;
use sokana::query::engine::Caller;
use sokana::report;

use super::dashboards::catalog;

pub fn list(project: &Project) -> Result<()> {
    let dashboards = catalog(project);
    for (dashboard, r) in report::all(&dashboards) {
        let formats: Vec<&str> = r.spec.formats.iter().map(|f| f.name()).collect();
        let recipients: Vec<String> = r.recipients.iter().map(ToString::to_string).collect();
        println!(
            "{:<20} {:<16} {:<16} {:<18} as {:<8} {:<8} {}",
            r.spec.name,
            dashboard.id,
            r.spec.schedule,
            r.schedule.timezone.name(),
            r.role.name(),
            formats.join("+"),
            recipients.join(", ")
        );
    }
    Ok(())
}

/// Makes report `name` now (as if on `as_of`, when given) into `output` (created if missing).
pub async fn run(project: &Project, name: &str, output: &Path, as_of: Option<chrono::NaiveDate>) -> Result<()> {
    let dashboards = catalog(project);
    let (dashboard, report) = report::find(&dashboards, name)?;
    let config = project.config();
    let serving = sokana::auth::serving(project).await?;
    let views = sokana::metrics::Catalog::load(&config.metrics_dir());
    let queries_dir = config.queries_dir();
    let sources = Sources { engine: &serving.engine, views: &views, queries_dir: &queries_dir };
    let caller =
        Caller { user: format!("report:{name}"), scope: report.role.name().into(), origin: "report", ..Caller::cli() };
    let now = chrono::Utc::now();
    let today = as_of.unwrap_or_else(|| now.with_timezone(&report.schedule.timezone).date_naive());
    let started = std::time::Instant::now();
    let made = report::render(&sources, dashboard, report, today, now, &caller).await?;
    std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
    let mut written = Vec::new();
    if let Some(pdf) = &made.pdf {
        written.push((output.join(format!("{name}.pdf")), pdf.as_slice()));
    }
    for (file, bytes) in &made.csv {
        written.push((output.join(file), bytes.as_slice()));
    }
    for (path, bytes) in &written {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    serving.auth.audit().flush().await?;
    eprintln!("{name}: {} as {} in {} ms", made.period, report.role.name(), started.elapsed().as_millis());
    for h in &made.headlines {
        eprintln!("  {}: {}", h.title, h.value);
    }
    for (path, bytes) in &written {
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}
