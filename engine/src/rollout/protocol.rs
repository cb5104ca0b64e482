//! The turn protocol of the search agent: the system prompt that presents the
//! tools, the streaming stop check run while a turn is generated, the parser
//! of a finished turn, and the text spliced in after a search.
//!
//! Two protocols:
//! - [`Protocol::ToolCall`] (default): function calling in the model's own
//!   format (its chat template's, [`ToolCallFormat`]). `<think>...</think>`,
//!   then either a tool call or `<answer>...</answer>`. A call is
//!   `<tool_call>{"name": .., "arguments": {..}}</tool_call>` (Qwen2.5/Qwen3,
//!   and models whose template knows no tools, prompted by the engine), or
//!   for Llama 3.x a JSON object `{"name": .., "parameters": {..}}` that
//!   opens the turn (after the think block; optionally after `<|python_tag|>`
//!   where the template uses it). The result comes back through the chat
//!   template (`crate::tokenizer::chat`).
//! - [`Protocol::SearchTags`]: Search-R1. `<search>query</search>`, results in
//!   `<information>...</information>`, final `<answer>...</answer>`; the
//!   same for every model.
//!
//! ## Rules (shared by [`stop_at`] and [`parse_turn`], so they always agree)
//! - Tags are exact and case-sensitive: `<answer>` is a tag, `<ANSWER>` and
//!   `<answer >` are plain text.
//! - The action tags are `<tool_call>` and `<answer>` (ToolCall) or `<search>`
//!   and `<answer>` (SearchTags); other tags (`<think>`, the other protocol's
//!   tags) are plain text to the parser. Tags inside `<think>` count like any
//!   other: the model is told not to write them there.
//! - The *first action* of a turn is the earliest opening action tag. It is
//!   closed by the first matching closing tag after it; everything in between
//!   is its content, so a `</answer>` inside a tool call's JSON does not end the
//!   call, and a `</tool_call>` inside an answer does not end the answer.
//! - Closing tags with no opening tag before them (stray closes) are ignored.
//! - Only the first action counts; text after its closing tag is ignored.
//! - Llama JSON calls: when the turn (after whitespace, one leading
//!   `<think>...</think>` block and the python tag) starts with `{`, that
//!   JSON value is the first action; it is complete (the stop fires) when
//!   the value is, and `<tool_call>` tags are plain text.
//!
//! Hence [`stop_at`] fires exactly when the first action's closing tag
//! completes, and for every text `t` with `stop_at(p, t) == Some(n)`,
//! `parse_turn(p, &t[..n], s) == parse_turn(p, t, s)`.
//!
//! Outcomes of [`parse_turn`]:
//! - no opening action tag: [`TurnAction::Nothing`];
//! - an opening action tag with no closing tag (the turn ended at the
//!   end-of-turn token or the token limit): [`TurnAction::Malformed`]
//!   (`error: unclosed <tag> ...`) — for `<answer>` too, so `<answer>Paris`
//!   is never an answer;
//! - the same opening tag again inside the first action
//!   (`<tool_call><tool_call>{..}</tool_call>`): Malformed (nested tag);
//! - `<answer>x</answer>`: `Answer(x.trim())`, possibly empty;
//! - `<search>q</search>`: a call of the search tool with `{"query": q.trim()}`;
//!   an empty or blank query is Malformed;
//! - `<tool_call>json</tool_call>`: the JSON (whitespace around it allowed)
//!   must be an object with a non-empty string `"name"` (trimmed); its
//!   `"arguments"` must be an object, or a JSON string that parses to an
//!   object; missing or `null` arguments become `{}`. Anything else is
//!   Malformed. Extra keys are ignored. Whether the tool exists is the
//!   engine's check, not this module's. A Llama JSON call follows the same
//!   rules with `"parameters"` in place of `"arguments"`; a value that is
//!   not complete JSON when the turn ends is Malformed.
//!
//! Every Malformed message starts with `"error: "`; it is meant to be returned
//! to the model as the tool result.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::tokenizer::{tool_response_content, ToolCallFormat, ToolSpec};

