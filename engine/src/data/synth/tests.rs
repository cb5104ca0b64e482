use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;
use crate::data::Passage;
use crate::rollout::agent::{fit_tool_result, opening_messages, tool_splice};
use crate::rollout::protocol::{parse_turn, stop_at, Protocol, TurnAction};
use crate::tokenizer::{train_bpe, Tokenizer};
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
    let trained = train_bpe(&texts, 2048).unwrap();
    // One folder per call: the tests that share this run in parallel
    // threads of one process (a per-process folder let one test delete
    // the file another was reading).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("igpo-synth-tok-{}-{call}", std::process::id()));
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
    let t1 = train_bpe(&texts, 600).unwrap().to_string(false).unwrap();
    let t2 = train_bpe(&texts, 600).unwrap().to_string(false).unwrap();
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
    let keys: HashSet<(usize, usize)> = w.facts.iter().map(|f| (f.subject, f.relation)).collect();
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
                            &tool_splice(&tok, Protocol::ToolCall, &mut history, None, last, &body)
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
