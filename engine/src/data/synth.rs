//! A seeded synthetic multi-hop world for the embedded demo (`igpo data
//! synth`): made-up people, cities, companies and countries; one fact per
//! passage ("Zorvak's mother is Quelin."); 1- and 2-hop questions ("Where was
//! the mother of Zorvak born?" -> "Tarsa"); SFT demonstrations of the search
//! agent in the tool_call protocol, with the real results of the search tool
//! for every query; and a small byte-level BPE tokenizer trained on all of it.
//!
//! Files written into the output folder:
//! - `corpus.jsonl`: `{"id","title","text"}` passages for `bm25-search`;
//! - `train.jsonl`, `dev.jsonl`: Search-R1 style questions
//!   (`{"id","question","golden_answers","hops","gold_passages"}`) for
//!   `qa-dataset`; `questions.jsonl`: both, dev last, so that qa-dataset
//!   with `dev_size` = the dev count gives the same `train` / `dev` splits;
//! - `sft.jsonl`: `{"messages": [...]}` transcripts for `igpo sft`, one per
//!   train question whose every hop the search tool retrieves;
//! - `tokenizer.json`, `tokenizer_config.json`: the BPE with the ChatML
//!   special tokens;
//! - `synth.json`: what was made (counts, retrieval hit rates, ...).
//!
//! A demonstration is exactly what the agent loop would produce for the same
//! turns: the same system prompt, the generated turns, and the tool result
//! spliced as [`crate::rollout::agent::tool_splice`] splices it (tested
//! below on token ids). A share of the 2-hop demonstrations is deliberately
//! lazy (answers after the first hop with the intermediate entity, or without
//! searching), so the SFT policy leaves headroom that RL can close.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::{write_jsonl, DataError, Passage};
use crate::rng::Rng;
use crate::rollout::agent::fit_tool_result;
use crate::rollout::protocol::{tool_response_content, Protocol};
use crate::tokenizer::{Message, Tokenizer, TokenizerError};

/// What an entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Person,
    City,
    Company,
    Country,
}

/// A functional relation between two kinds of entities, with its wording.
struct Relation {
    from: Kind,
    to: Kind,
    /// The passage: `{s}` subject, `{o}` object.
    fact: &'static str,
    /// The 1-hop question about `{x}` (also the search query of that hop).
    question: &'static str,
    /// `{x}`'s object as a noun phrase, for the first hop of a 2-hop
    /// question; None when the relation cannot start a chain.
    phrase: Option<&'static str>,
}

/// Every fact or question word shared by a question and its passage is a
/// search term (bm25-search drops stopwords and does not stem).
const RELATIONS: &[Relation] = &[
    Relation {
        from: Kind::Person,
        to: Kind::Person,
        fact: "{s}'s mother is {o}.",
        question: "Who is the mother of {x}?",
        phrase: Some("the mother of {x}"),
    },
    Relation {
        from: Kind::Person,
        to: Kind::Person,
        fact: "{s}'s father is {o}.",
        question: "Who is the father of {x}?",
        phrase: Some("the father of {x}"),
    },
    Relation {
        from: Kind::Person,
        to: Kind::Person,
        fact: "{s}'s mentor is {o}.",
        question: "Who is the mentor of {x}?",
        phrase: Some("the mentor of {x}"),
    },
    Relation {
        from: Kind::Person,
        to: Kind::Company,
        fact: "{s}'s employer is {o}.",
        question: "Who is the employer of {x}?",
        phrase: Some("the employer of {x}"),
    },
    Relation {
        from: Kind::Person,
        to: Kind::City,
        fact: "{s} was born in {o}.",
        question: "Where was {x} born?",
        phrase: Some("the birthplace of {x}"),
    },
    Relation {
        from: Kind::Company,
        to: Kind::Person,
        fact: "{s} was founded by {o}.",
        question: "Who founded {x}?",
        phrase: Some("the founder of {x}"),
    },
    Relation {
        from: Kind::Company,
        to: Kind::City,
        fact: "{s} is headquartered in {o}.",
        question: "Where is {x} headquartered?",
        phrase: Some("the headquarters of {x}"),
    },
    Relation {
        from: Kind::City,
        to: Kind::Country,
        fact: "{s} is in the country of {o}.",
        question: "In which country is {x}?",
        phrase: None,
    },
];

