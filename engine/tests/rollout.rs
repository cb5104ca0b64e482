//! The agent loop with the real SmolLM2-135M-Instruct and the real
//! bm25-search plugin over SQuAD: trajectories are well formed, tool results
//! are the plugin's own output, and a seed reproduces them exactly.

mod common;
mod plugins_support;

use std::sync::Arc;

use igpo::backend::Cpu;
use igpo::plugins::{DatasetPlugin, PluginSpec, ToolPool};
use igpo::rollout::{run_agent, AgentConfig, SpanKind, Task, Trajectory};
use igpo::tokenizer::Tokenizer;

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
    assert!(
        t.final_answer.is_none() || !t.truncated,
        "{}: an answered rollout is not truncated",
        t.id
    );
}

#[test]
fn smollm2_rollouts_with_bm25_are_well_formed_and_reproducible() {
    let Some(model_dir) = common::smollm2_dir("smollm2_rollouts_with_bm25") else {
        return;
    };
    let Some(plugins) = plugins_support::plugin_dir("smollm2_rollouts_with_bm25") else {
        return;
    };
    let host = plugins_support::host(&plugins);
    let data = common::shared_data();
    let corpus = plugins_support::scratch("rollout-corpus");
    let passages = igpo::data::build_corpus(
        Some(&data.join("squad-dev-v1.1.json")),
        Some(&data.join("wiki-summaries-en.json")),
    )
    .unwrap();
    igpo::data::write_jsonl(&corpus.join("corpus.jsonl"), &passages).unwrap();
    let tools = ToolPool::load(
        &host,
        &[PluginSpec {
            path: plugins.join("bm25-search.wasm"),
            name: None,
            config: serde_json::json!({"k": 2, "max_chars": 300}),
            readonly_dir: Some(corpus.clone()),
            limits: Default::default(),
        }],
    )
    .unwrap();
    let tools = Arc::new(tools);
    let ds = DatasetPlugin::load(
        &host,
        &PluginSpec {
            path: plugins.join("qa-dataset.wasm"),
            name: None,
            config: serde_json::json!({"file": "squad-dev-v1.1.json", "shuffle": true, "seed": 11, "limit": 6}),
            readonly_dir: Some(data.clone()),
            limits: Default::default(),
        },
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
    assert_eq!(tasks.len(), 6);
    let model = igpo::model::load(&model_dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&model_dir).unwrap();
    let cfg = AgentConfig {
        max_turns: 2,
        max_new_tokens_per_turn: 48,
        max_new_tokens_per_rollout: 120,
        max_tool_result_tokens: 160,
        temperature: 0.8,
        ..AgentConfig::default()
    };
    let (a, stats) = run_agent(&model, &tok, Some(tools.clone()), &cfg, &tasks, 5).unwrap();
    let (b, _) = run_agent(&model, &tok, Some(tools.clone()), &cfg, &tasks, 5).unwrap();
    // Tool latency is wall-clock; everything else must repeat exactly.
    let timeless = |v: &[Trajectory]| {
        let mut v = v.to_vec();
        v.iter_mut()
            .flat_map(|t| t.turns.iter_mut())
            .for_each(|m| m.latency_ms = 0.0);
        v
    };
    assert!(
        timeless(&a) == timeless(&b),
        "the same seed must give the same trajectories"
    );
    let mut calls = 0;
    for t in &a {
        check_well_formed(t);
        for m in &t.turns {
            if let (Some(tool), Some(args), Some(result), false) =
                (&m.tool, &m.arguments, &m.result, m.tool_error)
            {
                calls += 1;
                let direct = tools.call(tool, &args.to_string()).unwrap();
                let shown = result.split("\n[... truncated").next().unwrap();
                assert!(
                    direct.starts_with(shown.trim_end()),
                    "tool result must be the plugin's output:\n{shown}\nvs\n{direct}"
                );
            }
        }
    }
    eprintln!(
        "{} rollouts, {} tokens, {} tool calls ({} succeeded), {} answered, {:.1} tok/s",
        a.len(),
        stats.generated_tokens,
        stats.tool_calls,
        calls,
        a.iter().filter(|t| t.final_answer.is_some()).count(),
        stats.generated_tokens as f64 / stats.wall_s
    );
}