/// Which turn format the policy is prompted with and parsed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Qwen2.5 function calling: `<tool_call>{json}</tool_call>`.
    #[default]
    ToolCall,
    /// Search-R1 tags: `<search>query</search>`.
    SearchTags,
}

/// How turns are read: the protocol, and for [`Protocol::ToolCall`] the
/// model's tool-call format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnFormat {
    pub protocol: Protocol,
    pub calls: ToolCallFormat,
}

impl TurnFormat {
    pub fn new(protocol: Protocol, calls: ToolCallFormat) -> TurnFormat {
        TurnFormat { protocol, calls }
    }

    /// Calls are a JSON object opening the turn (Llama 3.x, ToolCall only).
    fn json_calls(&self) -> Option<Option<&str>> {
        match (&self.protocol, &self.calls) {
            (Protocol::ToolCall, ToolCallFormat::LlamaJson { python_tag }) => {
                Some(python_tag.as_deref())
            }
            _ => None,
        }
    }
}

impl From<Protocol> for TurnFormat {
    /// The protocol with tag-written calls (`<tool_call>`).
    fn from(protocol: Protocol) -> TurnFormat {
        TurnFormat::new(protocol, ToolCallFormat::Prompted)
    }
}

/// What a finished turn's generated text asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnAction {
    /// The final answer (text inside the first complete `<answer>...</answer>`,
    /// trimmed; may be empty).
    Answer(String),
    /// A tool call. For SearchTags, `<search>q</search>` becomes `name` = the
    /// search tool's name and arguments `{"query": q}`.
    ToolCall { name: String, arguments: Value },
    /// A call the engine cannot run (bad JSON, missing "name", arguments not an
    /// object, empty search query, unclosed or nested tag...): the message
    /// (always starting with `"error: "`) is returned to the model as the tool
    /// result, and the turn counts.
    Malformed(String),
    /// Neither a call nor an answer (the model just talked).
    Nothing,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
const ANSWER_OPEN: &str = "<answer>";
const ANSWER_CLOSE: &str = "</answer>";
const SEARCH_OPEN: &str = "<search>";
const SEARCH_CLOSE: &str = "</search>";

/// The expected shape of a call, repeated in error messages.
const CALL_SHAPE: &str =
    r#"expected <tool_call>{"name": <tool name>, "arguments": {...}}</tool_call>"#;
/// The same for a Llama JSON call.
const JSON_CALL_SHAPE: &str = r#"expected {"name": <tool name>, "parameters": {...}}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActionKind {
    ToolCall,
    Search,
    Answer,
    /// A Llama JSON call: the "tags" are the value's own braces.
    Json,
}

impl ActionKind {
    fn open(self) -> &'static str {
        match self {
            ActionKind::ToolCall => TOOL_CALL_OPEN,
            ActionKind::Search => SEARCH_OPEN,
            ActionKind::Answer => ANSWER_OPEN,
            ActionKind::Json => "",
        }
    }

    fn close(self) -> &'static str {
        match self {
            ActionKind::ToolCall => TOOL_CALL_CLOSE,
            ActionKind::Search => SEARCH_CLOSE,
            ActionKind::Answer => ANSWER_CLOSE,
            ActionKind::Json => "",
        }
    }
}

fn action_kinds(format: &TurnFormat) -> &'static [ActionKind] {
    match format.protocol {
        Protocol::ToolCall if format.json_calls().is_some() => &[ActionKind::Answer],
        Protocol::ToolCall => &[ActionKind::ToolCall, ActionKind::Answer],
        Protocol::SearchTags => &[ActionKind::Search, ActionKind::Answer],
    }
}

/// The first action of a turn: its kind, where its content starts, and where
/// its closing tag starts (None while unclosed). All offsets are byte offsets
/// at ASCII tag boundaries, hence char boundaries. A JSON call's content is
/// the value itself and "closes" where the value completes.
struct FirstAction {
    kind: ActionKind,
    content_start: usize,
    close_start: Option<usize>,
}

