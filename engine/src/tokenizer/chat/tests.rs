//! The pieces derived from renderings, on the ChatML fallback and the real
//! templates of tests/fixtures/chat_templates.

use super::*;

fn fixture(name: &str, special: &[(&str, &str)]) -> ChatTemplate {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat_templates");
    let text = std::fs::read_to_string(dir.join(name)).unwrap();
    ChatTemplate::from_text(name, &text, special).unwrap()
}

fn qwen3() -> ChatTemplate {
    fixture("qwen3.jinja", &[("eos_token", "<|im_end|>")])
}

fn llama31() -> ChatTemplate {
    fixture(
        "llama-3.1-instruct.jinja",
        &[
            ("bos_token", "<|begin_of_text|>"),
            ("eos_token", "<|eot_id|>"),
        ],
    )
}

fn search() -> ToolSpec {
    ToolSpec {
        name: "search".into(),
        description: "Searches.".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"query": {"type": "string"}}}),
    }
}

#[test]
fn chatml_fallback_pieces_are_the_engine_s_old_chatml() {
    let t = ChatTemplate::chatml();
    assert_eq!(t.source(), &TemplateSource::ChatmlFallback);
    assert_eq!(t.source().to_string(), "none: ChatML fallback");
    assert_eq!(t.tool_call_format(), &ToolCallFormat::Prompted);
    assert_eq!(t.turn_end().unwrap(), "<|im_end|>\n");
    assert_eq!(t.end_of_turn_tokens(), ["<|im_end|>", "<|endoftext|>"]);
    assert_eq!(t.turn_end_after(Some("<|im_end|>")).unwrap(), "\n");
    assert_eq!(
        t.turn_end_after(Some("<|endoftext|>")).unwrap(),
        "<|im_end|>\n"
    );
    let history = vec![Message::new("system", "S"), Message::new("user", "Q")];
    assert_eq!(
        t.render(&history, None, true).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
    let mut h = history.clone();
    h.push(ChatTemplate::stand_in_assistant());
    let result = t.tool_result_message("R");
    assert_eq!(
        t.append(&h, None, &result, true).unwrap(),
        "<|im_start|>user\n<tool_response>\nR\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn sft_pieces_learn_assistant_text_and_closer_only() {
    let t = ChatTemplate::chatml();
    let msgs = [
        Message::new("system", "S"),
        Message::new("user", "Q"),
        Message::new("assistant", "A1"),
        Message::new("user", "R"),
        Message::new("assistant", "A2"),
    ];
    let pieces = t.sft_pieces(&msgs, None).unwrap();
    let got: Vec<(&str, bool)> = pieces.iter().map(|p| (p.text.as_str(), p.learn)).collect();
    assert_eq!(
        got,
        [
            ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", false),
            ("A1<|im_end|>", true),
            ("\n", false),
            ("<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\n", false),
            ("A2<|im_end|>", true),
            ("\n", false),
        ]
    );
    let whole: String = pieces.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(whole, t.render(&msgs, None, false).unwrap());
}

#[test]
fn qwen3_and_llama_turn_ends_and_tool_results() {
    let q = qwen3();
    assert_eq!(q.tool_call_format(), &ToolCallFormat::Hermes);
    assert_eq!(q.turn_end().unwrap(), "<|im_end|>\n");
    let tools = [search()];
    let mut h = vec![Message::new("system", "S"), Message::new("user", "Q")];
    h.push(ChatTemplate::stand_in_assistant());
    let r = q.tool_result_message("R");
    assert_eq!(r.role, "tool");
    assert_eq!(
        q.append(&h, Some(&tools), &r, true).unwrap(),
        "<|im_start|>user\n<tool_response>\nR\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );

    let l = llama31();
    assert_eq!(
        l.tool_call_format(),
        &ToolCallFormat::LlamaJson {
            python_tag: Some("<|python_tag|>".into())
        }
    );
    assert_eq!(l.turn_end().unwrap(), "<|eot_id|>");
    assert_eq!(
        l.end_of_turn_tokens(),
        ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]
    );
    assert_eq!(l.turn_end_after(Some("<|eom_id|>")).unwrap(), "");
    assert_eq!(l.turn_end_after(None).unwrap(), "<|eot_id|>");
    let r = l.tool_result_message("R");
    assert_eq!(
        l.append(&h, Some(&tools), &r, true).unwrap(),
        "<|start_header_id|>ipython<|end_header_id|>\n\n\"R\"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn a_template_that_rewrites_earlier_text_is_not_prefix_stable() {
    // Renders messages newest first: adding one changes the start.
    let t = ChatTemplate::from_text(
        "reversed",
        "{% for m in messages|reverse %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        &[],
    )
    .unwrap();
    let h = vec![
        Message::new("user", "Q"),
        ChatTemplate::stand_in_assistant(),
    ];
    let err = t
        .append(&h, None, &Message::new("tool", "R"), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reversed") && err.contains("not prefix-stable"),
        "{err}"
    );
    assert!(err.contains("tool message"), "{err}");
}

#[test]
fn a_template_minijinja_cannot_run_is_one_clear_error() {
    // Python's `%` string formatting: Jinja2 runs it, minijinja does not.
    let err = ChatTemplate::from_text(
        "percent.jinja",
        "{% for m in messages %}{{ '%s: %s' % (m.role, m.content) }}{% endfor %}",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("percent.jinja: "), "{err}");
    assert!(err.contains("minijinja"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A syntax minijinja lacks fails when parsed.
    let err = ChatTemplate::from_text("do.jinja", "{% do messages.append(1) %}", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("do.jinja") && err.contains("minijinja"),
        "{err}"
    );
}

#[test]
fn raise_exception_is_the_template_s_own_error() {
    let t = ChatTemplate::from_text(
        "strict",
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
        &[],
    )
    .unwrap();
    let err = t
        .render(&[Message::new("system", "S")], None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the template raised: first must be user"),
        "{err}"
    );
}

/// Found by the fuzz tests: `{%}` (its `%}` overlapping the `{%`) panicked
/// while slicing the tag's inside.
#[test]
fn generation_tag_rewrite_survives_overlapping_delimiters() {
    use super::jinja::without_generation_tags;
    assert_eq!(without_generation_tags("{%}"), "{%}");
    assert_eq!(without_generation_tags("a{%}b"), "a{%}b");
    assert_eq!(
        without_generation_tags("{%- generation %}x{% endgeneration -%}"),
        "{%- if true %}x{% endif -%}"
    );
}
