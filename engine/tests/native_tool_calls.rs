//! The agent with a model's own chat template and tool-call format, end to
//! end: a tiny random Llama-3 model (the real Llama 3 tokenizer, the
//! Llama-3.1-Instruct template) and a tiny random model with Qwen3's
//! tokenizer (Qwen2.5's plus `<tool_response>`, `</tool_response>`,
//! `<think>`, `</think>`, ids 151665..151668) and the Qwen3 template.
//!
//! A random model does not write tool calls, so each rollout's first turn
//! is forced (`run_agent_forced`: the call's tokens are written instead of
//! samples and read by the model; sampling continues after them). The test
//! checks that the call is parsed in the native format and run (the echo
//! plugin), that the result is spliced through the template so that the
//! trajectory up to the next generation prompt is token for token what
//! transformers' `apply_chat_template` gives for the same conversation
//! (tools/reference/apply_chat_template.py), that the loss mask is exactly
//! 0 on prompt and tool-result tokens and 1 on generated ones, and that the
//! stop tokens are the template's.
//!
//! Both models are built by `igpo model init` (1 layer, hidden 32) with
//! the Qwen3 architecture (per-head q/k RMSNorm) for the Qwen3 case.

use crate::common;
use crate::plugins_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use igpo::backend::Cpu;
use igpo::plugins::{PluginSpec, ToolPool};
use igpo::rollout::agent::{agent_system_prompt, run_agent_forced, tool_specs};
use igpo::rollout::{AgentConfig, SpanKind, Task, Trajectory};
use igpo::tokenizer::{Message, Tokenizer, ToolCallFormat};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    common::workspace().join("tests/fixtures/chat_templates")
}

/// A tiny random model folder with `tokenizer_json`, the fixture template
/// `template` and its special tokens, and `eos` in generation_config.json.
fn tiny_model(
    dir: &Path,
    arch: &str,
    tokenizer_json: &Path,
    template: &str,
    special: &Value,
    eos: &[u32],
) {
    common::init_tiny_model_of(dir, arch, tokenizer_json, &[]);
    let text = std::fs::read_to_string(fixtures().join(template)).unwrap();
    let mut cfg = special.clone();
    cfg["chat_template"] = Value::String(text);
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        json!({ "eos_token_id": eos }).to_string(),
    )
    .unwrap();
}

/// Qwen3's tokenizer: Qwen2.5's plus its four added tokens.
fn qwen3_tokenizer(out: &Path) -> PathBuf {
    let base = common::data_dir().join("qwen2.5-tokenizer.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(base).unwrap()).unwrap();
    let added = t["added_tokens"].as_array_mut().unwrap();
    assert_eq!(added.last().unwrap()["id"], 151664);
    for (i, content) in ["<tool_response>", "</tool_response>", "<think>", "</think>"]
        .iter()
        .enumerate()
    {
        added.push(json!({
            "id": 151665 + i, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": false
        }));
    }
    let path = out.join("qwen3-tokenizer.json");
    std::fs::write(&path, t.to_string()).unwrap();
    path
}

struct Case {
    name: &'static str,
    arch: &'static str,
    template: &'static str,
    special: Value,
    eos: Vec<u32>,
    /// The forced first turn: a call of `echo` in the native format.
    call: &'static str,
    format: fn(&ToolCallFormat) -> bool,
    stop_tokens: &'static [&'static str],
}

