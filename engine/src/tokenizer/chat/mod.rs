//! Chat formatting: the one module that knows a model's chat markup.
//!
//! A model's own Jinja chat template (`chat_template.jinja`, or
//! `tokenizer_config.json`'s `chat_template`: a string, or a list of named
//! templates) is rendered with minijinja in the environment transformers
//! gives it ([`jinja`]): `messages`, `tools`, `add_generation_prompt`,
//! `documents`, the special tokens (`bos_token`, `eos_token`, ...),
//! `raise_exception` and `strftime_now`. A model without a template gets
//! ChatML ([`CHATML_TEMPLATE`]), through the same renderer.
//!
//! A template minijinja cannot run is an error naming the file and the
//! construct, found when the model is loaded (a trial render), never a
//! silent fallback to ChatML.
//!
//! What the rest of the engine needs beyond a whole rendering (the pieces
//! the agent appends turn by turn, SFT loss masks, end-of-turn and stop
//! tokens) is derived from renderings in [`turns`]; no other module spells
//! a special token.

mod jinja;
#[cfg(test)]
mod tests;
mod turns;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::Value;
use serde::{Deserialize, Serialize};

pub use jinja::strftime;
pub use turns::{tool_response_content, SftPiece};

/// The ChatML template: the fallback for a model folder without one, and
/// what the engine writes into the model folders it creates.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The special tokens a model folder written by the engine declares
/// (`tokenizer_config.json`), for the ChatML template above.
pub const CHATML_SPECIAL_TOKENS: [(&str, &str); 2] =
    [("eos_token", "<|im_end|>"), ("pad_token", "<|endoftext|>")];

/// The special tokens of a vocabulary trained for ChatML (ids 0, 1, 2).
pub const CHATML_VOCAB_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The `tokenizer_config.json` of a model folder the engine writes with the
/// ChatML template.
pub fn chatml_tokenizer_config() -> serde_json::Value {
    let mut cfg = serde_json::Map::new();
    cfg.insert("chat_template".into(), CHATML_TEMPLATE.into());
    for (k, v) in CHATML_SPECIAL_TOKENS {
        cfg.insert(k.into(), v.into());
    }
    serde_json::Value::Object(cfg)
}

/// The assistant turns' texts of a ChatML transcript, in order (trimmed);
/// empty when the text has no ChatML assistant block. What `igpo report`
/// shows of a sample, whose text is a rendered transcript.
pub fn chatml_assistant_turns(text: &str) -> Vec<&str> {
    const OPEN: &str = "<|im_start|>assistant\n";
    text.split(OPEN)
        .skip(1)
        .map(|t| t.split("<|im_end|>").next().unwrap_or(t).trim())
        .collect()
}

/// One chat message. `tool_calls` (OpenAI layout, as transformers takes
/// it) is only for rendering transcripts that carry structured calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
            tool_calls: None,
        }
    }
}

