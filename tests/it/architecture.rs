//! The layering of `src/`, checked on every test run (issue #9): lower layers
//! never import higher ones, the module graph below the composition root has
//! no cycle, SQLite (and every SQL statement) stays under `index/`, and file
//! system calls stay in the few modules that own files.
//!
//! Layers, top to bottom:
//! - `main`, `cli`, `app` (the composition root), `config` (layers every
//!   module's own section);
//! - `http`, `lifecycle`, `mirror`, `media` (services, wired by `app`);
//! - `index`, `store`, `signing`, `policy`, `clock`, `timefmt`, `error`,
//!   `tasks`, `telemetry` (ports and pure helpers).
//!
//! Test modules (`#[cfg(test)] mod tests`) are left out: they may build
//! whatever fixture they need.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const TOP: &[&str] = &["main", "cli", "app", "config"];
const SERVICES: &[&str] = &["http", "lifecycle", "mirror", "media", "preview"];
const PORTS: &[&str] = &[
    "index",
    "store",
    "signing",
    "policy",
    "clock",
    "timefmt",
    "error",
    "tasks",
    "telemetry",
];

/// Files that may call the file system: the blob store, and the few that own
/// non-blob files (the data folder's lock and secrets, the config file, the
/// Unix socket).
const FS_ALLOWED: &[&str] = &[
    "src/store/",
    "src/app/",
    "src/config.rs",
    "src/http/server.rs",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/`'s files (relative path, code without its test module).
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, code)
        })
        .collect()
}

/// The top-level module a file belongs to (`src/index/gc.rs` -> `index`).
fn module_of(rel: &str) -> String {
    let inner = rel.strip_prefix("src/").unwrap();
    let first = inner.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_owned()
}

fn rank(module: &str) -> Option<u8> {
    if TOP.contains(&module) {
        Some(3)
    } else if SERVICES.contains(&module) {
        Some(2)
    } else if PORTS.contains(&module) {
        Some(1)
    } else {
        None
    }
}

/// `crate::x` paths named in code (comments included: a doc link upward is a
/// dependency of the reader's mind too).
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && name.chars().next().unwrap().is_ascii_lowercase() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_module_has_a_layer() {
    for (rel, _) in sources() {
        let m = module_of(&rel);
        if m == "lib" {
            continue;
        }
        assert!(
            rank(&m).is_some(),
            "{rel}: module `{m}` is in no layer; add it to tests/it/architecture.rs"
        );
    }
}

#[test]
fn dependencies_point_down_and_have_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rel, code) in sources() {
        let from = module_of(&rel);
        let Some(from_rank) = rank(&from) else {
            continue;
        };
        for to in imports(&code) {
            if to == from {
                continue;
            }
            let Some(to_rank) = rank(&to) else {
                problems.push(format!("{rel}: crate::{to} is in no layer"));
                continue;
            };
            if to_rank > from_rank || (to_rank == 3 && from_rank < 3) {
                problems.push(format!("{rel} ({from}) reaches up into crate::{to}"));
            }
            if from_rank < 3 {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Cycles among the modules below the composition root.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        problems: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|n| n == node) {
            problems.push(format!("cycle: {} -> {node}", stack[i..].join(" -> ")));
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, problems);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn sqlite_and_sql_live_only_under_index() {
    let sql = [
        "SELECT ",
        "INSERT INTO",
        "DELETE FROM",
        "UPDATE blobs",
        "UPDATE media",
    ];
    let mut problems = Vec::new();
    for (rel, code) in sources() {
        if rel.starts_with("src/index/") {
            continue;
        }
        if code.contains("rusqlite") {
            problems.push(format!("{rel} uses rusqlite"));
        }
        // The mirror's MySQL statements target the chat backend's table,
        // not the index.
        if rel.starts_with("src/mirror/") {
            continue;
        }
        for kw in sql {
            if code.contains(kw) {
                problems.push(format!("{rel} has SQL ({kw:?})"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn file_system_calls_stay_in_the_modules_that_own_files() {
    let calls = [
        "std::fs",
        "fs::File",
        "File::open",
        "File::create",
        "tokio::fs",
    ];
    let mut problems = Vec::new();
    for (rel, code) in sources() {
        if FS_ALLOWED.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        for call in calls {
            if code.contains(call) {
                problems.push(format!("{rel} calls the file system ({call})"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn blob_paths_are_built_only_by_the_blob_store() {
    let mut problems = Vec::new();
    for (rel, code) in sources() {
        if rel.starts_with("src/store/") {
            continue;
        }
        for needle in ["blob_relative_path", "join(\"blobs\")", "\"quarantine\""] {
            if code.contains(needle) {
                problems.push(format!("{rel} builds a blob path ({needle})"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks above are only as good as what they see: an upward import and a
/// cycle written the usual ways are caught.
#[test]
fn the_checker_sees_upward_imports_and_cycles() {
    let seen = imports("use crate::app::AppState;\nfn f(s: crate::http::HttpState) {}");
    assert_eq!(
        seen,
        BTreeSet::from(["app".to_string(), "http".to_string()])
    );
    assert!(rank("app") > rank("lifecycle"));
    assert!(rank("http") == rank("lifecycle"));
    assert_eq!(module_of("src/index/gc.rs"), "index");
    assert_eq!(module_of("src/clock.rs"), "clock");
}
