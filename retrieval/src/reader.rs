//! Opens an index folder and answers queries from it, reading only what a
//! query needs: the vocabulary block of each query term, those terms' posting
//! lists (streamed in blocks), and the documents returned.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::format::{self, Meta};
use crate::score::{Bm25, Scorer};
use crate::text;
use crate::{Document, IndexError};

/// One ranked document: its number in the corpus and its BM25 score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub doc: u32,
    pub score: f32,
}

/// An opened index; see [`crate::format`]. Cheap to share between threads on
/// unix (positioned reads), one query at a time elsewhere (WASI).
pub struct Index {
    meta: Meta,
    avg_len: f32,
    /// `terms.idx`: every 64th term and its entry's offset in `terms.bin`.
    sparse: Vec<(Vec<u8>, u64)>,
    terms: Blob,
    postings: Blob,
    docs: Blob,
    offsets: Blob,
}

/// A vocabulary entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TermEntry {
    id: u32,
    df: u32,
    offset: u64,
}

/// Postings read per block while a query walks a list.
const BLOCK_POSTINGS: usize = 2048;

impl Index {
    /// Opens the index in `dir`, checking its format, version and sizes.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        let meta_path = dir.join(format::META);
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| IndexError::io(&meta_path, e))?;
        let meta: Meta = serde_json::from_str(&text)
            .map_err(|e| IndexError::format(&meta_path, e.to_string()))?;
        if meta.format != format::FORMAT || meta.version != format::VERSION {
            return Err(IndexError::format(
                &meta_path,
                format!(
                    "format {} version {}, this build reads {} version {}",
                    meta.format,
                    meta.version,
                    format::FORMAT,
                    format::VERSION
                ),
            ));
        }
        if meta.tokenizer != format::TOKENIZER {
            return Err(IndexError::format(
                &meta_path,
                format!(
                    "tokenizer {}, this build has {}",
                    meta.tokenizer,
                    format::TOKENIZER
                ),
            ));
        }
        let terms = Blob::open(&dir.join(format::TERMS))?;
        let postings = Blob::open(&dir.join(format::POSTINGS))?;
        let docs = Blob::open(&dir.join(format::DOCS))?;
        let offsets = Blob::open(&dir.join(format::DOC_OFFSETS))?;
        if postings.len != meta.postings * format::POSTING_BYTES as u64 {
            return Err(IndexError::format(
                &postings.path,
                "its size does not match index.json",
            ));
        }
        if offsets.len != (meta.documents + 1) * 8 {
            return Err(IndexError::format(
                &offsets.path,
                "its size does not match index.json",
            ));
        }
        let idx_path = dir.join(format::TERMS_INDEX);
        let raw = std::fs::read(&idx_path).map_err(|e| IndexError::io(&idx_path, e))?;
        let mut sparse = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let bad = || IndexError::format(&idx_path, "truncated entry");
            let len = u16::from_le_bytes(raw.get(at..at + 2).ok_or_else(bad)?.try_into().unwrap())
                as usize;
            let term = raw.get(at + 2..at + 2 + len).ok_or_else(bad)?.to_vec();
            let off = u64::from_le_bytes(
                raw.get(at + 2 + len..at + 10 + len)
                    .ok_or_else(bad)?
                    .try_into()
                    .unwrap(),
            );
            sparse.push((term, off));
            at += 10 + len;
        }
        // A truncated `docs.jsonl` or `terms.bin` is found now, not at the
        // first query that reaches its end: the last document ends where
        // the file does, and the last block of terms (every entry after the
        // last sparse one) ends where `terms.bin` does.
        if meta.documents > 0 {
            let o = offsets.read(meta.documents * 8, 8)?;
            if u64::from_le_bytes(o.try_into().unwrap()) != docs.len {
                return Err(IndexError::format(
                    &docs.path,
                    "its size does not match docs.offsets (truncated?)",
                ));
            }
        }
        let expected_blocks = meta.terms.div_ceil(format::TERMS_PER_BLOCK as u64);
        if sparse.len() as u64 != expected_blocks {
            return Err(IndexError::format(
                &idx_path,
                format!(
                    "{} entries, index.json's {} terms need {expected_blocks}",
                    sparse.len(),
                    meta.terms
                ),
            ));
        }
        if let Some((_, start)) = sparse.last() {
            let bad = || {
                IndexError::format(
                    &terms.path,
                    "its size does not match terms.idx (truncated?)",
                )
            };
            let start = *start;
            if start >= terms.len {
                return Err(bad());
            }
            let block = terms.read(start, (terms.len - start) as usize)?;
            let in_last = meta.terms - (expected_blocks - 1) * format::TERMS_PER_BLOCK as u64;
            let mut at = 0usize;
            for _ in 0..in_last {
                let len = block
                    .get(at..at + 2)
                    .map(|b| u16::from_le_bytes(b.try_into().unwrap()) as usize)
                    .ok_or_else(bad)?;
                at += 18 + len;
            }
            if at != block.len() {
                return Err(bad());
            }
        }
        Ok(Index {
            avg_len: f32::from_bits(meta.avg_len_bits),
            meta,
            sparse,
            terms,
            postings,
            docs,
            offsets,
        })
    }

    /// `index.json`.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.meta.documents
    }

    /// Whether the index has no documents (an index never does).
    pub fn is_empty(&self) -> bool {
        self.meta.documents == 0
    }

    /// The vocabulary entry of `term`, if the corpus has it.
    fn lookup(&self, term: &str) -> Result<Option<TermEntry>, IndexError> {
        let q = term.as_bytes();
        let i = self.sparse.partition_point(|(t, _)| t.as_slice() <= q);
        if i == 0 {
            return Ok(None);
        }
        let start = self.sparse[i - 1].1;
        let end = self.sparse.get(i).map_or(self.terms.len, |e| e.1);
        let block = self.terms.read(start, (end - start) as usize)?;
        let mut at = 0;
        while at < block.len() {
            let bad = || IndexError::format(&self.terms.path, "truncated entry");
            let len = u16::from_le_bytes(block.get(at..at + 2).ok_or_else(bad)?.try_into().unwrap())
                as usize;
            let t = block.get(at + 2..at + 2 + len).ok_or_else(bad)?;
            let rest = block.get(at + 2 + len..at + 18 + len).ok_or_else(bad)?;
            match t.cmp(q) {
                Ordering::Equal => {
                    return Ok(Some(TermEntry {
                        id: u32::from_le_bytes(rest[0..4].try_into().unwrap()),
                        df: u32::from_le_bytes(rest[4..8].try_into().unwrap()),
                        offset: u64::from_le_bytes(rest[8..16].try_into().unwrap()),
                    }))
                }
                Ordering::Greater => return Ok(None),
                Ordering::Less => at += 18 + len,
            }
        }
        Ok(None)
    }

    /// The `k` best documents for `query`, best first; ties by corpus order.
    /// Documents sharing no term with the query are never returned.
    pub fn search(&self, query: &str, k: usize, params: Bm25) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Ok(vec![]);
        }
        let mut entries = Vec::new();
        for t in text::tokens(query) {
            if let Some(e) = self.lookup(&t)? {
                entries.push(e);
            }
        }
        // Terms in id order: the order BM25's float sum has always used.
        entries.sort_unstable_by_key(|e| e.id);
        entries.dedup();
        let scorer = Scorer {
            params,
            docs: self.meta.documents as f32,
            avg_len: self.avg_len,
        };
        let mut lists = entries
            .iter()
            .map(|e| PostingCursor::new(&self.postings, e, scorer.idf(e.df)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut best: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
        // Document at a time: the smallest document under any cursor.
        while let Some(doc) = lists.iter().filter_map(|c| c.head().map(|p| p.0)).min() {
            let mut score = 0f32;
            for c in lists.iter_mut() {
                if let Some((d, tf, len)) = c.head() {
                    if d == doc {
                        score += scorer.term_score(c.idf, tf, len);
                        c.advance(&self.postings)?;
                    }
                }
            }
            if score > 0.0 {
                best.push(Reverse(Ranked(Hit { doc, score })));
                if best.len() > k {
                    best.pop();
                }
            }
        }
        let mut hits: Vec<Hit> = best.into_iter().map(|r| r.0 .0).collect();
        hits.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc)));
        Ok(hits)
    }

    /// Document `doc` (its number in the corpus).
    pub fn document(&self, doc: u32) -> Result<Document, IndexError> {
        if doc as u64 >= self.meta.documents {
            return Err(IndexError::format(
                &self.docs.path,
                format!("no document {doc} (the index has {})", self.meta.documents),
            ));
        }
        let o = self.offsets.read(doc as u64 * 8, 16)?;
        let start = u64::from_le_bytes(o[0..8].try_into().unwrap());
        let end = u64::from_le_bytes(o[8..16].try_into().unwrap());
        if end < start || end > self.docs.len {
            return Err(IndexError::format(
                &self.offsets.path,
                "offsets out of order",
            ));
        }
        let line = self.docs.read(start, (end - start) as usize)?;
        serde_json::from_slice(&line)
            .map_err(|e| IndexError::format(&self.docs.path, format!("document {doc}: {e}")))
    }
}

