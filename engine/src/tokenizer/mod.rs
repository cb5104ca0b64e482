//! Text <-> token ids: the `tokenizers` crate over `tokenizer.json`, plus the
//! model's chat template ([`chat`]: the only module that spells chat markup).

mod bpe;
pub mod chat;

use std::path::Path;

pub use bpe::train_bpe;
pub use chat::{
    chatml_tokenizer_config, tool_response_content, ChatError, ChatTemplate, Message, SftPiece,
    TemplateSource, ToolCallFormat, ToolSpec, CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE,
    CHATML_VOCAB_SPECIALS,
};

/// Errors loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {msg}")]
    Load { path: String, msg: String },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("training the tokenizer: {0}")]
    Train(String),
    #[error(transparent)]
    Chat(#[from] ChatError),
}

/// A model's tokenizer and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
    /// `eos_token_id` of `generation_config.json` (empty without one).
    generation_eos: Vec<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, the chat template (see [`ChatTemplate::load_dir`])
    /// and the stop ids of `generation_config.json` from a model folder (or
    /// a checkpoint's `model/`).
    pub fn load_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let dir = &crate::model::hf_dir(dir);
        let mut tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        tok.chat = ChatTemplate::load_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
                    path: gen_path.display().to_string(),
                    msg: format!("not valid JSON: {e}"),
                })?;
            tok.generation_eos = match v.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|i| i as u32).into_iter().collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|n| n.as_u64())
                    .map(|i| i as u32)
                    .collect(),
                _ => vec![],
            };
        }
        Ok(tok)
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let load_err = |msg: String| TokenizerError::Load {
            path: path.display().to_string(),
            msg,
        };
        // The tokenizers crate panics on some malformed files (e.g. a
        // `decoder` whose JSON does not parse, found by the fuzz tests):
        // that is a bad file, so an error, not a crash.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_file(path))
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                load_err(format!("not a valid tokenizer file ({why})"))
            })?
            .map_err(|e| load_err(e.to_string()))?;
        Ok(Tokenizer {
            inner,
            chat: ChatTemplate::default(),
            generation_eos: vec![],
        })
    }

    /// Token ids of `text`; special tokens written in the text map to their
    /// ids, nothing is added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Token ids of `text` with the byte range of `text` each one covers.
    pub fn encode_with_offsets(
        &self,
        text: &str,
    ) -> Result<Vec<(u32, std::ops::Range<usize>)>, TokenizerError> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(e.get_ids()
            .iter()
            .zip(e.get_offsets())
            .map(|(&id, &(a, b))| (id, a..b))
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The id of a token written out.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of one token id.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids of the chat template's end-of-turn tokens this vocabulary has
    /// (the turn closer first, e.g. `<|im_end|>` then `<|endoftext|>`).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        self.chat
            .end_of_turn_tokens()
            .iter()
            .filter_map(|t| self.token_id(t))
            .collect()
    }

    /// Ids that end a generated turn: `generation_config.json`'s
    /// `eos_token_id` and the template's end-of-turn tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.generation_eos.clone();
        for id in self.end_of_turn_ids() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Renders a conversation with the chat template (no tools) and
    /// encodes it.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.chat.render(messages, None, add_generation_prompt)?)
    }
}

/// Turns a growing list of generated ids into text pieces as they become
/// printable (byte-level BPE can split one character over several tokens).
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            ids: vec![],
            printed: 0,
        }
    }

    /// Adds one token; returns the newly printable text, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(None);
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(Some(piece))
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}
