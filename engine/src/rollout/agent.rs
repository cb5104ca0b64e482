//! The multi-turn agent loop: many rollouts decode together (continuous
//! batching); a rollout that calls a tool leaves the batch while its call
//! runs on the plugin pool and rejoins with the result's tokens spliced in.
//!
//! Token in, token out: the trajectory is the exact sampled ids plus the
//! engine-made ids (prompt, tool results), never re-tokenized.
//!
//! Keys and values live in one paged cache ([`crate::kv`]) for the whole
//! batch: the rollouts of one prompt share its prefilled blocks
//! ([`super::prefix`]), a tool result is appended to the rollout's own
//! blocks, and a finished rollout's blocks are freed for the others.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::decode::next_tokens;
use super::generate::stop_tokens;
use super::prefix::{prefill_prompts, Prefilled};
use super::protocol::{
    parse_turn_in, search_result_text, stop_at_in, system_prompt, Protocol, ToolCallFormat,
    ToolSpec, TurnAction, TurnFormat,
};
use super::sampler::{uniform_for, SamplingParams};
use crate::backend::Backend;
use crate::kv::{KvConfig, KvError, SeqId};
use crate::model::{Model, PagedStep};
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
    /// Rollouts with the same prompt (the G of a group) prefill it once and
    /// share its cached keys and values; `false` prefills every rollout's
    /// prompt on its own (same tokens; for measuring what sharing saves).
    pub share_prompt_prefixes: bool,
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
            share_prompt_prefixes: true,
        }
    }
}

