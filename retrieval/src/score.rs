//! BM25 (Robertson's idf with +1, Lucene-style) in f32, computed exactly as
//! the in-memory `bm25-search` always has, so an index gives the same bits.

/// The two BM25 knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25 {
    pub k1: f32,
    pub b: f32,
}

impl Default for Bm25 {
    /// Pyserini's defaults for passage retrieval (k1 0.9, b 0.4).
    fn default() -> Self {
        Bm25 { k1: 0.9, b: 0.4 }
    }
}

impl Bm25 {
    /// The one-line reason these knobs are unusable, if they are.
    pub fn check(&self) -> Result<(), String> {
        if self.k1 >= 0.0 && (0.0..=1.0).contains(&self.b) {
            Ok(())
        } else {
            Err("need k1 >= 0 and 0 <= b <= 1".into())
        }
    }
}

/// BM25 over one corpus: its size and mean document length fixed.
#[derive(Clone, Copy, Debug)]
pub struct Scorer {
    pub params: Bm25,
    /// Documents in the corpus, as f32.
    pub docs: f32,
    /// Mean document length in terms (the f32 sum of the lengths in corpus
    /// order, divided by the count).
    pub avg_len: f32,
}

impl Scorer {
    /// The weight of a term found in `df` documents.
    pub fn idf(&self, df: u32) -> f32 {
        let df = df as f32;
        ((self.docs - df + 0.5) / (df + 0.5) + 1.0).ln()
    }

    /// What one term adds to a document's score: `tf` occurrences in a
    /// document of `doc_len` terms, the term's `idf`.
    pub fn term_score(&self, idf: f32, tf: u32, doc_len: u32) -> f32 {
        let Bm25 { k1, b } = self.params;
        let f = tf as f32;
        let norm = k1 * (1.0 - b + b * doc_len as f32 / self.avg_len);
        idf * f * (k1 + 1.0) / (f + norm)
    }
}
