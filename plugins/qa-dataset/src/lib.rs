//! `qa-dataset`: questions with reference answers from a file in the
//! plugin's granted directory (mounted at `/data`). Formats: SQuAD JSON
//! (`data[].paragraphs[].qas[]`), the JSONL of Search-R1 / FlashRAG
//! (`{"id","question","golden_answers":[...]}` a line), BIG-bench `task.json`
//! (`examples[].{input,target}`), FanOutQA (`[{id,question,answer,...}]`)
//! and `.parquet` files in the Search-R1/FlashRAG or verl layout
//! (`parquet_file.rs`). Optional seeded shuffle and a train/dev split.

wit_bindgen::generate!({ path: "../../wit", world: "dataset" });

mod parquet_file;

use std::cell::RefCell;

use exports::igpo::plugins::dataset_api::{Example, Guest};
use igpo::plugins::types::PluginInfo;
use serde::Deserialize;
use serde_json::{json, Value};

const DATA_DIR: &str = "/data";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Data file, relative to the granted directory.
    file: String,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    shuffle: bool,
    #[serde(default)]
    seed: u64,
    /// Fraction of examples (after the shuffle) that form the `dev` split;
    /// 0 = no splits.
    #[serde(default)]
    dev_fraction: f64,
    /// Exact size of the `dev` split (overrides `dev_fraction`).
    dev_size: Option<usize>,
    /// Keep only the first `limit` examples (after the shuffle); 0 = all.
    #[serde(default)]
    limit: usize,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Debug)]
#[serde(rename_all = "snake_case")]
enum Format {
    #[default]
    Auto,
    Squad,
    Jsonl,
    Bigbench,
    Fanoutqa,
    Parquet,
}

struct Data {
    examples: Vec<Example>,
    /// (name, start, end) over `examples`.
    splits: Vec<(String, usize, usize)>,
}

thread_local! {
    static DATA: RefCell<Option<Data>> = const { RefCell::new(None) };
}

/// Parquet is chosen by the file's extension (`.parquet`, any case).
fn is_parquet(file: &str) -> bool {
    file.to_ascii_lowercase().ends_with(".parquet")
}

/// The format of a text file: by its extension (`.jsonl`), else by a look
/// at its content.
fn detect(file: &str, text: &str) -> Result<Format, String> {
    if file.ends_with(".jsonl") {
        return Ok(Format::Jsonl);
    }
    let head = text.trim_start();
    if head.starts_with('[') {
        return Ok(Format::Fanoutqa);
    }
    // Cheap look at the top-level keys without parsing twice.
    if text.contains("\"paragraphs\"") && text.contains("\"qas\"") {
        return Ok(Format::Squad);
    }
    if text.contains("\"examples\"") {
        return Ok(Format::Bigbench);
    }
    if head.starts_with('{') && text.contains("\"golden_answers\"") {
        return Ok(Format::Jsonl);
    }
    Err(format!(
        "`{file}`: cannot tell the format; set \"format\" to squad, jsonl, bigbench, fanoutqa or parquet"
    ))
}

pub(crate) fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reference answers from a string, a list of strings, or (FanOutQA) a
/// number, bool or object of sub-answers rendered as text.
pub(crate) fn answers_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().filter_map(as_str).collect(),
        Value::Object(m) => vec![m
            .iter()
            .map(|(k, v)| format!("{k}: {}", as_str(v).unwrap_or_else(|| v.to_string())))
            .collect::<Vec<_>>()
            .join(", ")],
        other => as_str(other).into_iter().collect(),
    }
}