/// Sizes and shares of a synthetic world (`igpo data synth` flags).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SynthConfig {
    pub seed: u64,
    pub people: usize,
    pub cities: usize,
    pub companies: usize,
    pub countries: usize,
    /// Train questions (each also gets one SFT demonstration).
    pub train: usize,
    pub dev: usize,
    /// Share of 2-hop questions.
    pub two_hop: f64,
    /// Share of 2-hop demonstrations that are lazy (half answer after the
    /// first hop with the intermediate entity, half answer without searching).
    pub lazy: f64,
    /// BPE vocabulary size, special tokens included.
    pub vocab_size: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            people: 150,
            cities: 30,
            companies: 20,
            countries: 8,
            train: 1200,
            dev: 100,
            two_hop: 0.6,
            lazy: 0.3,
            vocab_size: 2048,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synth: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("synth: search tool: {0}")]
    Search(String),
}

impl SynthConfig {
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: String| Err(SynthError::Config(m));
        if self.people < 2 || self.cities < 1 || self.companies < 1 || self.countries < 1 {
            return bad(format!(
                "need at least 2 people and 1 city, company and country (got {}, {}, {}, {})",
                self.people, self.cities, self.companies, self.countries
            ));
        }
        if self.people + self.cities + self.companies + self.countries > 5000 {
            return bad("at most 5000 entities".into());
        }
        if self.train == 0 || self.dev == 0 {
            return bad("--train and --dev must be >= 1".into());
        }
        for (name, v) in [("--two-hop", self.two_hop), ("--lazy", self.lazy)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if !(300..=65536).contains(&self.vocab_size) {
            return bad(format!(
                "--vocab-size must be in 300..=65536 (256 bytes + special tokens + merges), got {}",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entity {
    pub name: String,
    pub kind: Kind,
}

/// One fact = one passage.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub subject: usize,
    pub relation: usize,
    pub object: usize,
    pub passage: Passage,
}

/// One hop of a question: what to search, and the passage that answers it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hop {
    pub query: String,
    /// Id of the gold passage.
    pub passage: String,
    /// Its text.
    pub fact: String,
    /// The entity this hop finds.
    pub answer: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answer: String,
    pub hops: Vec<Hop>,
    /// The entity the question is about (the first hop's subject).
    pub subject: String,
}

/// The generated world.
#[derive(Clone, Debug, PartialEq)]
pub struct World {
    pub entities: Vec<Entity>,
    pub facts: Vec<Fact>,
    pub train: Vec<Question>,
    pub dev: Vec<Question>,
}

impl World {
    pub fn passages(&self) -> Vec<Passage> {
        self.facts.iter().map(|f| f.passage.clone()).collect()
    }
}

const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
    "tr", "th", "sh", "qu", "vr", "zh",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ae", "ou", "y"];
const CODAS: &[&str] = &["", "", "", "n", "r", "l", "s", "k", "x", "m", "th", "v"];

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

fn syllable(rng: &mut Rng) -> String {
    format!(
        "{}{}{}",
        pick(rng, ONSETS),
        pick(rng, VOWELS),
        pick(rng, CODAS)
    )
}

/// A made-up name of two syllables, capitalised ("Zorvak").
fn make_name(rng: &mut Rng) -> String {
    let s = syllable(rng) + &syllable(rng);
    let mut c = s.chars();
    let first = c.next().expect("non-empty").to_ascii_uppercase();
    std::iter::once(first).chain(c).collect()
}

fn fill(template: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in pairs {
        s = s.replace(k, v);
    }
    s
}

/// Generates the world: entities, one fact per (subject, relation), and
/// disjoint train / dev questions. Deterministic for a config.
pub fn generate_world(cfg: &SynthConfig) -> Result<World, SynthError> {
    cfg.validate()?;
    let mut rng = Rng::new(cfg.seed);
    // Entities with unique names that are not words of the templates.
    let template_words: HashSet<String> = RELATIONS
        .iter()
        .flat_map(|r| [r.fact, r.question, r.phrase.unwrap_or("")])
        .flat_map(|t| t.split(|c: char| !c.is_alphanumeric()))
        .map(str::to_lowercase)
        .collect();
    let mut seen = HashSet::new();
    let mut entities = vec![];
    for (kind, n) in [
        (Kind::Person, cfg.people),
        (Kind::City, cfg.cities),
        (Kind::Company, cfg.companies),
        (Kind::Country, cfg.countries),
    ] {
        for _ in 0..n {
            let mut tries = 0;
            let name = loop {
                let name = make_name(&mut rng);
                if (4..=9).contains(&name.len())
                    && !template_words.contains(&name.to_lowercase())
                    && seen.insert(name.clone())
                {
                    break name;
                }
                tries += 1;
                if tries > 10_000 {
                    return Err(SynthError::Config("ran out of distinct names".into()));
                }
            };
            entities.push(Entity { name, kind });
        }
    }
    let of_kind: HashMap<Kind, Vec<usize>> =
        [Kind::Person, Kind::City, Kind::Company, Kind::Country]
            .into_iter()
            .map(|k| {
                (
                    k,
                    (0..entities.len())
                        .filter(|&i| entities[i].kind == k)
                        .collect(),
                )
            })
            .collect();
    // Facts: every entity gets every relation that starts at its kind.
    let mut facts = vec![];
    let mut fact_of: HashMap<(usize, usize), usize> = HashMap::new();
    for s in 0..entities.len() {
        for (ri, r) in RELATIONS.iter().enumerate() {
            if r.from != entities[s].kind {
                continue;
            }
            let pool = &of_kind[&r.to];
            let object = loop {
                let o = *pick(&mut rng, pool);
                if o != s {
                    break o;
                }
            };
            let text = fill(
                r.fact,
                &[("{s}", &entities[s].name), ("{o}", &entities[object].name)],
            );
            fact_of.insert((s, ri), facts.len());
            facts.push(Fact {
                subject: s,
                relation: ri,
                object,
                passage: Passage {
                    id: format!("fact-{}", facts.len()),
                    title: entities[s].name.clone(),
                    text,
                },
            });
        }
    }
    // Question shapes: every relation alone, every chain of two.
    let one_hop: Vec<Vec<usize>> = (0..RELATIONS.len()).map(|r| vec![r]).collect();
    let two_hop: Vec<Vec<usize>> = (0..RELATIONS.len())
        .filter(|&a| RELATIONS[a].phrase.is_some())
        .flat_map(|a| {
            (0..RELATIONS.len())
                .filter(move |&b| RELATIONS[b].from == RELATIONS[a].to)
                .map(move |b| vec![a, b])
        })
        .collect();
    let make_question = |rng: &mut Rng| -> Question {
        let shape = if rng.uniform() < cfg.two_hop {
            pick(rng, &two_hop)
        } else {
            pick(rng, &one_hop)
        };
        let subject = *pick(rng, &of_kind[&RELATIONS[shape[0]].from]);
        let mut hops = vec![];
        let mut at = subject;
        for &r in shape {
            let f = &facts[fact_of[&(at, r)]];
            hops.push(Hop {
                query: fill(RELATIONS[r].question, &[("{x}", &entities[at].name)]),
                passage: f.passage.id.clone(),
                fact: f.passage.text.clone(),
                answer: entities[f.object].name.clone(),
            });
            at = f.object;
        }
        let name = &entities[subject].name;
        let question = match shape[..] {
            [r] => fill(RELATIONS[r].question, &[("{x}", name)]),
            [a, b] => {
                let np = fill(RELATIONS[a].phrase.expect("chain start"), &[("{x}", name)]);
                fill(RELATIONS[b].question, &[("{x}", &np)])
            }
            _ => unreachable!("1 or 2 hops"),
        };
        Question {
            id: String::new(),
            question,
            answer: entities[at].name.clone(),
            hops,
            subject: name.clone(),
        }
    };
    let mut asked = HashSet::new();
    let mut draw = |n: usize, split: &str, rng: &mut Rng| -> Result<Vec<Question>, SynthError> {
        let mut out = vec![];
        let mut misses = 0;
        while out.len() < n {
            let mut q = make_question(rng);
            if !asked.insert(q.question.clone()) {
                misses += 1;
                if misses > 100 * n + 10_000 {
                    return Err(SynthError::Config(format!(
                        "the world has too few distinct questions for {} train + {} dev; add entities",
                        cfg.train, cfg.dev
                    )));
                }
                continue;
            }
            q.id = format!("{split}-{}", out.len());
            out.push(q);
        }
        Ok(out)
    };
    let dev = draw(cfg.dev, "dev", &mut rng)?;
    let train = draw(cfg.train, "train", &mut rng)?;
    Ok(World {
        entities,
        facts,
        train,
        dev,
    })
}

/// One assistant turn of a demonstration and the tool result it gets.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoTurn {
    /// The assistant's text (what the policy generates).
    pub text: String,
    /// The tool's output for this turn's call (None for the answer turn).
    pub result: Option<String>,
}

/// How a demonstration behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Searches every hop, then answers.
    Full,
    /// 2-hop: answers the intermediate entity after the first search.
    StopsEarly,
    /// Answers without searching: the question's own entity (always wrong,
    /// but copied like every other answer: the answer is always the last
    /// name of the turn's think, so the answer position never teaches noise).
    NoSearch,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Demo {
    pub question: String,
    pub style: Style,
    pub turns: Vec<DemoTurn>,
}

impl Demo {
    /// The chat transcript `igpo sft` reads: system, user, then assistant
    /// turns with each tool result as a user message in `<tool_response>`.
    pub fn messages(&self, system: &str) -> Vec<Message> {
        let mut m = vec![
            Message::new("system", system),
            Message::new("user", &self.question),
        ];
        for t in &self.turns {
            m.push(Message::new("assistant", &t.text));
            if let Some(r) = &t.result {
                m.push(Message::new("user", &tool_response_content(r)));
            }
        }
        m
    }
}

fn tool_call_text(tool: &str, query: &str) -> String {
    format!(
        "<tool_call>{{\"name\": {}, \"arguments\": {{\"query\": {}}}}}</tool_call>",
        Value::String(tool.into()),
        Value::String(query.into())
    )
}

/// The arguments the agent passes to the tool for `query` (the parsed
/// `arguments` object, serialized compactly).
pub fn search_arguments(query: &str) -> String {
    json!({ "query": query }).to_string()
}

/// Builds the demonstration of `q`. `search` maps a query to the tool's
/// output; returns None when a hop's gold passage is not in the output (a
/// demonstration must never answer from nothing).
pub fn demonstrate(
    q: &Question,
    style: Style,
    tool: &str,
    search: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Option<Demo>, SynthError> {
    let mut turns = vec![];
    if style == Style::NoSearch {
        turns.push(DemoTurn {
            text: format!(
                "<think>The answer is {0}.</think>\n<answer> {0} </answer>",
                q.subject
            ),
            result: None,
        });
    } else {
        let searched = if style == Style::StopsEarly {
            1
        } else {
            q.hops.len()
        };
        let mut note = "I need to search.".to_string();
        for hop in &q.hops[..searched] {
            let result = search(&hop.query).map_err(SynthError::Search)?;
            if !result.contains(&hop.fact) {
                return Ok(None);
            }
            turns.push(DemoTurn {
                text: format!(
                    "<think>{note}</think>\n{}",
                    tool_call_text(tool, &hop.query)
                ),
                result: Some(result),
            });
            note = hop.fact.clone();
        }
        let answer = &q.hops[searched - 1].answer;
        turns.push(DemoTurn {
            text: format!("<think>The answer is {answer}.</think>\n<answer> {answer} </answer>"),
            result: None,
        });
    }
    Ok(Some(Demo {
        question: q.question.clone(),
        style,
        turns,
    }))
}

/// The style of each train question's demonstration: `lazy` of the 2-hop
/// ones are lazy (alternately stopping early and not searching).
pub fn styles(questions: &[Question], lazy: f64, rng: &mut Rng) -> Vec<Style> {
    let mut alternate = false;
    questions
        .iter()
        .map(|q| {
            if q.hops.len() < 2 || rng.uniform() >= lazy {
                Style::Full
            } else {
                alternate = !alternate;
                if alternate {
                    Style::StopsEarly
                } else {
                    Style::NoSearch
                }
            }
        })
        .collect()
}

pub const SPECIAL_TOKENS: [&str; 3] = crate::tokenizer::CHATML_VOCAB_SPECIALS;

/// Trains a byte-level BPE (GPT-2 pre-tokenization, every byte in the base
/// alphabet, ChatML special tokens first) on `texts`.
pub fn train_tokenizer(
    texts: &[String],
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, SynthError> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};
    let fail = |e: tokenizers::Error| SynthError::Config(format!("training the tokenizer: {e}"));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials.clone())
        .build();
    let mut tok: tokenizers::TokenizerImpl<
        BPE,
        tokenizers::NormalizerWrapper,
        ByteLevel,
        ByteLevel,
        ByteLevel,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .build()
        .map_err(fail)?;
    // Special tokens must not be learned as merges: add them first.
    tok.add_special_tokens(specials.clone()).map_err(fail)?;
    tok.train(&mut trainer, texts.iter()).map_err(fail)?;
    let json = tok.to_string(false).map_err(fail)?;
    json.parse::<tokenizers::Tokenizer>().map_err(fail)
}

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
    // The tokenizer learns from everything the model will read or write.
    let chat = crate::tokenizer::ChatTemplate::default();
    let mut texts: Vec<String> = world.passages().into_iter().map(|p| p.text).collect();
    texts.extend(
        world
            .train
            .iter()
            .chain(&world.dev)
            .map(|q| q.question.clone()),
    );
    for d in &demos {
        texts.push(
            chat.render(&d.messages(agent.system_prompt), None, false)
                .map_err(crate::tokenizer::TokenizerError::from)?,
        );
    }
    let trained = train_tokenizer(&texts, cfg.vocab_size)?;
    let tok_path = out.join("tokenizer.json");
    trained
        .save(&tok_path, false)
        .map_err(|e| SynthError::Config(format!("{}: {e}", tok_path.display())))?;
    let tok = Tokenizer::from_file(&tok_path)?;
    let tc = crate::tokenizer::chatml_tokenizer_config();
    let tc_path = out.join("tokenizer_config.json");
    crate::fsutil::write_atomic(&tc_path, tc.to_string().as_bytes()).map_err(io_err(&tc_path))?;
    // Tool results must reach the model whole, as the agent would pass them.
    let mut lens = vec![];
    let mut lines = vec![];
    for d in &demos {
        for t in &d.turns {
            if let Some(r) = &t.result {
                if fit_tool_result(&tok, r.clone(), agent.max_tool_result_tokens)? != *r {
                    return Err(SynthError::Config(format!(
                        "a search result is longer than agent.max_tool_result_tokens = {}; raise it",
                        agent.max_tool_result_tokens
                    )));
                }
            }
        }
        let messages = d.messages(agent.system_prompt);
        lens.push(
            crate::train::sft_data::tokenize_transcript(&tok, &messages)?
                .tokens
                .len(),
        );
        lines.push(json!({ "messages": messages }));
    }
    write_lines(&out.join("sft.jsonl"), lines.into_iter())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::agent::{opening_messages, tool_splice};
    use crate::rollout::protocol::{parse_turn, stop_at, TurnAction};
    use crate::train::sft_data::tokenize_transcript;

