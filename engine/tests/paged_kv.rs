//! Agent rollouts on the paged KV cache with shared prompt prefixes give
//! the same trajectories as the per-sequence caches did before it.
//!
//! A tiny random Qwen2 (`igpo model init`, the real Qwen2.5 tokenizer) runs
//! G = 3 sampled rollouts of each of 2 questions; every first turn is a
//! forced tool call (`run_agent_forced`), which fails without a tool pool,
//! so a tool-result turn is appended to each rollout's cache and decoding
//! goes on after it. The test checks:
//! - every token, sample log-probability (its bits), segment and turn of
//!   every trajectory hashes to the fingerprint recorded with the
//!   per-sequence caches (commit 2ca2d5a, before the paged cache);
//! - the same rollouts run alone (G = 1) equal their copies in the group;
//! - each distinct prompt is prefilled once: the prompt tokens the decoder
//!   ran equal the sum of the distinct prompts' lengths, not G times it.

use crate::common;

use std::path::PathBuf;

use igpo::backend::Cpu;
use igpo::rollout::agent::run_agent_forced;
use igpo::rollout::{AgentConfig, Task, Trajectory};
use igpo::tokenizer::Tokenizer;

/// The fingerprint of [`rollouts`]' trajectories with the per-sequence
/// caches of commit 2ca2d5a.
const BEFORE_PAGING: u64 = 0x7d280bd32dfac5ea;

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// FNV-1a over every number and string of the trajectories.
fn fingerprint(trajs: &[Trajectory]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for t in trajs {
        eat(t.id.as_bytes());
        t.tokens.iter().for_each(|x| eat(&x.to_le_bytes()));
        t.sample_logprobs
            .iter()
            .for_each(|x| eat(&x.to_bits().to_le_bytes()));
        eat(&t.loss_mask);
        eat(serde_json::to_string(&t.segments).unwrap().as_bytes());
        for m in &t.turns {
            eat(m.text.as_bytes());
            eat(m.result.as_deref().unwrap_or("").as_bytes());
            eat(&[m.tool_error as u8]);
        }
        eat(t.text.as_bytes());
    }
    h
}

#[test]
fn shared_prefix_rollouts_with_tool_turns_equal_the_per_sequence_caches() {
    let dir = scratch("paged_kv_agent");
    common::init_tiny_model(&dir, &["--seed", "3"]);
    let model = igpo::model::load(&dir, Cpu).unwrap();
    let tok = Tokenizer::load_dir(&dir).unwrap();
    let cfg = AgentConfig {
        max_turns: 2,
        max_new_tokens_per_turn: 12,
        max_new_tokens_per_rollout: 40,
        temperature: 1.0,
        ..AgentConfig::default()
    };
    let questions = ["Which city is the Eiffel Tower in?", "Who wrote the novel?"];
    let g = 3;
    let tasks: Vec<Task> = questions
        .iter()
        .enumerate()
        .flat_map(|(q, text)| {
            (0..g).map(move |r| Task {
                id: format!("q{q}-{r}"),
                question: text.to_string(),
                answers: vec!["x".into()],
            })
        })
        .collect();
    let call = tok
        .encode("<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"tower\"}}\n</tool_call>")
        .unwrap();
    let forced = vec![call; tasks.len()];
    let (trajs, stats) = run_agent_forced(&model, &tok, None, &cfg, &tasks, 11, &forced).unwrap();
    let got = fingerprint(&trajs);
    eprintln!("fingerprint {got:#018x}, stats {stats:?}");
    assert!(
        trajs
            .iter()
            .all(|t| t.turns.first().is_some_and(|m| m.tool_error)),
        "every first turn is a failed tool call whose result was appended"
    );
    assert_eq!(
        got, BEFORE_PAGING,
        "the trajectories differ from the per-sequence caches'"
    );
    // Rollout 4 (question 1, copy 1) alone, seeded as in the batch.
    let (alone, _) = run_agent_forced(
        &model,
        &tok,
        None,
        &cfg,
        &tasks[4..5],
        11 + 4,
        &forced[4..5],
    )
    .unwrap();
    assert_eq!(alone[0], trajs[4]);
    // Each of the 2 distinct prompts ran once; G = 3 rollouts each.
    let prompt_len = |t: &Trajectory| t.segments[0].end;
    assert_eq!(
        stats.prompt_tokens,
        trajs.iter().map(prompt_len).sum::<usize>()
    );
    assert_eq!(
        stats.prefilled_prompt_tokens,
        prompt_len(&trajs[0]) + prompt_len(&trajs[3]),
        "each distinct prompt is prefilled once"
    );
    assert_eq!(stats.prompt_tokens, g * stats.prefilled_prompt_tokens);
    // Without sharing every prompt runs, and the rollouts are the same.
    let unshared = AgentConfig {
        share_prompt_prefixes: false,
        ..cfg
    };
    let (trajs2, stats2) =
        run_agent_forced(&model, &tok, None, &unshared, &tasks, 11, &forced).unwrap();
    assert_eq!(stats2.prefilled_prompt_tokens, stats.prompt_tokens);
    assert_eq!(fingerprint(&trajs2), BEFORE_PAGING);
}
