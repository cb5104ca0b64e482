//! What the engine needs besides whole renderings, derived from them: the
//! text that closes an assistant turn, the text appended after a message
//! (render with and without it, keep the suffix; a template that rewrites
//! earlier text is not prefix-stable and is an error), the SFT pieces with
//! their loss flags, and the end-of-turn tokens.

use super::{ChatError, ChatTemplate, Message, ToolCallFormat, ToolSpec};

/// The assistant text rendered where only the markup around a turn is
/// wanted: a reply with a `<think>` block, as the agent's protocol has the
/// model write, so templates that keep or drop reasoning by its presence
/// (Qwen3) render it as they render a real turn. No surrounding
/// whitespace, so templates that trim content (Llama 3) keep it whole.
const STAND_IN: &str = "<think>\nreasoning\n</think>\n\nreply";
const STAND_IN_TAIL: &str = "reply";

/// Turn-closing token families: the token a template closes an assistant
/// turn with, other tokens a model may close it with, and end-of-text
/// tokens that also stop generation (as the families' generation configs
/// list them).
const FAMILIES: &[(&str, &[&str], &[&str])] = &[
    ("<|im_end|>", &[], &["<|endoftext|>"]),
    ("<|eot_id|>", &["<|eom_id|>"], &["<|end_of_text|>"]),
];

/// A piece of a rendered transcript and whether it carries a loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftPiece {
    pub text: String,
    pub learn: bool,
}

impl ChatTemplate {
    /// The assistant message the agent's history holds in place of a
    /// generated turn (its tokens are the model's own; only the markup
    /// around it is rendered).
    pub fn stand_in_assistant() -> Message {
        Message::new("assistant", STAND_IN)
    }

    /// Renders `[user]` with a generation prompt, then `[user, assistant]`:
    /// what follows the assistant's text is the turn end.
    pub(super) fn derive_turn_end(&self) -> Result<String, ChatError> {
        let history = [Message::new("user", "q")];
        let mut with = history.to_vec();
        with.push(Self::stand_in_assistant());
        let prompt = self.render(&history, None, true)?;
        let full = self.render(&with, None, false)?;
        let turn = self.suffix(&prompt, &full, "assistant")?;
        match turn.rfind(STAND_IN_TAIL) {
            Some(at) => Ok(turn[at + STAND_IN_TAIL.len()..].to_string()),
            None => Err(ChatError(format!(
                "{}: the chat template does not render the assistant's text",
                self.source()
            ))),
        }
    }

    /// The text that closes an assistant turn (`"<|im_end|>\n"`,
    /// `"<|eot_id|>"`).
    pub fn turn_end(&self) -> Result<&str, ChatError> {
        self.inner.turn_end.as_deref().ok_or_else(|| {
            ChatError(format!(
                "{}: cannot derive the end of an assistant turn from the chat template",
                self.source()
            ))
        })
    }

    /// The token text that closes an assistant turn: the turn end without
    /// trailing whitespace.
    pub fn turn_closer(&self) -> Option<&str> {
        let c = self.inner.turn_end.as_deref()?.trim_end();
        (!c.is_empty()).then_some(c)
    }

