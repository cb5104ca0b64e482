//! BM25 retrieval over a passage corpus, shared by the `igpo` host (`igpo data
//! index`, `igpo serve retrieval`) and the `bm25-search` plugin, so that every
//! path ranks the same passages in the same order:
//!
//! - [`text`]: the tokenizer (alphanumeric runs, lowercased, stopwords out);
//! - [`Bm25`] and [`Scorer`]: the scoring, with the plugin's historical float
//!   order (per document, terms added in order of first appearance in the corpus);
//! - [`IndexWriter`]: builds the on-disk index from documents streamed in corpus
//!   order, with memory bounded by its run budget (postings spill to sorted runs);
//! - [`Index`]: opens that index and answers a query by reading only the query
//!   terms' posting lists and the returned documents (document-at-a-time, a
//!   top-k heap): its memory does not grow with the corpus.
//!
//! The on-disk format is described in [`format`](mod@format).

pub mod format;
mod reader;
mod score;
#[cfg(feature = "server")]
pub mod serve;
pub mod text;
mod writer;

pub use reader::{Hit, Index};
pub use score::{Bm25, Scorer};
pub use writer::{IndexSummary, IndexWriter};

use std::fmt;

/// A passage as the corpus JSONL and the index's document store hold it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl Document {
    /// Parses one corpus line (`{"id", "title", "text"}`; `id` may be a
    /// string, a number or absent — absent becomes `index`, the document's
    /// position in the corpus, as the in-memory `bm25-search` numbers it).
    pub fn from_corpus_line(line: &str, index: u64) -> Result<Document, String> {
        #[derive(serde::Deserialize)]
        struct Line {
            #[serde(default)]
            id: serde_json::Value,
            #[serde(default)]
            title: String,
            text: String,
        }
        let p: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let id = match p.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => index.to_string(),
            other => other.to_string(),
        };
        Ok(Document {
            id,
            title: p.title,
            text: p.text,
        })
    }
}

/// What can go wrong opening, reading or writing an index.
#[derive(Debug)]
pub enum IndexError {
    /// A file of the index could not be read or written.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The folder is not an index this version reads, or a file is damaged.
    Format { path: String, why: String },
}

impl IndexError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> IndexError {
        IndexError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    pub(crate) fn format(path: &std::path::Path, why: impl Into<String>) -> IndexError {
        IndexError::Format {
            path: path.display().to_string(),
            why: why.into(),
        }
    }
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Io { path, source } => write!(f, "{path}: {source}"),
            IndexError::Format { path, why } => write!(f, "{path}: not a readable index: {why}"),
        }
    }
}

impl std::error::Error for IndexError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IndexError::Io { source, .. } => Some(source),
            IndexError::Format { .. } => None,
        }
    }
}
