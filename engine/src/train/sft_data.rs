//! Supervised fine-tuning data: JSONL chat transcripts
//! (`{"messages":[{"role","content"},...]}`) rendered with the model's chat
//! template and turned into token ids and a loss mask that is 1 exactly on
//! assistant tokens (their text and the token that closes the turn).

use std::path::Path;

use serde::Deserialize;

use crate::tokenizer::{Message, Tokenizer, TokenizerError, ToolSpec};

/// One tokenized transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftExample {
    pub tokens: Vec<u32>,
    /// 1 where the token is assistant output (content and the turn's
    /// closing token).
    pub loss_mask: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SftDataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    BadLine {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("{path}: no usable transcripts")]
    Empty { path: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    messages: Vec<Message>,
}

/// Tokenizes one conversation (no tools given to the template).
pub fn tokenize_transcript(
    tok: &Tokenizer,
    messages: &[Message],
) -> Result<SftExample, TokenizerError> {
    tokenize_transcript_with_tools(tok, messages, None)
}

/// Tokenizes one conversation piece by piece as the chat template renders
/// it ([`crate::tokenizer::ChatTemplate::sft_pieces`]): the pieces split
/// where the agent's tokens split (prompt, generated turn, spliced result),
/// so the ids equal what the agent builds for the same turns.
pub fn tokenize_transcript_with_tools(
    tok: &Tokenizer,
    messages: &[Message],
    tools: Option<&[ToolSpec]>,
) -> Result<SftExample, TokenizerError> {
    let mut tokens = vec![];
    let mut loss_mask = vec![];
    for piece in tok.chat.sft_pieces(messages, tools)? {
        let ids = tok.encode(&piece.text)?;
        loss_mask.extend(std::iter::repeat_n(piece.learn as u8, ids.len()));
        tokens.extend(ids);
    }
    Ok(SftExample { tokens, loss_mask })
}

/// Outcome of loading a transcript file.
pub struct SftDataset {
    pub examples: Vec<SftExample>,
    /// Lines skipped because they were not valid (only with `skip_bad_lines`).
    pub skipped_lines: usize,
}

/// Loads a JSONL transcript file. A bad line is an error naming the file and
/// line, unless `skip_bad_lines`, which counts it instead. Transcripts are
/// cut to `max_len` tokens; ones with no assistant token left are skipped.
pub fn load_sft_jsonl(
    path: &Path,
    tok: &Tokenizer,
    max_len: usize,
    skip_bad_lines: bool,
) -> Result<SftDataset, SftDataError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SftDataError::Io {
        path: p.clone(),
        source: e,
    })?;
    let mut examples = vec![];
    let mut skipped_lines = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<Line, String> = serde_json::from_str(line).map_err(|e| e.to_string());
        let parsed = parsed.and_then(|l| {
            if l.messages.iter().any(|m| m.role == "assistant") {
                Ok(l)
            } else {
                Err("transcript has no assistant message".into())
            }
        });
        match parsed {
            Ok(l) => {
                let mut ex = tokenize_transcript(tok, &l.messages)?;
                ex.tokens.truncate(max_len);
                ex.loss_mask.truncate(max_len);
                // The last token predicts nothing; something must remain to learn.
                if ex.loss_mask.iter().skip(1).any(|&m| m == 1) {
                    examples.push(ex);
                }
            }
            Err(msg) if skip_bad_lines => {
                let _ = msg;
                skipped_lines += 1;
            }
            Err(msg) => {
                return Err(SftDataError::BadLine {
                    path: p,
                    line: i + 1,
                    msg,
                })
            }
        }
    }
    if examples.is_empty() {
        return Err(SftDataError::Empty { path: p });
    }
    Ok(SftDataset {
        examples,
        skipped_lines,
    })
}
