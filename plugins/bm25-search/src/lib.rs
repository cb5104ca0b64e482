//! `search`: BM25 over a passage corpus in the plugin's granted directory
//! (mounted at `/data`). Returns the top-k passages formatted for the agent.
//!
//! Two sources, the same ranking (the tokenizer and the scoring are
//! `igpo_retrieval`'s, the float order is the same):
//! - `index`: a folder written once by `igpo data index`; `init` opens it and a
//!   call reads only its terms' posting lists and the passages it returns, so
//!   an instance's memory does not grow with the corpus;
//! - `corpus` (the default, `corpus.jsonl`): JSONL, one `{"id", "title",
//!   "text"}` object a line (`igpo data corpus` writes it), indexed in memory
//!   by every instance at `init` — fine for small corpora.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;
use igpo_retrieval::text::{passage_tokens, tokens};
use igpo_retrieval::{Bm25, Document, Index, Scorer};
use serde::Deserialize;

/// Where the host mounts the granted read-only directory.
const DATA_DIR: &str = "/data";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// JSONL file(s), relative to the granted directory (default
    /// `corpus.jsonl` when there is no `index`).
    #[serde(default)]
    corpus: Option<OneOrMany>,
    /// An index folder written by `igpo data index`, relative to the granted
    /// directory; instead of `corpus`.
    #[serde(default)]
    index: Option<String>,
    /// Passages returned when the call does not say.
    #[serde(default = "default_k")]
    k: usize,
    /// Upper bound on a call's `k`.
    #[serde(default = "default_max_k")]
    max_k: usize,
    /// Template of one passage: {rank} {id} {title} {text} {score}.
    #[serde(default = "default_format")]
    format: String,
    /// Between passages.
    #[serde(default = "default_separator")]
    separator: String,
    /// Cut each passage's text to this many characters (0 = no cut).
    #[serde(default)]
    max_chars: usize,
    #[serde(default = "default_k1")]
    k1: f32,
    #[serde(default = "default_b")]
    b: f32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_k() -> usize {
    3
}
fn default_max_k() -> usize {
    20
}
fn default_format() -> String {
    "Doc {rank} (Title: {title}) {text}".into()
}
fn default_separator() -> String {
    "\n".into()
}
fn default_k1() -> f32 {
    0.9
}
fn default_b() -> f32 {
    0.4
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    query: String,
    k: Option<usize>,
}

/// A `corpus` indexed in memory by this instance.
struct MemoryIndex {
    docs: Vec<Document>,
    /// Terms per document.
    doc_len: Vec<u32>,
    avg_len: f32,
    terms: HashMap<String, u32>,
    /// Per term: (doc, term frequency).
    postings: Vec<Vec<(u32, u32)>>,
}

/// Where the passages come from.
enum Source {
    Memory(MemoryIndex),
    Disk(Index),
}

struct State {
    cfg: Config,
    source: Source,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// A path in the config, relative to the granted directory unless absolute.
fn granted(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{DATA_DIR}/{path}")
    }
}

impl MemoryIndex {
    fn build(files: &[String]) -> Result<MemoryIndex, String> {
        let mut ix = MemoryIndex {
            docs: vec![],
            doc_len: vec![],
            avg_len: 0.0,
            terms: HashMap::new(),
            postings: vec![],
        };
        for file in files {
            let text = std::fs::read_to_string(granted(file)).map_err(|e| {
                format!(
                    "corpus `{file}`: {e} (is it inside the directory the run grants this plugin?)"
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let doc = Document::from_corpus_line(line, ix.docs.len() as u64)
                    .map_err(|e| format!("corpus `{file}` line {}: {e}", n + 1))?;
                ix.add(doc);
            }
        }
        if ix.docs.is_empty() {
            return Err("corpus is empty".into());
        }
        // An f32 sum in corpus order: `igpo data index` computes the same.
        ix.avg_len = ix.doc_len.iter().map(|&l| l as f32).sum::<f32>() / ix.docs.len() as f32;
        Ok(ix)
    }

    fn add(&mut self, doc: Document) {
        let d = self.docs.len() as u32;
        let mut tf: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        for t in passage_tokens(&doc.title, &doc.text) {
            let next = self.terms.len() as u32;
            let id = *self.terms.entry(t).or_insert(next);
            if id as usize == self.postings.len() {
                self.postings.push(vec![]);
            }
            *tf.entry(id).or_default() += 1;
            len += 1;
        }
        for (t, f) in tf {
            self.postings[t as usize].push((d, f));
        }
        self.doc_len.push(len);
        self.docs.push(doc);
    }

    fn search(&self, query: &str, k: usize, params: Bm25) -> Vec<(u32, f32)> {
        let scorer = Scorer {
            params,
            docs: self.docs.len() as f32,
            avg_len: self.avg_len,
        };
        let mut scores = vec![0f32; self.docs.len()];
        let mut qterms: Vec<u32> = tokens(query)
            .filter_map(|t| self.terms.get(&t).copied())
            .collect();
        // Terms in id order (first appearance in the corpus): the index's order.
        qterms.sort_unstable();
        qterms.dedup();
        for t in qterms {
            let post = &self.postings[t as usize];
            let idf = scorer.idf(post.len() as u32);
            for &(d, f) in post {
                scores[d as usize] += scorer.term_score(idf, f, self.doc_len[d as usize]);
            }
        }
        let mut hits: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0.0)
            .map(|(d, s)| (d as u32, *s))
            .collect();
        // Highest score first; ties by corpus order, so results are deterministic.
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }
}

impl State {
    fn open(cfg: Config) -> Result<State, String> {
        let source = match (&cfg.index, &cfg.corpus) {
            (Some(_), Some(_)) => {
                return Err("config: give `index` or `corpus`, not both".into())
            }
            (Some(dir), None) => Source::Disk(Index::open(Path::new(&granted(dir))).map_err(
                |e| format!("index `{dir}`: {e} (is it inside the directory the run grants this plugin?)"),
            )?),
            (None, corpus) => {
                let files = match corpus {
                    None => vec!["corpus.jsonl".to_string()],
                    Some(OneOrMany::One(f)) => vec![f.clone()],
                    Some(OneOrMany::Many(v)) => v.clone(),
                };
                Source::Memory(MemoryIndex::build(&files)?)
            }
        };
        Ok(State { cfg, source })
    }