fn first_action(format: &TurnFormat, text: &str) -> Option<FirstAction> {
    let tag = action_kinds(format)
        .iter()
        .filter_map(|&k| text.find(k.open()).map(|at| (at, k)))
        .min_by_key(|&(at, _)| at);
    if let Some(python_tag) = format.json_calls() {
        if let Some(start) = json_call_start(text, python_tag) {
            if tag.is_none_or(|(at, _)| start < at) {
                return Some(FirstAction {
                    kind: ActionKind::Json,
                    content_start: start,
                    close_start: json_value_end(text, start),
                });
            }
        }
    }
    let (open_at, kind) = tag?;
    let content_start = open_at + kind.open().len();
    let close_start = text[content_start..]
        .find(kind.close())
        .map(|rel| content_start + rel);
    Some(FirstAction {
        kind,
        content_start,
        close_start,
    })
}

/// Where a Llama JSON call starts: the turn's text after whitespace, one
/// leading `<think>...</think>` block and the python tag, if it opens with
/// `{` there.
fn json_call_start(text: &str, python_tag: Option<&str>) -> Option<usize> {
    let skip_ws = |at: usize| text.len() - text[at..].trim_start().len();
    let mut at = skip_ws(0);
    if text[at..].starts_with(THINK_OPEN) {
        at = skip_ws(at + text[at..].find(THINK_CLOSE)? + THINK_CLOSE.len());
    }
    if let Some(tag) = python_tag.filter(|t| text[at..].starts_with(t)) {
        at = skip_ws(at + tag.len());
    }
    text[at..].starts_with('{').then_some(at)
}

/// The end of the JSON value that starts at `start`, once it is complete
/// (None while incomplete, or when it is not JSON).
fn json_value_end(text: &str, start: usize) -> Option<usize> {
    let mut values =
        serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde::de::IgnoredAny>();
    match values.next() {
        Some(Ok(_)) => Some(start + values.byte_offset()),
        _ => None,
    }
}

/// The system prompt presenting the tools and the protocol.
///
/// ToolCall, when the template knows no tools ([`ToolCallFormat::Prompted`]):
/// Qwen2.5's function-calling block (the tools inside `<tools>`, one JSON
/// object per line, written with Python's `json.dumps` separators as Qwen's
/// chat template does), preceded by the instructions for `<think>`,
/// `<tool_response>` and `<answer>`. ToolCall in a native format: only the
/// instructions (the template lists the tools and shows the call format).
/// SearchTags: the Search-R1 instruction; the first tool (if any) is the
/// search engine and its description is quoted.
pub fn system_prompt(protocol: Protocol, format: &ToolCallFormat, tools: &[ToolSpec]) -> String {
    match (protocol, format) {
        (Protocol::ToolCall, ToolCallFormat::Prompted) => tool_call_prompt(tools),
        (Protocol::ToolCall, native) => native_instructions(native),
        (Protocol::SearchTags, _) => search_tags_prompt(tools),
    }
}

/// How the model is told to work, before the tools are presented.
fn instructions(result_in: &str) -> String {
    format!(
        "You are a helpful assistant that answers questions by calling tools to find information.\n\n\
         Answer the user's question. Every time you receive new information, first reason inside \
         <think> and </think>. After reasoning, if you lack some knowledge, call a tool (at most one \
         tool call per turn); its result will be returned to you {result_in}. You may call tools as \
         many times as you need. When no further \
         information is needed, give the final answer inside <answer> and </answer>: only the short \
         answer, without explanation, for example <answer> Beijing </answer>."
    )
}

fn native_instructions(format: &ToolCallFormat) -> String {
    match format {
        ToolCallFormat::LlamaJson { .. } => instructions("in the next message"),
        _ => instructions("inside <tool_response> and </tool_response>"),
    }
}

