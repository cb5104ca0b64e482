//! The engine renders real chat templates (Qwen2.5-Instruct, Qwen3,
//! Llama-3.1/3.2-Instruct, SmolLM2-Instruct; tests/fixtures/chat_templates)
//! byte for byte as transformers' `apply_chat_template` does
//! (tools/reference/render_chat_templates.py wrote expected.json), over 24
//! conversations: with and without a system message, multi-turn, tools
//! offered, assistant tool calls, tool results, reasoning, generation
//! prompt on and off; a template's own `raise_exception` is an error here
//! too.

use crate::common;

use std::path::PathBuf;

use igpo::tokenizer::ChatTemplate;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat_templates")
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Each conversation's messages and tools as JSON text (written by the
/// script, so the engine parses them with their key order, as Python does:
/// `tojson` prints keys in that order).
fn conversations(expected: &Value) -> Vec<(String, String, String, bool)> {
    expected["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["messages_json"].as_str().unwrap().to_string(),
                c["tools_json"].as_str().unwrap().to_string(),
                c["add_generation_prompt"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn renders_every_template_like_transformers() {
    let templates = read_json("templates.json");
    let expected = read_json("expected.json");
    let extra = expected["extra_kwargs_json"].as_str().unwrap().to_string();
    let convs = conversations(&expected);
    assert_eq!(
        convs.len(),
        read_json("conversations.json")["conversations"]
            .as_array()
            .unwrap()
            .len(),
        "expected.json is stale: rerun tools/reference/render_chat_templates.py"
    );
    assert!(convs.len() >= 20);
    let mut checked = 0;
    for (name, t) in templates.as_object().unwrap() {
        let text = std::fs::read_to_string(fixtures().join(t["file"].as_str().unwrap())).unwrap();
        let special: Vec<(String, String)> = t["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let special: Vec<(&str, &str)> = special
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let tmpl = ChatTemplate::from_text(name, &text, &special).unwrap();
        for (conv, messages, tools, gen) in &convs {
            let want = &expected["templates"][name][conv];
            let got = tmpl.render_json(messages, tools, *gen, &extra);
            match (want.get("text"), want.get("error")) {
                (Some(w), _) => {
                    let got = got.unwrap_or_else(|e| panic!("{name} x {conv}: {e}"));
                    assert_eq!(got, w.as_str().unwrap(), "{name} x {conv}");
                }
                (_, Some(msg)) => {
                    let err = got.expect_err(&format!("{name} x {conv} should raise"));
                    assert!(
                        err.to_string().contains(msg.as_str().unwrap()),
                        "{name} x {conv}: {err}"
                    );
                }
                _ => panic!("{name} x {conv}: no expectation in expected.json"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * convs.len());
    eprintln!("{checked} renderings byte-identical to transformers");
}

/// `igpo model inspect` names the template's source and the tool-call
/// format; a template minijinja cannot run is one error line naming the
/// file and the construct, never a silent ChatML fallback.
#[test]
fn inspect_names_the_template_and_rejects_unsupported_jinja() {
    let dir = std::env::temp_dir().join(format!("igpo-chat-inspect-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::init_tiny_model(&dir, &[]);
    let d = dir.to_str().unwrap();
    let inspect = || common::igpo(&["model", "inspect", d]);
    let line = |out: &str, key: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no `{key}` line in:\n{out}"))
            .to_string()
    };
    let cfg = dir.join("tokenizer_config.json");
    let (code, out, err) = inspect();
    assert_eq!(code, 0, "{err}");
    assert!(line(&out, "chat template:").contains(&format!("{} (chat_template)", cfg.display())));
    assert!(line(&out, "tool calls:").contains("prompted"), "{out}");

    std::fs::remove_file(&cfg).unwrap();
    let (code, out, err) = inspect();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        line(&out, "chat template:"),
        "chat template: none: ChatML fallback"
    );

    let file = dir.join("chat_template.jinja");
    std::fs::copy(fixtures().join("llama-3.1-instruct.jinja"), &file).unwrap();
    let (code, out, err) = inspect();
    assert_eq!(code, 0, "{err}");
    assert!(line(&out, "chat template:").contains(&file.display().to_string()));
    assert!(
        line(&out, "tool calls:").contains("llama json") && out.contains("<|python_tag|>"),
        "{out}"
    );

    // Python `%` formatting: Jinja2 runs it, minijinja cannot.
    std::fs::write(
        &file,
        "{% for m in messages %}{{ '<%s>%s' % (m.role, m.content) }}{% endfor %}",
    )
    .unwrap();
    let (code, _, err) = inspect();
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(&file.display().to_string()) && lines[0].contains("minijinja"),
        "{err}"
    );
    eprintln!("unsupported template: {}", lines[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