/// What the model is told about one tool (from the plugin's self-description).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// The tool as chat templates take it:
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`
    /// (keys in that order, as a Python caller writes them).
    fn to_value(&self) -> Value {
        let function = Value::from_iter([
            ("name", Value::from(self.name.as_str())),
            ("description", Value::from(self.description.as_str())),
            ("parameters", Value::from_serialize(&self.parameters)),
        ]);
        Value::from_iter([("type", Value::from("function")), ("function", function)])
    }
}

/// Where a chat template came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// `chat_template.jinja` in the model folder.
    File(PathBuf),
    /// `chat_template` of `tokenizer_config.json` (names of the templates
    /// when it is a list).
    TokenizerConfig { path: PathBuf, names: Vec<String> },
    /// Given as text (tests, tools).
    Text(String),
    /// The model folder has none: ChatML.
    ChatmlFallback,
}

impl fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateSource::File(p) => write!(f, "{}", p.display()),
            TemplateSource::TokenizerConfig { path, names } if names.is_empty() => {
                write!(f, "{} (chat_template)", path.display())
            }
            TemplateSource::TokenizerConfig { path, names } => write!(
                f,
                "{} (chat_template: {})",
                path.display(),
                names.join(", ")
            ),
            TemplateSource::Text(name) => write!(f, "{name}"),
            TemplateSource::ChatmlFallback => write!(f, "none: ChatML fallback"),
        }
    }
}

/// How the model writes a tool call and reads its result, as its template
/// shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// The template knows no tools (ChatML, SmolLM2): the engine's system
    /// prompt lists the tools and asks for
    /// `<tool_call>{"name", "arguments"}</tool_call>`; a result comes back
    /// as a user message inside `<tool_response>`.
    Prompted,
    /// Qwen2.5 / Qwen3 (Hermes): the template lists the tools; the model
    /// writes `<tool_call>{"name", "arguments"}</tool_call>`; results go
    /// through the template's `tool` role.
    Hermes,
    /// Llama 3.x: the template lists the tools; the model writes a JSON
    /// object `{"name", "parameters"}` (after `python_tag` when the
    /// template uses it); results go through the `tool` role (rendered as
    /// `ipython`).
    LlamaJson { python_tag: Option<String> },
}

impl ToolCallFormat {
    /// A call of tool `name` with `arguments` as this format asks the model
    /// to write it (a forced turn in tests and benchmarks).
    pub fn call_text(&self, name: &str, arguments: &serde_json::Value) -> String {
        let name = serde_json::Value::String(name.into());
        match self {
            ToolCallFormat::Prompted | ToolCallFormat::Hermes => {
                format!(
                    "<tool_call>\n{{\"name\": {name}, \"arguments\": {arguments}}}\n</tool_call>"
                )
            }
            ToolCallFormat::LlamaJson { python_tag } => format!(
                "{}{{\"name\": {name}, \"parameters\": {arguments}}}",
                python_tag.as_deref().unwrap_or("")
            ),
        }
    }
}

impl fmt::Display for ToolCallFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolCallFormat::Prompted => write!(
                f,
                "prompted: <tool_call>{{\"name\", \"arguments\"}}</tool_call> (tools in the engine's system prompt), results as a user message in <tool_response>"
            ),
            ToolCallFormat::Hermes => write!(
                f,
                "hermes: <tool_call>{{\"name\", \"arguments\"}}</tool_call> (tools listed by the template), results in the template's tool role"
            ),
            ToolCallFormat::LlamaJson { python_tag } => {
                write!(f, "llama json: {{\"name\", \"parameters\"}}")?;
                if let Some(t) = python_tag {
                    write!(f, " (optionally after {t})")?;
                }
                write!(
                    f,
                    " (tools listed by the template), results in the template's tool role"
                )
            }
        }
    }
}

/// A chat template that cannot be loaded or rendered; the message names the
/// template's file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ChatError(pub String);

/// A model's chat template, ready to render.
#[derive(Clone)]
pub struct ChatTemplate {
    inner: Arc<Inner>,
}

struct Inner {
    env: minijinja::Environment<'static>,
    source: TemplateSource,
    /// The template text (the default one when there are several).
    text: String,
    /// `tool_use` exists beside `default` (used when tools are given, as
    /// transformers does).
    has_tool_use: bool,
    /// `bos_token`, `eos_token`, ... as the template sees them.
    special_tokens: Vec<(String, String)>,
    format: ToolCallFormat,
    /// The text that closes an assistant turn (`"<|im_end|>\n"`), when the
    /// template lets it be derived.
    turn_end: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.inner.source)
            .field("format", &self.inner.format)
            .finish()
    }
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.inner.text == other.inner.text
            && self.inner.special_tokens == other.inner.special_tokens
    }
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate::chatml()
    }
}

const DEFAULT_NAME: &str = "default";
const TOOL_USE_NAME: &str = "tool_use";

impl ChatTemplate {
    /// The ChatML fallback.
    pub fn chatml() -> ChatTemplate {
        let special = CHATML_SPECIAL_TOKENS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::build(
            TemplateSource::ChatmlFallback,
            vec![(DEFAULT_NAME.into(), CHATML_TEMPLATE.into())],
            special,
        )
        .expect("the ChatML template renders")
    }

    /// A template given as text, with the special tokens it sees
    /// (`("bos_token", "<s>")`, ...). `name` names it in errors.
    pub fn from_text(
        name: &str,
        text: &str,
        special_tokens: &[(&str, &str)],
    ) -> Result<ChatTemplate, ChatError> {
        Self::build(
            TemplateSource::Text(name.to_string()),
            vec![(DEFAULT_NAME.into(), text.to_string())],
            special_tokens
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The template of a model folder: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template`, else ChatML. The special
    /// tokens come from `tokenizer_config.json`.
    pub fn load_dir(dir: &Path) -> Result<ChatTemplate, ChatError> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ChatError(format!("{}: not valid JSON: {e}", cfg_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let special = special_tokens(&cfg);
        let file = dir.join("chat_template.jinja");
        if file.is_file() {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ChatError(format!("{}: {e}", file.display())))?;
            return Self::build(
                TemplateSource::File(file),
                vec![(DEFAULT_NAME.into(), text)],
                special,
            );
        }
        let bad = |msg: &str| ChatError(format!("{}: chat_template: {msg}", cfg_path.display()));
        match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => Ok(ChatTemplate::chatml()),
            Some(serde_json::Value::String(t)) => Self::build(
                TemplateSource::TokenizerConfig {
                    path: cfg_path.clone(),
                    names: vec![],
                },
                vec![(DEFAULT_NAME.into(), t.clone())],
                special,
            ),
            Some(serde_json::Value::Array(list)) => {
                let mut named = vec![];
                for item in list {
                    match (
                        item.get("name").and_then(|n| n.as_str()),
                        item.get("template").and_then(|t| t.as_str()),
                    ) {
                        (Some(n), Some(t)) => named.push((n.to_string(), t.to_string())),
                        _ => return Err(bad("each entry needs a \"name\" and a \"template\"")),
                    }
                }
                if !named.iter().any(|(n, _)| n == DEFAULT_NAME) {
                    return Err(bad("no template named \"default\""));
                }
                let names = named.iter().map(|(n, _)| n.clone()).collect();
                Self::build(
                    TemplateSource::TokenizerConfig {
                        path: cfg_path.clone(),
                        names,
                    },
                    named,
                    special,
                )
            }
            Some(_) => Err(bad("must be a string or a list of named templates")),
        }
    }

    fn build(
        source: TemplateSource,
        named: Vec<(String, String)>,
        special_tokens: Vec<(String, String)>,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = jinja::environment();
        let mut text = String::new();
        let mut has_tool_use = false;
        for (name, body) in named {
            if name == DEFAULT_NAME {
                text = body.clone();
            }
            has_tool_use |= name == TOOL_USE_NAME;
            env.add_template_owned(name.clone(), jinja::without_generation_tags(&body))
                .map_err(|e| unsupported(&source, &name, &e))?;
        }
        let tool_aware = env
            .get_template(DEFAULT_NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false)
            || has_tool_use;
        let format = detect_format(&text, tool_aware);
        let mut t = ChatTemplate {
            inner: Arc::new(Inner {
                env,
                source,
                text,
                has_tool_use,
                special_tokens,
                format,
                turn_end: None,
            }),
        };
        t.trial_render()?;
        let turn_end = t.derive_turn_end().ok();
        Arc::get_mut(&mut t.inner).expect("not shared yet").turn_end = turn_end;
        Ok(t)
    }

    /// Renders a small conversation (with a tool when the template takes
    /// tools) so that a construct minijinja lacks shows up at load time.
    /// A `raise_exception` of the template itself is its own rule, not a
    /// renderer failure.
    fn trial_render(&self) -> Result<(), ChatError> {
        let msgs = [
            Message::new("system", "s"),
            Message::new("user", "u"),
            Message::new("assistant", "a"),
            Message::new("user", "v"),
        ];
        let tool = ToolSpec {
            name: "search".into(),
            description: "d".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        };
        let with_tools = [tool];
        let tool_sets: &[Option<&[ToolSpec]>] = if self.takes_tools() {
            &[None, Some(&with_tools)]
        } else {
            &[None]
        };
        for tools in tool_sets {
            match self.render(&msgs, *tools, true) {
                Ok(_) => {}
                Err(e) if e.0.contains(jinja::RAISED) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn source(&self) -> &TemplateSource {
        &self.inner.source
    }

    /// The template text (the default template when there are several).
    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// How tool calls are written and their results read back.
    pub fn tool_call_format(&self) -> &ToolCallFormat {
        &self.inner.format
    }

    /// Whether the template presents tools itself (its `tools` variable).
    pub fn takes_tools(&self) -> bool {
        self.inner.format != ToolCallFormat::Prompted
    }

    /// Renders `messages` as `apply_chat_template(messages, tools=tools,
    /// add_generation_prompt=..., tokenize=False)` does.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[ToolSpec]>,
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tools = match tools {
            Some(ts) => Value::from(ts.iter().map(ToolSpec::to_value).collect::<Vec<_>>()),
            None => Value::from(()),
        };
        self.render_values(
            Value::from_serialize(messages),
            tools,
            add_generation_prompt,
            &[],
        )
    }

    /// Renders messages and tools given as JSON text (key order kept, as
    /// Python reads it), plus extra keyword arguments (a JSON object, e.g.
    /// `{"date_string": "26 Jul 2024"}`).
    pub fn render_json(
        &self,
        messages: &str,
        tools: &str,
        add_generation_prompt: bool,
        extra: &str,
    ) -> Result<String, ChatError> {
        let parse = |what: &str, text: &str| {
            serde_json::from_str::<Value>(text)
                .map_err(|e| ChatError(format!("{what}: not valid JSON: {e}")))
        };
        let extra = parse("extra", extra)?;
        let extra: Vec<(String, Value)> = match extra.try_iter() {
            Ok(keys) => keys
                .map(|k| {
                    let v = extra.get_item(&k).unwrap_or_default();
                    (k.to_string(), v)
                })
                .collect(),
            Err(_) => vec![],
        };
        self.render_values(
            parse("messages", messages)?,
            parse("tools", tools)?,
            add_generation_prompt,
            &extra,
        )
    }

    fn render_values(
        &self,
        messages: Value,
        tools: Value,
        add_generation_prompt: bool,
        extra: &[(String, Value)],
    ) -> Result<String, ChatError> {
        let name = if self.inner.has_tool_use && !tools.is_none() {
            TOOL_USE_NAME
        } else {
            DEFAULT_NAME
        };
        let tmpl = self
            .inner
            .env
            .get_template(name)
            .map_err(|e| unsupported(&self.inner.source, name, &e))?;
        let mut ctx: Vec<(String, Value)> = self
            .inner
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.extend(extra.iter().cloned());
        ctx.push(("messages".into(), messages));
        ctx.push(("tools".into(), tools));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        ));
        tmpl.render(Value::from_iter(ctx))
            .map_err(|e| unsupported(&self.inner.source, name, &e))
    }
}