fn tool_call_prompt(tools: &[ToolSpec]) -> String {
    let mut s = instructions("inside <tool_response> and </tool_response>");
    s.push_str("\n\n");
    s.push_str("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n");
    s.push_str(
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str("{\"type\": \"function\", \"function\": {\"name\": ");
        s.push_str(&py_json(&Value::String(t.name.clone())));
        s.push_str(", \"description\": ");
        s.push_str(&py_json(&Value::String(t.description.clone())));
        s.push_str(", \"parameters\": ");
        s.push_str(&py_json(&t.parameters));
        s.push_str("}}");
    }
    s.push_str("\n</tools>\n\n");
    s.push_str(
        "For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

fn search_tags_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "Answer the given question. You must conduct reasoning inside <think> and </think> first \
         every time you get new information. After reasoning, if you find you lack some knowledge, \
         you can call a search engine by <search> query </search> and it will return the top \
         searched results between <information> and </information>. You can search as many times \
         as you want. If you find no further external knowledge needed, you can directly provide \
         the answer inside <answer> and </answer>, without detailed illustrations. For example, \
         <answer> Beijing </answer>.",
    );
    if let Some(t) = tools.first() {
        let desc = t.description.trim();
        if !desc.is_empty() {
            s.push_str("\n\nThe search engine: ");
            s.push_str(desc);
        }
    }
    s
}

/// JSON as Python's `json.dumps(x, ensure_ascii=False)` writes it
/// (separators `", "` and `": "`), which is what Qwen's template shows.
fn py_json(v: &Value) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PySeparators);
    match v.serialize(&mut ser) {
        Ok(()) => String::from_utf8(buf).unwrap_or_else(|_| v.to_string()),
        Err(_) => v.to_string(),
    }
}

struct PySeparators;

impl serde_json::ser::Formatter for PySeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// The streaming stop check, run on the text generated so far in the current
/// turn. Returns the byte length of the text up to and including the closing
/// tag of the turn's first action (the part to keep), or None to continue.
///
/// ToolCall stops at the `</tool_call>` or `</answer>` that closes the first
/// `<tool_call>` / `<answer>`; SearchTags likewise with `<search>` and
/// `<answer>`. Stray closing tags (no opening before them) and closing tags
/// of the other action inside the open one do not stop generation (see the
/// module docs). Only the accumulated text matters, so a tag split across
/// tokens is found once its last byte arrives; the result is monotone: once
/// `Some(n)`, every longer text with the same prefix gives `Some(n)` too.
pub fn stop_at(protocol: Protocol, text: &str) -> Option<usize> {
    stop_at_in(&protocol.into(), text)
}

/// [`stop_at`] for a turn format (a Llama JSON call also stops where its
/// value completes).
pub fn stop_at_in(format: &TurnFormat, text: &str) -> Option<usize> {
    let a = first_action(format, text)?;
    a.close_start.map(|c| c + a.kind.close().len())
}

/// Parses a finished turn; see the module docs for the exact rules. The first
/// complete action in the text wins. `search_tool` is the tool name `<search>`
/// maps to (SearchTags only).
pub fn parse_turn(protocol: Protocol, text: &str, search_tool: &str) -> TurnAction {
    parse_turn_in(&protocol.into(), text, search_tool)
}

/// [`parse_turn`] for a turn format.
pub fn parse_turn_in(format: &TurnFormat, text: &str, search_tool: &str) -> TurnAction {
    let Some(a) = first_action(format, text) else {
        return TurnAction::Nothing;
    };
    let open = a.kind.open();
    let close = a.kind.close();
    let Some(close_start) = a.close_start else {
        return TurnAction::Malformed(match a.kind {
            ActionKind::ToolCall => format!("error: unclosed {open} tag; {CALL_SHAPE}"),
            ActionKind::Json => {
                format!("error: tool call is not complete JSON; {JSON_CALL_SHAPE}")
            }
            ActionKind::Search => {
                format!("error: unclosed {open} tag; expected {open}query{close}")
            }
            ActionKind::Answer => {
                format!("error: unclosed {open} tag; expected {open}final answer{close}")
            }
        });
    };
    let content = &text[a.content_start..close_start];
    if a.kind != ActionKind::Json && content.contains(open) {
        return TurnAction::Malformed(format!(
            "error: nested {open} tags; write one {open}...{close} at a time"
        ));
    }
    match a.kind {
        ActionKind::Answer => TurnAction::Answer(content.trim().to_string()),
        ActionKind::Search => {
            let query = content.trim();
            if query.is_empty() {
                TurnAction::Malformed(format!(
                    "error: empty search query; expected {open}query{close}"
                ))
            } else {
                let mut args = Map::new();
                args.insert("query".to_string(), Value::String(query.to_string()));
                TurnAction::ToolCall {
                    name: search_tool.to_string(),
                    arguments: Value::Object(args),
                }
            }
        }
        ActionKind::ToolCall => parse_call_json(content, "arguments", CALL_SHAPE),
        ActionKind::Json => parse_call_json(content, "parameters", JSON_CALL_SHAPE),
    }
}

