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

use serde::Serialize;

use super::{DataError, Passage};
use crate::rng::Rng;
use crate::tokenizer::TokenizerError;

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
    let entities = make_entities(cfg, &mut rng)?;
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
    let (facts, fact_of) = make_facts(&entities, &of_kind, &mut rng);
    let maker = QuestionMaker::new(&entities, &facts, &fact_of, &of_kind, cfg.two_hop);
    let mut asked = HashSet::new();
    let dev = draw_questions(&maker, &mut asked, cfg, cfg.dev, "dev", &mut rng)?;
    let train = draw_questions(&maker, &mut asked, cfg, cfg.train, "train", &mut rng)?;
    Ok(World {
        entities,
        facts,
        train,
        dev,
    })
}

/// Entities of every kind with unique names that are not words of the
/// templates.
fn make_entities(cfg: &SynthConfig, rng: &mut Rng) -> Result<Vec<Entity>, SynthError> {
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
                let name = make_name(rng);
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
    Ok(entities)
}

/// Facts: every entity gets every relation that starts at its kind, with a
/// random object of the relation's target kind. Also returns where the fact
/// of each (subject, relation) is.
fn make_facts(
    entities: &[Entity],
    of_kind: &HashMap<Kind, Vec<usize>>,
    rng: &mut Rng,
) -> (Vec<Fact>, HashMap<(usize, usize), usize>) {
    let mut facts = vec![];
    let mut fact_of: HashMap<(usize, usize), usize> = HashMap::new();
    for s in 0..entities.len() {
        for (ri, r) in RELATIONS.iter().enumerate() {
            if r.from != entities[s].kind {
                continue;
            }
            let pool = &of_kind[&r.to];
            let object = loop {
                let o = *pick(rng, pool);
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
    (facts, fact_of)
}

/// Makes random questions over a world's facts.
struct QuestionMaker<'a> {
    entities: &'a [Entity],
    facts: &'a [Fact],
    fact_of: &'a HashMap<(usize, usize), usize>,
    of_kind: &'a HashMap<Kind, Vec<usize>>,
    /// Question shapes: every relation alone, every chain of two.
    one_hop: Vec<Vec<usize>>,
    two_hop: Vec<Vec<usize>>,
    /// Share of 2-hop questions.
    two_hop_share: f64,
}

impl<'a> QuestionMaker<'a> {
    fn new(
        entities: &'a [Entity],
        facts: &'a [Fact],
        fact_of: &'a HashMap<(usize, usize), usize>,
        of_kind: &'a HashMap<Kind, Vec<usize>>,
        two_hop_share: f64,
    ) -> QuestionMaker<'a> {
        let one_hop: Vec<Vec<usize>> = (0..RELATIONS.len()).map(|r| vec![r]).collect();
        let two_hop: Vec<Vec<usize>> = (0..RELATIONS.len())
            .filter(|&a| RELATIONS[a].phrase.is_some())
            .flat_map(|a| {
                (0..RELATIONS.len())
                    .filter(move |&b| RELATIONS[b].from == RELATIONS[a].to)
                    .map(move |b| vec![a, b])
            })
            .collect();
        QuestionMaker {
            entities,
            facts,
            fact_of,
            of_kind,
            one_hop,
            two_hop,
            two_hop_share,
        }
    }

    /// One question (its `id` left empty).
    fn make(&self, rng: &mut Rng) -> Question {
        let entities = self.entities;
        let shape = if rng.uniform() < self.two_hop_share {
            pick(rng, &self.two_hop)
        } else {
            pick(rng, &self.one_hop)
        };
        let subject = *pick(rng, &self.of_kind[&RELATIONS[shape[0]].from]);
        let mut hops = vec![];
        let mut at = subject;
        for &r in shape {
            let f = &self.facts[self.fact_of[&(at, r)]];
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
    }
}

/// `n` questions not `asked` before, with ids `split-i`.
fn draw_questions(
    maker: &QuestionMaker<'_>,
    asked: &mut HashSet<String>,
    cfg: &SynthConfig,
    n: usize,
    split: &str,
    rng: &mut Rng,
) -> Result<Vec<Question>, SynthError> {
    let mut out = vec![];
    let mut misses = 0;
    while out.len() < n {
        let mut q = maker.make(rng);
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
}

mod demos;
mod write;

pub use demos::{demonstrate, search_arguments, styles, Demo, DemoTurn, Style};
pub use write::{synthesize, write_corpus, write_rest, AgentSide, SynthSummary};

#[cfg(test)]
mod tests;
