//! The multi-turn agent loop: many rollouts decode together (continuous
//! batching); a rollout that calls a tool leaves the batch while its call
//! runs on the plugin pool and rejoins with the result's tokens spliced in.
//!
//! Token in, token out: the trajectory is the exact sampled ids plus the
//! engine-made ids (prompt, tool results), never re-tokenized.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::protocol::{
    parse_turn, stop_at, system_prompt, tool_result_text, Protocol, ToolSpec, TurnAction,
};
use super::sampler::{draws, SamplingParams};
use crate::backend::Backend;
use crate::model::{KvCache, LogitRows, Model, SeqStep};
use crate::plugins::ToolPool;
use crate::rng::Rng;
use crate::tokenizer::{Message, Tokenizer, TokenizerError};

/// Agent settings (`[agent]` in a run file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub protocol: Protocol,
    /// Tool-calling turns allowed before the rollout is cut (the answer turn
    /// comes on top).
    pub max_turns: usize,
    pub max_new_tokens_per_turn: usize,
    pub max_new_tokens_per_rollout: usize,
    /// A tool result longer than this many tokens is cut with a marker.
    pub max_tool_result_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    /// Replaces the generated system prompt that presents the tools.
    pub system_prompt: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            protocol: Protocol::ToolCall,
            max_turns: 4,
            max_new_tokens_per_turn: 256,
            max_new_tokens_per_rollout: 1024,
            max_tool_result_tokens: 512,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            system_prompt: None,
        }
    }
}

/// One question for the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
}

/// What a span of the token sequence is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SpanKind {
    Prompt,
    /// Tokens the policy sampled in turn `turn` (0-based).
    Generated {
        turn: usize,
    },
    /// Engine-made tokens after turn `turn`: the tool result (and chat markup).
    ToolResult {
        turn: usize,
    },
}

/// A half-open range of token positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    #[serde(flatten)]
    pub kind: SpanKind,
    pub start: usize,
    pub end: usize,
}

/// Per-turn metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnMeta {
    pub text: String,
    pub tool: Option<String>,
    pub arguments: Option<serde_json::Value>,
    pub result: Option<String>,
    /// The call failed (malformed, unknown tool, plugin error or timeout).
    pub tool_error: bool,
    pub latency_ms: f64,
}

impl TurnMeta {
    /// A turn with no tool part (yet).
    pub fn new(text: String) -> TurnMeta {
        TurnMeta {
            text,
            tool: None,
            arguments: None,
            result: None,
            tool_error: false,
            latency_ms: 0.0,
        }
    }

    /// The turn used one of the `max_turns` tool turns: it called a tool or
    /// tried to (a malformed call counts too).
    pub fn used_tool_turn(&self) -> bool {
        self.tool.is_some() || self.tool_error
    }
}

/// The tool step of one finished turn, blocking: a [`TurnAction::ToolCall`]
/// runs on `pool` (no pool: every call fails), a [`TurnAction::Malformed`]
/// turn gets its parse error. Returns the turn's metadata with the tool's
/// full result text, or its error message with `tool_error` set, and the
/// call's wall time; `None` when the action asks nothing of the tools (an
/// answer, or plain text). Never panics on what a plugin does: traps,
/// timeouts and memory blow-ups come back as error messages.
///
/// The agent loop runs this on a thread per call and splices the result in
/// (cut to `max_tool_result_tokens`) when it arrives.
pub fn tool_turn(pool: Option<&ToolPool>, text: String, action: &TurnAction) -> Option<TurnMeta> {
    let mut meta = TurnMeta::new(text);
    let result = match action {
        TurnAction::ToolCall { name, arguments } => {
            meta.tool = Some(name.clone());
            meta.arguments = Some(arguments.clone());
            let t0 = Instant::now();
            let r = match pool {
                Some(p) => p
                    .call(name, &arguments.to_string())
                    .map_err(|e| e.agent_message()),
                None => Err("Error: no tools are available".to_string()),
            };
            meta.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
            r
        }
        TurnAction::Malformed(msg) => Err(msg.clone()),
        TurnAction::Answer(_) | TurnAction::Nothing => return None,
    };
    match result {
        Ok(r) => meta.result = Some(r),
        Err(e) => {
            meta.result = Some(e);
            meta.tool_error = true;
        }
    }
    Some(meta)
}

