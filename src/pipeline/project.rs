//! The project one process works on, read once: its configuration, its pipelines (the built-in
//! audit pipeline with them), the class of every column they load, and its warehouse. The CLI, the
//! server and privacy requests are each handed one `Project` rather than reading the files again
//! wherever they need them, so that every part of a process (the scheduler, the masking policy, the
//! pipelines API, an erasure) works from the same pipelines and classes. Models are read when asked
//! for, as a model build has always read them; the pseudonym key is read (and on first use created)
//! when asked for. It runs nothing and holds no connection.

use std::collections::HashSet;
use std::sync::Arc;

use super::model::ModelGraph;
use super::spec::{Classifier, Pipeline, SpecError};
use super::{PipelineError, build, load_pipelines};
use crate::config::Config;
use crate::warehouse::{TableName, Warehouse};

/// Cheap to clone: the parts are shared.
#[derive(Clone)]
pub struct Project {
    config: Arc<Config>,
    pipelines: Arc<[Pipeline]>,
    classes: Arc<Classifier>,
    warehouse: Warehouse,
}

impl Project {
    /// Reads the pipelines `config` names and opens its warehouse (with its encryption keys).
    pub fn open(config: Config) -> Result<Project, PipelineError> {
        let pipelines: Arc<[Pipeline]> = load_pipelines(&config)?.into();
        let classes = Arc::new(Classifier::new(pipelines.iter()));
        let warehouse = super::warehouse(&config)?;
        Ok(Project { config: Arc::new(config), pipelines, classes, warehouse })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Every pipeline, the built-in audit pipeline last.
    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
    }

    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// Pipelines by name, in the order given; an unknown name is an error that lists the known ones.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Pipeline>, PipelineError> {
        names
            .iter()
            .map(|name| {
                self.pipeline(name).ok_or_else(|| PipelineError::UnknownPipeline {
                    name: name.clone(),
                    dir: self.config.pipelines_dir().display().to_string(),
                    have: self.pipelines.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                })
            })
            .collect()
    }

    /// The class of every warehouse column, by the pipelines.
    pub fn classes(&self) -> &Arc<Classifier> {
        &self.classes
    }

    /// The tables only administrators may read.
    pub fn admin_only(&self) -> HashSet<TableName> {
        self.pipelines.iter().flat_map(|p| &p.tables).filter(|t| t.admin_only).map(|t| t.target.clone()).collect()
    }

    /// A query engine over this project's warehouse, with the `system` tables (the run log and
    /// the tables' freshness) beside it.
    pub fn query_engine(&self) -> Result<crate::query::engine::QueryEngine, crate::query::QueryError> {
        let config = self.config();
        let engine = crate::query::engine::QueryEngine::open(config, self.warehouse().clone())?;
        let system = super::system::SystemSchema::new(config.state_dir(), engine.catalog().clone());
        engine.register_schema(super::system::SCHEMA, Arc::new(system))?;
        Ok(engine)
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The models (`pipelines/models/*.sql`), checked against the tables the pipelines load.
    pub fn models(&self) -> Result<ModelGraph, SpecError> {
        super::load_models(&self.config, &self.pipelines)
    }

    /// The key that pseudonymises client ids in the marts (and in masked raw columns).
    pub fn pseudonym_key(&self) -> Result<Vec<u8>, PipelineError> {
        build::pseudonym_key(&self.config.state_dir())
    }
}