/// `bos_token`, `eos_token`, `unk_token`, `pad_token` of a
/// `tokenizer_config.json` (a string, or an added-token object's `content`).
fn special_tokens(cfg: &serde_json::Value) -> Vec<(String, String)> {
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| {
            let v = cfg.get(*k)?;
            let s = v
                .as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            Some((k.to_string(), s.to_string()))
        })
        .collect()
}

/// Which tool-call format a template shows (see [`ToolCallFormat`]).
fn detect_format(text: &str, tool_aware: bool) -> ToolCallFormat {
    const PYTHON_TAG: &str = "<|python_tag|>";
    if !tool_aware {
        ToolCallFormat::Prompted
    } else if text.contains("<tool_call>") {
        ToolCallFormat::Hermes
    } else if text.contains("\"parameters\"") {
        ToolCallFormat::LlamaJson {
            python_tag: text.contains(PYTHON_TAG).then(|| PYTHON_TAG.to_string()),
        }
    } else {
        // A tool-aware template of another family: the tags the engine
        // parses, results through the template's tool role.
        ToolCallFormat::Hermes
    }
}

/// One error line for a template minijinja cannot parse or render: the
/// file, the template's name when there are several, and minijinja's
/// account of the construct (with its line).
fn unsupported(source: &TemplateSource, name: &str, e: &minijinja::Error) -> ChatError {
    let which = if name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" ({name})")
    };
    let mut detail = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        detail.push_str(&format!(": {c}"));
        cause = c.source();
    }
    if detail.contains(jinja::RAISED) {
        return ChatError(format!("{source}{which}: {detail}"));
    }
    ChatError(format!(
        "{source}{which}: the chat template uses Jinja the engine's renderer (minijinja) cannot run: {detail}"
    ))
}