/// The tools as the system prompt presents them (sorted by name).
pub fn tool_specs(pool: &ToolPool) -> Vec<ToolSpec> {
    pool.infos()
        .into_iter()
        .map(|i| ToolSpec {
            name: i.name.clone(),
            description: i.plugin.description.clone(),
            parameters: serde_json::from_str(&i.parameters_schema)
                .unwrap_or(serde_json::Value::Null),
        })
        .collect()
}

/// The system prompt the agent starts every rollout with: `cfg.system_prompt`
/// if set, else the protocol's prompt presenting the tools. SFT transcripts
/// that teach the protocol must start with the same text.
pub fn agent_system_prompt(cfg: &AgentConfig, pool: Option<&ToolPool>) -> String {
    cfg.system_prompt.clone().unwrap_or_else(|| {
        let specs = pool.map(tool_specs).unwrap_or_default();
        system_prompt(cfg.protocol, &specs)
    })
}

/// One finished rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub tokens: Vec<u32>,
    pub segments: Vec<Segment>,
    /// 1 on sampled tokens, 0 on prompt and tool-result tokens.
    pub loss_mask: Vec<u8>,
    /// Log-probability of each sampled token under the sampling distribution
    /// at rollout time (0 on unsampled tokens).
    pub sample_logprobs: Vec<f32>,
    pub turns: Vec<TurnMeta>,
    pub final_answer: Option<String>,
    /// Ended by a token or turn limit, without an answer.
    pub truncated: bool,
    pub text: String,
}

/// Wall-clock accounting of one batch of rollouts.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RolloutStats {
    pub generated_tokens: usize,
    pub wall_s: f64,
    /// Time the decoder sat idle because every live rollout waited on a tool.
    pub waiting_on_tools_s: f64,
    pub tool_calls: usize,
}

struct Live<B: Backend> {
    traj: Trajectory,
    cache: KvCache<B>,
    rng: Rng,
    /// Tokens to feed at the next forward (prompt, tool result, or the last sample).
    pending: Vec<u32>,
    turn_tokens: Vec<u32>,
    turn_start: usize,
    generated: usize,
    state: State,
}

#[derive(PartialEq)]
enum State {
    Decoding,
    WaitingTool,
    Done,
}

