//! Writing a synthetic world's files (see the module doc of `synth`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::demos::{demonstrate, search_arguments, styles, Demo, Style};
use super::{generate_world, Question, SynthConfig, SynthError, World};
use crate::data::{write_jsonl, DataError};
use crate::rng::Rng;
use crate::rollout::agent::fit_tool_result;
use crate::rollout::protocol::Protocol;
use crate::tokenizer::{train_bpe, Tokenizer};

/// What `write_synth` made.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub config: SynthConfig,
    pub entities: usize,
    pub passages: usize,
    pub train_questions: usize,
    pub dev_questions: usize,
    pub two_hop_train: usize,
    pub two_hop_dev: usize,
    pub demonstrations: usize,
    pub full_demonstrations: usize,
    pub stops_early_demonstrations: usize,
    pub no_search_demonstrations: usize,
    /// Train questions left without a demonstration (a hop's gold passage
    /// was not in the search results).
    pub skipped_unretrieved: usize,
    /// Share of hops (train and dev, canonical queries) whose gold passage
    /// the search tool returns.
    pub hop_retrieval_rate: f64,
    pub vocab_size: usize,
    /// Share of entity names that are one token (after a space).
    pub single_token_names: f64,
    /// Mean tokens of a demonstration.
    pub mean_demo_tokens: f64,
    pub max_demo_tokens: usize,
}

/// How demonstrations meet the agent: its system prompt, the tool's name,
/// the cap on a tool result's tokens, and the search call itself.
pub struct AgentSide<'a> {
    pub system_prompt: &'a str,
    pub tool_name: &'a str,
    pub max_tool_result_tokens: usize,
    pub protocol: Protocol,
    pub search: &'a mut dyn FnMut(&str) -> Result<String, String>,
}

