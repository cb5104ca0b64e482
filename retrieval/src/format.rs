//! The on-disk index: one folder, written by [`crate::IndexWriter`] (`igpo data
//! index`), read by [`crate::Index`]. All integers are little-endian.
//!
//! | file | what |
//! |---|---|
//! | `index.json` | [`Meta`]: format name and version, tokenizer, counts, mean length |
//! | `terms.bin` | the vocabulary sorted by the terms' UTF-8 bytes; per term: `u16` byte length, the bytes, `u32` id, `u32` document frequency, `u64` byte offset of its posting list in `postings.bin` |
//! | `terms.idx` | every [`TERMS_PER_BLOCK`]th entry of `terms.bin`: `u16` length, the term's bytes, `u64` byte offset of that entry in `terms.bin`; read whole when the index opens |
//! | `postings.bin` | per term, in id order, its documents ascending: `u32` document, `u32` term frequency, `u32` document length in terms ([`POSTING_BYTES`] each) |
//! | `docs.jsonl` | the documents in corpus order, one `{"id","title","text"}` line each |
//! | `docs.offsets` | documents + 1 `u64` byte offsets into `docs.jsonl` |
//!
//! A term's id is the order of its first appearance in the corpus (title, then
//! text, document by document): BM25 adds a document's terms in id order, the
//! order the in-memory `bm25-search` has always used, so both give the same
//! bits. The document length rides in each posting so that a query reads no
//! per-document table.

/// `index.json`'s `format`.
pub const FORMAT: &str = "igpo-bm25";
/// `index.json`'s `version`; a reader refuses any other.
pub const VERSION: u32 = 1;
/// The tokenizer the terms came from ([`crate::text`]).
pub const TOKENIZER: &str = "alphanumeric-lowercase-stopwords-v1";
/// One `terms.idx` entry per this many vocabulary entries.
pub const TERMS_PER_BLOCK: usize = 64;
/// Bytes of one posting.
pub const POSTING_BYTES: usize = 12;

pub const META: &str = "index.json";
pub const TERMS: &str = "terms.bin";
pub const TERMS_INDEX: &str = "terms.idx";
pub const POSTINGS: &str = "postings.bin";
pub const DOCS: &str = "docs.jsonl";
pub const DOC_OFFSETS: &str = "docs.offsets";

/// `index.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    pub tokenizer: String,
    pub documents: u64,
    pub terms: u64,
    pub postings: u64,
    /// The mean document length, for people; the reader uses `avg_len_bits`.
    pub avg_len: f32,
    /// The mean document length's f32 bits (JSON floats need not round-trip).
    pub avg_len_bits: u32,
}
