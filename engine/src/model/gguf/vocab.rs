//! Rebuilds a Hugging Face `tokenizer.json` (and the token fields of
//! `tokenizer_config.json`) from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Supported: `tokenizer.ggml.model = gpt2` (byte-level BPE), with the
//! pre-tokenizer picked by `tokenizer.ggml.pre`. Token types follow llama.cpp:
//! 1 normal, 2 unknown, 3 control (added as special tokens), 4 user-defined
//! (added as plain added tokens), 5 unused, 6 byte. The JSON is loaded back
//! with the `tokenizers` crate and checked before anyone writes it.

use std::collections::HashMap;
use std::str::FromStr;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::reader::GgufFile;
use super::GgufError;

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Qwen2's split regex (also the one in Qwen2/Qwen2.5's own tokenizer.json).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const SUPPORTED_PRE: &str = "default, gpt2, smollm, qwen2, deepseek-r1-qwen, llama-bpe, llama3";

/// The tokenizer files an import writes, already verified.
pub struct TokenizerFiles {
    /// The text of `tokenizer.json`.
    pub tokenizer_json: String,
    /// `tokenizer_config.json`.
    pub tokenizer_config: Json,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` when it differs from eos (chat models
    /// end a turn with it; generation should stop there too).
    pub eot_token_id: Option<u32>,
    /// Number of entries in the vocabulary (`tokenizer.ggml.tokens`).
    pub n_tokens: usize,
}

/// GPT-2's byte -> char table: printable bytes stand for themselves, the
/// others are shifted to 256 and up.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("byte-level chars are valid");
    }
    table
}

/// Serializes the vocabulary as a JSON object in id order.
struct VocabMap<'a>(&'a [(String, u32)]);

impl Serialize for VocabMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (token, id) in self.0 {
            map.serialize_entry(token, id)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct BpeModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: VocabMap<'a>,
    merges: Vec<[&'a str; 2]>,
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Json>,
    normalizer: Option<()>,
    pre_tokenizer: Json,
    post_processor: Json,
    decoder: Json,
    model: BpeModel<'a>,
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Json {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": use_regex
    })
}

fn split_then_byte_level(regex: &str) -> Json {
    json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false, false, false)
        ]
    })
}

/// The pre-tokenizer for `tokenizer.ggml.pre`, or None when unknown.
fn pre_tokenizer(pre: &str) -> Option<Json> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(false, true, true),
        "smollm" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(false, true, true)
            ]
        }),
        "qwen2" | "deepseek-r1-qwen" => split_then_byte_level(QWEN2_SPLIT),
        "llama-bpe" | "llama3" | "llama-v3" => split_then_byte_level(LLAMA3_SPLIT),
        _ => return None,
    })
}

/// Reads an optional token id key and checks it names a token.
fn token_id(file: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>, GgufError> {
    match file.opt_u64(key)? {
        None => Ok(None),
        Some(id) if (id as usize) < n_tokens && id <= u64::from(u32::MAX) => Ok(Some(id as u32)),
        Some(id) => Err(GgufError::BadMetadata {
            path: file.path.clone(),
            key: key.to_string(),
            reason: format!("token id {id} is outside the vocabulary of {n_tokens} tokens"),
        }),
    }
}

/// Builds and verifies the tokenizer. `vocab_rows` is the number of rows of
/// the embedding matrix (the vocabulary may be smaller, never larger);
/// `context_length` becomes `model_max_length`.
pub fn build(
    file: &GgufFile,
    vocab_rows: usize,
    context_length: u64,
    notes: &mut Vec<String>,
) -> Result<TokenizerFiles, GgufError> {
    let path = &file.path;
    let bad = |key: &str, reason: String| GgufError::BadMetadata {
        path: path.clone(),
        key: key.to_string(),
        reason,
    };
    let model = file.req_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            path: path.clone(),
            model: model.to_string(),
        });
    }
    let pre_name = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| GgufError::UnsupportedPreTokenizer {
        path: path.clone(),
        pre: pre_name.to_string(),
        supported: SUPPORTED_PRE.to_string(),
    })?;

    let tokens = file
        .opt_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| GgufError::MissingKey {
            path: path.clone(),
            key: "tokenizer.ggml.tokens".into(),
        })?;
    let n_tokens = tokens.len();
    if n_tokens == 0 {
        return Err(bad(
            "tokenizer.ggml.tokens",
            "the vocabulary is empty".into(),
        ));
    }
    if n_tokens > vocab_rows {
        return Err(bad(
            "tokenizer.ggml.tokens",
            format!("{n_tokens} tokens, but the embedding matrix has only {vocab_rows} rows"),
        ));
    }
    let types = file.opt_int_array("tokenizer.ggml.token_type")?;
    if let Some(types) = &types {
        if types.len() != n_tokens {
            return Err(bad(
                "tokenizer.ggml.token_type",
                format!("{} entries for {n_tokens} tokens", types.len()),
            ));
        }
    }
    let merges = merges(file)?;

    let (vocab, added) = model_vocab(&tokens, types.as_deref(), notes);

    let bos = token_id(file, "tokenizer.ggml.bos_token_id", n_tokens)?;
    let eos = token_id(file, "tokenizer.ggml.eos_token_id", n_tokens)?;
    let unk = token_id(file, "tokenizer.ggml.unknown_token_id", n_tokens)?;
    let pad = token_id(file, "tokenizer.ggml.padding_token_id", n_tokens)?;
    let eot = token_id(file, "tokenizer.ggml.eot_token_id", n_tokens)?;
    let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token")?;
    let add_eos = file.opt_bool("tokenizer.ggml.add_eos_token")?;

    let post = post_processor(file, &tokens, (add_bos, bos), (add_eos, eos))?;

    let n_vocab = vocab.len();
    let doc = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: added,
        normalizer: None,
        pre_tokenizer: pre,
        post_processor: post,
        decoder: byte_level(true, true, true),
        model: BpeModel {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: None,
            end_of_word_suffix: None,
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: VocabMap(&vocab),
            merges,
        },
    };
    let tokenizer_json = serde_json::to_string_pretty(&doc).map_err(|e| GgufError::Tokenizer {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    verify(path, &tokenizer_json, &vocab, n_vocab)?;

    let ids = [
        ("bos_token", bos),
        ("eos_token", eos),
        ("pad_token", pad),
        ("unk_token", unk),
    ];
    let config = tokenizer_config(file, &tokens, (add_bos, add_eos), ids, context_length)?;

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: config,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        eot_token_id: eot.filter(|e| Some(*e) != eos),
        n_tokens,
    })
}

/// `tokenizer.ggml.merges` as token pairs, each checked to be two tokens
/// separated by one space.
fn merges(file: &GgufFile) -> Result<Vec<[&str; 2]>, GgufError> {
    let path = &file.path;
    let merges_raw = file
        .opt_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| GgufError::MissingKey {
            path: path.clone(),
            key: "tokenizer.ggml.merges".into(),
        })?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                merges.push([a, b])
            }
            _ => {
                return Err(GgufError::BadMetadata {
                    path: path.clone(),
                    key: "tokenizer.ggml.merges".into(),
                    reason: format!("entry {i} `{m}` is not two tokens separated by one space"),
                })
            }
        }
    }
    Ok(merges)
}

/// The model vocabulary and its added tokens. Normal tokens are stored in the byte-level
/// alphabet already; one that is not gets spelled byte by byte (as
/// transformers does). Control and user-defined tokens keep their text:
/// they are matched whole, as added tokens.
/// Repeated tokens keep their first id (the first three are noted).
fn model_vocab(
    tokens: &[&str],
    types: Option<&[i64]>,
    notes: &mut Vec<String>,
) -> (Vec<(String, u32)>, Vec<Json>) {
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let n_tokens = tokens.len();
    let mut vocab: Vec<(String, u32)> = Vec::with_capacity(n_tokens);
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(n_tokens);
    let mut added = Vec::new();
    let mut duplicates = 0usize;
    for (id, token) in tokens.iter().enumerate() {
        let ty = types.map_or(1, |t| t[id]);
        let special = ty == TOKEN_TYPE_CONTROL;
        let whole = special || ty == TOKEN_TYPE_USER_DEFINED;
        let text = if whole || token.chars().all(|c| alphabet.contains(&c)) {
            token.to_string()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        if let Some(first) = seen.get(&text) {
            duplicates += 1;
            if duplicates <= 3 {
                notes.push(format!(
                    "token {id} `{token}` repeats token {first}; the tokenizer keeps the first"
                ));
            }
            continue;
        }
        seen.insert(text.clone(), id as u32);
        if whole {
            added.push(json!({
                "id": id,
                "content": text,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special
            }));
        }
        vocab.push((text, id as u32));
    }
    if duplicates > 3 {
        notes.push(format!(
            "{duplicates} repeated tokens in all were left out of the vocabulary"
        ));
    }
    (vocab, added)
}

/// The post-processor: byte-level offsets, plus BOS/EOS when the file asks
/// for them (llama.cpp adds them at tokenization time).
fn post_processor(
    file: &GgufFile,
    tokens: &[&str],
    (add_bos, bos): (Option<bool>, Option<u32>),
    (add_eos, eos): (Option<bool>, Option<u32>),
) -> Result<Json, GgufError> {
    let path = &file.path;
    let mut post = byte_level(true, false, true);
    let mut wrap = Vec::new();
    let mut special_tokens = serde_json::Map::new();
    for (flag, id, key) in [
        (add_bos, bos, "tokenizer.ggml.bos_token_id"),
        (add_eos, eos, "tokenizer.ggml.eos_token_id"),
    ] {
        if flag == Some(true) {
            let id = id.ok_or_else(|| GgufError::MissingKey {
                path: path.clone(),
                key: key.to_string(),
            })?;
            let text = tokens[id as usize];
            special_tokens.insert(
                text.to_string(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            );
            wrap.push(text);
        }
    }
    if !wrap.is_empty() {
        let special =
            |text: &str, type_id: u32| json!({"SpecialToken": {"id": text, "type_id": type_id}});
        let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let (mut single, mut pair) = (Vec::new(), Vec::new());
        if add_bos == Some(true) {
            single.push(special(wrap[0], 0));
            pair.push(special(wrap[0], 0));
        }
        single.push(seq("A", 0));
        pair.push(seq("A", 0));
        if add_eos == Some(true) {
            let e = wrap[wrap.len() - 1];
            single.push(special(e, 0));
            pair.push(special(e, 0));
        }
        if add_bos == Some(true) {
            pair.push(special(wrap[0], 1));
        }
        pair.push(seq("B", 1));
        if add_eos == Some(true) {
            pair.push(special(wrap[wrap.len() - 1], 1));
        }
        post = json!({
            "type": "Sequence",
            "processors": [
                post,
                {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens}
            ]
        });
    }
    Ok(post)
}

/// The token fields of `tokenizer_config.json`: BOS/EOS flags, the special
/// tokens' texts, the chat template, the context length.
fn tokenizer_config(
    file: &GgufFile,
    tokens: &[&str],
    (add_bos, add_eos): (Option<bool>, Option<bool>),
    ids: [(&str, Option<u32>); 4],
    context_length: u64,
) -> Result<Json, GgufError> {
    let mut config = serde_json::Map::new();
    if let Some(b) = add_bos {
        config.insert("add_bos_token".into(), json!(b));
    }
    if let Some(e) = add_eos {
        config.insert("add_eos_token".into(), json!(e));
    }
    for (name, id) in ids {
        if let Some(text) = id.map(|i| tokens[i as usize]) {
            config.insert(name.into(), json!(text));
        }
    }
    if let Some(template) = file.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("model_max_length".into(), json!(context_length));
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Json::Object(config))
}

/// Loads the JSON with the `tokenizers` crate and checks that every token
/// keeps its id and that text survives an encode/decode round trip.
fn verify(
    path: &str,
    text: &str,
    vocab: &[(String, u32)],
    n_vocab: usize,
) -> Result<(), GgufError> {
    let fail = |reason: String| GgufError::Tokenizer {
        path: path.to_string(),
        reason,
    };
    let tok = tokenizers::Tokenizer::from_str(text)
        .map_err(|e| fail(format!("it does not load: {e}")))?;
    let size = tok.get_vocab_size(true);
    if size != n_vocab {
        return Err(fail(format!("it holds {size} tokens, expected {n_vocab}")));
    }
    for (token, id) in vocab {
        if tok.token_to_id(token) != Some(*id) {
            return Err(fail(format!(
                "token `{token}` maps to {:?}, expected {id}",
                tok.token_to_id(token)
            )));
        }
    }
    let sample = "Hello, world! 12345 \u{e9}t\u{e9} \u{4e2d}\u{6587} fn main() {}\n\ttabs  spaces";
    let enc = tok
        .encode(sample, false)
        .map_err(|e| fail(format!("encoding a sample fails: {e}")))?;
    let back = tok
        .decode(enc.get_ids(), false)
        .map_err(|e| fail(format!("decoding a sample fails: {e}")))?;
    if back != sample {
        return Err(fail(format!(
            "the sample {sample:?} decodes back as {back:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], '\u{120}'); // Ġ
        assert_eq!(t[b'\n' as usize], '\u{10a}'); // Ċ
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[0xAD], '\u{143}');
        let unique: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn every_pre_tokenizer_loads() {
        for pre in SUPPORTED_PRE.split(", ") {
            let p = pre_tokenizer(pre).expect("listed pre-tokenizer is known");
            let doc = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": p, "post_processor": null, "decoder": null,
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}
            });
            tokenizers::Tokenizer::from_str(&doc.to_string())
                .unwrap_or_else(|e| panic!("pre-tokenizer {pre} does not load: {e}"));
        }
        assert!(pre_tokenizer("no-such-pre").is_none());
    }
}