/// Runs the agent on every task. Rollout `i` samples from its own RNG
/// stream (`seed`, `i`) and GEMM rows are batch-invariant, so its trajectory
/// does not depend on which others share the batch or on tool latency.
pub fn run_agent<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    tools: Option<Arc<ToolPool>>,
    cfg: &AgentConfig,
    tasks: &[Task],
    seed: u64,
) -> Result<(Vec<Trajectory>, RolloutStats), TokenizerError> {
    let start = Instant::now();
    let search_tool = tools
        .as_ref()
        .and_then(|p| p.infos().first().map(|i| i.name.clone()))
        .unwrap_or_else(|| "search".into());
    let system = agent_system_prompt(cfg, tools.as_deref());
    let mut eos = model.config.eos_token_ids.clone();
    eos.extend(tok.end_of_turn_ids());
    let sampling = SamplingParams {
        temperature: cfg.temperature,
        top_k: cfg.top_k,
        top_p: cfg.top_p,
    };
    let mut live: Vec<Live<B>> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        let prompt = tok.encode_chat(
            &[
                Message::new("system", &system),
                Message::new("user", &t.question),
            ],
            true,
        )?;
        live.push(Live {
            traj: Trajectory {
                id: t.id.clone(),
                question: t.question.clone(),
                answers: t.answers.clone(),
                tokens: prompt.clone(),
                segments: vec![Segment {
                    kind: SpanKind::Prompt,
                    start: 0,
                    end: prompt.len(),
                }],
                loss_mask: vec![0; prompt.len()],
                sample_logprobs: vec![0.0; prompt.len()],
                turns: vec![],
                final_answer: None,
                truncated: false,
                text: String::new(),
            },
            cache: model.new_cache(),
            rng: Rng::new(seed.wrapping_add(i as u64)),
            turn_start: prompt.len(),
            pending: prompt,
            turn_tokens: vec![],
            generated: 0,
            state: State::Decoding,
        });
    }
    let (tx, rx) = mpsc::channel::<(usize, TurnMeta)>();
    let mut stats = RolloutStats::default();
    let b = model.backend();
    loop {
        // Tool results that arrived rejoin the batch.
        while let Ok((i, meta)) = rx.try_recv() {
            splice_result(&mut live[i], tok, cfg, meta)?;
        }
        let active: Vec<usize> = (0..live.len())
            .filter(|&i| live[i].state == State::Decoding)
            .collect();
        if active.is_empty() {
            if live.iter().all(|l| l.state == State::Done) {
                break;
            }
            let idle = Instant::now();
            let Ok((i, meta)) = rx.recv() else {
                break;
            };
            stats.waiting_on_tools_s += idle.elapsed().as_secs_f64();
            splice_result(&mut live[i], tok, cfg, meta)?;
            continue;
        }
        // Sampled where the logits are: only ids and log-probabilities come
        // back from a GPU. Rollout `i` draws from its own RNG stream.
        let uniforms: Vec<f64> = active
            .iter()
            .map(|&i| {
                if draws(&sampling) {
                    live[i].rng.uniform()
                } else {
                    0.0
                }
            })
            .collect();
        let sampled = {
            let inputs: Vec<Vec<u32>> = active
                .iter()
                .map(|&i| std::mem::take(&mut live[i].pending))
                .collect();
            let mut caches: Vec<Option<&mut KvCache<B>>> =
                live.iter_mut().map(|l| Some(&mut l.cache)).collect();
            let mut steps: Vec<SeqStep<'_, B>> = active
                .iter()
                .zip(&inputs)
                .map(|(&i, t)| SeqStep {
                    tokens: t,
                    positions: None,
                    cache: caches[i].take().expect("once"),
                })
                .collect();
            b.sample_rows(
                &model.forward(&mut steps, LogitRows::Last),
                &sampling,
                &uniforms,
            )
        };
        for (&i, s) in active.iter().zip(sampled) {
            let l = &mut live[i];
            let id = s.id;
            l.traj.tokens.push(id);
            l.traj.loss_mask.push(1);
            l.traj.sample_logprobs.push(s.logprob);
            l.turn_tokens.push(id);
            l.generated += 1;
            stats.generated_tokens += 1;
            let ended_by_token = eos.contains(&id);
            // Every stop tag ends with '>': only then is the turn text decoded
            // and checked (decoding it after every token would be quadratic).
            let stop = tok.decode(&[id], false)?.contains('>')
                && stop_at(cfg.protocol, &tok.decode(&l.turn_tokens, false)?).is_some();
            let turn_full = l.turn_tokens.len() >= cfg.max_new_tokens_per_turn;
            let budget_gone = l.generated >= cfg.max_new_tokens_per_rollout;
            // The sampled token is fed at the next forward (after a tool
            // result, together with the result's tokens).
            l.pending = vec![id];
            if !(ended_by_token || stop || turn_full || budget_gone) {
                continue;
            }
            // The turn is over.
            let end = l.traj.tokens.len();
            let turn = l.traj.turns.len();
            l.traj.segments.push(Segment {
                kind: SpanKind::Generated { turn },
                start: l.turn_start,
                end,
            });
            let turn_text = tok.decode(&l.turn_tokens, true)?;
            l.turn_tokens.clear();
            let action = parse_turn(cfg.protocol, &turn_text, &search_tool);
            let tool_turns_used = l.traj.turns.iter().filter(|t| t.used_tool_turn()).count();
            match action {
                TurnAction::Answer(a) => {
                    l.traj.final_answer = Some(a);
                    l.state = State::Done;
                }
                _ if budget_gone || tool_turns_used >= cfg.max_turns => {
                    l.traj.truncated = true;
                    l.state = State::Done;
                }
                TurnAction::Nothing => {
                    // The model neither called a tool nor answered: the
                    // rollout ends without an answer.
                    l.traj.truncated = turn_full;
                    l.state = State::Done;
                }
                TurnAction::ToolCall { .. } | TurnAction::Malformed(_) => {
                    l.state = State::WaitingTool;
                    let tx = tx.clone();
                    if matches!(action, TurnAction::Malformed(_)) {
                        // No plugin runs: the parse error is the result.
                        if let Some(meta) = tool_turn(tools.as_deref(), turn_text.clone(), &action)
                        {
                            let _ = tx.send((i, meta));
                        }
                    } else {
                        stats.tool_calls += 1;
                        let pool = tools.clone();
                        let text = turn_text.clone();
                        std::thread::spawn(move || {
                            if let Some(meta) = tool_turn(pool.as_deref(), text, &action) {
                                let _ = tx.send((i, meta));
                            }
                        });
                    }
                }
            }
            // A tool turn's record is replaced by `tool_turn`'s when its
            // result is spliced in.
            l.traj.turns.push(TurnMeta::new(turn_text));
            if l.state == State::Done {
                l.traj.text = tok.decode(&l.traj.tokens, false)?;
            }
        }
    }
    stats.wall_s = start.elapsed().as_secs_f64();
    Ok((live.into_iter().map(|l| l.traj).collect(), stats))
}

