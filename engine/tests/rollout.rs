//! The agent loop with real plugins through the real host.
//!
//! - The tool step of a turn (`tool_turn`: parsed action -> call on the pool
//!   -> result text + turn metadata) on every error path: a malformed call, an
//!   unknown tool, a tool error, a trap, a memory blow-up and a timeout each
//!   become a tool result that says so, with `tool_error` set and the turn
//!   counted.
//! - Whole rollouts with SmolLM2-135M-Instruct after the short tool-call SFT
//!   `cargo xtask test` runs (it calls `search`): trajectories are well formed,
//!   at least one rollout calls the real bm25-search plugin, every tool result
//!   is the plugin's own output for the same arguments, a seed reproduces
//!   them exactly (whatever else shares the batch), and a `search` call that fails (no such tool, or a plugin
//!   that rejects the call) is recorded and the rollout goes on.

use crate::common;
use crate::plugins_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use igpo::backend::Cpu;
use igpo::plugins::{DatasetPlugin, PluginHost, PluginSpec, SandboxLimits, ToolPlugin, ToolPool};
use igpo::rollout::protocol::{parse_turn, Protocol, TurnAction};
use igpo::rollout::{
    agent_system_prompt, run_agent, tool_turn, AgentConfig, SpanKind, Task, Trajectory, TurnMeta,
};
use igpo::tokenizer::{Tokenizer, ToolCallFormat};

/// The bm25-search config the tool-SFT transcripts were made with
/// (xtask/src/tool_sft.rs, TOOL_SFT_TOOL_CONFIG).
fn bm25_config() -> serde_json::Value {
    serde_json::json!({"k": 2, "max_chars": 300})
}

fn check_well_formed(t: &Trajectory) {
    let n = t.tokens.len();
    assert_eq!(t.loss_mask.len(), n, "{}: mask length", t.id);
    assert_eq!(t.sample_logprobs.len(), n, "{}: logprob length", t.id);
    assert_eq!(
        t.segments.first().map(|s| s.kind),
        Some(SpanKind::Prompt),
        "{}: starts with the prompt",
        t.id
    );
    let mut at = 0;
    for s in &t.segments {
        assert_eq!(s.start, at, "{}: segments must tile the sequence", t.id);
        assert!(s.end > s.start, "{}: empty segment {s:?}", t.id);
        let want = matches!(s.kind, SpanKind::Generated { .. }) as u8;
        assert!(
            t.loss_mask[s.start..s.end].iter().all(|&m| m == want),
            "{}: mask of {s:?}",
            t.id
        );
        at = s.end;
    }
    assert_eq!(at, n, "{}: segments cover every token", t.id);
    assert!(t.sample_logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    let gen_turns = t
        .segments
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::Generated { .. }))
        .count();
    assert_eq!(
        gen_turns,
        t.turns.len(),
        "{}: one generated span per turn",
        t.id
    );
    // Every tool turn (call or malformed call) has its result spliced in
    // right after it; no other turn has one.
    for (i, m) in t.turns.iter().enumerate() {
        let spliced = t
            .segments
            .iter()
            .any(|s| s.kind == SpanKind::ToolResult { turn: i });
        assert_eq!(
            spliced,
            m.used_tool_turn(),
            "{}: turn {i} ({m:?}) and its tool-result segment",
            t.id
        );
        assert_eq!(m.result.is_some(), m.used_tool_turn(), "{}: turn {i}", t.id);
    }
    assert!(
        t.final_answer.is_none() || !t.truncated,
        "{}: an answered rollout is not truncated",
        t.id
    );
    assert!(
        !t.text.is_empty(),
        "{}: finished rollouts have their text",
        t.id
    );
}

/// The SQuAD + Wikipedia corpus bm25-search reads, built once per test.
fn corpus(name: &str) -> PathBuf {
    let data = common::data_dir();
    let dir = plugins_support::scratch(name);
    let passages = igpo::data::build_corpus(
        Some(&data.join("squad-dev-v1.1.json")),
        Some(&data.join("wiki-summaries-en.json")),
    )
    .unwrap();
    igpo::data::write_jsonl(&dir.join("corpus.jsonl"), &passages).unwrap();
    dir
}

