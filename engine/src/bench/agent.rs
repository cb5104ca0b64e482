//! The agent loop under load (`igpo bench agent`): many concurrent rollouts
//! on any model (random weights will do), each of which calls a tool once,
//! so what a step of RL generation costs is measured whole: decoding,
//! prompt prefills (shared or not), tool-result splices and the time the
//! decoder idles while tools run.
//!
//! A random model never writes a tool call, so every rollout's first turn
//! is forced to be one (`run_agent_forced`): the call's tokens are fed as if
//! sampled, the real tool runs on the plugin pool, its result is spliced in
//! through the chat template and sampling goes on for one more turn.

use std::sync::Arc;

use serde::Serialize;

use crate::backend::Backend;
use crate::model::Model;
use crate::plugins::ToolPool;
use crate::rollout::agent::run_agent_forced;
use crate::rollout::{AgentConfig, RolloutError, Task};
use crate::tokenizer::Tokenizer;

/// What to run.
#[derive(Clone, Debug)]
pub struct AgentBenchSpec {
    /// Concurrent rollouts.
    pub rollouts: usize,
    /// Rollouts per question (they share the prompt's prefill when
    /// `share_prompt_prefixes`).
    pub group_size: usize,
    /// Sampled tokens of the turn after the tool result.
    pub max_new_tokens_per_turn: usize,
    pub share_prompt_prefixes: bool,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentBenchResult {
    pub engine: String,
    pub backend: String,
    pub tool: String,
    pub rollouts: usize,
    pub group_size: usize,
    pub share_prompt_prefixes: bool,
    /// Tokens the model sampled (the forced calls not counted).
    pub generated_tokens: usize,
    pub forced_tokens: usize,
    pub wall_s: f64,
    pub generated_tokens_per_s: f64,
    pub tool_calls: usize,
    /// Share of the wall time the decoder had no rollout to run because
    /// every live one waited on its tool.
    pub waiting_on_tools_share: f64,
    pub prompt_tokens: usize,
    pub prefilled_prompt_tokens: usize,
}

/// Runs `spec.rollouts` rollouts of `spec.rollouts / group_size` distinct
/// questions; each first turn calls the pool's first tool.
pub fn agent_bench<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    tools: Arc<ToolPool>,
    spec: &AgentBenchSpec,
) -> Result<AgentBenchResult, RolloutError> {
    let tool = tools
        .infos()
        .first()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let g = spec.group_size.max(1);
    let tasks: Vec<Task> = (0..spec.rollouts)
        .map(|i| Task {
            id: format!("q{}-{}", i / g, i % g),
            question: format!(
                "Question {}: which river flows through the capital of country number {}?",
                i / g,
                i / g
            ),
            answers: vec![],
        })
        .collect();
    let call = tok
        .chat
        .tool_call_format()
        .call_text(&tool, &serde_json::json!({ "query": "capital river" }));
    let forced_call = tok.encode(&call)?;
    let forced = vec![forced_call.clone(); tasks.len()];
    let cfg = AgentConfig {
        max_turns: 1,
        max_new_tokens_per_turn: spec.max_new_tokens_per_turn.max(forced_call.len()),
        max_new_tokens_per_rollout: forced_call.len() + spec.max_new_tokens_per_turn,
        temperature: 1.0,
        share_prompt_prefixes: spec.share_prompt_prefixes,
        ..AgentConfig::default()
    };
    let (_trajs, stats) =
        run_agent_forced(model, tok, Some(tools), &cfg, &tasks, spec.seed, &forced)?;
    let forced_tokens = forced_call.len() * tasks.len();
    let generated = stats.generated_tokens.saturating_sub(forced_tokens);
    Ok(AgentBenchResult {
        engine: "igpo".into(),
        backend: model.backend().name(),
        tool,
        rollouts: spec.rollouts,
        group_size: g,
        share_prompt_prefixes: spec.share_prompt_prefixes,
        generated_tokens: generated,
        forced_tokens,
        wall_s: stats.wall_s,
        generated_tokens_per_s: generated as f64 / stats.wall_s.max(1e-9),
        tool_calls: stats.tool_calls,
        waiting_on_tools_share: stats.waiting_on_tools_s / stats.wall_s.max(1e-9),
        prompt_tokens: stats.prompt_tokens,
        prefilled_prompt_tokens: stats.prefilled_prompt_tokens,
    })
}