/// A tool result as the model reads it: cut to `max_tokens` tokens with a
/// marker when longer.
pub fn fit_tool_result(
    tok: &Tokenizer,
    text: String,
    max_tokens: usize,
) -> Result<String, TokenizerError> {
    let mut body_ids = tok.encode(&text)?;
    if body_ids.len() <= max_tokens {
        return Ok(text);
    }
    let cut = body_ids.len() - max_tokens;
    body_ids.truncate(max_tokens);
    Ok(format!(
        "{}\n[... truncated {cut} tokens]",
        tok.decode(&body_ids, false)?
    ))
}

/// The engine-made text spliced in after a tool-calling turn. In the
/// tool_call protocol the assistant turn must be closed first unless the
/// model `closed` it itself with the end-of-turn token.
pub fn splice_text(protocol: Protocol, closed: bool, body: &str) -> String {
    let mut splice = String::new();
    if protocol == Protocol::ToolCall {
        splice.push_str(if closed { "\n" } else { "<|im_end|>\n" });
    }
    splice.push_str(&tool_result_text(protocol, body));
    splice
}

/// Appends a tool result (or error) as engine-made tokens, records the
/// turn's metadata (its result cut to `max_tool_result_tokens`) and puts the
/// rollout back into the batch.
fn splice_result<B: Backend>(
    l: &mut Live<B>,
    tok: &Tokenizer,
    cfg: &AgentConfig,
    mut meta: TurnMeta,
) -> Result<(), TokenizerError> {
    let turn = l.traj.turns.len() - 1;
    let text = meta.result.take().unwrap_or_default();
    let body = fit_tool_result(tok, text, cfg.max_tool_result_tokens)?;
    meta.result = Some(body.clone());
    l.traj.turns[turn] = meta;
    let closed = l
        .traj
        .tokens
        .last()
        .is_some_and(|&t| Some(t) == tok.token_id("<|im_end|>"));
    let ids = tok.encode(&splice_text(cfg.protocol, closed, &body))?;
    let start = l.traj.tokens.len();
    l.traj.tokens.extend(&ids);
    l.traj.loss_mask.extend(std::iter::repeat_n(0, ids.len()));
    l.traj
        .sample_logprobs
        .extend(std::iter::repeat_n(0.0, ids.len()));
    l.traj.segments.push(Segment {
        kind: SpanKind::ToolResult { turn },
        start,
        end: l.traj.tokens.len(),
    });
    l.turn_start = l.traj.tokens.len();
    l.pending.extend(ids);
    l.state = State::Decoding;
    Ok(())
}