fn run_case(case: &Case, tokenizer_json: &Path, plugins: &Path, python: &Path) {
    let dir = plugins_support::scratch(&format!("native_tool_calls_{}", case.name));
    let model_dir = dir.join("model");
    tiny_model(
        &model_dir,
        case.arch,
        tokenizer_json,
        case.template,
        &case.special,
        &case.eos,
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], case.arch, "{}", case.name);
    let tok = Tokenizer::load_dir(&model_dir).unwrap();
    let format = tok.chat.tool_call_format().clone();
    assert!((case.format)(&format), "{}: detected {format:?}", case.name);
    let stops: Vec<u32> = case
        .stop_tokens
        .iter()
        .map(|t| tok.token_id(t).unwrap())
        .collect();
    let mut got_stops = tok.stop_ids();
    got_stops.sort();
    let mut want_stops = stops.clone();
    want_stops.extend(&case.eos);
    want_stops.sort();
    want_stops.dedup();
    assert_eq!(got_stops, want_stops, "{}: stop tokens", case.name);

    let host = plugins_support::host(plugins);
    let pool = Arc::new(
        ToolPool::load(&host, &[PluginSpec::new(plugins.join("echo-tool.wasm"))]).unwrap(),
    );
    let cfg = AgentConfig {
        max_turns: 1,
        max_new_tokens_per_turn: 48,
        max_new_tokens_per_rollout: 200,
        temperature: 1.0,
        ..AgentConfig::default()
    };
    let model = igpo::model::load(&model_dir, Cpu).unwrap();
    let tasks = vec![Task {
        id: "q0".into(),
        question: "Which city is the Eiffel Tower in?".into(),
        answers: vec!["Paris".into()],
    }];
    let forced = vec![tok.encode(case.call).unwrap()];
    let (trajs, stats) =
        run_agent_forced(&model, &tok, Some(pool.clone()), &cfg, &tasks, 7, &forced).unwrap();
    let t: &Trajectory = &trajs[0];
    assert_eq!(stats.tool_calls, 1, "{}", case.name);

    // The call was parsed in the native format and run.
    let turn = &t.turns[0];
    assert_eq!(
        turn.tool.as_deref(),
        Some("echo"),
        "{}: {turn:?}",
        case.name
    );
    assert_eq!(
        turn.arguments,
        Some(json!({"text": "Paris"})),
        "{}",
        case.name
    );
    assert!(!turn.tool_error, "{}: {turn:?}", case.name);
    let result = turn.result.clone().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&result).unwrap(),
        json!({"text": "Paris"})
    );

    // Segments: prompt, the forced turn, the tool result, the next turn.
    let kinds: Vec<SpanKind> = t.segments.iter().map(|s| s.kind).collect();
    assert_eq!(
        &kinds[..3],
        &[
            SpanKind::Prompt,
            SpanKind::Generated { turn: 0 },
            SpanKind::ToolResult { turn: 0 }
        ],
        "{}",
        case.name
    );
    let generated = &t.segments[1];
    assert_eq!(
        &t.tokens[generated.start..generated.end],
        &forced[0][..],
        "{}: the turn stops right after the call",
        case.name
    );
    // Loss mask: exactly 0 on prompt and tool-result tokens, 1 on generated.
    assert_eq!(t.loss_mask.len(), t.tokens.len());
    for s in &t.segments {
        let want = matches!(s.kind, SpanKind::Generated { .. }) as u8;
        assert!(s.end > s.start, "{}: empty segment {s:?}", case.name);
        assert!(
            t.loss_mask[s.start..s.end].iter().all(|&m| m == want),
            "{}: mask on {s:?}",
            case.name
        );
    }
    assert_eq!(t.segments.last().unwrap().end, t.tokens.len());

    // Token for token what transformers renders and tokenizes for the same
    // conversation, up to the next generation prompt.
    let system = agent_system_prompt(&cfg, Some(&pool), &format);
    let specs = tool_specs(&pool);
    // The tools as a Python caller writes them (keys in this order; a
    // serde_json object would sort them).
    let tools: Vec<String> = specs
        .iter()
        .map(|s| {
            format!(
                r#"{{"type": "function", "function": {{"name": {}, "description": {}, "parameters": {}}}}}"#,
                Value::from(s.name.as_str()),
                Value::from(s.description.as_str()),
                s.parameters
            )
        })
        .collect();
    let messages = vec![
        Message::new("system", &system),
        Message::new("user", &tasks[0].question),
        Message::new("assistant", case.call),
        Message::new("tool", &result),
    ];
    let request = json!({
        "tokenizer_json": tokenizer_json,
        "chat_template": std::fs::read_to_string(fixtures().join(case.template)).unwrap(),
        "special_tokens": case.special,
        "messages": messages,
        "add_generation_prompt": true,
    });
    let request = format!(
        "{},\"tools\":[{}]}}",
        request.to_string().strip_suffix('}').unwrap(),
        tools.join(",")
    );
    let reference = apply_chat_template(python, &request);
    let want_ids: Vec<u32> = reference["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let tool_end = t.segments[2].end;
    assert_eq!(
        tok.decode(&t.tokens[..tool_end], false).unwrap(),
        reference["text"].as_str().unwrap(),
        "{}: text",
        case.name
    );
    assert_eq!(&t.tokens[..tool_end], &want_ids[..], "{}: ids", case.name);
    eprintln!(
        "{}: {} tokens match apply_chat_template; tool result segment {:?}",
        case.name,
        tool_end,
        tok.decode(&t.tokens[t.segments[2].start..tool_end], false)
            .unwrap()
    );
}

fn apply_chat_template(python: &Path, request: &str) -> Value {
    use std::io::Write;
    let script = common::workspace().join("tools/reference/apply_chat_template.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "apply_chat_template.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn llama3_and_qwen3_rollouts_call_tools_in_their_native_formats() {
    let test = "llama3_and_qwen3_rollouts_call_tools_in_their_native_formats";
    let Some(plugins) = plugins_support::plugin_dir(test) else {
        return;
    };
    let Some(python) = common::python(test) else {
        return;
    };
    let llama_tok = common::data_dir().join("llama3-tokenizer.json");
    assert!(
        llama_tok.exists(),
        "{} missing: run `cargo xtask data`",
        llama_tok.display()
    );
    let scratch = plugins_support::scratch("native_tool_calls_tokenizers");
    let qwen3_tok = qwen3_tokenizer(&scratch);
    let llama = Case {
        name: "llama-3.1",
        arch: "llama",
        template: "llama-3.1-instruct.jinja",
        special: json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
        eos: vec![128001, 128008, 128009],
        call: r#"{"name": "echo", "parameters": {"text": "Paris"}}"#,
        format: |f| {
            matches!(
                f,
                ToolCallFormat::LlamaJson {
                    python_tag: Some(_)
                }
            )
        },
        stop_tokens: &["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"],
    };
    run_case(&llama, &llama_tok, &plugins, &python);
    let qwen3 = Case {
        name: "qwen3",
        arch: "qwen3",
        template: "qwen3.jinja",
        special: json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
        eos: vec![151645, 151643],
        call: "<think>\nLook it up.\n</think>\n\n<tool_call>\n{\"name\": \"echo\", \"arguments\": {\"text\": \"Paris\"}}\n</tool_call>",
        format: |f| *f == ToolCallFormat::Hermes,
        stop_tokens: &["<|im_end|>", "<|endoftext|>"],
    };
    run_case(&qwen3, &qwen3_tok, &plugins, &python);
}
