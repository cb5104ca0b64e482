//! Data conversion for plugins: builds the passage corpus (JSONL
//! `{"id","title","text"}` a line) that the `bm25-search` tool reads, from
//! SQuAD JSON paragraphs and Wikipedia summaries.
//!
//! Passage ids: `squad:{article}:{paragraph}` (0-based, file order; the
//! `qa-dataset` plugin reports the same id as `metadata.paragraph`) and
//! `wiki:{title}`.

use std::path::{Path, PathBuf};

pub mod index;
pub mod synth;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// One retrievable passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    pub id: String,
    pub title: String,
    pub text: String,
}

fn read_json(path: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every paragraph of a SQuAD file (`data[].paragraphs[].context`).
pub fn squad_passages(path: &Path) -> Result<Vec<Passage>, DataError> {
    let v = read_json(path)?;
    let bad = |message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    let articles = v["data"]
        .as_array()
        .ok_or_else(|| bad("no `data` array (not SQuAD JSON)".into()))?;
    let mut out = vec![];
    for (ai, a) in articles.iter().enumerate() {
        let title = a["title"].as_str().unwrap_or("").replace('_', " ");
        let paras = a["paragraphs"]
            .as_array()
            .ok_or_else(|| bad(format!("data[{ai}].paragraphs is not an array")))?;
        for (pi, p) in paras.iter().enumerate() {
            let text = p["context"].as_str().ok_or_else(|| {
                bad(format!(
                    "data[{ai}].paragraphs[{pi}].context is not a string"
                ))
            })?;
            out.push(Passage {
                id: format!("squad:{ai}:{pi}"),
                title: title.clone(),
                text: text.trim().to_string(),
            });
        }
    }
    Ok(out)
}

/// Wikipedia summaries: an object of `{title: {title, extract, ...}}` (or a
/// list of such records); entries without an extract are skipped.
pub fn wiki_passages(path: &Path) -> Result<Vec<Passage>, DataError> {
    let v = read_json(path)?;
    let records: Vec<&Value> = match &v {
        Value::Object(m) => m.values().collect(),
        Value::Array(a) => a.iter().collect(),
        _ => {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                message: "expected an object or array of {title, extract}".into(),
            })
        }
    };
    let n = records.len();
    let out: Vec<Passage> = records
        .into_iter()
        .filter_map(|r| {
            let title = r["title"].as_str()?;
            let text = r["extract"].as_str()?.trim();
            (!text.is_empty()).then(|| Passage {
                id: format!("wiki:{title}"),
                title: title.to_string(),
                text: text.to_string(),
            })
        })
        .collect();
    if out.is_empty() && n > 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!(
                "none of its {n} records has a `title` and an `extract` (not Wikipedia summaries)"
            ),
        });
    }
    Ok(out)
}

/// Writes passages as JSONL, atomically.
pub fn write_jsonl(path: &Path, passages: &[Passage]) -> Result<(), DataError> {
    let mut buf = Vec::new();
    for p in passages {
        serde_json::to_writer(&mut buf, p).expect("passages serialize");
        buf.push(b'\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    crate::fsutil::write_atomic(path, &buf).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The standard search corpus: SQuAD paragraphs, then Wikipedia summaries.
pub fn build_corpus(squad: Option<&Path>, wiki: Option<&Path>) -> Result<Vec<Passage>, DataError> {
    let mut out = vec![];
    if let Some(p) = squad {
        out.extend(squad_passages(p)?);
    }
    if let Some(p) = wiki {
        out.extend(wiki_passages(p)?);
    }
    Ok(out)
}
