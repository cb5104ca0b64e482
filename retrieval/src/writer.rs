//! Builds the on-disk index from documents in corpus order. Memory: the
//! vocabulary, plus postings up to the run budget; beyond it postings spill to
//! a run file sorted by term, and `finish` merges the runs (for each term, the
//! runs in order: documents stay ascending, no sort across runs).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::format::{self, Meta};
use crate::{Document, IndexError};

/// One posting in a run: (term, document, tf, document length).
type RunPosting = [u32; 4];
const RUN_POSTING_BYTES: usize = 16;

/// What `finish` wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexSummary {
    pub documents: u64,
    pub terms: u64,
    pub postings: u64,
    pub avg_len: f32,
    /// Sorted runs spilled to disk while building (0: all fit the budget).
    pub runs: usize,
    /// Bytes of the finished index folder.
    pub bytes: u64,
}

/// Streams documents into an index folder; see the module text.
pub struct IndexWriter {
    dir: PathBuf,
    vocab: HashMap<String, u32>,
    docs: BufWriter<File>,
    offsets: BufWriter<File>,
    doc_bytes: u64,
    documents: u64,
    /// f32, summed in corpus order: the in-memory search's mean length.
    len_sum: f32,
    run: Vec<RunPosting>,
    run_budget: usize,
    runs: Vec<PathBuf>,
    postings: u64,
}

