//! The JSON Schemas committed in `schemas/` are the ones the Rust types generate (editors validate
//! dashboard and metrics files with them, so a stale one would accept or reject the wrong files),
//! and every shipped dashboard and metrics file loads.
//!
//! After changing the file formats: `SOKANA_WRITE_SCHEMAS=1 cargo test --test schemas`.

use std::path::Path;

#[test]
fn committed_schemas_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let generated = [
        ("dashboard.json", sokana::dashboard::spec::json_schema()),
        ("metrics-view.json", sokana::metrics::spec::json_schema()),
    ];
    for (name, schema) in generated {
        let path = root.join(name);
        if std::env::var_os("SOKANA_WRITE_SCHEMAS").is_some() {
            std::fs::write(&path, &schema).expect("write schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == schema,
            "schemas/{name} is out of date: run `SOKANA_WRITE_SCHEMAS=1 cargo test --test schemas` and commit it"
        );
        let served = sokana::SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        assert_eq!(served, Some(committed.as_str()), "the served copy of {name} is the committed one");
    }
}

#[test]
fn every_shipped_file_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (dashboards, problems) = sokana::dashboard::spec::load_all(&root.join("dashboards"));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(dashboards.len(), sokana::SOKANA_CORE_DASHBOARDS.len());
    let views = sokana::metrics::Catalog::load(&root.join("queries/metrics"));
    assert!(views.problems().is_empty(), "{:?}", views.problems());
    assert_eq!(views.views().count(), sokana::SOKANA_CORE_METRICS.len());
}
