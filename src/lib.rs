//! Sokana Analytics: an embedded analytics engine beside Sokana Collective's transactional core.
//!
//! Data flows one way: [`source`] → [`warehouse`] → [`query`] → [`api`]; [`pipeline`] drives the
//! first two. Each module's own documentation says what it owns and what it must not touch.

pub mod api;
pub mod config;
pub mod pipeline;
pub mod progress;
pub mod query;
pub mod source;
pub mod warehouse;

/// The pipeline shipped for Sokana's core, embedded so that `sokana demo` works from any directory.
pub const SOKANA_CORE_PIPELINE: &str = include_str!("../pipelines/sokana_core.toml");