/// A hit ordered by quality: higher score, then earlier document, is greater.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Ranked(Hit);

impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .score
            .total_cmp(&other.0.score)
            .then(other.0.doc.cmp(&self.0.doc))
    }
}

/// Walks one term's posting list a block at a time.
struct PostingCursor {
    idf: f32,
    /// Byte offset of the next block to read.
    next: u64,
    /// Postings not yet read into `block`.
    unread: u64,
    block: Vec<u8>,
    at: usize,
}

impl PostingCursor {
    fn new(postings: &Blob, e: &TermEntry, idf: f32) -> Result<PostingCursor, IndexError> {
        let mut c = PostingCursor {
            idf,
            next: e.offset,
            unread: e.df as u64,
            block: Vec::new(),
            at: 0,
        };
        c.fill(postings)?;
        Ok(c)
    }

    fn fill(&mut self, postings: &Blob) -> Result<(), IndexError> {
        let n = self.unread.min(BLOCK_POSTINGS as u64) as usize;
        self.block = postings.read(self.next, n * format::POSTING_BYTES)?;
        self.next += (n * format::POSTING_BYTES) as u64;
        self.unread -= n as u64;
        self.at = 0;
        Ok(())
    }

    /// (document, tf, document length) under the cursor.
    fn head(&self) -> Option<(u32, u32, u32)> {
        let p = self.block.get(self.at..self.at + format::POSTING_BYTES)?;
        let w = |i: usize| u32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap());
        Some((w(0), w(1), w(2)))
    }

    fn advance(&mut self, postings: &Blob) -> Result<(), IndexError> {
        self.at += format::POSTING_BYTES;
        if self.at >= self.block.len() && self.unread > 0 {
            self.fill(postings)?;
        }
        Ok(())
    }
}

/// One file of the index, read at offsets.
struct Blob {
    path: PathBuf,
    len: u64,
    #[cfg(unix)]
    file: File,
    #[cfg(not(unix))]
    file: std::sync::Mutex<File>,
}

impl Blob {
    fn open(path: &Path) -> Result<Blob, IndexError> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io(path, e))?.len();
        Ok(Blob {
            path: path.to_path_buf(),
            len,
            #[cfg(unix)]
            file,
            #[cfg(not(unix))]
            file: std::sync::Mutex::new(file),
        })
    }

    fn read(&self, offset: u64, n: usize) -> Result<Vec<u8>, IndexError> {
        if offset + n as u64 > self.len {
            return Err(IndexError::format(
                &self.path,
                "an offset past the end of the file",
            ));
        }
        let mut buf = vec![0u8; n];
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file
                .read_exact_at(&mut buf, offset)
                .map_err(|e| IndexError::io(&self.path, e))?;
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| IndexError::io(&self.path, e))?;
        }
        Ok(buf)
    }
}