/// Writes the corpus first (`write_corpus`), then everything else with the
/// real search results: the caller loads the search tool over the corpus
/// between the two calls.
pub fn write_corpus(out: &Path, world: &World) -> Result<PathBuf, SynthError> {
    let path = out.join("corpus.jsonl");
    write_jsonl(&path, &world.passages())?;
    Ok(path)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| {
        SynthError::Data(DataError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn question_line(q: &Question) -> Value {
    json!({
        "id": q.id,
        "question": q.question,
        "golden_answers": [q.answer],
        "hops": q.hops.len(),
        "gold_passages": q.hops.iter().map(|h| h.passage.clone()).collect::<Vec<_>>(),
    })
}

fn write_lines(path: &Path, lines: impl Iterator<Item = Value>) -> Result<(), SynthError> {
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&l.to_string());
        buf.push('\n');
    }
    crate::fsutil::write_atomic(path, buf.as_bytes()).map_err(io_err(path))
}

/// Demonstrations, questions, tokenizer and summary (after `write_corpus`).
pub fn write_rest(
    out: &Path,
    cfg: &SynthConfig,
    world: &World,
    agent: AgentSide<'_>,
) -> Result<SynthSummary, SynthError> {
    if agent.protocol != Protocol::ToolCall {
        return Err(SynthError::Config(
            "demonstrations are written in the tool_call protocol; set agent.protocol = \"tool_call\""
                .into(),
        ));
    }
    let search = agent.search;
    // Retrieval check over every hop of every question (dev included).
    let mut cache: HashMap<String, String> = HashMap::new();
    let mut lookup = |q: &str| -> Result<String, String> {
        if let Some(r) = cache.get(q) {
            return Ok(r.clone());
        }
        let r = search(q)?;
        cache.insert(q.to_string(), r.clone());
        Ok(r)
    };
    let (mut hops, mut hits) = (0usize, 0usize);
    for q in world.train.iter().chain(&world.dev) {
        for h in &q.hops {
            hops += 1;
            hits += lookup(&h.query)
                .map_err(SynthError::Search)?
                .contains(&h.fact) as usize;
        }
    }
    let mut rng = Rng::new(cfg.seed ^ 0x5EED_DE30);
    let styles = styles(&world.train, cfg.lazy, &mut rng);
    let mut demos = vec![];
    let mut skipped = 0;
    for (q, &style) in world.train.iter().zip(&styles) {
        match demonstrate(q, style, agent.tool_name, &mut lookup)? {
            Some(d) => demos.push(d),
            None => skipped += 1,
        }
    }
    if demos.is_empty() {
        return Err(SynthError::Search(
            "no demonstration could be built: the search tool returns no gold passage".into(),
        ));
    }
    let tok = train_tokenizer(out, cfg, world, &demos, agent.system_prompt)?;
    let lens = write_demonstrations(
        out,
        &tok,
        &demos,
        agent.system_prompt,
        agent.max_tool_result_tokens,
    )?;
    write_questions(out, world)?;
    let single = world
        .entities
        .iter()
        .filter(|e| {
            tok.encode(&format!(" {}", e.name))
                .is_ok_and(|v| v.len() == 1)
        })
        .count();
    let count = |s: Style| demos.iter().filter(|d| d.style == s).count();
    let summary = SynthSummary {
        config: cfg.clone(),
        entities: world.entities.len(),
        passages: world.facts.len(),
        train_questions: world.train.len(),
        dev_questions: world.dev.len(),
        two_hop_train: world.train.iter().filter(|q| q.hops.len() == 2).count(),
        two_hop_dev: world.dev.iter().filter(|q| q.hops.len() == 2).count(),
        demonstrations: demos.len(),
        full_demonstrations: count(Style::Full),
        stops_early_demonstrations: count(Style::StopsEarly),
        no_search_demonstrations: count(Style::NoSearch),
        skipped_unretrieved: skipped,
        hop_retrieval_rate: hits as f64 / hops.max(1) as f64,
        vocab_size: tok.vocab_size(),
        single_token_names: single as f64 / world.entities.len().max(1) as f64,
        mean_demo_tokens: lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64,
        max_demo_tokens: lens.iter().copied().max().unwrap_or(0),
    };
    let path = out.join("synth.json");
    crate::fsutil::write_atomic(
        &path,
        serde_json::to_string_pretty(&summary)
            .expect("summary serializes")
            .as_bytes(),
    )
    .map_err(io_err(&path))?;
    Ok(summary)
}

/// A BPE trained on everything the model will read or write (passages,
/// questions, demonstrations), saved as `tokenizer.json` with the ChatML
/// `tokenizer_config.json`, and loaded back.
fn train_tokenizer(
    out: &Path,
    cfg: &SynthConfig,
    world: &World,
    demos: &[Demo],
    system_prompt: &str,
) -> Result<Tokenizer, SynthError> {
    let chat = crate::tokenizer::ChatTemplate::default();
    let mut texts: Vec<String> = world.passages().into_iter().map(|p| p.text).collect();
    texts.extend(
        world
            .train
            .iter()
            .chain(&world.dev)
            .map(|q| q.question.clone()),
    );
    for d in demos {
        texts.push(
            chat.render(&d.messages(system_prompt), None, false)
                .map_err(crate::tokenizer::TokenizerError::from)?,
        );
    }
    let trained = train_bpe(&texts, cfg.vocab_size)?;
    let tok_path = out.join("tokenizer.json");
    trained
        .save(&tok_path, false)
        .map_err(|e| SynthError::Config(format!("{}: {e}", tok_path.display())))?;
    let tok = Tokenizer::from_file(&tok_path)?;
    let tc = crate::tokenizer::chatml_tokenizer_config();
    let tc_path = out.join("tokenizer_config.json");
    crate::fsutil::write_atomic(&tc_path, tc.to_string().as_bytes()).map_err(io_err(&tc_path))?;
    Ok(tok)
}

/// `sft.jsonl`: one transcript per demonstration; returns each one's
/// token count.
fn write_demonstrations(
    out: &Path,
    tok: &Tokenizer,
    demos: &[Demo],
    system_prompt: &str,
    max_tool_result_tokens: usize,
) -> Result<Vec<usize>, SynthError> {
    // Tool results must reach the model whole, as the agent would pass them.
    let mut lens = vec![];
    let mut lines = vec![];
    for d in demos {
        for t in &d.turns {
            if let Some(r) = &t.result {
                if fit_tool_result(tok, r.clone(), max_tool_result_tokens)? != *r {
                    return Err(SynthError::Config(format!(
                        "a search result is longer than agent.max_tool_result_tokens = {}; raise it",
                        max_tool_result_tokens
                    )));
                }
            }
        }
        let messages = d.messages(system_prompt);
        lens.push(
            crate::train::sft_data::tokenize_transcript(tok, &messages)?
                .tokens
                .len(),
        );
        lines.push(json!({ "messages": messages }));
    }
    write_lines(&out.join("sft.jsonl"), lines.into_iter())?;
    Ok(lens)
}

/// `train.jsonl`, `dev.jsonl` and `questions.jsonl` (both, dev last).
fn write_questions(out: &Path, world: &World) -> Result<(), SynthError> {
    write_lines(
        &out.join("train.jsonl"),
        world.train.iter().map(question_line),
    )?;
    write_lines(&out.join("dev.jsonl"), world.dev.iter().map(question_line))?;
    // Both in one file, dev last: qa-dataset's `dev_size = <dev>` splits it
    // into the same `train` and `dev` (one dataset block for RL and eval).
    write_lines(
        &out.join("questions.jsonl"),
        world.train.iter().chain(&world.dev).map(question_line),
    )?;
    Ok(())
}

/// The whole job of `igpo data synth`: the world, its corpus, then the
/// demonstrations with the real results of the `search` tool plugin loaded
/// over that corpus (its granted directory is `out`), as the agent
/// configured by `agent` would see them.
pub fn synthesize(
    out: &Path,
    cfg: &SynthConfig,
    agent: &crate::rollout::AgentConfig,
    search: &crate::plugins::PluginSpec,
    host: &crate::plugins::PluginHost,
) -> Result<SynthSummary, SynthError> {
    let system = agent.system_prompt.as_deref().ok_or_else(|| {
        SynthError::Config(
            "the agent config has no agent.system_prompt; demonstrations need the exact prompt"
                .into(),
        )
    })?;
    let world = generate_world(cfg)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    write_corpus(out, &world)?;
    let mut spec = search.clone();
    spec.readonly_dir = Some(out.to_path_buf());
    let pool = crate::plugins::ToolPool::load(host, std::slice::from_ref(&spec))
        .map_err(|e| SynthError::Search(format!("{}: {e}", spec.path.display())))?;
    let name = pool
        .infos()
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| SynthError::Search("no tool loaded".into()))?;
    let mut call = |q: &str| {
        pool.call(&name, &search_arguments(q))
            .map_err(|e| e.agent_message())
    };
    write_rest(
        out,
        cfg,
        &world,
        AgentSide {
            system_prompt: system,
            tool_name: &name,
            max_tool_result_tokens: agent.max_tool_result_tokens,
            protocol: agent.protocol,
            search: &mut call,
        },
    )
}