/// Why a batch of rollouts stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Chat(#[from] crate::tokenizer::ChatError),
    #[error(transparent)]
    Kv(#[from] KvError),
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
/// if set, else the protocol's prompt (presenting the tools unless the chat
/// template does, see [`system_prompt`]). SFT transcripts that teach the
/// protocol must start with the same text.
pub fn agent_system_prompt(
    cfg: &AgentConfig,
    pool: Option<&ToolPool>,
    format: &ToolCallFormat,
) -> String {
    cfg.system_prompt.clone().unwrap_or_else(|| {
        let specs = pool.map(tool_specs).unwrap_or_default();
        system_prompt(cfg.protocol, format, &specs)
    })
}

/// The tools the chat template is given: the pool's, when the protocol
/// calls tools and the template presents them itself.
fn template_tools(
    tok: &Tokenizer,
    protocol: Protocol,
    pool: Option<&ToolPool>,
) -> Option<Vec<ToolSpec>> {
    (protocol == Protocol::ToolCall && tok.chat.takes_tools())
        .then(|| pool.map(tool_specs).unwrap_or_default())
}

/// The first messages of a rollout: the system prompt and the question.
pub fn opening_messages(system: &str, question: &str) -> Vec<Message> {
    vec![
        Message::new("system", system),
        Message::new("user", question),
    ]
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
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct RolloutStats {
    pub generated_tokens: usize,
    pub wall_s: f64,
    /// Time the decoder sat idle because every live rollout waited on a tool.
    pub waiting_on_tools_s: f64,
    pub tool_calls: usize,
    /// Prompt tokens of every rollout together.
    pub prompt_tokens: usize,
    /// Prompt tokens the decoder ran: a prompt shared by several rollouts
    /// counts once (see [`AgentConfig::share_prompt_prefixes`]).
    pub prefilled_prompt_tokens: usize,
}

impl RolloutStats {
    /// Adds the counts of another batch.
    pub fn add(&mut self, o: &RolloutStats) {
        self.generated_tokens += o.generated_tokens;
        self.wall_s += o.wall_s;
        self.waiting_on_tools_s += o.waiting_on_tools_s;
        self.tool_calls += o.tool_calls;
        self.prompt_tokens += o.prompt_tokens;
        self.prefilled_prompt_tokens += o.prefilled_prompt_tokens;
    }
}

struct Live {
    traj: Trajectory,
    /// The conversation as the chat template sees it (generated turns as
    /// stand-ins): what the tool-result splices are rendered against.
    history: Vec<Message>,
    /// The rollout's sequence in the batch's paged cache.
    seq: SeqId,
    rng: Rng,
    /// Tokens to feed at the next forward (tool result, or the last sample).
    pending: Vec<u32>,
    turn_tokens: Vec<u32>,
    /// Tokens still to be written instead of samples (see [`run_agent_forced`]).
    forced: std::collections::VecDeque<u32>,
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
) -> Result<(Vec<Trajectory>, RolloutStats), RolloutError> {
    run_agent_forced(model, tok, tools, cfg, tasks, seed, &[])
}

/// [`run_agent`] where rollout `i` writes `forced[i]` (when given) at the
/// start of its first turn instead of sampling: the model reads those
/// tokens as if it had drawn them (sample log-prob 0), the stop check and
/// the parser see them, and sampling takes over after them. Tests use it to
/// make a random model "write" a tool call.
pub fn run_agent_forced<B: Backend>(
    model: &Model<B>,
    tok: &Tokenizer,
    tools: Option<Arc<ToolPool>>,
    cfg: &AgentConfig,
    tasks: &[Task],
    seed: u64,
    forced: &[Vec<u32>],
) -> Result<(Vec<Trajectory>, RolloutStats), RolloutError> {
    let start = Instant::now();
    if tasks.is_empty() {
        return Ok((vec![], RolloutStats::default()));
    }
    let search_tool = tools
        .as_ref()
        .and_then(|p| p.infos().first().map(|i| i.name.clone()))
        .unwrap_or_else(|| "search".into());
    let format = TurnFormat::new(cfg.protocol, tok.chat.tool_call_format().clone());
    let system = agent_system_prompt(cfg, tools.as_deref(), &format.calls);
    let specs = template_tools(tok, cfg.protocol, tools.as_deref());
    let eos = stop_tokens(model, tok);
    // A Llama JSON call completes at a `}`, a tag at a `>`.
    let stop_chars: &[char] = match format.calls {
        ToolCallFormat::LlamaJson { .. } => &['>', '}'],
        _ => &['>'],
    };
    let sampling = SamplingParams {
        temperature: cfg.temperature,
        top_k: cfg.top_k,
        top_p: cfg.top_p,
    };
    let mut histories = Vec::with_capacity(tasks.len());
    let mut prompts = Vec::with_capacity(tasks.len());
    for t in tasks {
        let history = opening_messages(&system, &t.question);
        prompts.push(tok.encode(&tok.chat.render(&history, specs.as_deref(), true)?)?);
        histories.push(history);
    }
    let mut kv = model.new_kv(kv_config(&prompts, cfg));
    let Prefilled {
        seqs,
        logits,
        prefilled_tokens,
    } = {
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        prefill_prompts(model, &mut kv, &refs, cfg.share_prompt_prefixes)?
    };
    // The prefill's logits give every rollout its first token.
    let mut prefill_logits = Some(logits);
    let mut stats = RolloutStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        prefilled_prompt_tokens: prefilled_tokens,
        ..RolloutStats::default()
    };
    let mut live: Vec<Live> = Vec::with_capacity(tasks.len());
    for (i, ((t, history), prompt)) in tasks.iter().zip(histories).zip(prompts).enumerate() {
        live.push(Live {
            history,
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
            seq: seqs[i],
            rng: Rng::new(seed.wrapping_add(i as u64)),
            turn_start: prompt.len(),
            pending: vec![],
            turn_tokens: vec![],
            forced: forced.get(i).cloned().unwrap_or_default().into(),
            generated: 0,
            state: State::Decoding,
        });
    }
    let (tx, rx) = mpsc::channel::<(usize, TurnMeta)>();
    loop {
        // Tool results that arrived rejoin the batch.
        while let Ok((i, meta)) = rx.try_recv() {
            splice_result(&mut live[i], tok, cfg, specs.as_deref(), meta)?;
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
            splice_result(&mut live[i], tok, cfg, specs.as_deref(), meta)?;
            continue;
        }
        // Rollout `i` draws from its own RNG stream.
        let uniforms: Vec<f64> = active
            .iter()
            .map(|&i| uniform_for(&sampling, &mut live[i].rng))
            .collect();
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| std::mem::take(&mut live[i].pending))
            .collect();
        let steps: Vec<PagedStep<'_>> = active
            .iter()
            .zip(&inputs)
            .map(|(&i, t)| PagedStep {
                tokens: t,
                seq: live[i].seq,
            })
            .collect();
        // After the prefill every rollout is decoding, in order: row i of
        // its logits is rollout i's.
        let sampled = next_tokens(
            model,
            &mut kv,
            &mut prefill_logits,
            &steps,
            &sampling,
            &uniforms,
        )?;
        for (&i, s) in active.iter().zip(sampled) {
            let l = &mut live[i];
            let (id, logprob) = match l.forced.pop_front() {
                Some(f) => (f, 0.0),
                None => (s.id, s.logprob),
            };
            l.traj.tokens.push(id);
            l.traj.loss_mask.push(1);
            l.traj.sample_logprobs.push(logprob);
            l.turn_tokens.push(id);
            l.generated += 1;
            stats.generated_tokens += 1;
            let ended_by_token = eos.contains(&id);
            // Every stop tag ends with '>' (a JSON call with '}'): only then
            // is the turn text decoded and checked (decoding it after every
            // token would be quadratic).
            let stop = tok.decode(&[id], false)?.contains(stop_chars)
                && stop_at_in(&format, &tok.decode(&l.turn_tokens, false)?).is_some();
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
            let action = parse_turn_in(&format, &turn_text, &search_tool);
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
                kv.free(l.seq)?;
            }
        }
    }
    stats.wall_s = start.elapsed().as_secs_f64();
    Ok((live.into_iter().map(|l| l.traj).collect(), stats))
}

