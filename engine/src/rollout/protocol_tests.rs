//! Tests of `protocol.rs`: parsing, streaming stops and prompts of every
//! tool-call format, with edge cases and a property test.

use super::*;
use serde_json::json;

const TC: Protocol = Protocol::ToolCall;
const ST: Protocol = Protocol::SearchTags;

fn call(name: &str, arguments: Value) -> TurnAction {
    TurnAction::ToolCall {
        name: name.to_string(),
        arguments,
    }
}

fn is_malformed(a: &TurnAction) -> bool {
    matches!(a, TurnAction::Malformed(m) if m.starts_with("error: "))
}

fn malformed_containing(a: &TurnAction, needle: &str) -> bool {
    matches!(a, TurnAction::Malformed(m) if m.starts_with("error: ") && m.contains(needle))
}

fn search_tool() -> ToolSpec {
    ToolSpec {
        name: "search".to_string(),
        description: "Searches Wikipedia; returns the top passages.".to_string(),
        parameters: json!({
            "type": "object",
            "properties": {"query": {"type": "string", "description": "the query"}},
            "required": ["query"]
        }),
    }
}

/// A tiny LCG (Knuth's MMIX constants), no dependencies.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feeds `text` piece by piece (pieces end on char boundaries) and
/// returns (accumulated length when stop_at first fired, its value).
fn stream(protocol: Protocol, text: &str, cuts: &[usize]) -> Option<(usize, usize)> {
    let mut acc = String::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&text.len())) {
        if to <= from {
            continue;
        }
        acc.push_str(&text[from..to]);
        from = to;
        if let Some(n) = stop_at(protocol, &acc) {
            return Some((acc.len(), n));
        }
    }
    None
}

fn char_cuts(text: &str) -> Vec<usize> {
    text.char_indices().map(|(i, _)| i).skip(1).collect()
}

fn random_cuts(text: &str, rng: &mut Lcg) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < text.len() {
        at += 1 + rng.below(6);
        while at < text.len() && !text.is_char_boundary(at) {
            at += 1;
        }
        if at < text.len() {
            cuts.push(at);
        }
    }
    cuts
}

/// Checks streaming one char at a time and in random pieces: stop_at fires
/// on the first piece that completes the stop tag and returns `expected`.
fn check_streaming(protocol: Protocol, text: &str, expected: Option<usize>) {
    assert_eq!(stop_at(protocol, text), expected, "whole text {text:?}");
    let mut rng = Lcg(text.len() as u64 + 7);
    let mut plans = vec![char_cuts(text)];
    for _ in 0..20 {
        plans.push(random_cuts(text, &mut rng));
    }
    for cuts in plans {
        let got = stream(protocol, text, &cuts);
        match expected {
            None => assert_eq!(got, None, "{text:?} cuts {cuts:?}"),
            Some(n) => {
                let (fired_len, value) = got.expect("stop_at never fired");
                assert_eq!(value, n, "{text:?}");
                // Fired on the first piece whose end reaches n.
                let first_reaching = cuts
                    .iter()
                    .copied()
                    .chain(std::iter::once(text.len()))
                    .find(|&c| c >= n)
                    .unwrap();
                assert_eq!(fired_len, first_reaching, "{text:?} cuts {cuts:?}");
            }
        }
    }
}

// ---------------------------------------------------------------- basics

#[test]
fn protocol_serde_names_and_default() {
    assert_eq!(Protocol::default(), Protocol::ToolCall);
    assert_eq!(serde_json::to_string(&TC).unwrap(), "\"tool_call\"");
    assert_eq!(serde_json::to_string(&ST).unwrap(), "\"search_tags\"");
    let p: Protocol = serde_json::from_str("\"search_tags\"").unwrap();
    assert_eq!(p, ST);
    assert!(serde_json::from_str::<Protocol>("\"SearchTags\"").is_err());
}