impl IndexWriter {
    /// Starts an index in `dir` (created; index files in it are replaced),
    /// spilling postings beyond `run_budget_bytes` of memory to sorted runs.
    pub fn create(dir: &Path, run_budget_bytes: usize) -> Result<IndexWriter, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let create = |name: &str| -> Result<BufWriter<File>, IndexError> {
            let p = dir.join(name);
            File::create(&p)
                .map(|f| BufWriter::with_capacity(1 << 20, f))
                .map_err(|e| IndexError::io(&p, e))
        };
        let mut offsets = create(format::DOC_OFFSETS)?;
        offsets
            .write_all(&0u64.to_le_bytes())
            .map_err(|e| IndexError::io(&dir.join(format::DOC_OFFSETS), e))?;
        Ok(IndexWriter {
            dir: dir.to_path_buf(),
            vocab: HashMap::new(),
            docs: create(format::DOCS)?,
            offsets,
            doc_bytes: 0,
            documents: 0,
            len_sum: 0.0,
            run: Vec::new(),
            run_budget: (run_budget_bytes / RUN_POSTING_BYTES).max(1024),
            runs: Vec::new(),
            postings: 0,
        })
    }

    /// Documents added so far (the next one's number).
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Adds the next document with its terms in order
    /// ([`crate::text::passage_tokens`]; computed by the caller, possibly on
    /// other threads).
    pub fn add(&mut self, doc: &Document, terms: Vec<String>) -> Result<(), IndexError> {
        let d = u32::try_from(self.documents)
            .map_err(|_| IndexError::format(&self.dir, "more than 4,294,967,295 documents"))?;
        let mut line = serde_json::to_vec(doc).expect("a document serializes");
        line.push(b'\n');
        let docs_path = || self.dir.join(format::DOCS);
        self.docs
            .write_all(&line)
            .map_err(|e| IndexError::io(&docs_path(), e))?;
        self.doc_bytes += line.len() as u64;
        self.offsets
            .write_all(&self.doc_bytes.to_le_bytes())
            .map_err(|e| IndexError::io(&self.dir.join(format::DOC_OFFSETS), e))?;

        // Term ids in order of first appearance; counts in a small map.
        let len = terms.len() as u32;
        let mut counts: Vec<(u32, u32)> = Vec::new();
        let mut slot: HashMap<u32, usize> = HashMap::new();
        for t in terms {
            let next = self.vocab.len() as u32;
            let id = *self.vocab.entry(t).or_insert(next);
            match slot.get(&id) {
                Some(&i) => counts[i].1 += 1,
                None => {
                    slot.insert(id, counts.len());
                    counts.push((id, 1));
                }
            }
        }
        for (id, tf) in counts {
            self.run.push([id, d, tf, len]);
        }
        self.len_sum += len as f32;
        self.documents += 1;
        if self.run.len() >= self.run_budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes the postings in memory as a run sorted by term (stable: the
    /// documents of a term stay ascending).
    fn spill(&mut self) -> Result<(), IndexError> {
        self.run.sort_by_key(|p| p[0]);
        let path = self.dir.join(format!("run-{}.tmp", self.runs.len()));
        let mut w = BufWriter::with_capacity(
            1 << 20,
            File::create(&path).map_err(|e| IndexError::io(&path, e))?,
        );
        for p in &self.run {
            for x in p {
                w.write_all(&x.to_le_bytes())
                    .map_err(|e| IndexError::io(&path, e))?;
            }
        }
        w.flush().map_err(|e| IndexError::io(&path, e))?;
        self.run.clear();
        self.runs.push(path);
        Ok(())
    }

    /// Merges the runs into `postings.bin`, writes the vocabulary and
    /// `index.json`, and removes the runs.
    pub fn finish(mut self) -> Result<IndexSummary, IndexError> {
        let dir = self.dir.clone();
        if self.documents == 0 {
            return Err(IndexError::format(&dir, "the corpus has no documents"));
        }
        self.docs
            .flush()
            .map_err(|e| IndexError::io(&dir.join(format::DOCS), e))?;
        self.offsets
            .flush()
            .map_err(|e| IndexError::io(&dir.join(format::DOC_OFFSETS), e))?;
        let spilled = !self.runs.is_empty();
        if spilled && !self.run.is_empty() {
            self.spill()?;
        }
        self.run.sort_by_key(|p| p[0]);
        let n_terms = self.vocab.len();
        // Per term id: (document frequency, byte offset in postings.bin).
        let mut where_: Vec<(u32, u64)> = vec![(0, 0); n_terms];
        let post_path = dir.join(format::POSTINGS);
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(&post_path).map_err(|e| IndexError::io(&post_path, e))?,
        );
        let mut at = 0u64;
        let put = |out: &mut BufWriter<File>, p: &RunPosting| -> Result<(), IndexError> {
            for x in &p[1..] {
                out.write_all(&x.to_le_bytes())
                    .map_err(|e| IndexError::io(&post_path, e))?;
            }
            Ok(())
        };
        if spilled {
            let mut cursors = self
                .runs
                .iter()
                .map(|p| RunCursor::open(p))
                .collect::<Result<Vec<_>, _>>()?;
            for (t, slot) in where_.iter_mut().enumerate() {
                *slot = (0, at);
                for c in cursors.iter_mut() {
                    while let Some(p) = c.peek() {
                        if p[0] as usize != t {
                            break;
                        }
                        put(&mut out, &p)?;
                        slot.0 += 1;
                        at += format::POSTING_BYTES as u64;
                        c.advance()?;
                    }
                }
            }
        } else {
            let mut i = 0;
            for (t, slot) in where_.iter_mut().enumerate() {
                *slot = (0, at);
                while i < self.run.len() && self.run[i][0] as usize == t {
                    put(&mut out, &self.run[i])?;
                    slot.0 += 1;
                    at += format::POSTING_BYTES as u64;
                    i += 1;
                }
            }
        }
        out.flush().map_err(|e| IndexError::io(&post_path, e))?;
        drop(out);
        for r in &self.runs {
            let _ = std::fs::remove_file(r);
        }
        let postings = at / format::POSTING_BYTES as u64;
        self.postings = postings;

        // The vocabulary, sorted by bytes, and every 64th entry's position.
        let mut vocab: Vec<(String, u32)> = std::mem::take(&mut self.vocab).into_iter().collect();
        vocab.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let terms_path = dir.join(format::TERMS);
        let idx_path = dir.join(format::TERMS_INDEX);
        let mut terms = BufWriter::with_capacity(
            1 << 20,
            File::create(&terms_path).map_err(|e| IndexError::io(&terms_path, e))?,
        );
        let mut idx =
            BufWriter::new(File::create(&idx_path).map_err(|e| IndexError::io(&idx_path, e))?);
        let mut pos = 0u64;
        for (n, (term, id)) in vocab.iter().enumerate() {
            let bytes = term.as_bytes();
            let tlen = u16::try_from(bytes.len()).map_err(|_| {
                IndexError::format(&terms_path, format!("a term of {} bytes", bytes.len()))
            })?;
            if n % format::TERMS_PER_BLOCK == 0 {
                let mut e = Vec::with_capacity(10 + bytes.len());
                e.extend_from_slice(&tlen.to_le_bytes());
                e.extend_from_slice(bytes);
                e.extend_from_slice(&pos.to_le_bytes());
                idx.write_all(&e)
                    .map_err(|e| IndexError::io(&idx_path, e))?;
            }
            let (df, off) = where_[*id as usize];
            let mut e = Vec::with_capacity(18 + bytes.len());
            e.extend_from_slice(&tlen.to_le_bytes());
            e.extend_from_slice(bytes);
            e.extend_from_slice(&id.to_le_bytes());
            e.extend_from_slice(&df.to_le_bytes());
            e.extend_from_slice(&off.to_le_bytes());
            terms
                .write_all(&e)
                .map_err(|e| IndexError::io(&terms_path, e))?;
            pos += e.len() as u64;
        }
        terms.flush().map_err(|e| IndexError::io(&terms_path, e))?;
        idx.flush().map_err(|e| IndexError::io(&idx_path, e))?;

        let avg_len = self.len_sum / self.documents as f32;
        let meta = Meta {
            format: format::FORMAT.into(),
            version: format::VERSION,
            tokenizer: format::TOKENIZER.into(),
            documents: self.documents,
            terms: n_terms as u64,
            postings,
            avg_len,
            avg_len_bits: avg_len.to_bits(),
        };
        let meta_path = dir.join(format::META);
        std::fs::write(
            &meta_path,
            serde_json::to_string_pretty(&meta).expect("meta serializes") + "\n",
        )
        .map_err(|e| IndexError::io(&meta_path, e))?;
        let mut bytes = 0;
        for name in [
            format::META,
            format::TERMS,
            format::TERMS_INDEX,
            format::POSTINGS,
            format::DOCS,
            format::DOC_OFFSETS,
        ] {
            bytes += std::fs::metadata(dir.join(name))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(IndexSummary {
            documents: self.documents,
            terms: n_terms as u64,
            postings,
            avg_len,
            runs: self.runs.len(),
            bytes,
        })
    }
}

/// Reads a run file one posting at a time.
struct RunCursor {
    path: PathBuf,
    r: BufReader<File>,
    head: Option<RunPosting>,
}

impl RunCursor {
    fn open(path: &Path) -> Result<RunCursor, IndexError> {
        let f = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let mut c = RunCursor {
            path: path.to_path_buf(),
            r: BufReader::with_capacity(1 << 20, f),
            head: None,
        };
        c.advance()?;
        Ok(c)
    }
    fn peek(&self) -> Option<RunPosting> {
        self.head
    }
    fn advance(&mut self) -> Result<(), IndexError> {
        let mut b = [0u8; RUN_POSTING_BYTES];
        match self.r.read_exact(&mut b) {
            Ok(()) => {
                let w = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
                self.head = Some([w(0), w(1), w(2), w(3)]);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.head = None;
                Ok(())
            }
            Err(e) => Err(IndexError::io(&self.path, e)),
        }
    }
}
