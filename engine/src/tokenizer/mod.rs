//! Text <-> token ids: the `tokenizers` crate over `tokenizer.json`, plus the
//! ChatML chat format.

mod chat;

use std::path::Path;

pub use chat::{ChatTemplate, Message, CHATML_TEMPLATE};

/// Errors loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {msg}")]
    Load { path: String, msg: String },
    #[error("tokenizer: {0}")]
    Encode(String),
}

/// A model's tokenizer and chat format.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub chat: ChatTemplate,
}

impl Tokenizer {
    /// Loads `tokenizer.json` (and the chat template's default system prompt
    /// from `tokenizer_config.json`, when present) from a model folder (or a
    /// checkpoint's `model/`).
    pub fn load_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let dir = &crate::model::hf_dir(dir);
        let mut tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let cfg_path = dir.join("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&cfg_path) {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| TokenizerError::Load {
                    path: cfg_path.display().to_string(),
                    msg: format!("not valid JSON: {e}"),
                })?;
            if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                tok.chat = ChatTemplate::from_jinja(t);
            }
        }
        Ok(tok)
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        Ok(Tokenizer {
            inner,
            chat: ChatTemplate::default(),
        })
    }

    /// Token ids of `text`; special tokens written in the text (e.g.
    /// `<|im_start|>`) map to their ids, nothing is added around it.
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

    /// The id of a token written out, e.g. `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of the ChatML end-of-turn tokens this vocabulary has
    /// (`<|im_end|>`, then `<|endoftext|>`).
    pub fn end_of_turn_ids(&self) -> Vec<u32> {
        ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| self.token_id(t))
            .collect()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Renders a conversation in ChatML and encodes it.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.chat.render(messages, add_generation_prompt))
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
