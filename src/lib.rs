//! Sokana Analytics: an embedded analytics engine beside Sokana Collective's transactional core.
//!
//! Data flows one way: [`source`] → [`warehouse`] → [`query`] → [`api`]; [`pipeline`] drives the
//! first two. Each module's own documentation says what it owns and what it must not touch.
//!
//! A module uses only modules before it in this order (`tests/layers.rs` checks it): [`keyfile`],
//! [`progress`], [`chart`], [`source`], [`metastore`], [`warehouse`], [`config`], [`query`], [`metrics`], [`pipeline`],
//! [`auth`], [`privacy`], [`dashboard`], [`report`], [`api`].

pub mod api;
pub mod auth;
pub mod chart;
pub mod config;
pub mod dashboard;
pub mod forecast;
pub mod keyfile;
pub mod metastore;
pub mod metrics;
pub mod pipeline;
pub mod privacy;
pub mod progress;
pub mod query;
pub mod report;
pub mod source;
pub mod warehouse;
pub mod webhook;

/// The pipeline shipped for Sokana's core, embedded so that `sokana demo` works from any directory.
pub const SOKANA_CORE_PIPELINE: &str = include_str!("../pipelines/sokana_core.toml");

/// The SQL models of the Sokana marts (`pipelines/models/`), for projects outside this repository.
pub const SOKANA_CORE_MODELS: &[(&str, &str)] = &[
    ("dim_clients.sql", include_str!("../pipelines/models/dim_clients.sql")),
    ("dim_doulas.sql", include_str!("../pipelines/models/dim_doulas.sql")),
    ("fct_availability.sql", include_str!("../pipelines/models/fct_availability.sql")),
    ("fct_contracts.sql", include_str!("../pipelines/models/fct_contracts.sql")),
    ("fct_hours.sql", include_str!("../pipelines/models/fct_hours.sql")),
    ("fct_installments.sql", include_str!("../pipelines/models/fct_installments.sql")),
    ("fct_invoices.sql", include_str!("../pipelines/models/fct_invoices.sql")),
    ("fct_payments.sql", include_str!("../pipelines/models/fct_payments.sql")),
    ("mart_ar_aging.sql", include_str!("../pipelines/models/mart_ar_aging.sql")),
    ("mart_client_funnel.sql", include_str!("../pipelines/models/mart_client_funnel.sql")),
    ("mart_doula_utilization.sql", include_str!("../pipelines/models/mart_doula_utilization.sql")),
    ("mart_due_months.sql", include_str!("../pipelines/models/mart_due_months.sql")),
    ("mart_referral_attribution.sql", include_str!("../pipelines/models/mart_referral_attribution.sql")),
    ("mart_revenue_monthly.sql", include_str!("../pipelines/models/mart_revenue_monthly.sql")),
];

/// The saved queries shipped with the product (`queries/`), for projects outside this repository.
pub const SOKANA_CORE_QUERIES: &[(&str, &str)] = &[
    ("ar_aging.sql", include_str!("../queries/ar_aging.sql")),
    ("doula_utilization.sql", include_str!("../queries/doula_utilization.sql")),
    ("revenue_by_month.sql", include_str!("../queries/revenue_by_month.sql")),
];

/// The metrics views shipped with the product (`queries/metrics/`), for projects outside this repository.
pub const SOKANA_CORE_METRICS: &[(&str, &str)] = &[
    ("availability.toml", include_str!("../queries/metrics/availability.toml")),
    ("client_status.toml", include_str!("../queries/metrics/client_status.toml")),
    ("clients.toml", include_str!("../queries/metrics/clients.toml")),
    ("contracts.toml", include_str!("../queries/metrics/contracts.toml")),
    ("due_dates.toml", include_str!("../queries/metrics/due_dates.toml")),
    ("hours.toml", include_str!("../queries/metrics/hours.toml")),
    ("installments.toml", include_str!("../queries/metrics/installments.toml")),
    ("invoices.toml", include_str!("../queries/metrics/invoices.toml")),
    ("payments.toml", include_str!("../queries/metrics/payments.toml")),
    ("receivables.toml", include_str!("../queries/metrics/receivables.toml")),
    ("utilization.toml", include_str!("../queries/metrics/utilization.toml")),
];

/// The Sokana dashboards (`dashboards/`), for projects outside this repository.
pub const SOKANA_CORE_DASHBOARDS: &[(&str, &str)] = &[
    ("client_pipeline.toml", include_str!("../dashboards/client_pipeline.toml")),
    ("data_health.toml", include_str!("../dashboards/data_health.toml")),
    ("doula_team.toml", include_str!("../dashboards/doula_team.toml")),
    ("executive.toml", include_str!("../dashboards/executive.toml")),
    ("forecasts.toml", include_str!("../dashboards/forecasts.toml")),
    ("revenue.toml", include_str!("../dashboards/revenue.toml")),
];

/// The JSON Schemas of the files people write, as committed in `schemas/` (a test keeps them equal
/// to what the types generate) and served at `/api/v1/schemas/NAME`.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("dashboard.json", include_str!("../schemas/dashboard.json")),
    ("metrics-view.json", include_str!("../schemas/metrics-view.json")),
];