#[test]
fn tool_call_prompt_lists_tools_qwen_style() {
    let mut second = search_tool();
    second.name = "open_page".to_string();
    second.description = "Opens a page: «ページ» 🦀".to_string();
    second.parameters = json!({"type": "object", "properties": {"url": {"type": "string"}}});
    let p = system_prompt(TC, &ToolCallFormat::Prompted, &[search_tool(), second]);
    for needle in [
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "<answer>",
        "</answer>",
        "<tools>\n",
        "\n</tools>",
        r#"{"name": <function-name>, "arguments": <args-json-object>}"#,
    ] {
        assert!(p.contains(needle), "missing {needle:?} in\n{p}");
    }
    let inside = p
        .split("<tools>\n")
        .nth(1)
        .unwrap()
        .split("\n</tools>")
        .next()
        .unwrap();
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines.len(), 2, "{inside}");
    assert!(lines[0].starts_with(
        r#"{"type": "function", "function": {"name": "search", "description": "Searches"#
    ));
    // Python json.dumps separators, non-ASCII kept raw.
    assert!(lines[1].contains(r#""properties": {"url": {"type": "string"}}"#));
    assert!(lines[1].contains("«ページ» 🦀"));
    for (line, tool) in lines.iter().zip(["search", "open_page"]) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["type"], "function");
        assert_eq!(v["function"]["name"], tool);
        assert_eq!(v["function"]["parameters"]["type"], "object");
    }
    // A description with quotes and newlines stays one valid JSON line.
    let mut odd = search_tool();
    odd.description = "say \"hi\"\nthen </tools> and \\".to_string();
    let p = system_prompt(TC, &ToolCallFormat::Prompted, &[odd.clone()]);
    let line = p.split("<tools>\n").nth(1).unwrap().lines().next().unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["function"]["description"], odd.description.as_str());
}

#[test]
fn search_tags_prompt_is_search_r1() {
    let p = system_prompt(ST, &ToolCallFormat::Prompted, &[search_tool()]);
    for needle in [
        "<think>",
        "<search> query </search>",
        "<information> and </information>",
        "<answer> and </answer>",
        "Searches Wikipedia",
    ] {
        assert!(p.contains(needle), "missing {needle:?} in\n{p}");
    }
    assert!(!p.contains("<tool_call>"));
}

#[test]
fn prompts_without_tools_do_not_panic() {
    let p = system_prompt(TC, &ToolCallFormat::Prompted, &[]);
    assert!(p.contains("<tools>\n</tools>"));
    let p = system_prompt(ST, &ToolCallFormat::Prompted, &[]);
    assert!(p.contains("<search>"));
}

#[test]
fn search_result_text_wraps_in_information() {
    assert_eq!(
        search_result_text("doc"),
        "\n\n<information>doc</information>\n\n"
    );
}

// --------------------------------------------------------------- parsing

