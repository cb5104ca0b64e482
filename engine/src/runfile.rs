//! Run files (`igpo sft | train | rollout | eval --config FILE`) as read from
//! disk, with `--set key=value` overrides applied on top.
//!
//! An override is exactly as if the line were written in the file: `key` is a
//! dotted path into the TOML (`rl.group_size`, `tools.0.config.k` — a number
//! indexes an array of tables), `value` is a TOML value (`4`, `1e-6`, `true`,
//! `"text"`, `[1, 2]`, `{ k = 2 }`) or, when it does not parse as one, a bare
//! string (`model=/models/x`). Relative paths in values are relative to the
//! run file's folder, like every path in the file. Unknown keys are caught
//! later by the config structs (`deny_unknown_fields`), so a typo fails.

use std::path::{Path, PathBuf};

use crate::plugins::PluginSpec;

/// A bad run file or override: names the file (and the override) at fault.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct RunFileError {
    pub path: String,
    pub msg: String,
}

/// The effective text of a run file.
#[derive(Clone, Debug)]
pub struct RunFile {
    pub path: PathBuf,
    /// The file's text when there are no overrides; otherwise the merged
    /// TOML, headed by a comment that names the file and the overrides (this
    /// is what a run folder records as its `config.toml`).
    pub text: String,
}

impl RunFile {
    /// Reads `path` and applies `sets` (each `key=value`) in order.
    pub fn read(path: &Path, sets: &[String]) -> Result<RunFile, RunFileError> {
        let err = |msg: String| RunFileError {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let text = apply_overrides(&text, sets).map_err(err)?;
        Ok(RunFile {
            path: path.to_path_buf(),
            text: match sets.is_empty() {
                true => text,
                false => format!(
                    "# {} with --set {}\n{text}",
                    path.display(),
                    sets.join(" --set ")
                ),
            },
        })
    }

    /// The folder relative paths in the file are taken against.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Makes each of `paths` that is relative relative to the run file's
    /// folder (the one rule for every path a run file names).
    pub fn rebase<'a>(&self, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
        for p in paths {
            if p.is_relative() {
                *p = self.base().join(&*p);
            }
        }
    }

    /// [`RunFile::rebase`] for a plugin's file and its `readonly_dir`.
    pub fn rebase_plugin(&self, spec: &mut PluginSpec) {
        self.rebase(std::iter::once(&mut spec.path).chain(spec.readonly_dir.as_mut()));
    }

    /// Deserializes the text into a config struct; a TOML or schema error
    /// names the file and the byte where it happened.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, RunFileError> {
        toml::from_str(&self.text).map_err(|e| RunFileError {
            path: self.path.display().to_string(),
            msg: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })
    }
}

/// Returns `text` with every `key=value` of `sets` applied (re-serialized,
/// so comments are dropped), or `text` unchanged when `sets` is empty.
pub fn apply_overrides(text: &str, sets: &[String]) -> Result<String, String> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    // One line, like `RunFile::parse` (toml's Display draws the source).
    let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| format!(" (at byte {})", s.start));
        format!("{}{}", e.message(), at.unwrap_or_default())
    })?;
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| format!("--set {set}: expected key=value"))?;
        let (key, value) = (key.trim(), value.trim());
        let keys: Vec<&str> = key.split('.').collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(format!("--set {set}: empty key segment in `{key}`"));
        }
        set_path(&mut root, &keys, parse_value(value))
            .map_err(|msg| format!("--set {set}: {msg}"))?;
    }
    toml::to_string(&root).map_err(|e| e.to_string())
}

/// A TOML value, or the raw text as a string when it is not one.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, keys: &[&str], value: toml::Value) -> Result<(), String> {
    let (first, rest) = keys.split_first().expect("at least one key");
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return Ok(());
    }
    let next = table
        .entry(first.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(next, first, rest, value)
}