fn bm25_spec(plugins: &Path, corpus: &Path) -> PluginSpec {
    PluginSpec::new(plugins.join("bm25-search.wasm"))
        .config(bm25_config())
        .readonly_dir(corpus)
}

/// `n` SQuAD dev questions in a fixed shuffled order.
fn tasks(host: &PluginHost, plugins: &Path, n: usize) -> Vec<Task> {
    let ds = DatasetPlugin::load(
        host,
        &PluginSpec::new(plugins.join("qa-dataset.wasm"))
            .config(serde_json::json!({"file": "squad-dev-v1.1.json", "shuffle": true, "seed": 11, "limit": n}))
            .readonly_dir(common::data_dir()),
    )
    .unwrap();
    let tasks: Vec<Task> = ds
        .examples(None)
        .unwrap()
        .into_iter()
        .map(|e| Task {
            id: e.id,
            question: e.question,
            answers: e.answers,
        })
        .collect();
    assert_eq!(tasks.len(), n);
    tasks
}

/// Room for the SFT model's call (`<think>..</think>` + the question as the
/// query: ~60 tokens) and for a whole bm25 result (k = 2, 300 chars each).
fn agent_config(temperature: f32) -> AgentConfig {
    AgentConfig {
        max_turns: 2,
        max_new_tokens_per_turn: 96,
        max_new_tokens_per_rollout: 200,
        max_tool_result_tokens: 256,
        temperature,
        ..AgentConfig::default()
    }
}

/// Trajectories without their tool latencies (wall-clock): everything else
/// must repeat exactly.
fn timeless(v: &[Trajectory]) -> Vec<Trajectory> {
    let mut v = v.to_vec();
    v.iter_mut()
        .flat_map(|t| t.turns.iter_mut())
        .for_each(|m| m.latency_ms = 0.0);
    v
}

#[test]
fn tool_sft_rollouts_call_bm25_for_real_and_are_reproducible() {
    let test = "tool_sft_rollouts_call_bm25_for_real_and_are_reproducible";
    let Some(model_dir) = common::smollm2_tool_dir(test) else {
        return;
    };
    let Some(plugins) = plugins_support::plugin_dir(test) else {
        return;
    };
    let host = plugins_support::host(&plugins);
    let corpus = corpus("rollout-corpus");
    let tools = Arc::new(ToolPool::load(&host, &[bm25_spec(&plugins, &corpus)]).unwrap());
    // A second, independent instance: the direct output to compare with.
    let direct = ToolPlugin::load(&host, &bm25_spec(&plugins, &corpus)).unwrap();
    let tasks = tasks(&host, &plugins, 4);
    let model = igpo::model::load(&model_dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&model_dir).unwrap();
    let cfg = agent_config(0.8);
    let (a, stats) = run_agent(&model, &tok, Some(tools.clone()), &cfg, &tasks, 5).unwrap();
    // Rollout i depends only on (seed, i), not on which others share the
    // batch: the first two again, alone, must repeat exactly.
    let (b, _) = run_agent(&model, &tok, Some(tools.clone()), &cfg, &tasks[..2], 5).unwrap();
    assert!(
        timeless(&a[..2]) == timeless(&b),
        "the same seed must give the same trajectories"
    );
    let mut calls = 0;
    for t in &a {
        check_well_formed(t);
        for m in &t.turns {
            let (Some(tool), Some(args), Some(result)) = (&m.tool, &m.arguments, &m.result) else {
                continue;
            };
            assert_eq!(tool, "search", "{}: the only tool", t.id);
            if m.tool_error {
                // bm25-search rejects e.g. extra argument keys; never silently.
                assert!(result.starts_with("Error: "), "{}: {result}", t.id);
                continue;
            }
            calls += 1;
            let want = direct.call(&args.to_string()).unwrap();
            assert!(
                !result.contains("\n[... truncated"),
                "{}: a bm25 result fits in max_tool_result_tokens",
                t.id
            );
            assert_eq!(
                result, &want,
                "{}: the tool result must be the plugin's output for {args}",
                t.id
            );
        }
    }
    assert_eq!(
        stats.tool_calls,
        a.iter()
            .flat_map(|t| &t.turns)
            .filter(|m| m.tool.is_some())
            .count()
    );
    eprintln!(
        "{} rollouts, {} tokens, {} tool calls ({} succeeded), {} answered, {:.1} tok/s",
        a.len(),
        stats.generated_tokens,
        stats.tool_calls,
        calls,
        a.iter().filter(|t| t.final_answer.is_some()).count(),
        stats.generated_tokens as f64 / stats.wall_s
    );
    assert!(
        calls >= 1,
        "the tool-SFT model must make at least one real bm25-search call"
    );
}