fn parse_squad(file: &str, text: &str) -> Result<Vec<Example>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("`{file}`: {e}"))?;
    let articles = v["data"]
        .as_array()
        .ok_or(format!("`{file}`: SQuAD needs a `data` array"))?;
    let mut out = vec![];
    for (ai, art) in articles.iter().enumerate() {
        let title = art["title"].as_str().unwrap_or("").replace('_', " ");
        let paras = art["paragraphs"]
            .as_array()
            .ok_or(format!("`{file}`: data[{ai}].paragraphs is not an array"))?;
        for (pi, p) in paras.iter().enumerate() {
            let qas = p["qas"].as_array().ok_or(format!(
                "`{file}`: data[{ai}].paragraphs[{pi}].qas is not an array"
            ))?;
            for (qi, q) in qas.iter().enumerate() {
                let question = q["question"].as_str().ok_or(format!(
                    "`{file}`: data[{ai}].paragraphs[{pi}].qas[{qi}].question is missing"
                ))?;
                let mut answers: Vec<String> = vec![];
                for a in q["answers"].as_array().into_iter().flatten() {
                    if let Some(t) = a["text"].as_str() {
                        if !answers.iter().any(|x| x == t) {
                            answers.push(t.to_string());
                        }
                    }
                }
                let id = as_str(&q["id"]).unwrap_or_else(|| format!("{ai}-{pi}-{qi}"));
                out.push(Example {
                    id,
                    question: question.trim().to_string(),
                    answers,
                    metadata_json: json!({"title": title, "paragraph": format!("squad:{ai}:{pi}")})
                        .to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// One Search-R1/FlashRAG record (a JSONL line, a FanOutQA item, a parquet
/// row as JSON): `question`, the answers, `id` (else `n`), the rest as metadata.
pub(crate) fn from_record(
    file: &str,
    where_: &str,
    n: usize,
    rec: Value,
) -> Result<Example, String> {
    let Value::Object(mut m) = rec else {
        return Err(format!("`{file}` {where_}: not a JSON object"));
    };
    let question = m
        .remove("question")
        .and_then(|q| q.as_str().map(str::to_string))
        .ok_or(format!("`{file}` {where_}: no string `question`"))?;
    let answers = ["golden_answers", "answers", "answer"]
        .iter()
        .find_map(|k| m.remove(*k).map(|v| answers_of(&v)))
        .ok_or(format!(
            "`{file}` {where_}: no `golden_answers` (or `answers`/`answer`)"
        ))?;
    Ok(example(m, n, question, answers))
}

/// An example from what is left of a record once its question and answers
/// are taken: `id` (else the record number `n`), the rest as metadata.
pub(crate) fn example(
    mut rest: serde_json::Map<String, Value>,
    n: usize,
    question: String,
    answers: Vec<String>,
) -> Example {
    let id = rest
        .remove("id")
        .and_then(|v| as_str(&v))
        .unwrap_or_else(|| n.to_string());
    Example {
        id,
        question,
        answers,
        metadata_json: Value::Object(rest).to_string(),
    }
}

fn parse_jsonl(file: &str, text: &str) -> Result<Vec<Example>, String> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: Value =
            serde_json::from_str(line).map_err(|e| format!("`{file}` line {}: {e}", i + 1))?;
        out.push(from_record(
            file,
            &format!("line {}", i + 1),
            out.len(),
            rec,
        )?);
    }
    Ok(out)
}

fn parse_bigbench(file: &str, text: &str) -> Result<Vec<Example>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("`{file}`: {e}"))?;
    let task = v["name"].as_str().unwrap_or("").to_string();
    let examples = v["examples"]
        .as_array()
        .ok_or(format!("`{file}`: BIG-bench needs an `examples` array"))?;
    let mut out = vec![];
    for (i, ex) in examples.iter().enumerate() {
        let input = ex["input"]
            .as_str()
            .ok_or(format!("`{file}`: examples[{i}].input is not a string"))?;
        let answers = answers_of(&ex["target"]);
        if answers.is_empty() {
            return Err(format!(
                "`{file}`: examples[{i}].target is missing or empty"
            ));
        }
        out.push(Example {
            id: format!("{i}"),
            question: input.to_string(),
            answers,
            metadata_json: json!({"task": task}).to_string(),
        });
    }
    Ok(out)
}

fn parse_fanoutqa(file: &str, text: &str) -> Result<Vec<Example>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("`{file}`: {e}"))?;
    let Value::Array(items) = v else {
        return Err(format!("`{file}`: FanOutQA needs a top-level array"));
    };
    let mut out = vec![];
    for (i, item) in items.into_iter().enumerate() {
        let raw_answer = item["answer"].clone();
        let hops = item["decomposition"]
            .as_array()
            .map(|d| d.len())
            .unwrap_or(0);
        let categories = item["categories"].clone();
        let mut ex = from_record(file, &format!("[{i}]"), i, item)?;
        // Keep the structured answer; drop the (large) decomposition tree
        // except its size.
        ex.metadata_json =
            json!({"answer": raw_answer, "sub_questions": hops, "categories": categories})
                .to_string();
        out.push(ex);
    }
    Ok(out)
}

/// The examples of `file` (its bytes) in `format`; `auto` picks parquet by
/// the extension, the text formats by `detect`.
fn parse(file: &str, format: Format, bytes: Vec<u8>) -> Result<Vec<Example>, String> {
    let format = match format {
        Format::Auto if is_parquet(file) => Format::Parquet,
        f => f,
    };
    if format == Format::Parquet {
        return parquet_file::read(file, bytes);
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("`{file}`: not UTF-8 text ({e}); set \"format\" if it is parquet"))?;
    let format = match format {
        Format::Auto => detect(file, &text)?,
        f => f,
    };
    match format {
        Format::Squad => parse_squad(file, &text),
        Format::Jsonl => parse_jsonl(file, &text),
        Format::Bigbench => parse_bigbench(file, &text),
        Format::Fanoutqa => parse_fanoutqa(file, &text),
        Format::Auto | Format::Parquet => unreachable!("resolved above"),
    }
}