    const SYSTEM: &str = "Answer the question. Search, then answer inside <answer> </answer>.";

    fn small() -> SynthConfig {
        SynthConfig {
            people: 30,
            cities: 8,
            companies: 6,
            countries: 3,
            train: 120,
            dev: 20,
            ..SynthConfig::default()
        }
    }

    /// A stand-in for bm25-search: the passages whose title is the query's
    /// entity, gold first.
    fn fake_search(world: &World) -> impl FnMut(&str) -> Result<String, String> + '_ {
        move |q: &str| {
            let mut hits: Vec<&Passage> = world
                .facts
                .iter()
                .map(|f| &f.passage)
                .filter(|p| q.contains(&p.title))
                .collect();
            hits.sort_by_key(|p| {
                let words = p.text.split(|c: char| !c.is_alphanumeric());
                std::cmp::Reverse(words.filter(|w| w.len() > 3 && q.contains(w)).count())
            });
            Ok(hits
                .iter()
                .take(2)
                .map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    fn demos_and_tokenizer(world: &World) -> (Vec<Demo>, Tokenizer) {
        let mut rng = Rng::new(1);
        let styles = styles(&world.train, 0.3, &mut rng);
        let mut search = fake_search(world);
        let demos: Vec<Demo> = world
            .train
            .iter()
            .zip(&styles)
            .filter_map(|(q, &s)| demonstrate(q, s, "search", &mut search).unwrap())
            .collect();
        let chat = crate::tokenizer::ChatTemplate::default();
        let mut texts: Vec<String> = world.passages().into_iter().map(|p| p.text).collect();
        texts.extend(
            demos
                .iter()
                .map(|d| chat.render(&d.messages(SYSTEM), None, false).unwrap()),
        );
        let trained = train_tokenizer(&texts, 2048).unwrap();
        // One folder per call: the tests that share this run in parallel
        // threads of one process (a per-process folder let one test delete
        // the file another was reading).
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("igpo-synth-tok-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        trained.save(&path, false).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (demos, tok)
    }

    #[test]
    fn same_seed_same_world_other_seed_other_world() {
        let a = generate_world(&small()).unwrap();
        assert_eq!(a, generate_world(&small()).unwrap());
        let b = generate_world(&SynthConfig { seed: 1, ..small() }).unwrap();
        assert_ne!(a.entities, b.entities);
        assert_ne!(a.train, b.train);
        // The tokenizer is a function of the text too.
        let texts: Vec<String> = a.passages().into_iter().map(|p| p.text).collect();
        let t1 = train_tokenizer(&texts, 600)
            .unwrap()
            .to_string(false)
            .unwrap();
        let t2 = train_tokenizer(&texts, 600)
            .unwrap()
            .to_string(false)
            .unwrap();
        assert_eq!(t1, t2);
    }

    #[test]
    fn every_question_is_answerable_from_the_corpus() {
        let w = generate_world(&small()).unwrap();
        let by_id: HashMap<&str, &Passage> = w
            .facts
            .iter()
            .map(|f| (f.passage.id.as_str(), &f.passage))
            .collect();
        assert_eq!(by_id.len(), w.facts.len(), "passage ids are unique");
        let questions: HashSet<&str> = w.train.iter().map(|q| q.question.as_str()).collect();
        assert_eq!(
            questions.len(),
            w.train.len(),
            "train questions are distinct"
        );
        assert!(w
            .dev
            .iter()
            .all(|q| !questions.contains(q.question.as_str())));
        let mut two_hop = 0;
        for q in w.train.iter().chain(&w.dev) {
            assert!(matches!(q.hops.len(), 1 | 2), "{}", q.question);
            two_hop += (q.hops.len() == 2) as usize;
            for (i, h) in q.hops.iter().enumerate() {
                let p = by_id[h.passage.as_str()];
                assert_eq!(p.text, h.fact);
                // The passage names this hop's subject (the title) and its answer.
                assert!(h.query.contains(&p.title), "{} / {}", h.query, p.title);
                assert!(p.text.contains(&h.answer));
                if i > 0 {
                    assert_eq!(p.title, q.hops[i - 1].answer, "hops chain");
                } else {
                    assert!(q.question.contains(&p.title), "{}", q.question);
                }
            }
            assert_eq!(q.answer, q.hops.last().unwrap().answer);
        }
        let share = two_hop as f64 / (w.train.len() + w.dev.len()) as f64;
        assert!((0.45..0.75).contains(&share), "2-hop share {share}");
        // Facts are functional: one object per (subject, relation).
        let keys: HashSet<(usize, usize)> =
            w.facts.iter().map(|f| (f.subject, f.relation)).collect();
        assert_eq!(keys.len(), w.facts.len());
    }

    #[test]
    fn demonstrations_follow_their_style() {
        let w = generate_world(&small()).unwrap();
        let (demos, _) = demos_and_tokenizer(&w);
        let lazy = demos.iter().filter(|d| d.style != Style::Full).count();
        assert!(
            lazy > 0 && lazy < demos.len() / 2,
            "{lazy} lazy of {}",
            demos.len()
        );
        for (d, q) in demos.iter().zip(&w.train) {
            let calls = d.turns.iter().filter(|t| t.result.is_some()).count();
            let expect = match d.style {
                Style::Full => q.hops.len(),
                Style::StopsEarly => 1,
                Style::NoSearch => 0,
            };
            assert_eq!(calls, expect, "{}", q.question);
            let last = &d.turns.last().unwrap().text;
            if d.style == Style::Full {
                assert!(last.ends_with(&format!("<answer> {} </answer>", q.answer)));
            }
            // One copy rule for every style: the answer is the last name
            // of the answer turn's think.
            let (think, answer) = last.split_once("</think>\n<answer> ").unwrap();
            let answer = answer.strip_suffix(" </answer>").unwrap();
            assert!(think.ends_with(&format!(" {answer}.")), "{last}");
        }
    }

    /// Token in, token out: the ids `igpo sft` trains on are the ids the
    /// agent loop builds for the same turns (prompt, generated turns, tool
    /// results spliced by the engine), and the agent stops each generated
    /// turn exactly where the demonstration ends it.
    #[test]
    fn transcript_tokens_equal_agent_tokens() {
        let w = generate_world(&small()).unwrap();
        let (demos, tok) = demos_and_tokenizer(&w);
        let closer = tok.chat.turn_closer().unwrap();
        let im_end = tok.token_id(closer).unwrap();
        for d in &demos {
            let sft = tokenize_transcript(&tok, &d.messages(SYSTEM)).unwrap();
            // What run_agent builds.
            let mut history = opening_messages(SYSTEM, &d.question);
            let mut ids = tok.encode_chat(&history, true).unwrap();
            let mut mask = vec![0u8; ids.len()];
            for t in &d.turns {
                let generated = tok.encode(&t.text).unwrap();
                assert_eq!(tok.decode(&generated, true).unwrap(), t.text);
                for k in 1..generated.len() {
                    let prefix = tok.decode(&generated[..k], false).unwrap();
                    assert_eq!(stop_at(Protocol::ToolCall, &prefix), None, "{prefix}");
                }
                assert_eq!(stop_at(Protocol::ToolCall, &t.text), Some(t.text.len()));
                let action = parse_turn(Protocol::ToolCall, &t.text, "search");
                ids.extend(&generated);
                mask.extend(std::iter::repeat_n(1, generated.len()));
                match (&t.result, action) {
                    (Some(r), TurnAction::ToolCall { name, arguments }) => {
                        assert_eq!(name, "search");
                        assert_eq!(
                            arguments.to_string(),
                            search_arguments(arguments["query"].as_str().unwrap())
                        );
                        let body = fit_tool_result(&tok, r.clone(), 512).unwrap();
                        let last = ids.last().copied();
                        let splice = tok
                            .encode(
                                &tool_splice(
                                    &tok,
                                    Protocol::ToolCall,
                                    &mut history,
                                    None,
                                    last,
                                    &body,
                                )
                                .unwrap(),
                            )
                            .unwrap();
                        ids.extend(&splice);
                        mask.extend(std::iter::repeat_n(0, splice.len()));
                    }
                    (None, TurnAction::Answer(_)) => {}
                    (r, a) => panic!("turn {:?} parsed as {a:?} (result {r:?})", t.text),
                }
            }
            assert_eq!(&sft.tokens[..ids.len()], &ids[..], "{}", d.question);
            // After the answer the transcript only closes the turn.
            assert_eq!(
                &sft.tokens[ids.len()..],
                &tok.encode(tok.chat.turn_end().unwrap()).unwrap()[..]
            );
            // The loss masks agree except on the end-of-turn token the engine
            // writes after a tool call (the agent stops at `</tool_call>`;
            // the transcript also teaches the model to close its turn).
            for i in 0..ids.len() {
                if sft.loss_mask[i] != mask[i] {
                    assert_eq!(
                        (ids[i], sft.loss_mask[i], mask[i]),
                        (im_end, 1, 0),
                        "at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn entity_names_are_single_tokens() {
        let w = generate_world(&small()).unwrap();
        let (_, tok) = demos_and_tokenizer(&w);
        let multi: Vec<&str> = w
            .entities
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| tok.encode(&format!(" {n}")).unwrap().len() != 1)
            .collect();
        // Names that occur once or twice may stay split; most must not.
        assert!(
            multi.len() * 10 < w.entities.len(),
            "split names: {multi:?}"
        );
    }

    #[test]
    fn bad_settings_are_one_clear_line() {
        for (cfg, what) in [
            (
                SynthConfig {
                    two_hop: 1.5,
                    ..small()
                },
                "--two-hop",
            ),
            (
                SynthConfig {
                    lazy: -0.1,
                    ..small()
                },
                "--lazy",
            ),
            (
                SynthConfig {
                    vocab_size: 100,
                    ..small()
                },
                "--vocab-size",
            ),
            (
                SynthConfig {
                    people: 1,
                    ..small()
                },
                "at least 2 people",
            ),
            (SynthConfig { dev: 0, ..small() }, "--dev"),
        ] {
            let e = generate_world(&cfg).unwrap_err().to_string();
            assert!(e.contains(what) && !e.contains('\n'), "{e}");
        }
        let e = generate_world(&SynthConfig {
            people: 2,
            cities: 1,
            companies: 1,
            countries: 1,
            train: 500,
            ..small()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("too few distinct questions"), "{e}");
        // No system prompt in the agent config: the demonstrations cannot match it.
        let e = synthesize(
            Path::new("/nonexistent"),
            &small(),
            &crate::rollout::AgentConfig::default(),
            &crate::plugins::PluginSpec::new("/nonexistent.wasm"),
            &crate::plugins::PluginHost::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("agent.system_prompt") && !e.contains('\n'),
            "{e}"
        );
    }

    /// With the real bm25-search plugin (`IGPO_PLUGIN_DIR`, set by `cargo
    /// xtask test`): every canonical query retrieves its gold passage.
    #[test]
    fn real_search_retrieves_every_hop() {
        let Some(dir) = std::env::var_os("IGPO_PLUGIN_DIR").map(PathBuf::from) else {
            eprintln!("skipped real_search_retrieves_every_hop: IGPO_PLUGIN_DIR not set");
            return;
        };
        let out = std::env::temp_dir().join(format!("igpo-synth-real-{}", std::process::id()));
        let agent = crate::rollout::AgentConfig {
            system_prompt: Some(SYSTEM.into()),
            ..Default::default()
        };
        let spec = crate::plugins::PluginSpec::new(dir.join("bm25-search.wasm"))
            .config(json!({"k": 2, "format": "{text}"}));
        let host = crate::plugins::PluginHost::new(Some(dir.join(".cache/components")));
        let s = synthesize(&out, &small(), &agent, &spec, &host).unwrap();
        assert_eq!(s.skipped_unretrieved, 0);
        assert!(s.hop_retrieval_rate > 0.99, "{}", s.hop_retrieval_rate);
        assert_eq!(s.demonstrations, small().train);
        let lines = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
        assert_eq!(
            lines("questions.jsonl"),
            lines("train.jsonl") + &lines("dev.jsonl")
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}