#[test]
fn tool_sft_rollouts_over_http_search_match_bm25_search_over_the_same_index() {
    let test = "tool_sft_rollouts_over_http_search_match_bm25_search_over_the_same_index";
    let Some(model_dir) = common::smollm2_tool_dir(test) else {
        return;
    };
    let Some(plugins) = plugins_support::plugin_dir(test) else {
        return;
    };
    let host = plugins_support::host(&plugins);
    let corpus = corpus("http-rollout-corpus");
    igpo::data::index::build_index(
        &[corpus.join("corpus.jsonl")],
        &corpus.join("index"),
        64 << 20,
        false,
    )
    .unwrap();
    let server = plugins_support::RetrievalServer::start(&corpus.join("index"));
    let mut on_disk = bm25_config();
    on_disk["index"] = serde_json::json!("index");
    let mut over_http = bm25_config();
    over_http["url"] = serde_json::json!(server.origin);
    let disk = ToolPool::load(
        &host,
        &[PluginSpec::new(plugins.join("bm25-search.wasm"))
            .config(on_disk)
            .readonly_dir(&corpus)],
    )
    .unwrap();
    // The two plugins describe themselves differently: the run file's
    // `description` gives the agent the same text for both (what the model
    // was tuned on), so the prompts are the same.
    let described = disk.infos()[0].plugin.description.clone();
    let http = ToolPool::load(
        &host,
        &[PluginSpec::new(plugins.join("http-search.wasm"))
            .config(over_http)
            .description(described)
            .allow_http([server.origin.clone()])],
    )
    .unwrap();
    let shown = |p: &ToolPool| {
        let i = p.infos()[0].clone();
        (i.name, i.plugin.description, i.parameters_schema)
    };
    assert_eq!(shown(&disk), shown(&http), "what the agent is shown");
    let cfg = agent_config(0.8);
    let tasks = tasks(&host, &plugins, 20);
    let model = igpo::model::load(&model_dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&model_dir).unwrap();
    let (a, stats) = run_agent(&model, &tok, Some(Arc::new(disk)), &cfg, &tasks, 7).unwrap();
    let (b, _) = run_agent(&model, &tok, Some(Arc::new(http)), &cfg, &tasks, 7).unwrap();
    let searched = a
        .iter()
        .flat_map(|t| &t.turns)
        .filter(|m| m.tool.is_some() && !m.tool_error)
        .count();
    eprintln!(
        "20 rollouts each way: {} tokens, {searched} successful searches, {:.1} tok/s",
        stats.generated_tokens,
        stats.generated_tokens as f64 / stats.wall_s
    );
    assert!(searched >= 10, "only {searched} searches to compare");
    assert!(
        timeless(&a) == timeless(&b),
        "http-search via the server must give the trajectories bm25-search over the index gives"
    );
}

/// Runs the tool-SFT model greedily with `pool` but the system prompt it was
/// tuned on (bm25-search as `search`), so it calls `search` on `pool`.
fn run_with_pool(
    test: &str,
    pool: impl FnOnce(&PluginHost, &Path) -> ToolPool,
) -> Option<Vec<Trajectory>> {
    let model_dir = common::smollm2_tool_dir(test)?;
    let plugins = plugins_support::plugin_dir(test)?;
    let host = plugins_support::host(&plugins);
    let corpus = corpus(test);
    let bm25 = ToolPool::load(&host, &[bm25_spec(&plugins, &corpus)]).unwrap();
    let mut cfg = agent_config(0.0);
    // One tool turn: the failed call, then one more turn (answer or cut).
    cfg.max_turns = 1;
    cfg.system_prompt = Some(agent_system_prompt(
        &cfg,
        Some(&bm25),
        &ToolCallFormat::Prompted,
    ));
    let pool = Arc::new(pool(&host, &plugins));
    let model = igpo::model::load(&model_dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&model_dir).unwrap();
    let (trajs, _) = run_agent(
        &model,
        &tok,
        Some(pool),
        &cfg,
        &tasks(&host, &plugins, 2),
        1,
    )
    .unwrap();
    Some(trajs)
}

