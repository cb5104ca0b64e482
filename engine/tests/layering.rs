//! The engine's layers import downwards only (ARCHITECTURE.md, Invariants):
//! read every source file and check which of the crate's modules it names.
//! Test code (`tests.rs`, `*_tests.rs`, `conformance/`, and everything from a
//! file's `#[cfg(test)]` on) may reach anywhere and is not checked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || path.components().any(|c| c.as_os_str() == "conformance")
}

/// The non-test text of a file: up to its first `#[cfg(test)]`.
fn non_test_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The crate's top-level modules named by `crate::<module>` in `text`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Every non-test file under `src/<layer>` (or the file `src/<layer>.rs`)
/// with the crate modules and the `std::fs` use it names.
fn layer(layer: &str) -> Vec<(PathBuf, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    let dir = src.join(layer);
    if dir.is_dir() {
        sources(&dir, &mut files);
    }
    let file = src.join(format!("{layer}.rs"));
    if file.is_file() {
        files.push(file);
    }
    assert!(!files.is_empty(), "no sources for layer `{layer}`");
    files
        .into_iter()
        .filter(|p| !is_test_file(p))
        .map(|p| {
            let text = non_test_text(&p);
            let mut names = crate_modules(&text);
            if text.contains("std::fs") {
                names.insert("std::fs".into());
            }
            (p, names)
        })
        .collect()
}

fn forbid(layer_name: &str, forbidden: &[&str]) {
    let mut broken = vec![];
    for (path, names) in layer(layer_name) {
        for f in forbidden {
            if names.contains(*f) {
                broken.push(format!("{} names {f}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{layer_name}: {broken:#?}");
}

#[test]
fn the_backend_imports_nothing_above_it() {
    let allowed = ["backend", "tensor", "rng", "with_backend"];
    let mut broken = vec![];
    for (path, names) in layer("backend") {
        for n in names.iter().filter(|n| !n.contains("::")) {
            if !allowed.contains(&n.as_str()) {
                broken.push(format!("{} names crate::{n}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn rl_never_touches_plugins_or_files() {
    forbid(
        "rl",
        &[
            "plugins", "fsutil", "std::fs", "train", "eval", "tasks", "cli",
        ],
    );
}

#[test]
fn training_and_evaluation_share_through_tasks() {
    forbid("train", &["eval", "cli"]);
    forbid("eval", &["train", "cli"]);
    forbid("tasks", &["train", "eval", "cli"]);
}

#[test]
fn the_scan_sees_imports() {
    // The checks above pass vacuously if the scan finds nothing.
    let names = crate_modules("use crate::tasks::{load_tasks};\nfn f() { crate::eval::x() }");
    assert_eq!(names, BTreeSet::from(["eval".into(), "tasks".into()]));
    let train = layer("train");
    assert!(train.iter().any(|(_, n)| n.contains("tasks")));
}

#[test]
fn the_collectives_know_only_backends_and_tensors() {
    // Training calls `dist`; `dist` never reaches back (DESIGN: training
    // code calls the interface, the interface knows no training).
    forbid(
        "dist",
        &[
            "train", "model", "rl", "rollout", "cli", "eval", "plugins", "tasks",
        ],
    );
}