/// The batch's cache: room for every distinct prompt and a turn of every
/// rollout up front; it grows (doubling) when rollouts go on longer.
fn kv_config(prompts: &[Vec<u32>], cfg: &AgentConfig) -> KvConfig {
    let block_size = KvConfig::default().block_size;
    let mut distinct: Vec<&Vec<u32>> = prompts.iter().collect();
    distinct.sort();
    distinct.dedup();
    let prompt_blocks: usize = distinct.iter().map(|p| p.len().div_ceil(block_size)).sum();
    let turn_blocks = prompts.len() * (cfg.max_new_tokens_per_turn.div_ceil(block_size) + 1);
    KvConfig {
        block_size,
        initial_blocks: prompt_blocks + turn_blocks,
        max_blocks: usize::MAX,
    }
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

/// The engine-made text spliced in after a tool-calling turn whose last
/// token is `last`. SearchTags: the result inside the same turn. ToolCall:
/// the chat template's turn end (without its closing token when the model
/// wrote it), then the result's message and the next generation prompt as
/// the template renders them after `history`; `history` gains the turn (as
/// a stand-in) and the result's message.
pub fn tool_splice(
    tok: &Tokenizer,
    protocol: Protocol,
    history: &mut Vec<Message>,
    tools: Option<&[ToolSpec]>,
    last: Option<u32>,
    body: &str,
) -> Result<String, TokenizerError> {
    if protocol == Protocol::SearchTags {
        return Ok(search_result_text(body));
    }
    let chat = &tok.chat;
    let last_text = last.and_then(|id| tok.id_token(id));
    let mut splice = chat.turn_end_after(last_text.as_deref())?;
    history.push(crate::tokenizer::ChatTemplate::stand_in_assistant());
    let result = chat.tool_result_message(body);
    splice.push_str(&chat.append(history, tools, &result, true)?);
    history.push(result);
    Ok(splice)
}

/// Appends a tool result (or error) as engine-made tokens, records the
/// turn's metadata (its result cut to `max_tool_result_tokens`) and puts the
/// rollout back into the batch.
fn splice_result(
    l: &mut Live,
    tok: &Tokenizer,
    cfg: &AgentConfig,
    tools: Option<&[ToolSpec]>,
    mut meta: TurnMeta,
) -> Result<(), TokenizerError> {
    let turn = l.traj.turns.len() - 1;
    let text = meta.result.take().unwrap_or_default();
    let body = fit_tool_result(tok, text, cfg.max_tool_result_tokens)?;
    meta.result = Some(body.clone());
    l.traj.turns[turn] = meta;
    let last = l.traj.tokens.last().copied();
    let ids = tok.encode(&tool_splice(
        tok,
        cfg.protocol,
        &mut l.history,
        tools,
        last,
        &body,
    )?)?;
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
