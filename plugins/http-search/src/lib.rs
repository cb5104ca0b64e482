//! `search`: asks a retrieval server over HTTP (`wasi:http`) and returns the
//! top-k passages formatted for the agent, like `bm25-search`.
//!
//! The server speaks Search-R1's protocol: `POST {url}/retrieve` with
//! `{"queries": [query], "topk": k, "return_scores": true}` answers
//! `{"result": [[{"document": {"id", "contents": "\"Title\"\ntext"}, "score"}]]}`
//! (one list per query). The host lets the request out only when the run
//! file lists the server's origin in this plugin's `allow_http`.
//!
//! Every failure (refused origin, timeout, connection, non-2xx status, a
//! bad answer) is a tool error of one line: the agent reads it and the run
//! goes on.

wit_bindgen::generate!({ path: "../../wit", world: "tool" });

mod client;

use std::cell::RefCell;

use exports::igpo::plugins::tool_api::{Guest, ToolError, ToolInfo};
use igpo::plugins::types::PluginInfo;
use serde::Deserialize;

use client::Endpoint;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The retrieval server, `http://host:port` (a base path is kept);
    /// requests go to `{url}/retrieve`.
    url: String,
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
    /// Connect, first-byte and between-bytes timeouts of a request (the
    /// host caps them at its `http_timeout_ms`).
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
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
fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    query: String,
    k: Option<usize>,
}

/// The server's answer: one list of hits per query.
#[derive(Deserialize)]
struct Answer {
    result: Vec<Vec<Hit>>,
}

#[derive(Deserialize)]
struct Hit {
    document: Doc,
    #[serde(default)]
    score: f64,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default, deserialize_with = "id_text")]
    id: String,
    contents: String,
}

/// Ids come as strings or numbers.
fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        v => v.to_string(),
    })
}

struct State {
    cfg: Config,
    endpoint: Endpoint,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Title and text of a Search-R1 `contents`: the first line without its
/// surrounding quotes, and the rest (no newline: no title).
fn split_contents(contents: &str) -> (&str, &str) {
    match contents.split_once('\n') {
        Some((title, text)) => {
            let title = title.trim();
            let title = title
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(title);
            (title, text)
        }
        None => ("", contents),
    }
}

impl State {
    fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, String> {
        let body = serde_json::json!({"queries": [query], "topk": k, "return_scores": true});
        let answer = self.endpoint.post_json(&body.to_string())?;
        let mut answer: Answer = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "http: {} answered JSON that is not a Search-R1 result: {e}",
                self.endpoint.url
            )
        })?;
        let mut hits = answer.result.drain(..).next().unwrap_or_default();
        hits.truncate(k);
        Ok(hits)
    }

    fn format(&self, hits: &[Hit]) -> String {
        let mut out = Vec::with_capacity(hits.len());
        for (rank, hit) in hits.iter().enumerate() {
            let (title, text) = split_contents(&hit.document.contents);
            let text: String =
                if self.cfg.max_chars > 0 && text.chars().count() > self.cfg.max_chars {
                    let mut t: String = text.chars().take(self.cfg.max_chars).collect();
                    t.push_str("...");
                    t
                } else {
                    text.to_string()
                };
            out.push(
                self.cfg
                    .format
                    .replace("{rank}", &(rank + 1).to_string())
                    .replace("{id}", &hit.document.id)
                    .replace("{title}", title)
                    .replace("{score}", &format!("{:.3}", hit.score))
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
                description: "Searches a retrieval server (Search-R1 protocol, over HTTP) and returns the most relevant passages.".into(),
                config_schema: r#"{"type":"object","additionalProperties":false,"required":["url"],"properties":{
"url":{"type":"string","description":"the retrieval server, http://host:port; requests go to {url}/retrieve (its origin must be in the plugin's allow_http)"},
"k":{"type":"integer","minimum":1,"default":3},
"max_k":{"type":"integer","minimum":1,"default":20},
"format":{"type":"string","description":"one passage; placeholders {rank} {id} {title} {text} {score}","default":"Doc {rank} (Title: {title}) {text}"},
"separator":{"type":"string","default":"\n"},
"max_chars":{"type":"integer","minimum":0,"default":0},
"timeout_ms":{"type":"integer","minimum":1,"default":10000,"description":"connect, first-byte and between-bytes timeouts (capped by the host's http_timeout_ms)"}}}"#
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
        if cfg.timeout_ms == 0 {
            return Err("config: timeout_ms must be >= 1".into());
        }
        let endpoint = Endpoint::new(&cfg.url, "/retrieve", cfg.timeout_ms)
            .map_err(|e| format!("config: url: {e}"))?;
        STATE.with(|s| *s.borrow_mut() = Some(State { cfg, endpoint }));
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
            Ok(st.format(&hits))
        })
    }
}

export!(Search);