/// splitmix64: a small seeded generator for the shuffle.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

fn load(cfg: Config) -> Result<Data, String> {
    let path = if cfg.file.starts_with('/') {
        cfg.file.clone()
    } else {
        format!("{DATA_DIR}/{}", cfg.file)
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "`{}`: {e} (is it inside the directory the run grants this plugin?)",
            cfg.file
        )
    })?;
    let mut examples = parse(&cfg.file, cfg.format, bytes)?;
    if examples.is_empty() {
        return Err(format!("`{}`: no examples", cfg.file));
    }
    if cfg.shuffle {
        let mut rng = SplitMix(cfg.seed);
        for i in (1..examples.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            examples.swap(i, j);
        }
    }
    if cfg.limit > 0 {
        examples.truncate(cfg.limit);
    }
    let n = examples.len();
    let dev = match cfg.dev_size {
        Some(d) => d,
        None => (cfg.dev_fraction * n as f64).round() as usize,
    };
    let splits = if dev == 0 {
        vec![]
    } else if dev >= n {
        return Err(format!(
            "dev split of {dev} leaves no training examples out of {n}"
        ));
    } else {
        vec![
            ("train".to_string(), 0, n - dev),
            ("dev".to_string(), n - dev, n),
        ]
    };
    Ok(Data { examples, splits })
}

fn range(d: &Data, split: &Option<String>) -> Result<(usize, usize), String> {
    match split {
        None => Ok((0, d.examples.len())),
        Some(name) => d
            .splits
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, a, b)| (*a, *b))
            .ok_or_else(|| {
                let names: Vec<&str> = d.splits.iter().map(|s| s.0.as_str()).collect();
                format!("no split `{name}` (splits: {names:?}; set dev_fraction to make train/dev)")
            }),
    }
}

fn with_data<T>(f: impl FnOnce(&Data) -> Result<T, String>) -> Result<T, String> {
    DATA.with(|d| f(d.borrow().as_ref().ok_or("not initialized")?))
}

struct QaDataset;

impl Guest for QaDataset {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "qa-dataset".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Question/answer examples from SQuAD JSON, Search-R1/FlashRAG JSONL or parquet, verl parquet, BIG-bench task.json or FanOutQA, with a seeded shuffle and a train/dev split.".into(),
            config_schema: r#"{"type":"object","additionalProperties":false,"required":["file"],"properties":{
"file":{"type":"string","description":"data file in the granted directory (.parquet: Search-R1/FlashRAG or verl columns)"},
"format":{"enum":["auto","squad","jsonl","bigbench","fanoutqa","parquet"],"default":"auto"},
"shuffle":{"type":"boolean","default":false},
"seed":{"type":"integer","minimum":0,"default":0},
"dev_fraction":{"type":"number","minimum":0,"maximum":1,"default":0},
"dev_size":{"type":"integer","minimum":0},
"limit":{"type":"integer","minimum":0,"default":0}}}"#
                .into(),
        }
    }

    fn init(config: String) -> Result<(), String> {
        let cfg: Config = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        if !(0.0..1.0).contains(&cfg.dev_fraction) {
            return Err("config: dev_fraction must be in [0, 1)".into());
        }
        let data = load(cfg)?;
        DATA.with(|d| *d.borrow_mut() = Some(data));
        Ok(())
    }

    fn splits() -> Vec<String> {
        DATA.with(|d| {
            d.borrow()
                .as_ref()
                .map(|d| d.splits.iter().map(|s| s.0.clone()).collect())
                .unwrap_or_default()
        })
    }

    fn len(split: Option<String>) -> Result<u64, String> {
        with_data(|d| range(d, &split).map(|(a, b)| (b - a) as u64))
    }

    fn get(split: Option<String>, index: u64) -> Result<Example, String> {
        with_data(|d| {
            let (a, b) = range(d, &split)?;
            let i = usize::try_from(index)
                .ok()
                .filter(|i| *i < b - a)
                .ok_or_else(|| {
                    format!(
                        "index {index} out of range: split {} has {} examples",
                        split.as_deref().unwrap_or("(all)"),
                        b - a
                    )
                })?;
            Ok(d.examples[a + i].clone())
        })
    }
}

export!(QaDataset);
