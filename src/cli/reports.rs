//! `sokana report list`, `sokana report run` and `sokana report deliveries`: the reports of the
//! project's dashboards; one report made now, as its role, into a directory (the PDF and CSV files
//! it would send) or sent by email; and the delivery ledger.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sokana::pipeline::Project;
use sokana::pipeline::runlog::{Delivery, DeliveryState};
use sokana::query::engine::Caller;
use sokana::report;
use sokana::report::job::{Reporting, summary};

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

/// What `sokana report run` was asked.
pub struct Run<'a> {
    pub name: &'a str,
    pub output: Option<&'a Path>,
    pub as_of: Option<chrono::NaiveDate>,
    pub send: bool,
    pub to: &'a [String],
}

/// The reports' shared state for the CLI: the serving engine (masking, audit) and the catalogs.
async fn reporting(project: &Project) -> Result<(Reporting, sokana::auth::Serving)> {
    let config = project.config();
    let serving = sokana::auth::serving(project).await?;
    let metrics = Arc::new(sokana::metrics::Catalog::load(&config.metrics_dir()));
    let dashboards = Arc::new(catalog(project));
    let reporting = Reporting::new(config, serving.engine.clone(), serving.auth.clone(), metrics, dashboards)?;
    Ok((reporting, serving))
}

/// Makes report `name` now (as if on `as_of`, when given) into a directory, or sends it.
pub async fn run(project: &Project, run: &Run<'_>) -> Result<()> {
    let (reporting, serving) = reporting(project).await?;
    let name = run.name;
    let (dashboard, report) = report::find(&reporting.dashboards, name)?;
    let to = run
        .to
        .iter()
        .map(|a| a.parse().with_context(|| format!("--to {a:?} is not an email address")))
        .collect::<Result<Vec<lettre::Address>>>()?;
    let send = run.send || !to.is_empty();
    let output = run.output.or((!send).then_some(Path::new(".")));
    let started = std::time::Instant::now();
    if report.spec.alert.is_some() && !send {
        // An alert makes no files: say what its condition finds, as a dry run of its next slot.
        let day = run.as_of.unwrap_or_else(|| chrono::Utc::now().with_timezone(&report.schedule.timezone).date_naive());
        if let Some(verdict) = reporting.evaluate_alert(name, day).await? {
            println!("{}: {}", if verdict.firing { "firing" } else { "quiet" }, verdict.summary);
            for row in &verdict.rows {
                println!("  {row}");
            }
        }
        serving.auth.audit().flush().await?;
        return Ok(());
    }
    if let Some(output) = output {
        let caller = Caller {
            user: format!("report:{name}"),
            scope: report.role.name().into(),
            origin: "report",
            ..Caller::cli()
        };
        let now = chrono::Utc::now();
        let today = run.as_of.unwrap_or_else(|| now.with_timezone(&report.schedule.timezone).date_naive());
        let warning = reporting.freshness_warning(dashboard, report, today)?;
        let made = report::render(&reporting.sources(), dashboard, report, today, now, &caller, warning).await?;
        if let Some(warning) = &made.warning {
            eprintln!("warning: {warning}");
        }
        write_files(name, &made, output)?;
        eprintln!("{name}: {} as {} in {} ms", made.period, report.role.name(), started.elapsed().as_millis());
        for h in &made.headlines {
            eprintln!("  {}: {}", h.title, h.value);
        }
    }
    if send {
        let outcome = reporting.send_now(name, "cli", &to, run.as_of).await?;
        print_deliveries(&outcome.deliveries, report.schedule.timezone);
        eprintln!("{name}: {} in {} ms", summary(&outcome.deliveries), started.elapsed().as_millis());
        let failed = outcome.deliveries.iter().filter(|d| d.state == DeliveryState::Failed).count();
        serving.auth.audit().flush().await?;
        if failed > 0 {
            bail!("{failed} message(s) of {name} were not sent (see `sokana report deliveries {name}`)");
        }
    }
    serving.auth.audit().flush().await?;
    Ok(())
}

fn write_files(name: &str, made: &report::Rendered, output: &Path) -> Result<()> {
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
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

/// `sokana report deliveries [NAME]`.
pub async fn deliveries(project: &Project, name: Option<&str>, limit: usize) -> Result<()> {
    let (reporting, _serving) = reporting(project).await?;
    let rows = reporting.deliveries(name, limit)?;
    if rows.is_empty() {
        eprintln!("no deliveries yet");
    }
    print_deliveries(&rows, sokana::metrics::spec::DEFAULT_TIMEZONE);
    Ok(())
}

fn print_deliveries(rows: &[Delivery], zone: chrono_tz::Tz) {
    for d in rows {
        println!(
            "{:<22} {:<24} {:<8} {:<32} {:<10} {:>2} {}{}",
            d.job.trim_start_matches("report:"),
            d.slot.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z"),
            d.trigger,
            d.recipient,
            d.state,
            d.attempts,
            if d.possible_repeat { "possible repeat; " } else { "" },
            d.detail.as_deref().unwrap_or("")
        );
    }
}
