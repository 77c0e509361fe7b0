//! The library's modules depend one way: each uses only modules before it in the order
//! `src/lib.rs` documents, so that the lower layers (source, warehouse, query) can be reasoned
//! about, tested and reused without the surfaces above them.

use std::path::Path;

/// Lowest first, as `src/lib.rs` gives it.
const ORDER: &[&str] = &[
    "keyfile",
    "progress",
    "chart",
    "source",
    "metastore",
    "warehouse",
    "config",
    "query",
    "metrics",
    "pipeline",
    "auth",
    "privacy",
    "dashboard",
    "report",
    "api",
];

/// The top-level module a source file belongs to (`src/query/engine.rs` → `query`).
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    Some(first.trim_end_matches(".rs").to_string())
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for module in ORDER {
        assert!(lib.contains(&format!("pub mod {module};")), "{module} is not a module of the library");
        assert!(lib.contains(&format!("[`{module}`]")), "lib.rs's documented order does not name {module}");
    }
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for path in all {
        let Some(module) = module_of(&path, &src) else { continue };
        // The binary's files (main, the CLI's) sit above every module.
        let Some(rank) = ORDER.iter().position(|m| *m == module) else { continue };
        let text = std::fs::read_to_string(&path).expect("source");
        for (line_number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(used_rank) = ORDER.iter().position(|m| *m == used)
                    && used_rank > rank
                {
                    wrong.push(format!("{}:{}: {module} uses {used}", path.display(), line_number + 1));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "modules that use one above them:\n{}", wrong.join("\n"));
}