    fn search(&self, query: &str, k: usize) -> Result<Vec<(u32, f32)>, String> {
        let params = Bm25 {
            k1: self.cfg.k1,
            b: self.cfg.b,
        };
        match &self.source {
            Source::Memory(m) => Ok(m.search(query, k, params)),
            Source::Disk(ix) => Ok(ix
                .search(query, k, params)
                .map_err(|e| format!("index: {e}"))?
                .into_iter()
                .map(|h| (h.doc, h.score))
                .collect()),
        }
    }

    fn format(&self, hits: &[(u32, f32)]) -> Result<String, String> {
        let mut out = Vec::with_capacity(hits.len());
        for (rank, (d, score)) in hits.iter().enumerate() {
            let read;
            let doc = match &self.source {
                Source::Memory(m) => &m.docs[*d as usize],
                Source::Disk(ix) => {
                    read = ix.document(*d).map_err(|e| format!("index: {e}"))?;
                    &read
                }
            };
            let text: String =
                if self.cfg.max_chars > 0 && doc.text.chars().count() > self.cfg.max_chars {
                    let mut t: String = doc.text.chars().take(self.cfg.max_chars).collect();
                    t.push_str("...");
                    t
                } else {
                    doc.text.clone()
                };
            out.push(
                self.cfg
                    .format
                    .replace("{rank}", &(rank + 1).to_string())
                    .replace("{id}", &doc.id)
                    .replace("{title}", &doc.title)
                    .replace("{score}", &format!("{score:.3}"))
                    .replace("{text}", &text),
            );
        }
        Ok(out.join(&self.cfg.separator))
    }
}

struct Search;

impl Guest for Search {
    fn describe() -> ToolInfo {
        ToolInfo {
            info: PluginInfo {
                name: "search".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Searches a Wikipedia passage corpus (BM25) and returns the most relevant passages.".into(),
                config_schema: r#"{"type":"object","additionalProperties":false,"properties":{
"corpus":{"description":"JSONL file(s) of {id,title,text} in the granted directory, indexed in memory by each instance (default corpus.jsonl when there is no index)","oneOf":[{"type":"string"},{"type":"array","items":{"type":"string"}}]},
"index":{"type":"string","description":"a folder written by `igpo data index`, in the granted directory; instead of corpus"},
"k":{"type":"integer","minimum":1,"default":3},
"max_k":{"type":"integer","minimum":1,"default":20},
"format":{"type":"string","description":"one passage; placeholders {rank} {id} {title} {text} {score}","default":"Doc {rank} (Title: {title}) {text}"},
"separator":{"type":"string","default":"\n"},
"max_chars":{"type":"integer","minimum":0,"default":0},
"k1":{"type":"number","default":0.9},
"b":{"type":"number","default":0.4}}}"#
                    .into(),
            },
            parameters_schema: r#"{"type":"object","additionalProperties":false,"properties":{"query":{"type":"string","description":"what to search for"},"k":{"type":"integer","minimum":1,"description":"number of passages"}},"required":["query"]}"#.into(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        let cfg: Config = serde_json::from_str(if config.trim().is_empty() {
            "{}"
        } else {
            &config
        })
        .map_err(|e| format!("config: {e}"))?;
        if cfg.k == 0 || cfg.max_k == 0 {
            return Err("config: k and max_k must be >= 1".into());
        }
        Bm25 {
            k1: cfg.k1,
            b: cfg.b,
        }
        .check()
        .map_err(|e| format!("config: {e}"))?;
        let state = State::open(cfg)?;
        STATE.with(|s| *s.borrow_mut() = Some(state));
        Ok(())
    }

    fn call(arguments: String) -> Result<String, ToolError> {
        let a: Args = serde_json::from_str(&arguments).map_err(|e| {
            ToolError::InvalidArguments(format!(
                "expected {{\"query\": string, \"k\"?: integer}}: {e}"
            ))
        })?;
        STATE.with(|s| {
            let s = s.borrow();
            let st = s
                .as_ref()
                .ok_or_else(|| ToolError::Failed("not initialized".into()))?;
            let k = a.k.unwrap_or(st.cfg.k).clamp(1, st.cfg.max_k);
            let hits = st.search(&a.query, k).map_err(ToolError::Failed)?;
            if hits.is_empty() {
                return Ok("No results.".into());
            }
            st.format(&hits).map_err(ToolError::Failed)
        })
    }
}

export!(Search);