/// Every `search` call failed with `expect` in its result, at least one was
/// made, and each rollout with a failed call went on to another turn (which,
/// with `max_turns = 1`, ends it: an answer or a cut).
fn check_failed_searches(trajs: &[Trajectory], expect: &str) {
    let mut failed = 0;
    for t in trajs {
        check_well_formed(t);
        for (i, m) in t.turns.iter().enumerate() {
            if m.tool.as_deref() != Some("search") {
                continue;
            }
            failed += 1;
            assert!(m.tool_error, "{}: turn {i} must be a tool error", t.id);
            let r = m.result.as_deref().unwrap_or("");
            assert!(r.contains(expect), "{}: turn {i} result {r:?}", t.id);
            // The rollout continued after the error: the next turn exists.
            assert!(
                t.turns.len() > i + 1,
                "{}: the rollout must go on after a failed call: {:?}",
                t.id,
                t.turns
            );
            assert!(
                t.text.contains(expect),
                "{}: the model reads the error",
                t.id
            );
        }
    }
    assert!(
        failed >= 1,
        "the tool-SFT model must call `search`: {trajs:?}"
    );
}

#[test]
fn tool_sft_search_on_a_pool_without_it_is_an_unknown_tool_turn() {
    let Some(trajs) = run_with_pool(
        "tool_sft_search_on_a_pool_without_it_is_an_unknown_tool_turn",
        |host, plugins| {
            ToolPool::load(host, &[PluginSpec::new(plugins.join("echo-tool.wasm"))]).unwrap()
        },
    ) else {
        return;
    };
    check_failed_searches(
        &trajs,
        "Error: there is no tool named `search` (available: echo)",
    );
}

#[test]
fn tool_sft_search_rejected_by_a_hostile_plugin_is_a_tool_error_turn() {
    // The hostile plugin, named `search`, under a short deadline: the model's
    // `{"query": ..}` has no `mode`, so every call is rejected (by the host,
    // which checks the arguments against the tool's schema).
    let Some(trajs) = run_with_pool(
        "tool_sft_search_rejected_by_a_hostile_plugin_is_a_tool_error_turn",
        |host, plugins| {
            let limits = SandboxLimits {
                call_timeout: Duration::from_millis(200),
                ..SandboxLimits::default()
            };
            ToolPool::load(
                host,
                &[PluginSpec::new(plugins.join("hostile-tool.wasm"))
                    .name("search")
                    .limits(limits)],
            )
            .unwrap()
        },
    ) else {
        return;
    };
    // (refused by the host against hostile's parameters_schema)
    check_failed_searches(
        &trajs,
        r#"Error: invalid arguments: "mode" is a required property"#,
    );
}

// ------------------------------------------- the tool step, one turn at a time

/// echo-tool as `echo` and hostile-tool as `hostile` (300 ms per call, 64 MiB).
fn echo_and_hostile(plugins: &Path) -> ToolPool {
    let host = plugins_support::host(plugins);
    let limits = SandboxLimits {
        call_timeout: Duration::from_millis(300),
        memory_bytes: 64 << 20,
        instances: 1,
        ..SandboxLimits::default()
    };
    ToolPool::load(
        &host,
        &[
            PluginSpec::new(plugins.join("echo-tool.wasm")),
            PluginSpec::new(plugins.join("hostile-tool.wasm")).limits(limits),
        ],
    )
    .unwrap()
}

/// A turn as the model would write it: a thought, then `call`.
fn turn(call: &str) -> String {
    format!("<think>Let me look this up.</think>\n<tool_call>\n{call}\n</tool_call>")
}

/// The tool step of `text` (parsed as the loop parses it).
fn step(pool: Option<&ToolPool>, text: &str) -> TurnMeta {
    let action = parse_turn(Protocol::ToolCall, text, "search");
    tool_turn(pool, text.to_string(), &action).expect("a tool turn")
}

/// A failed tool turn: counted, flagged, and its result says `says`.
fn assert_failed(m: &TurnMeta, says: &str) {
    assert!(m.tool_error, "{m:?}");
    assert!(m.used_tool_turn(), "a failed call still uses a turn: {m:?}");
    let r = m.result.as_deref().expect("an error is the tool result");
    assert!(r.contains(says), "result {r:?} must say {says:?}");
}

