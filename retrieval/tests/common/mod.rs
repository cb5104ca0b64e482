//! What the retrieval tests share: a seeded RNG and a seeded corpus.
#![allow(dead_code)] // each test file uses its part

use igpo_retrieval::Document;

/// Xorshift: every test's randomness, seeded.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seeded corpus with a skewed vocabulary: common words in most passages,
/// and the stopword `The` here and there.
pub fn corpus(n: usize, seed: u64) -> Vec<Document> {
    let mut r = Rng(seed);
    let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
    (0..n)
        .map(|d| {
            let len = 3 + r.below(40);
            let text: Vec<&str> = (0..len)
                .map(|_| {
                    let x = r.below(1000) as f64 / 1000.0;
                    let i = ((x * x * x) * words.len() as f64) as usize;
                    if r.below(9) == 0 {
                        "The"
                    } else {
                        words[i].as_str()
                    }
                })
                .collect();
            Document {
                id: format!("p{d}"),
                title: words[r.below(50) as usize].to_uppercase(),
                text: text.join(" "),
            }
        })
        .collect()
}