/// A call's JSON: `{"name": .., <args_key>: {..}}` (`shape` quoted in errors).
fn parse_call_json(content: &str, args_key: &str, shape: &str) -> TurnAction {
    let body = content.trim();
    if body.is_empty() {
        return TurnAction::Malformed(format!("error: empty tool call; {shape}"));
    }
    let value: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return TurnAction::Malformed(format!(
                "error: tool call is not valid JSON ({e}); {shape}"
            ))
        }
    };
    let Value::Object(mut call) = value else {
        return TurnAction::Malformed(format!("error: tool call must be a JSON object; {shape}"));
    };
    let name = match call.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n.trim().to_string(),
        Some(Value::String(_)) => {
            return TurnAction::Malformed(format!(
                "error: tool call has an empty \"name\"; {shape}"
            ))
        }
        Some(_) => {
            return TurnAction::Malformed(format!(
                "error: tool call \"name\" must be a string; {shape}"
            ))
        }
        None => return TurnAction::Malformed(format!("error: tool call has no \"name\"; {shape}")),
    };
    let arguments = match call.remove(args_key) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s.trim()) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return TurnAction::Malformed(format!(
                    "error: tool call \"{args_key}\" must be a JSON object; {shape}"
                ))
            }
        },
        Some(_) => {
            return TurnAction::Malformed(format!(
                "error: tool call \"{args_key}\" must be a JSON object; {shape}"
            ))
        }
    };
    TurnAction::ToolCall { name, arguments }
}

/// The text spliced in after a `<search>` (SearchTags): the result in
/// `<information>`, inside the same assistant turn. (A ToolCall result goes
/// through the chat template: `agent::tool_splice`.)
pub fn search_result_text(result: &str) -> String {
    format!("\n\n<information>{result}</information>\n\n")
}

/// Cuts `result` to at most `max_chars` characters (Unicode scalar values, on
/// a char boundary) and appends `"\n[... truncated N characters]"` (N = the
/// number of characters removed) when cut.
pub fn truncate_result(result: &str, max_chars: usize) -> String {
    match result.char_indices().nth(max_chars) {
        None => result.to_string(),
        Some((cut, _)) => {
            let removed = result[cut..].chars().count();
            format!("{}\n[... truncated {removed} characters]", &result[..cut])
        }
    }
}

/// Format check used by rewards: true when each of the tags `<think>`,
/// `<tool_call>`, `<answer>`, `<search>` in `text` is balanced (every opening
/// tag is closed later, every closing tag closes an open one) and never
/// nested within itself. Tags are exact and case-sensitive; each tag is
/// checked on its own (different tags may interleave).
pub fn tags_balanced(text: &str) -> bool {
    const TAGS: [(&str, &str); 4] = [
        (THINK_OPEN, THINK_CLOSE),
        (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
        (ANSWER_OPEN, ANSWER_CLOSE),
        (SEARCH_OPEN, SEARCH_CLOSE),
    ];
    let mut open = [false; TAGS.len()];
    for (at, _) in text.match_indices('<') {
        let rest = &text[at..];
        for (i, (o, c)) in TAGS.iter().enumerate() {
            if rest.starts_with(o) {
                if open[i] {
                    return false;
                }
                open[i] = true;
            } else if rest.starts_with(c) {
                if !open[i] {
                    return false;
                }
                open[i] = false;
            }
        }
    }
    !open.iter().any(|&o| o)
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