#[test]
fn llama_json_calls() {
    let llama = TurnFormat::new(
        TC,
        ToolCallFormat::LlamaJson {
            python_tag: Some("<|python_tag|>".into()),
        },
    );
    let call_json = r#"{"name": "search", "parameters": {"query": "x }"}}"#;
    for prefix in ["", "  \n", "<think>\nhm {\n</think>\n\n", "<|python_tag|>"] {
        let t = format!("{prefix}{call_json}<|eot_id|>tail");
        let n = stop_at_in(&llama, &t).expect("stops");
        assert_eq!(&t[..n], &format!("{prefix}{call_json}"));
        assert_eq!(
            parse_turn_in(&llama, &t[..n], "s"),
            call("search", json!({"query": "x }"}))
        );
        // Not before the value is complete.
        assert_eq!(stop_at_in(&llama, &t[..n - 1]), None);
    }
    // An answer is still an answer; tags are not calls here.
    let t = "<think>x</think><answer>Paris</answer>";
    assert_eq!(
        parse_turn_in(&llama, t, "s"),
        TurnAction::Answer("Paris".into())
    );
    let t = r#"<tool_call>{"name": "search", "arguments": {}}</tool_call>"#;
    assert_eq!(parse_turn_in(&llama, t, "s"), TurnAction::Nothing);
    // An answer tag before the JSON wins (also inside an open think).
    let t = r#"<think><answer>A</answer></think>{"name": "s"}"#;
    assert_eq!(
        parse_turn_in(&llama, t, "s"),
        TurnAction::Answer("A".into())
    );
    // Incomplete or wrong JSON: malformed, with the Llama shape.
    let a = parse_turn_in(&llama, r#"{"name": "search", "parameters": {"#, "s");
    assert!(malformed_containing(&a, "\"parameters\""), "{a:?}");
    let a = parse_turn_in(&llama, r#"{"parameters": {}}"#, "s");
    assert!(malformed_containing(&a, "no \"name\""), "{a:?}");
    let a = parse_turn_in(&llama, r#"{"name": "s", "parameters": [1]}"#, "s");
    assert!(malformed_containing(&a, "\"parameters\" must be"), "{a:?}");
    // Hermes (Qwen) reads tags like the prompted format.
    let hermes = TurnFormat::new(TC, ToolCallFormat::Hermes);
    let t = "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"q\"}}\n</tool_call>";
    assert_eq!(parse_turn_in(&hermes, t, "s"), parse_turn(TC, t, "s"));
    assert_eq!(stop_at_in(&hermes, t), Some(t.len()));
}

#[test]
fn parses_a_plain_tool_call() {
    let t = "<think>\nI need the capital.\n</think>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"capital of France\"}}\n</tool_call>";
    assert_eq!(
        parse_turn(TC, t, "ignored"),
        call("search", json!({"query": "capital of France"}))
    );
    assert_eq!(stop_at(TC, t), Some(t.len()));
}

#[test]
fn parses_answers() {
    assert_eq!(
        parse_turn(TC, "<think>ok</think><answer> Paris </answer>", "s"),
        TurnAction::Answer("Paris".to_string())
    );
    assert_eq!(
        parse_turn(TC, "<answer>\nParis\n</answer><|im_end|>", "s"),
        TurnAction::Answer("Paris".to_string())
    );
    assert_eq!(
        parse_turn(TC, "<answer></answer>", "s"),
        TurnAction::Answer(String::new())
    );
    assert_eq!(
        parse_turn(ST, "<answer>  \n </answer>", "s"),
        TurnAction::Answer(String::new())
    );
}

#[test]
fn plain_talk_is_nothing() {
    for t in [
        "",
        "   ",
        "<think>just thinking</think>",
        "The answer is Paris.",
        "<information>x</information>",
        "<tool_response>x</tool_response>",
        "<tool_call",
        "tool_call>{}</",
    ] {
        assert_eq!(parse_turn(TC, t, "s"), TurnAction::Nothing, "{t:?}");
        assert_eq!(parse_turn(ST, t, "s"), TurnAction::Nothing, "{t:?}");
        assert_eq!(stop_at(TC, t), None);
        assert_eq!(stop_at(ST, t), None);
    }
    // The other protocol's tags are plain text.
    let t = "<search>paris</search>";
    assert_eq!(parse_turn(TC, t, "s"), TurnAction::Nothing);
    assert_eq!(stop_at(TC, t), None);
    let t = r#"<tool_call>{"name":"search","arguments":{}}</tool_call>"#;
    assert_eq!(parse_turn(ST, t, "s"), TurnAction::Nothing);
    assert_eq!(stop_at(ST, t), None);
}

#[test]
fn nested_tags_are_malformed() {
    let t = r#"<tool_call><tool_call>{"name":"search","arguments":{"query":"x"}}</tool_call>"#;
    assert!(malformed_containing(&parse_turn(TC, t, "s"), "nested"));
    assert_eq!(stop_at(TC, t), Some(t.len()));
    let t = r#"<tool_call><tool_call>{"name":"search","arguments":{"query":"x"}}</tool_call></tool_call>"#;
    assert!(malformed_containing(&parse_turn(TC, t, "s"), "nested"));
    assert_eq!(stop_at(TC, t), Some(t.len() - TOOL_CALL_CLOSE.len()));
    let t = "<answer><answer>Paris</answer></answer>";
    assert!(malformed_containing(&parse_turn(TC, t, "s"), "nested"));
    let t = "<search><search>q</search>";
    assert!(malformed_containing(&parse_turn(ST, t, "s"), "nested"));
    // Nesting the *other* action tag is not nesting: its content is judged.
    let t = "<answer>Use <tool_call>x</tool_call> here</answer>";
    assert_eq!(
        parse_turn(TC, t, "s"),
        TurnAction::Answer("Use <tool_call>x</tool_call> here".to_string())
    );
    assert_eq!(stop_at(TC, t), Some(t.len()));
}

#[test]
fn unclosed_tags_are_malformed_not_answers() {
    // Documented choice: an unclosed action tag is Malformed (never an
    // answer, never a call), so the model is told what went wrong.
    let a = parse_turn(TC, "<think>so</think><answer>Paris", "s");
    assert!(malformed_containing(&a, "unclosed <answer>"), "{a:?}");
    assert_eq!(stop_at(TC, "<answer>Paris"), None);
    let a = parse_turn(TC, r#"<tool_call>{"name":"search""#, "s");
    assert!(malformed_containing(&a, "unclosed <tool_call>"), "{a:?}");
    assert_eq!(stop_at(TC, r#"<tool_call>{"name":"search""#), None);
    let a = parse_turn(ST, "<search>capital of", "s");
    assert!(malformed_containing(&a, "unclosed <search>"), "{a:?}");
    // Half a closing tag is not a closing tag.
    let a = parse_turn(TC, "<answer>Paris</answ", "s");
    assert!(malformed_containing(&a, "unclosed"), "{a:?}");
    assert_eq!(stop_at(TC, "<answer>Paris</answ"), None);
    // An unclosed first action is not rescued by a later complete one.
    let t = r#"<answer>Par <tool_call>{"name":"s","arguments":{}}</tool_call>"#;
    assert!(malformed_containing(
        &parse_turn(TC, t, "s"),
        "unclosed <answer>"
    ));
    assert_eq!(stop_at(TC, t), None);
}

#[test]
fn closing_before_opening_is_ignored() {
    assert_eq!(parse_turn(TC, "</answer>Paris", "s"), TurnAction::Nothing);
    assert_eq!(stop_at(TC, "</answer>Paris"), None);
    assert_eq!(stop_at(TC, "</tool_call>"), None);
    assert_eq!(stop_at(ST, "</search>"), None);
    let t = "</answer> oops <answer>Paris</answer>";
    assert_eq!(
        parse_turn(TC, t, "s"),
        TurnAction::Answer("Paris".to_string())
    );
    assert_eq!(stop_at(TC, t), Some(t.len()));
    check_streaming(TC, t, Some(t.len()));
    let t = "</answer>Paris<answer>";
    assert!(malformed_containing(&parse_turn(TC, t, "s"), "unclosed"));
    let t = "</search><search>q</search>";
    assert_eq!(parse_turn(ST, t, "web"), call("web", json!({"query": "q"})));
}

#[test]
fn empty_search_queries_are_malformed() {
    for t in [
        "<search></search>",
        "<search>   </search>",
        "<search>\n\t\u{3000}\n</search>",
    ] {
        let a = parse_turn(ST, t, "search");
        assert!(
            malformed_containing(&a, "empty search query"),
            "{t:?}: {a:?}"
        );
        assert_eq!(stop_at(ST, t), Some(t.len()));
    }
}

#[test]
fn search_tags_map_to_the_search_tool() {
    let t = "<think>need it</think>\n<search> capital of France </search>";
    assert_eq!(
        parse_turn(ST, t, "wiki_search"),
        call("wiki_search", json!({"query": "capital of France"}))
    );
    assert_eq!(stop_at(ST, t), Some(t.len()));
    // Quotes and JSON-looking text stay verbatim in the query.
    let t = r#"<search>"a \"b\"" {x}</search>"#;
    assert_eq!(
        parse_turn(ST, t, "s"),
        call("s", json!({"query": r#""a \"b\"" {x}"#}))
    );
}

#[test]
fn a_10kb_query_is_kept_whole() {
    let q: String = (0..10_240)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let t = format!("<search>{q}</search>");
    assert_eq!(parse_turn(ST, &t, "s"), call("s", json!({"query": q})));
    assert_eq!(stop_at(ST, &t), Some(t.len()));
    let t = format!(
        "<tool_call>{}</tool_call>",
        json!({"name": "search", "arguments": {"query": q}})
    );
    assert_eq!(parse_turn(TC, &t, "x"), call("search", json!({"query": q})));
    check_streaming(TC, &t, Some(t.len()));
}

#[test]
fn unicode_queries_and_answers() {
    let q = "東京タワー 高さ 🗼 café e\u{301} Zürich \u{200d}👩‍👩‍👧";
    let t = format!("<search>{q}</search>");
    assert_eq!(parse_turn(ST, &t, "s"), call("s", json!({"query": q})));
    check_streaming(ST, &t, Some(t.len()));
    let t = format!("<think>思考中…🤔</think><answer> {q} </answer>🎉 trailing");
    assert_eq!(parse_turn(TC, &t, "s"), TurnAction::Answer(q.to_string()));
    let n = t.find("🎉").unwrap();
    check_streaming(TC, &t, Some(n));
    let t = format!(
        "<tool_call>{{\"name\": \"search\", \"arguments\": {{\"query\": \"{q}\"}}}}</tool_call>"
    );
    assert_eq!(parse_turn(TC, &t, "s"), call("search", json!({"query": q})));
    // Escaped unicode in JSON decodes.
    let t = r#"<tool_call>{"name":"search","arguments":{"query":"\u6771\u4eac \ud83d\uddfc"}}</tool_call>"#;
    assert_eq!(
        parse_turn(TC, t, "s"),
        call("search", json!({"query": "東京 🗼"}))
    );
    // Unicode whitespace around the answer is trimmed.
    assert_eq!(
        parse_turn(TC, "<answer>\u{3000}北京\u{a0}</answer>", "s"),
        TurnAction::Answer("北京".to_string())
    );
}

#[test]
fn json_edge_cases() {
    let want = call("search", json!({"query": "x"}));
    // Arguments as a JSON string holding a JSON object.
    let t = r#"<tool_call>{"name":"search","arguments":"{\"query\": \"x\"}"}</tool_call>"#;
    assert_eq!(parse_turn(TC, t, "s"), want);
    // ... with whitespace inside the string.
    let t = r#"<tool_call>{"name":"search","arguments":"  {\"query\":\"x\"}\n"}</tool_call>"#;
    assert_eq!(parse_turn(TC, t, "s"), want);
    // ... but a string that is not an object is rejected.
    for args in [
        r#""x""#,
        r#""[1,2]""#,
        r#""\"{}\"""#,
        r#""{bad""#,
        "[1]",
        "3",
        "true",
    ] {
        let t = format!(r#"<tool_call>{{"name":"search","arguments":{args}}}</tool_call>"#);
        assert!(
            malformed_containing(&parse_turn(TC, &t, "s"), "arguments"),
            "{t}"
        );
    }
    // Extra whitespace and newlines inside the tag, extra keys, trailing text.
    let t = "<tool_call>\n\n   {\n  \"name\" : \"search\" ,\n \"arguments\" :\n {\"query\":\"x\"},\n \"id\": 7 }  \n\t</tool_call>\nI will wait.<|im_end|>";
    assert_eq!(parse_turn(TC, t, "s"), want);
    assert_eq!(stop_at(TC, t), Some(t.find("\nI will").unwrap()));
    // Missing or null arguments mean no arguments.
    assert_eq!(
        parse_turn(TC, r#"<tool_call>{"name":"now"}</tool_call>"#, "s"),
        call("now", json!({}))
    );
    assert_eq!(
        parse_turn(
            TC,
            r#"<tool_call>{"name":"now","arguments":null}</tool_call>"#,
            "s"
        ),
        call("now", json!({}))
    );
    // The name is trimmed.
    assert_eq!(
        parse_turn(
            TC,
            r#"<tool_call>{"name":" search ","arguments":{"query":"x"}}</tool_call>"#,
            "s"
        ),
        want
    );
}

#[test]
fn bad_calls_are_malformed() {
    let cases = [
        ("", "empty tool call"),
        ("  \n ", "empty tool call"),
        (
            r#"{"name":"search","arguments":{"query":"x"}"#,
            "not valid JSON",
        ),
        (
            r#"{"name":"search","arguments":{"query":"x"}} extra"#,
            "not valid JSON",
        ),
        (r#"{'name':'search'}"#, "not valid JSON"),
        (r#"```json {"name":"search"} ```"#, "not valid JSON"),
        (r#"[{"name":"search"}]"#, "JSON object"),
        (r#""search""#, "JSON object"),
        ("null", "JSON object"),
        (r#"{"arguments":{"query":"x"}}"#, "no \"name\""),
        (r#"{"name":"","arguments":{}}"#, "empty \"name\""),
        (r#"{"name":"  ","arguments":{}}"#, "empty \"name\""),
        (r#"{"name":3,"arguments":{}}"#, "must be a string"),
        (r#"{"name":null,"arguments":{}}"#, "must be a string"),
        (r#"{"name":"search","arguments":["x"]}"#, "arguments"),
    ];
    for (body, needle) in cases {
        let t = format!("<tool_call>{body}</tool_call>");
        let a = parse_turn(TC, &t, "s");
        assert!(malformed_containing(&a, needle), "{t}: {a:?}");
        assert_eq!(stop_at(TC, &t), Some(t.len()));
    }
    // Deep nesting hits serde_json's recursion limit: an error, not a crash.
    let deep = format!(
        "<tool_call>{{\"name\":\"s\",\"arguments\":{{\"a\":{}{}}}}}</tool_call>",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(is_malformed(&parse_turn(TC, &deep, "s")));
}

#[test]
fn order_decides_between_answer_and_call() {
    let c = r#"<tool_call>{"name":"search","arguments":{"query":"x"}}</tool_call>"#;
    let t = format!("<answer>Paris</answer>{c}");
    assert_eq!(parse_turn(TC, &t, "s"), TurnAction::Answer("Paris".into()));
    assert_eq!(stop_at(TC, &t), Some("<answer>Paris</answer>".len()));
    let t = format!("{c}<answer>Paris</answer>");
    assert_eq!(
        parse_turn(TC, &t, "s"),
        call("search", json!({"query": "x"}))
    );
    assert_eq!(stop_at(TC, &t), Some(c.len()));
    let t = "<search>q</search><answer>A</answer>";
    assert_eq!(parse_turn(ST, t, "s"), call("s", json!({"query": "q"})));
    let t = "<answer>A</answer><search>q</search>";
    assert_eq!(parse_turn(ST, t, "s"), TurnAction::Answer("A".into()));
    // Two calls: the first wins.
    let t = format!(
        "{c}{}",
        r#"<tool_call>{"name":"other","arguments":{}}</tool_call>"#
    );
    assert_eq!(
        parse_turn(TC, &t, "s"),
        call("search", json!({"query": "x"}))
    );
}

#[test]
fn answer_close_inside_a_call_does_not_end_it() {
    let t = r#"<tool_call>{"name":"search","arguments":{"query":"what does </answer> mean <answer>"}}</tool_call>"#;
    assert_eq!(
        parse_turn(TC, t, "s"),
        call(
            "search",
            json!({"query": "what does </answer> mean <answer>"})
        )
    );
    assert_eq!(stop_at(TC, t), Some(t.len()));
    check_streaming(TC, t, Some(t.len()));
    // And an answer mentioning </search> (SearchTags).
    let t = "<answer>the </search> tag</answer>";
    assert_eq!(
        parse_turn(ST, t, "s"),
        TurnAction::Answer("the </search> tag".into())
    );
    assert_eq!(stop_at(ST, t), Some(t.len()));
}

#[test]
fn tags_are_case_sensitive_and_exact() {
    for t in [
        "<ANSWER>Paris</ANSWER>",
        "<Answer>Paris</Answer>",
        "<answer >Paris</answer >",
        "< answer>Paris</ answer>",
        "<TOOL_CALL>{\"name\":\"s\"}</TOOL_CALL>",
        "<tool-call>{\"name\":\"s\"}</tool-call>",
        "<toolcall>{\"name\":\"s\"}</toolcall>",
    ] {
        assert_eq!(parse_turn(TC, t, "s"), TurnAction::Nothing, "{t}");
        assert_eq!(stop_at(TC, t), None, "{t}");
    }
    assert_eq!(
        parse_turn(ST, "<SEARCH>q</SEARCH>", "s"),
        TurnAction::Nothing
    );
    // A case-mangled close does not close a real open tag.
    let a = parse_turn(TC, "<answer>Paris</ANSWER>", "s");
    assert!(malformed_containing(&a, "unclosed"));
    assert_eq!(stop_at(TC, "<answer>Paris</ANSWER>"), None);
}

// ------------------------------------------------------------- streaming

#[test]
fn streaming_fires_exactly_when_the_closing_tag_completes() {
    let call_text = "<think>\nFind it.\n</think>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"巴黎 🗼\"}}\n</tool_call>";
    let cases: Vec<(Protocol, String, Option<usize>)> = vec![
        (TC, call_text.to_string(), Some(call_text.len())),
        (
            TC,
            format!("{call_text}<|im_end|>after"),
            Some(call_text.len()),
        ),
        (
            TC,
            "<think>x</think><answer>Paris</answer>\n".to_string(),
            Some("<think>x</think><answer>Paris</answer>".len()),
        ),
        (ST, "<search>q</search> more".to_string(), Some(18)),
        (ST, "<answer>Paris</answer>".to_string(), Some(22)),
        (TC, "<answer>Paris".to_string(), None),
        (TC, "</answer></tool_call>".to_string(), None),
        (ST, "<search>q</searc".to_string(), None),
        (TC, "<answer>a</ans</answer>".to_string(), Some(23)),
        (TC, "<answer>a<</answer>".to_string(), Some(19)),
        (TC, "<<answer>>a<</answer>>".to_string(), Some(21)),
    ];
    for (p, t, expected) in cases {
        check_streaming(p, &t, expected);
    }
}

#[test]
fn stop_at_is_monotone_and_consistent_with_parse_turn() {
    let t = "<think>é</think><answer>ünï</answer>tail<tool_call>";
    let n = stop_at(TC, t).unwrap();
    for end in (0..=t.len()).filter(|&e| t.is_char_boundary(e)) {
        let got = stop_at(TC, &t[..end]);
        if end < n {
            assert_eq!(got, None, "prefix {end}");
        } else {
            assert_eq!(got, Some(n), "prefix {end}");
        }
    }
    assert_eq!(parse_turn(TC, &t[..n], "s"), parse_turn(TC, t, "s"));
}

// ------------------------------------------------------------ truncation

#[test]
fn truncate_result_cuts_on_char_boundaries() {
    assert_eq!(truncate_result("hello", 10), "hello");
    assert_eq!(truncate_result("hello", 5), "hello");
    assert_eq!(
        truncate_result("hello", 3),
        "hel\n[... truncated 2 characters]"
    );
    assert_eq!(
        truncate_result("hello", 0),
        "\n[... truncated 5 characters]"
    );
    assert_eq!(truncate_result("", 0), "");
    // Multi-byte chars: CJK (3 bytes), emoji (4 bytes), combining marks.
    assert_eq!(
        truncate_result("東京タワー", 2),
        "東京\n[... truncated 3 characters]"
    );
    assert_eq!(
        truncate_result("🦀🦀🦀", 1),
        "🦀\n[... truncated 2 characters]"
    );
    // e + combining acute is two chars; the cut may separate them.
    assert_eq!(
        truncate_result("e\u{301}e\u{301}", 1),
        "e\n[... truncated 3 characters]"
    );
    assert_eq!(truncate_result("東京", 2), "東京");
    let long = "あ".repeat(5000);
    let out = truncate_result(&long, 1000);
    assert!(out.starts_with(&"あ".repeat(1000)));
    assert!(out.ends_with("\n[... truncated 4000 characters]"));
}

// -------------------------------------------------------- tags_balanced

#[test]
fn tags_balanced_cases() {
    let good = [
        "",
        "no tags at all",
        "<think>a</think><tool_call>{}</tool_call>",
        "<think>a</think>\n<answer>b</answer>",
        "<think>a</think><search>q</search><think>b</think><answer>c</answer>",
        "<think><answer>x</answer></think>",
        "<think><answer></think></answer>", // per-tag check: interleaving allowed
        "<ANSWER>",                         // not a tag
        "<information>x",                   // not a checked tag
        "<think>東京</think>",
    ];
    for t in good {
        assert!(tags_balanced(t), "{t:?}");
    }
    let bad = [
        "<think>",
        "</think>",
        "</answer><answer>",
        "<think><think></think></think>",
        "<tool_call><tool_call>{}</tool_call>",
        "<answer>Paris",
        "<search>q",
        "<search></search></search>",
        "<think>a</think><answer>b</answer></think>",
    ];
    for t in bad {
        assert!(!tags_balanced(t), "{t:?}");
    }
}

// -------------------------------------------------------------- property

const VOCAB: &[&str] = &[
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<tool_response>",
    "<ANSWER>",
    "</Answer>",
    "<tool_",
    "call>",
    "</answ",
    "er>",
    "<",
    ">",
    "</",
    "{",
    "}",
    "\"",
    "\\",
    ":",
    ",",
    "[",
    "]",
    "\"name\"",
    "\"arguments\"",
    "\"search\"",
    "\"query\"",
    r#"{"name": "search", "arguments": {"query": "q"}}"#,
    r#"{"name":"search","arguments":"{\"query\":\"x\"}"}"#,
    "null",
    " ",
    "\n",
    "\t",
    "\u{3000}",
    "Paris",
    "東京",
    "🦀",
    "👩‍👩‍👧",
    "e\u{301}",
    "\u{200d}",
    "\u{feff}",
    "<|im_end|>",
];

fn random_text(rng: &mut Lcg) -> String {
    let pieces = rng.below(24);
    let mut s = String::new();
    for _ in 0..pieces {
        if rng.below(4) == 0 {
            // A random scalar value (any plane), surrogates skipped.
            let c = match rng.below(3) {
                0 => char::from_u32(rng.below(0x80) as u32),
                1 => char::from_u32(rng.below(0x3_0000) as u32),
                _ => char::from_u32(rng.below(0x11_0000) as u32),
            };
            s.push(c.unwrap_or('\u{fffd}'));
        } else {
            s.push_str(VOCAB[rng.below(VOCAB.len())]);
        }
    }
    s
}

#[test]
fn property_no_panics_and_consistent_cuts() {
    let mut rng = Lcg(0x1234_5678_9abc_def0);
    let mut fired = 0;
    for _ in 0..4000 {
        let text = random_text(&mut rng);
        let _ = tags_balanced(&text);
        for p in [TC, ST] {
            let action = parse_turn(p, &text, "search");
            if let TurnAction::Malformed(m) = &action {
                assert!(m.starts_with("error: "), "{m}");
            }
            match stop_at(p, &text) {
                Some(n) => {
                    fired += 1;
                    assert!(n <= text.len());
                    assert!(text.is_char_boundary(n), "{text:?} {n}");
                    let kept = &text[..n];
                    assert!(
                        [ANSWER_CLOSE, TOOL_CALL_CLOSE, SEARCH_CLOSE]
                            .iter()
                            .any(|c| kept.ends_with(c)),
                        "{kept:?}"
                    );
                    assert_eq!(stop_at(p, kept), Some(n), "{text:?}");
                    assert_eq!(parse_turn(p, kept, "search"), action, "{text:?}");
                    // No strictly shorter prefix fires.
                    let e = rng.below(n + 1);
                    if e < n && text.is_char_boundary(e) {
                        assert_eq!(stop_at(p, &text[..e]), None, "{text:?} {e}");
                    }
                    assert!(
                        !matches!(action, TurnAction::Nothing),
                        "{text:?}: a stop implies an action"
                    );
                }
                None => {
                    // No complete first action: nothing, or an unclosed tag.
                    assert!(
                        matches!(&action, TurnAction::Nothing)
                            || malformed_containing(&action, "unclosed"),
                        "{text:?}: {action:?}"
                    );
                }
            }
        }
        let max = rng.below(40);
        let cut = truncate_result(&text, max);
        if text.chars().count() <= max {
            assert_eq!(cut, text);
        } else {
            let kept: String = text.chars().take(max).collect();
            assert!(cut.starts_with(&kept));
            assert!(cut.ends_with(" characters]"));
        }
    }
    assert!(fired > 200, "generator too weak: {fired} stops");
}

#[test]
fn property_streaming_matches_whole_text() {
    let mut rng = Lcg(42);
    for _ in 0..1500 {
        let text = random_text(&mut rng);
        for p in [TC, ST] {
            let whole = stop_at(p, &text);
            let cuts = random_cuts(&text, &mut rng);
            let got = stream(p, &text, &cuts).map(|(_, n)| n);
            assert_eq!(got, whole, "{text:?}");
        }
    }
}

#[test]
fn property_generated_well_formed_turns_are_balanced() {
    let mut rng = Lcg(7);
    let tags = [
        (THINK_OPEN, THINK_CLOSE),
        (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
        (ANSWER_OPEN, ANSWER_CLOSE),
        (SEARCH_OPEN, SEARCH_CLOSE),
    ];
    let filler = ["", "x", "東京", "🦀", " ", "<ANSWER>", "e\u{301}"];
    for _ in 0..2000 {
        let mut s = String::new();
        for _ in 0..rng.below(6) {
            let (o, c) = tags[rng.below(tags.len())];
            s.push_str(filler[rng.below(filler.len())]);
            s.push_str(o);
            s.push_str(filler[rng.below(filler.len())]);
            s.push_str(c);
        }
        assert!(tags_balanced(&s), "{s:?}");
        // One extra tag anywhere (at a char boundary) unbalances it.
        let (o, c) = tags[rng.below(tags.len())];
        let extra = if rng.below(2) == 0 { o } else { c };
        let bounds: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
        let at = bounds[rng.below(bounds.len())];
        let broken = format!("{}{extra}{}", &s[..at], &s[at..]);
        // Inserting at a boundary could land inside a tag and split it;
        // only assert when the insertion point is outside any tag.
        let inside_tag = s[..at]
            .rfind('<')
            .is_some_and(|lt| !s[lt..at].contains('>'));
        if !inside_tag {
            assert!(!tags_balanced(&broken), "{broken:?}");
        }
    }
}
