//! The web pages `sokana serve` answers: sign-in (with the second factor and its enrolment), the
//! dashboards a role may open, each dashboard with its filters in the URL, the table and
//! freshness browser and the SQL console. Pages are HTML from the server (`maud`) with one style
//! sheet and one script embedded in the binary; panels are the same SVG charts the API serves,
//! fetched by the script one by one so that each shows as soon as its data is in. Every page has
//! its own Content-Security-Policy: scripts, styles and connections to this server only.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use super::auth::Authenticated;
use super::{AppState, RequestId};
use crate::auth::{Identity, Permission};
use crate::dashboard::{self, Dashboard, FilterKind, Preset, Selection};

/// The style sheet and the script, served under a name that changes with their content so that
/// browsers may keep them for a year.
const STYLE: &str = include_str!("assets/app.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// What pages may load and from where: this server only; no inline script or style; SVG charts
/// are inlined markup (not scripts), so they need nothing more.
pub(super) const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// An asset as served: its name carries a hash of its content (`app.<hash>.css`).
struct Asset {
    name: String,
    content: &'static str,
    content_type: &'static str,
}

impl Asset {
    fn new(file: &str, content: &'static str, content_type: &'static str) -> Asset {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(content.as_bytes());
        let (stem, extension) = file.split_once('.').unwrap_or((file, ""));
        Asset { name: format!("{stem}.{}.{extension}", &hex::encode(digest)[..12]), content, content_type }
    }
}

/// The style sheet and the script, named once at first use.
fn assets() -> &'static [Asset; 2] {
    static ASSETS: std::sync::LazyLock<[Asset; 2]> = std::sync::LazyLock::new(|| {
        [
            Asset::new("app.css", STYLE, "text/css; charset=utf-8"),
            Asset::new("app.js", SCRIPT, "text/javascript; charset=utf-8"),
        ]
    });
    &ASSETS
}

/// `GET /assets/{file}`: the style sheet or the script, by their current names only.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match assets().iter().find(|a| a.name == file) {
        Some(asset) => {
            let mut response = asset.content.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
            response
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The `<head>` of every page: encoding, viewport, colour schemes, `title`, the assets.
fn head(title: &str) -> Markup {
    let [style, script] = assets();
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            title { (title) }
            link rel="icon" href="data:,";
            link rel="stylesheet" href={ "/assets/" (style.name) };
            script src={ "/assets/" (script.name) } defer {}
        }
    }
}

/// A page as a response, with the pages' policy.
pub(super) fn page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, axum::response::Html(markup.into_string())).into_response();
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
    response
}

/// Where a page's navigation leads, for the signed-in caller's role.
fn navigation(who: &Identity, active: &str) -> Markup {
    let links = [
        ("/dashboards", "Dashboards", Permission::ViewDashboards),
        ("/tables", "Tables", Permission::ReadCatalog),
        ("/sql", "SQL", Permission::RunSql),
    ];
    html! {
        header.top {
            a.brand href="/dashboards" { "Sokana" }
            nav aria-label="Main" {
                @for (href, label, permission) in links {
                    @if who.may(permission) {
                        a href=(href) aria-current=[(active == href).then_some("page")] { (label) }
                    }
                }
            }
            span.who { (who.user) " · " (who.role.name()) }
            button.link #sign-out type="button" { "Sign out" }
        }
    }
}

/// The frame of every page: head, the navigation when someone is signed in, `body`.
fn layout(title: &str, who: Option<(&Identity, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("{title} · Sokana")))
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some((identity, active)) = who { (navigation(identity, active)) }
                main #main { (body) }
            }
        }
    }
}

/// A page that says what went wrong, in the frame of the others.
pub(super) fn error_page(status: StatusCode, who: Option<&Identity>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    page(
        status,
        layout(
            title,
            who.map(|w| (w, "")),
            html! {
                h1 { (title) }
                p.notice role="alert" { (message) }
                p { a href="/dashboards" { "Back to the dashboards" } }
            },
        ),
    )
}