    fn family(
        &self,
    ) -> Option<&'static (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )> {
        let closer = self.turn_closer()?;
        FAMILIES.iter().find(|f| f.0 == closer)
    }

    /// Tokens (as text) that end generation of a turn: the closer, the
    /// other tokens of its family that close a turn, and its end-of-text
    /// tokens.
    pub fn end_of_turn_tokens(&self) -> Vec<String> {
        let mut out: Vec<String> = self.turn_closer().into_iter().map(String::from).collect();
        if let Some((_, also, eot)) = self.family() {
            out.extend(also.iter().chain(eot.iter()).map(|s| s.to_string()));
        }
        out
    }

    /// Whether a token (as text) closes an assistant turn the way the
    /// template's own closer does.
    pub fn closes_turn(&self, token: &str) -> bool {
        self.turn_closer() == Some(token)
            || self
                .family()
                .is_some_and(|(_, also, _)| also.contains(&token))
    }

    /// The turn end the engine writes after a generated turn whose last
    /// token is `last`: without its closer when the model already closed
    /// the turn.
    pub fn turn_end_after(&self, last: Option<&str>) -> Result<String, ChatError> {
        let end = self.turn_end()?;
        let closer = end.trim_end();
        Ok(match last {
            Some(t) if !closer.is_empty() && self.closes_turn(t) => end[closer.len()..].to_string(),
            _ => end.to_string(),
        })
    }

    /// The message that carries a tool's result back to the model: the
    /// template's `tool` role, or (a template that knows no tools) a user
    /// message with the result inside `<tool_response>`.
    pub fn tool_result_message(&self, result: &str) -> Message {
        match self.tool_call_format() {
            ToolCallFormat::Prompted => Message::new("user", &tool_response_content(result)),
            ToolCallFormat::Hermes | ToolCallFormat::LlamaJson { .. } => {
                Message::new("tool", result)
            }
        }
    }

    /// The text that appending `new` to `history` adds:
    /// render(history + [new]) minus render(history), the latter without a
    /// generation prompt, the former with one when asked. An error when the
    /// first is not a prefix of the second.
    pub fn append(
        &self,
        history: &[Message],
        tools: Option<&[ToolSpec]>,
        new: &Message,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let before = self.render(history, tools, false)?;
        let mut with = history.to_vec();
        with.push(new.clone());
        let after = self.render(&with, tools, add_generation_prompt)?;
        Ok(self.suffix(&before, &after, &new.role)?.to_string())
    }

    /// `after` minus its prefix `before`, or the prefix-stability error.
    fn suffix<'a>(&self, before: &str, after: &'a str, role: &str) -> Result<&'a str, ChatError> {
        match after.strip_prefix(before) {
            Some(rest) => Ok(rest),
            None => {
                let at = before
                    .char_indices()
                    .zip(after.chars())
                    .find(|((_, a), b)| a != b)
                    .map(|((i, _), _)| i)
                    .unwrap_or(before.len().min(after.len()));
                let show = |s: &str| {
                    let end = s.char_indices().nth(40).map_or(s.len(), |(i, _)| i);
                    format!("{:?}", &s[..end])
                };
                Err(ChatError(format!(
                    "{}: the chat template is not prefix-stable: adding a {role} message changes the text before it (at byte {at}: {} becomes {})",
                    self.source(),
                    show(&before[at..]),
                    show(after.get(at..).unwrap_or(""))
                )))
            }
        }
    }

    /// A transcript as the pieces SFT tokenizes one by one: text before
    /// each assistant turn up to its generation prompt (no loss), the
    /// assistant's text through the turn's closing token (loss), and what
    /// follows (no loss). The pieces concatenate to the whole rendering and
    /// split where the agent's tokens split (prompt | generated | spliced).
    pub fn sft_pieces(
        &self,
        messages: &[Message],
        tools: Option<&[ToolSpec]>,
    ) -> Result<Vec<SftPiece>, ChatError> {
        let mut pieces = vec![];
        let mut push = |text: &str, learn: bool| {
            if !text.is_empty() {
                pieces.push(SftPiece {
                    text: text.to_string(),
                    learn,
                });
            }
        };
        let end = self.turn_end()?;
        let closer = end.trim_end();
        let mut prev = String::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let prompt = self.render(&messages[..k], tools, true)?;
            push(
                self.suffix(&prev, &prompt, &messages[k.saturating_sub(1)].role)?,
                false,
            );
            let full = self.render(&messages[..=k], tools, false)?;
            let body = self.suffix(&prompt, &full, "assistant")?;
            match body.strip_suffix(end) {
                Some(text) => {
                    push(&format!("{text}{closer}"), true);
                    push(&end[closer.len()..], false);
                }
                None => push(body, true),
            }
            prev = full;
        }
        let all = self.render(messages, tools, false)?;
        let role = messages.last().map_or("", |m| m.role.as_str());
        push(self.suffix(&prev, &all, role)?, false);
        Ok(pieces)
    }
}

/// The content of the user message that carries a tool result when the
/// template knows no tools (what the engine's system prompt promises).
pub fn tool_response_content(result: &str) -> String {
    format!("<tool_response>\n{result}\n</tool_response>")
}
