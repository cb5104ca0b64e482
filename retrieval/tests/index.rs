//! The on-disk index against a direct in-memory BM25 (the `bm25-search`
//! plugin's algorithm, written out here again): same documents, same order,
//! same score bits, whether the build spilled runs or not.

use std::collections::HashMap;
use std::path::PathBuf;

use igpo_retrieval::text::passage_tokens;
use igpo_retrieval::{Bm25, Document, Index, IndexWriter};

mod common;
use common::corpus;

/// The plugin's in-memory search: ids by first appearance, a dense score
/// array, terms added in id order, ties by corpus order.
fn reference(docs: &[Document], query: &str, k: usize, p: Bm25) -> Vec<(u32, f32)> {
    let mut terms: HashMap<String, u32> = HashMap::new();
    let mut postings: Vec<Vec<(u32, u32)>> = vec![];
    let mut lens = vec![];
    for (d, doc) in docs.iter().enumerate() {
        let mut tf: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        for t in passage_tokens(&doc.title, &doc.text) {
            let next = terms.len() as u32;
            let id = *terms.entry(t).or_insert(next);
            if id as usize == postings.len() {
                postings.push(vec![]);
            }
            *tf.entry(id).or_default() += 1;
            len += 1;
        }
        for (t, f) in tf {
            postings[t as usize].push((d as u32, f));
        }
        lens.push(len as f32);
    }
    let avg = lens.iter().sum::<f32>() / docs.len() as f32;
    let n = docs.len() as f32;
    let mut scores = vec![0f32; docs.len()];
    let mut q: Vec<u32> = igpo_retrieval::text::tokens(query)
        .filter_map(|t| terms.get(&t).copied())
        .collect();
    q.sort_unstable();
    q.dedup();
    for t in q {
        let post = &postings[t as usize];
        let df = post.len() as f32;
        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        for &(d, f) in post {
            let f = f as f32;
            let norm = p.k1 * (1.0 - p.b + p.b * lens[d as usize] / avg);
            scores[d as usize] += idf * f * (p.k1 + 1.0) / (f + norm);
        }
    }
    let mut hits: Vec<(u32, f32)> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| **s > 0.0)
        .map(|(d, s)| (d as u32, *s))
        .collect();
    hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.truncate(k);
    hits
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("igpo-retrieval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn build(docs: &[Document], dir: &std::path::Path, budget: usize) -> igpo_retrieval::IndexSummary {
    let mut w = IndexWriter::create(dir, budget).unwrap();
    for d in docs {
        w.add(d, passage_tokens(&d.title, &d.text).collect())
            .unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn the_index_ranks_as_the_in_memory_search_does_bit_for_bit() {
    let docs = corpus(3000, 7);
    let (a, b) = (scratch("one-run"), scratch("spilled"));
    let sa = build(&docs, &a, 1 << 30);
    // 1,024 postings per run (the floor): dozens of runs to merge.
    let sb = build(&docs, &b, 0);
    assert_eq!(sa.runs, 0);
    assert!(sb.runs > 10, "{sb:?}");
    assert_eq!(
        (sa.documents, sa.terms, sa.postings),
        (sb.documents, sb.terms, sb.postings)
    );
    for f in [
        "terms.bin",
        "terms.idx",
        "postings.bin",
        "docs.jsonl",
        "docs.offsets",
        "index.json",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between a spilled and an in-memory build"
        );
    }
    assert!(std::fs::read_dir(&b).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    let ix = Index::open(&b).unwrap();
    assert_eq!(ix.len(), 3000);
    let params = [Bm25::default(), Bm25 { k1: 1.2, b: 0.75 }];
    let queries = [
        "w0",
        "w1 w2 w3",
        "W5 w17 the w399",
        "w250 w250 w3",
        "nothing here",
        "",
        "w7 w0 w1 w2 w3 w4 w5 w6",
        "w12, w13? (w14)",
    ];
    let mut compared = 0;
    for p in params {
        for q in queries {
            for k in [1, 3, 10, 5000] {
                let want = reference(&docs, q, k, p);
                let got: Vec<(u32, f32)> = ix
                    .search(q, k, p)
                    .unwrap()
                    .iter()
                    .map(|h| (h.doc, h.score))
                    .collect();
                assert_eq!(got.len(), want.len(), "{q:?} k={k}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.0, w.0, "{q:?} k={k}: rank order");
                    assert_eq!(g.1.to_bits(), w.1.to_bits(), "{q:?} k={k}: score bits");
                }
                compared += got.len();
            }
        }
    }
    assert!(compared > 10_000, "{compared}");
    for d in [0u32, 1, 1234, 2999] {
        assert_eq!(ix.document(d).unwrap(), docs[d as usize]);
    }
    assert!(ix.document(3000).is_err());
    assert!(ix.search("w1", 0, Bm25::default()).unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn a_damaged_or_foreign_folder_is_one_clear_error() {
    let docs = corpus(50, 3);
    let dir = scratch("damaged");
    build(&docs, &dir, 1 << 20);
    let meta = std::fs::read_to_string(dir.join("index.json")).unwrap();
    std::fs::write(
        dir.join("index.json"),
        meta.replace("\"version\": 1", "\"version\": 9"),
    )
    .unwrap();
    let e = Index::open(&dir).err().unwrap().to_string();
    assert!(e.contains("index.json") && e.contains("version 9"), "{e}");
    std::fs::write(dir.join("index.json"), &meta).unwrap();
    let post = std::fs::read(dir.join("postings.bin")).unwrap();
    std::fs::write(dir.join("postings.bin"), &post[..post.len() - 5]).unwrap();
    let e = Index::open(&dir).err().unwrap().to_string();
    assert!(e.contains("postings.bin") && e.contains("size"), "{e}");
    let e = Index::open(&dir.join("nope")).err().unwrap().to_string();
    assert!(e.contains("nope") && e.contains("index.json"), "{e}");
    let e = IndexWriter::create(&dir, 1 << 20)
        .unwrap()
        .finish()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no documents"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corpus_lines_number_documents_without_an_id() {
    let d = Document::from_corpus_line(r#"{"title":"T","text":"x"}"#, 41).unwrap();
    assert_eq!(d.id, "41");
    let d = Document::from_corpus_line(r#"{"id":7,"text":"x"}"#, 0).unwrap();
    assert_eq!((d.id.as_str(), d.title.as_str()), ("7", ""));
    assert!(Document::from_corpus_line(r#"{"id":"a"}"#, 0).is_err());
}