fn set_in_value(
    node: &mut toml::Value,
    name: &str,
    keys: &[&str],
    value: toml::Value,
) -> Result<(), String> {
    match node {
        toml::Value::Table(t) => set_path(t, keys, value),
        toml::Value::Array(items) => {
            let (index, rest) = keys.split_first().expect("at least one key");
            let i: usize = index.parse().map_err(|_| {
                format!("`{name}` is an array: index it with a number, not `{index}`")
            })?;
            let len = items.len();
            let item = items
                .get_mut(i)
                .ok_or_else(|| format!("`{name}` has {len} entries, no index {i}"))?;
            if rest.is_empty() {
                *item = value;
                Ok(())
            } else {
                set_in_value(item, index, rest, value)
            }
        }
        other => Err(format!("`{name}` is a {}, not a table", other.type_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
model = "m"  # a comment
[rl]
group_size = 8
[[tools]]
path = "a.wasm"
config = { k = 2 }
[[tools]]
path = "b.wasm"
"#;

    fn apply(sets: &[&str]) -> Result<toml::Table, String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Ok(apply_overrides(FILE, &sets)?.parse().unwrap())
    }

    #[test]
    fn no_overrides_keep_the_text_verbatim() {
        assert_eq!(apply_overrides(FILE, &[]).unwrap(), FILE);
    }

    #[test]
    fn values_are_typed_and_tables_are_made() {
        let t = apply(&[
            "rl.group_size=4",
            "optim.lr=2e-6",
            "loss.kl_beta = 0",
            "train.resume_ok=true",
            "model=/abs/model dir",
            "rl.estimator=\"grpo\"",
            "tools.0.config.k=5",
            "tools.1.config={ max_chars = 10 }",
        ])
        .unwrap();
        assert_eq!(t["rl"]["group_size"].as_integer(), Some(4));
        assert_eq!(t["optim"]["lr"].as_float(), Some(2e-6));
        assert_eq!(t["loss"]["kl_beta"].as_integer(), Some(0));
        assert_eq!(t["train"]["resume_ok"].as_bool(), Some(true));
        assert_eq!(t["model"].as_str(), Some("/abs/model dir"));
        assert_eq!(t["rl"]["estimator"].as_str(), Some("grpo"));
        let tools = t["tools"].as_array().unwrap();
        assert_eq!(tools[0]["config"]["k"].as_integer(), Some(5));
        assert_eq!(tools[0]["path"].as_str(), Some("a.wasm"));
        assert_eq!(tools[1]["config"]["max_chars"].as_integer(), Some(10));
    }

    #[test]
    fn later_overrides_win() {
        let t = apply(&["rl.group_size=4", "rl.group_size=2"]).unwrap();
        assert_eq!(t["rl"]["group_size"].as_integer(), Some(2));
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let msg = |s: &str| apply(&[s]).unwrap_err();
        assert!(msg("rl.group_size").contains("expected key=value"));
        assert!(msg("rl..x=1").contains("empty key segment"));
        assert!(msg("model.x=1").contains("`model` is a string, not a table"));
        assert!(msg("tools.7.path=x").contains("has 2 entries, no index 7"));
        assert!(msg("tools.first.path=x").contains("index it with a number"));
        // A file that is not TOML: one line, with where.
        let err = apply_overrides("model = \"m\"\nnot toml at all\n", &["a=1".into()]).unwrap_err();
        assert!(!err.contains('\n') && err.contains("at byte"), "{err}");
    }

    #[test]
    fn run_file_records_the_overrides() {
        let dir = std::env::temp_dir().join(format!("igpo-runfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, FILE).unwrap();
        let plain = RunFile::read(&path, &[]).unwrap();
        assert_eq!(plain.text, FILE);
        assert_eq!(plain.base(), dir.as_path());
        let set = RunFile::read(&path, &["rl.group_size=2".into()]).unwrap();
        assert!(set.text.starts_with("# ") && set.text.contains("--set rl.group_size=2"));
        let t: toml::Table = set.parse().unwrap();
        assert_eq!(t["rl"]["group_size"].as_integer(), Some(2));
        let missing = RunFile::read(&dir.join("nope.toml"), &[]).unwrap_err();
        assert!(missing.to_string().contains("nope.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
