//! `igpo data index`: the BM25 index of a passage corpus, built once on the
//! host (the format and the search are `igpo_retrieval`'s). Streaming: lines
//! are read and tokenized a batch at a time (on every core), postings spill to
//! sorted runs past the memory budget, so memory stays bounded whatever the
//! corpus size (the vocabulary aside). The index is built in a sibling folder
//! and renamed into place: a failed build leaves nothing half-written.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use igpo_retrieval::{text::passage_tokens, Document, IndexSummary, IndexWriter};
use rayon::prelude::*;

use super::DataError;

/// Corpus lines parsed and tokenized together.
const BATCH_LINES: usize = 8192;

/// Builds the index of `corpora` (JSONL `{"id","title","text"}` files, read
/// in order) into `out`, which must not exist yet or be empty unless
/// `replace` (then an index already there is replaced only once the new one
/// is complete). Postings beyond `run_budget_bytes` spill to disk.
pub fn build_index(
    corpora: &[PathBuf],
    out: &Path,
    run_budget_bytes: usize,
    replace: bool,
) -> Result<IndexSummary, DataError> {
    let fmt = |path: &Path, message: String| DataError::Format {
        path: path.to_path_buf(),
        message,
    };
    if corpora.is_empty() {
        return Err(fmt(out, "no corpus file given".into()));
    }
    if out.exists() && !out.is_dir() {
        return Err(fmt(
            out,
            "is a file; --out is the index folder to create".into(),
        ));
    }
    let occupied = out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied && !(replace && out.join(igpo_retrieval::format::META).is_file()) {
        return Err(fmt(
            out,
            if replace {
                "exists and is not an index; remove it or choose another --out".into()
            } else {
                "exists and is not empty; remove it, choose another --out or pass --force".into()
            },
        ));
    }
    let name = out
        .file_name()
        .map_or("index".into(), |n| n.to_string_lossy().to_string());
    let building = out.with_file_name(format!(".{name}.building-{}", std::process::id()));
    // The first writes: missing parents are made (as `mkdir -p`); a parent
    // that is a file or read-only fails here, named as `out` (not as the
    // temporary folder).
    let _ = std::fs::remove_dir_all(&building);
    if let Some(parent) = building.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
            path: out.to_path_buf(),
            source,
        })?;
    }
    std::fs::create_dir(&building).map_err(|source| DataError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let result = write_index(corpora, &building, run_budget_bytes);
    match result {
        Ok(summary) => {
            if out.exists() {
                // Only an index (checked above) or an empty folder is removed.
                std::fs::remove_dir_all(out).map_err(|source| DataError::Io {
                    path: out.to_path_buf(),
                    source,
                })?;
            }
            std::fs::rename(&building, out).map_err(|source| DataError::Io {
                path: out.to_path_buf(),
                source,
            })?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(e)
        }
    }
}

fn write_index(
    corpora: &[PathBuf],
    dir: &Path,
    run_budget_bytes: usize,
) -> Result<IndexSummary, DataError> {
    let index_err = |e: igpo_retrieval::IndexError| DataError::Format {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut writer = IndexWriter::create(dir, run_budget_bytes).map_err(index_err)?;
    for file in corpora {
        let io = |source| DataError::Io {
            path: file.clone(),
            source,
        };
        let reader =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file).map_err(io)?);
        let mut lines = reader.lines().enumerate();
        loop {
            // (line number, text) of the next batch's non-blank lines.
            let mut batch = Vec::with_capacity(BATCH_LINES);
            for (n, line) in lines.by_ref() {
                let line = line.map_err(io)?;
                if !line.trim().is_empty() {
                    batch.push((n + 1, line));
                }
                if batch.len() == BATCH_LINES {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let first = writer.documents();
            let parsed: Vec<(Document, Vec<String>)> = batch
                .par_iter()
                .enumerate()
                .map(|(i, (n, line))| {
                    let doc = Document::from_corpus_line(line, first + i as u64).map_err(|e| {
                        DataError::Format {
                            path: file.clone(),
                            message: format!("line {n}: {e}"),
                        }
                    })?;
                    let terms = passage_tokens(&doc.title, &doc.text).collect();
                    Ok((doc, terms))
                })
                .collect::<Result<_, DataError>>()?;
            for (doc, terms) in parsed {
                writer.add(&doc, terms).map_err(index_err)?;
            }
        }
    }
    writer.finish().map_err(index_err)
}
