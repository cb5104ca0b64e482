//! `igpo plugin new`: a new tool component project, in Rust, Python or
//! JavaScript, that builds as is and passes `igpo plugin check` (a word
//! counter to replace; the three behave alike, errors included).
//! The templates live in `scaffold/`; the WIT contract is copied in so the
//! project builds anywhere.

use std::path::{Path, PathBuf};

/// The language of a new plugin project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PluginLang {
    Rust,
    Python,
    /// JavaScript, built with componentize-js (pinned by the project's
    /// package-lock.json).
    #[value(name = "js")]
    Js,
}

const WIT: &str = include_str!("../../../wit/plugins.wit");
const CARGO_TOML: &str = include_str!("scaffold/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("scaffold/lib.rs.tmpl");
const APP_PY: &str = include_str!("scaffold/app.py.tmpl");
const APP_JS: &str = include_str!("scaffold/app.js.tmpl");
const PACKAGE_JSON: &str = include_str!("scaffold/package.json.tmpl");
const PACKAGE_LOCK: &str = include_str!("scaffold/package-lock.json.tmpl");
/// What git should not keep of a JavaScript project.
const GITIGNORE_JS: &str = "node_modules/\n*.wasm\n";

/// Writes the project for tool `name` into `out` (created; must not exist or
/// be empty) and returns the files written, in order.
pub fn new_plugin(name: &str, lang: PluginLang, out: &Path) -> Result<Vec<PathBuf>, String> {
    check_name(name)?;
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "{}: exists and is not empty; choose a new folder",
                out.display()
            ));
        }
    }
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    let mut files: Vec<(&str, String)> = vec![("wit/plugins.wit", WIT.to_string())];
    match lang {
        PluginLang::Rust => {
            files.push(("Cargo.toml", fill(CARGO_TOML)));
            files.push(("src/lib.rs", fill(LIB_RS)));
        }
        PluginLang::Python => files.push(("app.py", fill(APP_PY))),
        PluginLang::Js => {
            files.push(("package.json", fill(PACKAGE_JSON)));
            files.push(("package-lock.json", fill(PACKAGE_LOCK)));
            files.push(("app.js", fill(APP_JS)));
            files.push((".gitignore", GITIGNORE_JS.to_string()));
        }
    }
    let mut written = vec![];
    for (rel, text) in files {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Where the built component lands, relative to the project folder.
pub fn built_component(name: &str, lang: PluginLang) -> PathBuf {
    match lang {
        PluginLang::Rust => PathBuf::from(format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        )),
        PluginLang::Python | PluginLang::Js => PathBuf::from(format!("{name}.wasm")),
    }
}

/// The command that builds the component, run in the project folder.
pub fn build_command(name: &str, lang: PluginLang) -> String {
    match lang {
        PluginLang::Rust => "cargo build --release --target wasm32-wasip2".into(),
        PluginLang::Python => {
            format!("componentize-py -d wit -w tool componentize app -o {name}.wasm")
        }
        // `npm ci`: exactly the versions of package-lock.json.
        PluginLang::Js => "npm ci && npm run build".into(),
    }
}

/// A tool name the agent can call and a crate / file name: lowercase ASCII
/// letters, digits and `-`, starting with a letter.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    match ok {
        true => Ok(()),
        false => Err(format!(
            "plugin name `{name}`: use lowercase letters, digits and '-', starting with a letter (e.g. word-count)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("igpo-scaffold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn rust_project_is_filled_in() {
        let dir = scratch("rust");
        let files = new_plugin("word-count", PluginLang::Rust, &dir).unwrap();
        assert_eq!(files.len(), 3);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"word-count\"") && cargo.contains("[workspace]"));
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("name: \"word-count\"") && lib.contains("release/word_count.wasm"));
        assert!(!lib.contains("{{"));
        assert_eq!(
            std::fs::read_to_string(dir.join("wit/plugins.wit")).unwrap(),
            WIT
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn python_project_is_filled_in() {
        let dir = scratch("py");
        new_plugin("wc2", PluginLang::Python, &dir).unwrap();
        let app = std::fs::read_to_string(dir.join("app.py")).unwrap();
        assert!(app.contains("name=\"wc2\"") && !app.contains("{{"));
        assert!(dir.join("wit/plugins.wit").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn javascript_project_is_filled_in() {
        let dir = scratch("js");
        let files = new_plugin("wc-js", PluginLang::Js, &dir).unwrap();
        assert_eq!(files.len(), 5);
        let app = std::fs::read_to_string(dir.join("app.js")).unwrap();
        assert!(app.contains("name: 'wc-js'") && !app.contains("{{"));
        for f in ["package.json", "package-lock.json"] {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();
            assert_eq!(v["name"], "wc-js", "{f}");
        }
        let pkg = std::fs::read_to_string(dir.join("package.json")).unwrap();
        assert!(pkg.contains("--out wc-js.wasm app.js"), "{pkg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_names_and_full_folders_are_refused() {
        for bad in ["", "Word", "1tool", "a_b", "x-", "a b"] {
            let err = new_plugin(bad, PluginLang::Rust, &scratch("bad")).unwrap_err();
            assert!(err.contains("lowercase letters"), "{bad}: {err}");
        }
        let dir = scratch("full");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "mine").unwrap();
        let err = new_plugin("ok", PluginLang::Python, &dir).unwrap_err();
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
            "mine"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