/// `GET /`: the dashboards.
pub(super) async fn home() -> Redirect {
    Redirect::to("/dashboards")
}

/// `GET /login`: the sign-in form. The script posts it to the JSON API, asks for a code when the
/// account has a second factor, and walks an account that must set one up through it.
pub(super) async fn login() -> Response {
    page(
        StatusCode::OK,
        layout(
            "Sign in",
            None,
            html! {
                div.login {
                    h1 { "Sokana Analytics" }
                    form #login method="post" action="/login" novalidate {
                        div.field {
                            label for="username" { "User name" }
                            input #username name="username" autocomplete="username" required autofocus;
                        }
                        div.field {
                            label for="password" { "Password" }
                            input #password name="password" type="password" autocomplete="current-password" required;
                        }
                        div.field #code-field hidden {
                            label for="totp" { "Code from your authenticator app" }
                            input #totp name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}";
                        }
                        p.notice #login-error role="alert" hidden {}
                        button.primary type="submit" { "Sign in" }
                    }
                    form #enrol hidden {
                        h2 { "Set up your second factor" }
                        p { "Your role needs a code from an authenticator app at every sign-in. Add this account to the app with the key below (or the link), then enter the code it shows." }
                        p { code #enrol-secret {} }
                        p { a #enrol-link href="#" { "Open in an authenticator app" } }
                        div.field {
                            label for="enrol-code" { "Code" }
                            input #enrol-code inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" required;
                        }
                        p.notice #enrol-error role="alert" hidden {}
                        button.primary type="submit" { "Confirm" }
                    }
                    div #recovery hidden {
                        h2 { "Recovery codes" }
                        p { "Keep these where you keep your passwords: each signs you in once if you lose the app." }
                        pre #recovery-codes {}
                        a.button.primary #recovery-done href="/dashboards" { "Continue" }
                    }
                }
            },
        ),
    )
}

/// `GET /dashboards`: the dashboards the caller's role may open.
pub(super) async fn dashboards(State(state): State<AppState>, caller: Authenticated) -> Response {
    let who = &caller.identity;
    let mut list: Vec<&std::sync::Arc<Dashboard>> =
        state.dashboards.dashboards().filter(|d| d.allows(who.role)).collect();
    list.sort_by(|a, b| a.file.title.cmp(&b.file.title));
    let problems = state.dashboards.problems();
    page(
        StatusCode::OK,
        layout(
            "Dashboards",
            Some((who, "/dashboards")),
            html! {
                h1 { "Dashboards" }
                @if list.is_empty() { p { "No dashboard is open to your role." } }
                ul.cards {
                    @for d in &list {
                        li.card {
                            a href={ "/dashboards/" (d.id) } { h2 { (d.file.title) } }
                            p { (d.file.description) }
                            p.meta { (d.file.panels.len()) " panels" }
                        }
                    }
                }
                @if !problems.is_empty() && who.may(Permission::Administer) {
                    section.notice role="status" {
                        h2 { "Dashboards that did not load" }
                        ul { @for p in problems { li { code { (p.to_string()) } } } }
                    }
                }
            },
        ),
    )
}

/// `GET /dashboards/{id}`: one dashboard. The filters are a form whose state is the URL; panels
/// are placeholders the script fills with each panel's chart as it arrives.
pub(super) async fn dashboard(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let who = &caller.identity;
    let dashboard = match state.dashboards.get(&id) {
        Ok(d) if d.allows(who.role) => d,
        Ok(_) => {
            return error_page(
                StatusCode::FORBIDDEN,
                Some(who),
                &format!("Your role may not open the dashboard {id:?}."),
            );
        }
        Err(_) => return error_page(StatusCode::NOT_FOUND, Some(who), &format!("There is no dashboard {id:?}.")),
    };
    let as_caller = super::dashboards::dashboard_caller(&caller);
    let sees_sql = who.may(crate::auth::Permission::RunSql);
    let markup = dashboard_body(&state, dashboard, query, &as_caller, &caller.request_id, None, sees_sql).await;
    page(StatusCode::OK, layout(&dashboard.file.title, Some((who, "/dashboards")), markup))
}

