//! `search`: BM25 over a passage corpus read from the plugin's granted
//! directory (mounted at `/data`). The corpus is JSONL, one `{"id", "title",
//! "text"}` object a line (`igpo data corpus` writes it from SQuAD and
//! Wikipedia summaries). Returns the top-k passages formatted for the agent.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

use std::cell::RefCell;
use std::collections::HashMap;

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;
use serde::Deserialize;

/// Where the host mounts the granted read-only directory.
const DATA_DIR: &str = "/data";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// JSONL file(s), relative to the granted directory.
    #[serde(default = "default_corpus")]
    corpus: OneOrMany,
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

fn default_corpus() -> OneOrMany {
    OneOrMany::One("corpus.jsonl".into())
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
struct Passage {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    title: String,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    query: String,
    k: Option<usize>,
}

struct Doc {
    id: String,
    title: String,
    text: String,
}

struct Index {
    cfg: Config,
    docs: Vec<Doc>,
    doc_len: Vec<f32>,
    avg_len: f32,
    terms: HashMap<String, u32>,
    /// Per term: (doc, term frequency).
    postings: Vec<Vec<(u32, u32)>>,
}

thread_local! {
    static INDEX: RefCell<Option<Index>> = const { RefCell::new(None) };
}

const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "of", "on", "or", "she", "that", "the", "their", "them", "there", "these", "they", "this",
    "to", "was", "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with",
];

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
}

impl Index {
    fn build(cfg: Config) -> Result<Index, String> {
        let files = match &cfg.corpus {
            OneOrMany::One(f) => vec![f.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        let mut ix = Index {
            cfg,
            docs: vec![],
            doc_len: vec![],
            avg_len: 0.0,
            terms: HashMap::new(),
            postings: vec![],
        };
        for file in files {
            let path = if file.starts_with('/') {
                file.clone()
            } else {
                format!("{DATA_DIR}/{file}")
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "corpus `{file}`: {e} (is it inside the directory the run grants this plugin?)"
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let p: Passage = serde_json::from_str(line)
                    .map_err(|e| format!("corpus `{file}` line {}: {e}", n + 1))?;
                let id = match p.id {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => format!("{}", ix.docs.len()),
                    other => other.to_string(),
                };
                ix.add(Doc {
                    id,
                    title: p.title,
                    text: p.text,
                });
            }
        }
        if ix.docs.is_empty() {
            return Err("corpus is empty".into());
        }
        ix.avg_len = ix.doc_len.iter().sum::<f32>() / ix.docs.len() as f32;
        Ok(ix)
    }

    fn add(&mut self, doc: Doc) {
        let d = self.docs.len() as u32;
        let mut tf: HashMap<u32, u32> = HashMap::new();
        let mut len = 0u32;
        for t in tokens(&doc.title).chain(tokens(&doc.text)) {
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
        self.doc_len.push(len as f32);
        self.docs.push(doc);
    }

    fn search(&self, query: &str, k: usize) -> Vec<(u32, f32)> {
        let n = self.docs.len() as f32;
        let (k1, b) = (self.cfg.k1, self.cfg.b);
        let mut scores = vec![0f32; self.docs.len()];
        let mut qterms: Vec<u32> = tokens(query)
            .filter_map(|t| self.terms.get(&t).copied())
            .collect();
        qterms.sort_unstable();
        qterms.dedup();
        for t in qterms {
            let post = &self.postings[t as usize];
            let df = post.len() as f32;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(d, f) in post {
                let f = f as f32;
                let norm = k1 * (1.0 - b + b * self.doc_len[d as usize] / self.avg_len);
                scores[d as usize] += idf * f * (k1 + 1.0) / (f + norm);
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

    fn format(&self, hits: &[(u32, f32)]) -> String {
        let mut out = Vec::with_capacity(hits.len());
        for (rank, (d, score)) in hits.iter().enumerate() {
            let doc = &self.docs[*d as usize];
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
        out.join(&self.cfg.separator)
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
"corpus":{"description":"JSONL file(s) of {id,title,text} in the granted directory","oneOf":[{"type":"string"},{"type":"array","items":{"type":"string"}}],"default":"corpus.jsonl"},
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
        if !(cfg.k1 >= 0.0 && (0.0..=1.0).contains(&cfg.b)) {
            return Err("config: need k1 >= 0 and 0 <= b <= 1".into());
        }
        let ix = Index::build(cfg)?;
        INDEX.with(|i| *i.borrow_mut() = Some(ix));
        Ok(())
    }

    fn call(arguments: String) -> Result<String, ToolError> {
        let a: Args = serde_json::from_str(&arguments).map_err(|e| {
            ToolError::InvalidArguments(format!(
                "expected {{\"query\": string, \"k\"?: integer}}: {e}"
            ))
        })?;
        INDEX.with(|i| {
            let i = i.borrow();
            let ix = i
                .as_ref()
                .ok_or_else(|| ToolError::Failed("not initialized".into()))?;
            let k = a.k.unwrap_or(ix.cfg.k).clamp(1, ix.cfg.max_k);
            let hits = ix.search(&a.query, k);
            if hits.is_empty() {
                return Ok("No results.".into());
            }
            Ok(ix.format(&hits))
        })
    }
}

export!(Search);