fn hostile_call(mode: &str) -> String {
    turn(&format!(
        r#"{{"name": "hostile", "arguments": {{"mode": "{mode}"}}}}"#
    ))
}

#[test]
fn tool_turn_runs_the_call_and_records_it() {
    let Some(plugins) = plugins_support::plugin_dir("tool_turn_runs_the_call_and_records_it")
    else {
        return;
    };
    let pool = echo_and_hostile(&plugins);
    let text = turn(r#"{"name": "echo", "arguments": {"q": "héllo"}}"#);
    let m = step(Some(&pool), &text);
    assert_eq!(m.text, text);
    assert_eq!(m.tool.as_deref(), Some("echo"));
    assert_eq!(m.arguments, Some(serde_json::json!({"q": "héllo"})));
    assert_eq!(m.result.as_deref(), Some(r#"{"q":"héllo"}"#));
    assert!(!m.tool_error && m.used_tool_turn());
    // Answers and plain text ask nothing of the tools.
    for text in ["<answer>Paris</answer>", "I think it is Paris."] {
        let action = parse_turn(Protocol::ToolCall, text, "search");
        assert!(matches!(
            action,
            TurnAction::Answer(_) | TurnAction::Nothing
        ));
        assert_eq!(tool_turn(Some(&pool), text.into(), &action), None);
    }
}

#[test]
fn tool_turn_errors_become_tool_results_that_say_so() {
    let Some(plugins) =
        plugins_support::plugin_dir("tool_turn_errors_become_tool_results_that_say_so")
    else {
        return;
    };
    let pool = echo_and_hostile(&plugins);

    // Malformed call: no plugin runs; the parse error is the result.
    for bad in [
        turn(r#"{"name": "echo", "arguments": {"q": }"#),
        turn(r#"{"arguments": {"q": 1}}"#),
        "<tool_call>{\"name\": \"echo\"".to_string(),
    ] {
        let m = step(Some(&pool), &bad);
        assert_failed(&m, "error: ");
        assert_eq!(m.tool, None, "{m:?}");
        assert_eq!(m.latency_ms, 0.0);
    }

    // Unknown tool: the message names the tools there are.
    let m = step(
        Some(&pool),
        &turn(r#"{"name": "search", "arguments": {"query": "x"}}"#),
    );
    assert_failed(
        &m,
        "Error: there is no tool named `search` (available: echo, hostile)",
    );
    assert_eq!(m.tool.as_deref(), Some("search"));
    assert_eq!(m.arguments, Some(serde_json::json!({"query": "x"})));

    // No tools at all.
    let m = step(
        None,
        &turn(r#"{"name": "search", "arguments": {"query": "x"}}"#),
    );
    assert_failed(&m, "Error: no tools are available");

    // The plugin returns an error: bad arguments, or a failure of its own.
    let m = step(Some(&pool), &hostile_call("nope"));
    assert_failed(&m, "Error: invalid arguments: unknown mode `nope`");
    let m = step(
        Some(&pool),
        &turn(r#"{"name": "hostile", "arguments": {"mode": "read", "path": "/etc/passwd"}}"#),
    );
    assert_failed(&m, "Error: read /etc/passwd: ");

    // A trap (the guest panics) and a memory blow-up: the tool crashed.
    let m = step(Some(&pool), &hostile_call("panic"));
    assert_failed(&m, "Error: the tool crashed");
    let m = step(Some(&pool), &hostile_call("bomb"));
    assert_failed(&m, "Error: the tool crashed");

    // A call that never returns is stopped at the deadline.
    let m = step(Some(&pool), &hostile_call("loop"));
    assert_failed(&m, "Error: the tool timed out after 300 ms");
    assert!(
        (300.0..5000.0).contains(&m.latency_ms),
        "stopped after {} ms",
        m.latency_ms
    );

    // After all that, the same pool still serves calls.
    let m = step(Some(&pool), &hostile_call("echo"));
    assert!(!m.tool_error, "{m:?}");
    assert_eq!(m.result.as_deref(), Some(r#"{"mode":"echo"}"#));
}