/// The body of a dashboard page: its heading, filters and panel placeholders. `embed` is the
/// signed link a framed page fetches its panels through (filters locked, no navigation);
/// `sees_sql`, whether the panels' menus offer the SQL behind them.
pub(super) async fn dashboard_body(
    state: &AppState,
    dashboard: &Dashboard,
    query: Option<String>,
    as_caller: &crate::query::engine::Caller,
    request_id: &RequestId,
    embed: Option<&str>,
    sees_sql: bool,
) -> Markup {
    let pairs = super::dashboards::pairs(query.clone());
    let today = dashboard::today();
    let parsed = match Selection::from_pairs(dashboard, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), today) {
        Ok(selection) => dashboard::check_values(&state.engine, &state.metrics, dashboard, &selection, as_caller)
            .await
            .map(|_| selection),
        Err(e) => Err(e),
    };
    let (selection, problem) = match parsed {
        Ok(s) => (s, None),
        Err(e) => (
            Selection::from_pairs(dashboard, std::iter::empty(), today).unwrap_or_default(),
            Some(format!("{e}. The filters are back to their defaults.")),
        ),
    };
    let mut options = std::collections::BTreeMap::new();
    for f in dashboard.file.filters.iter().filter(|f| f.kind == FilterKind::Select) {
        let values = dashboard::filter_values(&state.engine, &state.metrics, dashboard, &f.name, as_caller).await;
        match values {
            Ok(values) => {
                options.insert(f.name.clone(), values.values);
            }
            Err(e) => tracing::warn!(request_id = %request_id.0, error = %e, "a filter's values did not load"),
        }
    }
    let base = match embed {
        Some(link) => format!("/embed/{link}"),
        None => format!("/api/v1/dashboards/{}", dashboard.id),
    };
    let query = if problem.is_some() { String::new() } else { query.unwrap_or_default() };
    html! {
        div.dashboard #dashboard data-base=(base) data-query=(query) data-id=(dashboard.id) data-embed=[embed.map(|_| "true")] {
            div.heading {
                h1 { (dashboard.file.title) }
                @if !dashboard.file.description.is_empty() { p.description { (dashboard.file.description) } }
            }
            @if let Some(problem) = &problem { p.notice role="alert" { (problem) } }
            @if embed.is_none() && !dashboard.file.filters.is_empty() {
                (filter_form(dashboard, &selection, &options))
            }
            p.live #live role="status" aria-live="polite" {}
            div.grid {
                @for panel in &dashboard.file.panels {
                    @let drill = matches!(panel.source(), Some(dashboard::Source::Metric(_)));
                    section.panel.(format!("w-{}", panel.width().clamp(1, 12))).(format!("h-{}", panel.height().clamp(1, 16)))
                        .kpi[panel.chart == crate::chart::ChartKind::Kpi]
                        data-panel=(panel.id)
                        data-x=[panel.encoding.x.as_deref()]
                        data-series=[panel.encoding.series.as_deref()]
                        data-rows=[drill.then_some("true")]
                        aria-label=(panel.title) {
                        div.chart aria-busy="true" { div.skeleton { span.visually-hidden { "Loading " (panel.title) } } }
                        details.menu {
                            summary aria-label={ "Actions for " (panel.title) } { "⋯" }
                            div.menu-items {
                                a data-export="csv" href="#" download { "Download CSV" }
                                a data-export="png" href="#" download { "Download PNG" }
                                a data-export="svg" href="#" download { "Download SVG" }
                                @if sees_sql { a data-export="sql" href="#" download { "Download SQL" } }
                                @if drill { button type="button" data-show-rows { "Rows behind the numbers" } }
                            }
                        }
                    }
                }
            }
            dialog #rows aria-labelledby="rows-title" {
                div.dialog-head {
                    h2 #rows-title { "Rows" }
                    button.link #rows-close type="button" { "Close" }
                }
                div.dialog-body #rows-body {}
            }
            div.tooltip #tooltip role="tooltip" hidden {}
        }
    }
}

/// The filters of a dashboard: a date range (presets, or custom dates) and multi-selects whose
/// values come from the data. Submitting puts them in the URL; the script does so on change.
fn filter_form(
    dashboard: &Dashboard,
    selection: &Selection,
    options: &std::collections::BTreeMap<String, Vec<String>>,
) -> Markup {
    html! {
        form.filters #filters method="get" {
            @for f in &dashboard.file.filters {
                @let label = f.label.clone().unwrap_or_else(|| f.name.replace('_', " "));
                @match f.kind {
                    FilterKind::DateRange => {
                        @let range = selection.range.as_ref().filter(|(name, _, _)| *name == f.name).map(|(_, _, r)| *r);
                        @let preset = selection.preset;
                        div.filter.range data-filter=(f.name) {
                            label for={ "f-" (f.name) } { (label) }
                            select #{ "f-" (f.name) } name=(f.name) {
                                @for p in Preset::ALL {
                                    option value=(p.name()) selected[preset == Some(p)] { (p.label()) }
                                }
                                option value="custom" selected[preset.is_none()] { "Custom…" }
                            }
                            span.custom hidden[preset.is_some()] {
                                label.visually-hidden for={ "f-" (f.name) "-from" } { (label) " from" }
                                input #{ "f-" (f.name) "-from" } type="date" data-from value=[range.map(|r| r.from.to_string())];
                                span aria-hidden="true" { "–" }
                                label.visually-hidden for={ "f-" (f.name) "-to" } { (label) " to (included)" }
                                input #{ "f-" (f.name) "-to" } type="date" data-to value=[range.map(|r| (r.to - chrono::Duration::days(1)).to_string())];
                            }
                        }
                    }
                    FilterKind::Select => {
                        @let chosen = selection.selects.get(&f.name).cloned().unwrap_or_default();
                        @let dimension = f.dimension.clone().unwrap_or_else(|| f.name.clone());
                        details.filter.select data-filter=(f.name) data-dimension=(dimension) {
                            summary {
                                (label) ": "
                                span.chosen { @if chosen.is_empty() { "All" } @else { (chosen.join(", ")) } }
                            }
                            fieldset {
                                legend.visually-hidden { (label) }
                                @for value in options.get(&f.name).map(Vec::as_slice).unwrap_or_default() {
                                    label.option {
                                        input type="checkbox" name=(f.name) value=(value) checked[chosen.contains(value)];
                                        " " (value)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            button.secondary type="submit" { "Apply" }
            a.button.link href="?" { "Reset" }
        }
    }
}

/// `GET /tables`: every table the caller may list, with its version, rows, last change and
/// columns (with their class of data).
pub(super) async fn tables(State(state): State<AppState>, caller: Authenticated) -> Response {
    let who = &caller.identity;
    let listed = match super::query::table_listing(&state, who).await {
        Ok(tables) => tables,
        Err(e) => {
            tracing::error!(request_id = %caller.request_id.0, error = %e.message, "the table listing failed");
            return error_page(StatusCode::INTERNAL_SERVER_ERROR, Some(who), "The warehouse could not be listed.");
        }
    };
    let now = chrono::Utc::now();
    page(
        StatusCode::OK,
        layout(
            "Tables",
            Some((who, "/tables")),
            html! {
                h1 { "Tables" }
                p { (listed.len()) " tables in the warehouse. Columns marked pii, phi or fin are masked for roles that may not see them." }
                div.scroll {
                    table.data {
                        thead { tr { th scope="col" { "Table" } th scope="col" { "Version" } th.num scope="col" { "Rows" } th scope="col" { "Changed" } th scope="col" { "Columns" } } }
                        tbody {
                            @for t in &listed {
                                @let changed = t.changed_at.map(|at| (at, now - at));
                                tr {
                                    th scope="row" { code { (t.table) } }
                                    td { (t.version.unwrap_or_default()) }
                                    td.num { (crate::chart::Format::Count.full(t.rows as f64)) }
                                    td {
                                        @match changed {
                                            Some((at, age)) => {
                                                time datetime=(at.to_rfc3339()) title=(at.to_rfc3339()) .stale[age > chrono::Duration::hours(26)] { (ago(age)) }
                                            }
                                            None => { "never" }
                                        }
                                    }
                                    td {
                                        details {
                                            summary { (t.columns.len()) " columns" }
                                            ul.columns {
                                                @for c in &t.columns {
                                                    li { code { (c.name) } " " span.type { (c.data_type) } " " span.class.(c.class) { (c.class) } }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// An age as people say it: "5 min ago", "3 h ago", "2 days ago".
fn ago(age: chrono::Duration) -> String {
    let minutes = age.num_minutes().max(0);
    match minutes {
        0 => "just now".into(),
        1..60 => format!("{minutes} min ago"),
        60..2880 => format!("{} h ago", minutes / 60),
        _ => format!("{} days ago", minutes / 1440),
    }
}

/// The query the console opens with.
const SQL_EXAMPLE: &str = "SELECT month, collected, invoiced\nFROM marts.mart_revenue_monthly\nORDER BY month";

/// `GET /sql`: the SQL console. The script runs the query through `POST /api/v1/query` (the
/// caller's role, masking, limits and audit as for any query), shows the rows, downloads them as
/// CSV or Parquet, and draws a chart of them with `POST /api/v1/chart`.
pub(super) async fn sql_console(caller: Authenticated) -> Response {
    let who = &caller.identity;
    page(
        StatusCode::OK,
        layout(
            "SQL",
            Some((who, "/sql")),
            html! {
                h1 { "SQL" }
                form.console #console {
                    label for="sql" { "Query (" (who.role.name()) "'s view of the warehouse)" }
                    textarea #sql name="sql" rows="8" spellcheck="false" { (SQL_EXAMPLE) }
                    div.actions {
                        button.primary type="submit" { "Run" } " "
                        span.hint { "Ctrl+Enter runs" }
                        span.spacer {}
                        button.secondary type="button" data-download="csv" { "CSV" }
                        button.secondary type="button" data-download="parquet" { "Parquet" }
                    }
                }
                p.notice #sql-error role="alert" hidden {}
                p.meta #sql-meta role="status" {}
                form.chart-form #chart-form hidden {
                    label for="chart-kind" { "Chart" }
                    select #chart-kind {
                        @for (value, label) in [("bar", "Bar"), ("line", "Line"), ("area", "Area"), ("donut", "Donut"), ("table", "Table")] {
                            option value=(value) { (label) }
                        }
                    }
                    label for="chart-x" { "x" }
                    select #chart-x {}
                    label for="chart-y" { "y" }
                    select #chart-y {}
                    label for="chart-series" { "Series" }
                    select #chart-series {}
                    button.secondary type="submit" { "Draw" }
                }
                div.chart.console-chart #sql-chart {}
                div.scroll #sql-result {}
            },
        ),
    )
}

/// Marks a response that sites in `server.embed_origins` may frame (no `X-Frame-Options`).
#[derive(Clone, Copy)]
pub(super) struct Framable;

/// A signed link's dashboard page: no navigation, framable by the configured sites only.
pub(super) fn embed_page(state: &AppState, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.embedded { main #main { (body) } }
        }
    };
    let origins = &state.project.config().server.embed_origins;
    let ancestors = if origins.is_empty() { "'none'".to_string() } else { origins.join(" ") };
    let policy = PAGE_POLICY.replace("frame-ancestors 'none'", &format!("frame-ancestors {ancestors}"));
    let mut response = page(StatusCode::OK, markup);
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, value);
    }
    if !origins.is_empty() {
        response.extensions_mut().insert(Framable);
    }
    response
}
