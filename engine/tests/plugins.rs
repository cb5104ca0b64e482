//! The plugin host with real components (built by `cargo xtask plugins`):
//! the first-party tool/reward/dataset plugins on real data, the Python
//! tool, and hostile components against the sandbox.

use crate::common;
use crate::plugins_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use igpo::plugins::{
    inspect, DatasetPlugin, PluginError, PluginSpec, RewardPlugin, SandboxLimits, ToolError,
    ToolPlugin, ToolPool, TrajectoryRecord, TurnRecord, World,
};
use plugins_support::{host, plugin_dir, scratch};
use serde_json::json;

macro_rules! plugins_or_skip {
    ($test:expr) => {
        match plugin_dir($test) {
            Some(d) => d,
            None => return,
        }
    };
}

fn limits(f: impl FnOnce(&mut SandboxLimits)) -> SandboxLimits {
    let mut l = SandboxLimits::default();
    f(&mut l);
    l
}

// ------------------------------------------------------------- bm25-search

/// The 12,100-passage corpus (SQuAD paragraphs + Wikipedia summaries),
/// written once per test binary.
fn corpus_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let data = common::data_dir();
        let dir = scratch("bm25-corpus");
        let passages = igpo::data::build_corpus(
            Some(&data.join("squad-dev-v1.1.json")),
            Some(&data.join("wiki-summaries-en.json")),
        )
        .unwrap();
        assert_eq!(
            passages.len(),
            12_100,
            "2,067 SQuAD paragraphs + 10,033 summaries"
        );
        igpo::data::write_jsonl(&dir.join("corpus.jsonl"), &passages).unwrap();
        dir
    })
    .clone()
}

/// (question, gold passage id) for every SQuAD question.
fn squad_questions() -> Vec<(String, String)> {
    let path = common::data_dir().join("squad-dev-v1.1.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = vec![];
    for (ai, a) in v["data"].as_array().unwrap().iter().enumerate() {
        for (pi, p) in a["paragraphs"].as_array().unwrap().iter().enumerate() {
            for q in p["qas"].as_array().unwrap() {
                out.push((
                    q["question"].as_str().unwrap().to_string(),
                    format!("squad:{ai}:{pi}"),
                ));
            }
        }
    }
    out
}

#[test]
fn bm25_ranks_gold_squad_paragraph_top3_for_80_percent_of_200_questions() {
    let plugins =
        plugins_or_skip!("bm25_ranks_gold_squad_paragraph_top3_for_80_percent_of_200_questions");
    let dir = corpus_dir();
    let spec = PluginSpec::new(plugins.join("bm25-search.wasm"))
        .readonly_dir(&dir)
        .config(json!({"k": 3, "format": "{id}", "separator": "\n"}))
        .limits(limits(|l| l.instances = 2));
    let t0 = Instant::now();
    let tool = ToolPlugin::load(&host(&plugins), &spec).unwrap();
    eprintln!(
        "bm25: loaded and indexed in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(tool.info().name, "search");

    // A fixed sample of 200 questions, drawn with the engine's seeded RNG.
    let all = squad_questions();
    assert!(all.len() > 10_000);
    let mut rng = igpo::rng::Rng::new(20_240_404);
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in 0..200 {
        let j = i + (rng.next_u64() % (all.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let sample: Vec<&(String, String)> = idx[..200].iter().map(|&i| &all[i]).collect();
    // Two threads share the pooled tool.
    let ranks: Vec<Option<usize>> = std::thread::scope(|s| {
        let hs: Vec<_> = sample
            .chunks(100)
            .map(|chunk| {
                let tool = &tool;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(q, gold)| {
                            let out = tool.call(&json!({ "query": q }).to_string()).unwrap();
                            out.lines().position(|id| id == gold)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let top1 = ranks.iter().filter(|r| **r == Some(0)).count();
    let top3 = ranks.iter().filter(|r| r.is_some()).count();
    eprintln!(
        "bm25 on 200 SQuAD questions over 12,100 passages: top-1 {top1}/200, top-3 {top3}/200"
    );
    assert!(
        top3 >= 160,
        "gold paragraph in the top 3 for only {top3}/200 questions"
    );

    // The default format, for the agent.
    let spec = PluginSpec::new(plugins.join("bm25-search.wasm"))
        .readonly_dir(&dir)
        .config(json!({"k": 2, "max_chars": 80}))
        .limits(limits(|l| l.instances = 1));
    let tool = ToolPlugin::load(&host(&plugins), &spec).unwrap();
    let out = tool
        .call(r#"{"query": "Which NFL team represented the AFC at Super Bowl 50?"}"#)
        .unwrap();
    assert!(out.starts_with("Doc 1 (Title: Super Bowl 50) "), "{out}");
    assert!(out.contains("\nDoc 2 (Title: "), "{out}");
    // `k` in the call, capped by max_k.
    let out = tool.call(r#"{"query": "Super Bowl", "k": 5}"#).unwrap();
    assert_eq!(out.lines().count(), 5);
}

/// The same 200 questions as above, drawn the same way.
fn squad_sample() -> Vec<(String, String)> {
    let all = squad_questions();
    let mut rng = igpo::rng::Rng::new(20_240_404);
    let mut idx: Vec<usize> = (0..all.len()).collect();
    for i in 0..200 {
        let j = i + (rng.next_u64() % (all.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx[..200].iter().map(|&i| all[i].clone()).collect()
}

#[test]
fn bm25_over_an_index_on_disk_ranks_as_over_the_corpus_in_a_small_sandbox() {
    let plugins =
        plugins_or_skip!("bm25_over_an_index_on_disk_ranks_as_over_the_corpus_in_a_small_sandbox");
    let corpus = corpus_dir();
    // `igpo data index`'s library call, into a grant of its own.
    let grant = scratch("bm25-index-grant");
    let s = igpo::data::index::build_index(
        &[corpus.join("corpus.jsonl")],
        &grant.join("wiki"),
        64 << 20,
        false,
    )
    .unwrap();
    assert_eq!(s.documents, 12_100);
    // An index in place is never overwritten without --force.
    let e = igpo::data::index::build_index(
        &[corpus.join("corpus.jsonl")],
        &grant.join("wiki"),
        1 << 20,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    // With it, a failed build (a missing corpus) leaves the old index whole;
    // a good one (1 MiB of postings in memory: spilled runs) replaces it.
    let missing = grant.join("missing.jsonl");
    let e = igpo::data::index::build_index(&[missing], &grant.join("wiki"), 1 << 20, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.jsonl"), "{e}");
    assert!(igpo_retrieval::Index::open(&grant.join("wiki")).is_ok());
    let again = igpo::data::index::build_index(
        &[corpus.join("corpus.jsonl")],
        &grant.join("wiki"),
        1 << 20,
        true,
    )
    .unwrap();
    assert!(again.runs > 1, "{again:?}");
    assert_eq!((again.terms, again.postings), (s.terms, s.postings));
    let format = json!({"k": 5, "format": "{id} {score}", "separator": "\n"});
    let mut on_disk = format.clone();
    on_disk["index"] = json!("wiki");
    let host = host(&plugins);
    let memory = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&corpus)
            .config(format),
    )
    .unwrap();
    // 16 MiB of linear memory: the corpus in memory needs more (below); the
    // index only what a query reads.
    let small = limits(|l| l.memory_bytes = 16 << 20);
    let t0 = Instant::now();
    let disk = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&grant)
            .config(on_disk)
            .limits(small.clone()),
    )
    .unwrap();
    eprintln!(
        "bm25 over the index: opened in {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    let mut lines = 0;
    for (q, _) in squad_sample() {
        let args = json!({ "query": q }).to_string();
        let (a, b) = (memory.call(&args).unwrap(), disk.call(&args).unwrap());
        assert_eq!(a, b, "{q}");
        lines += a.lines().count();
    }
    // Up to 5 passages each (a question of rare words matches fewer).
    assert!(lines > 950, "{lines} passages for 200 questions");
    let e = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&corpus)
            .limits(small),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("memory cap"),
        "the corpus in memory in 16 MiB: {e}"
    );
    // An index that is not there, or both sources: one line at load.
    let e = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&grant)
            .config(json!({"index": "nope"})),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("index `nope`") && e.contains("index.json"),
        "{e}"
    );
    let e = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&grant)
            .config(json!({"index": "wiki", "corpus": "c.jsonl"})),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn http_search_through_igpo_serve_retrieval_ranks_as_bm25_search_over_the_same_index() {
    let plugins = plugins_or_skip!(
        "http_search_through_igpo_serve_retrieval_ranks_as_bm25_search_over_the_same_index"
    );
    let grant = scratch("http-search-index");
    igpo::data::index::build_index(
        &[corpus_dir().join("corpus.jsonl")],
        &grant.join("wiki"),
        64 << 20,
        false,
    )
    .unwrap();
    let server = plugins_support::RetrievalServer::start(&grant.join("wiki"));
    // Every field of every passage, passages apart by a record separator.
    let shown = json!({"k": 3, "format": "{id}\t{title}\t{text}", "separator": "\n\u{1e}\n"});
    let mut on_disk = shown.clone();
    on_disk["index"] = json!("wiki");
    let mut over_http = shown.clone();
    over_http["url"] = json!(server.origin);
    let host = host(&plugins);
    let bm25 = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&grant)
            .config(on_disk),
    )
    .unwrap();
    let http = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("http-search.wasm"))
            .config(over_http)
            .allow_http([server.origin.clone()])
            .limits(limits(|l| l.instances = 2)),
    )
    .unwrap();
    let (mut top1, mut top3, mut passages) = (0, 0, 0);
    for (q, gold) in squad_sample() {
        let args = json!({ "query": q }).to_string();
        let (a, b) = (bm25.call(&args).unwrap(), http.call(&args).unwrap());
        assert_eq!(a, b, "{q}");
        let ids: Vec<&str> = b
            .split("\n\u{1e}\n")
            .map(|p| p.split('\t').next().unwrap())
            .collect();
        passages += ids.len();
        top1 += usize::from(ids.first() == Some(&gold.as_str()));
        top3 += usize::from(ids.contains(&gold.as_str()));
    }
    eprintln!(
        "http-search via igpo serve retrieval, 200 SQuAD questions: {passages} passages, top-1 {top1}/200, top-3 {top3}/200"
    );
    assert!(passages > 550, "{passages}");
    // The rate the in-memory bm25 test holds (same ranking, same questions).
    assert!(
        top3 >= 160,
        "gold paragraph in the top 3 for only {top3}/200"
    );
    // The agent's default rendering too.
    let http_default = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("http-search.wasm"))
            .config(json!({"url": server.origin, "k": 2, "max_chars": 300}))
            .allow_http([server.origin.clone()]),
    )
    .unwrap();
    let bm25_default = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("bm25-search.wasm"))
            .readonly_dir(&grant)
            .config(json!({"index": "wiki", "k": 2, "max_chars": 300})),
    )
    .unwrap();
    for (q, _) in squad_sample().iter().take(40) {
        let args = json!({ "query": q }).to_string();
        assert_eq!(
            bm25_default.call(&args).unwrap(),
            http_default.call(&args).unwrap()
        );
    }
    // The server gone: a tool error the agent can read.
    drop(server);
    let e = http_default.call(r#"{"query": "Super Bowl"}"#).unwrap_err();
    assert!(e.to_string().contains("http"), "{e}");
}

#[test]
fn a_run_file_description_is_what_the_agent_is_shown_and_only_for_tools() {
    let plugins =
        plugins_or_skip!("a_run_file_description_is_what_the_agent_is_shown_and_only_for_tools");
    let host = host(&plugins);
    let own = ToolPlugin::load(&host, &PluginSpec::new(plugins.join("echo-tool.wasm"))).unwrap();
    let told = ToolPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("echo-tool.wasm")).description("Repeats its input."),
    )
    .unwrap();
    assert_ne!(own.info().plugin.description, "Repeats its input.");
    assert_eq!(told.info().plugin.description, "Repeats its input.");
    assert_eq!(own.info().parameters_schema, told.info().parameters_schema);
    let e = RewardPlugin::load(
        &host,
        &PluginSpec::new(plugins.join("qa-reward.wasm")).description("x"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("description is for tool plugins only"), "{e}");
}

#[test]
fn bm25_bad_arguments_and_missing_grant_are_clear_errors() {
    let plugins = plugins_or_skip!("bm25_bad_arguments_and_missing_grant_are_clear_errors");
    let host = host(&plugins);
    let wasm = plugins.join("bm25-search.wasm");
    // No directory granted: init fails at load, naming the corpus.
    let e = ToolPlugin::load(&host, &PluginSpec::new(&wasm))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("init failed: corpus `corpus.jsonl`"), "{e}");
    // A config field that does not exist.
    let e = ToolPlugin::load(
        &host,
        &PluginSpec::new(&wasm)
            .readonly_dir(corpus_dir())
            .config(json!({"top_k": 3})),
    )
    .err()
    .unwrap()
    .to_string();
    // (refused by the host against the plugin's config_schema, before init)
    assert!(
        e.contains("config_schema: Additional properties are not allowed ('top_k' was unexpected)"),
        "{e}"
    );
    let dir = scratch("bm25-tiny");
    std::fs::write(
        dir.join("corpus.jsonl"),
        "{\"id\":\"a\",\"title\":\"Alpha\",\"text\":\"alpha particles\"}\n{\"id\":\"b\",\"title\":\"Beta\",\"text\":\"beta decay\"}\n",
    )
    .unwrap();
    let tool = ToolPlugin::load(&host, &PluginSpec::new(&wasm).readonly_dir(&dir)).unwrap();
    match tool.call(r#"{"q": "alpha"}"#) {
        Err(ToolError::InvalidArguments { tool, message }) => {
            assert_eq!(tool, "search");
            // The host's check against the tool's parameters_schema.
            assert_eq!(
                message,
                r#"Additional properties are not allowed ('q' was unexpected); "query" is a required property"#
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tool.call(r#"{"query": "zzz"}"#).unwrap(), "No results.");
    assert_eq!(
        tool.call(r#"{"query": "beta"}"#).unwrap(),
        "Doc 1 (Title: Beta) beta decay"
    );
}

// --------------------------------------------------------------- qa-reward

fn reward(plugins: &Path, config: serde_json::Value) -> RewardPlugin {
    RewardPlugin::load(
        &host(plugins),
        &PluginSpec::new(plugins.join("qa-reward.wasm")).config(config),
    )
    .unwrap()
}

fn traj(answer: Option<&str>, refs: &[&str]) -> TrajectoryRecord {
    TrajectoryRecord {
        question: "q?".into(),
        references: refs.iter().map(|s| s.to_string()).collect(),
        final_answer: answer.map(str::to_string),
        initial_gt_probability: None,
        turns: vec![],
    }
}

#[test]
fn qa_reward_f1_and_em_match_hand_computed_values() {
    let plugins = plugins_or_skip!("qa_reward_f1_and_em_match_hand_computed_values");
    let r = reward(&plugins, json!({}));
    assert_eq!(r.info().name, "qa-reward");
    // (prediction, references, EM, F1), computed by hand with SQuAD's rules.
    let cases: &[(&str, &[&str], f64, f64)] = &[
        ("The  Denver Broncos!", &["Denver Broncos"], 1.0, 1.0),
        ("U.S.A.", &["USA"], 1.0, 1.0),
        ("An apple", &["apple"], 1.0, 1.0),
        // Articles go only as whole words: "banana" keeps its a's.
        ("Banana", &["banana"], 1.0, 1.0),
        ("the cat sat", &["cat sat on the mat"], 0.0, 2.0 / 3.0), // P 1, R 1/2
        ("paris paris", &["Paris"], 0.0, 2.0 / 3.0),              // P 1/2, R 1
        // Hyphen is punctuation and is deleted (no space): one token.
        ("Apollo-11", &["Apollo 11"], 0.0, 0.0),
        // é is not e; the en dash is not ASCII punctuation and stays.
        ("Café au lait", &["cafe au lait"], 0.0, 2.0 / 3.0),
        ("1990\u{2013}1995", &["1990-1995"], 0.0, 0.0),
        // Max over references.
        ("the broncos", &["Denver Broncos", "Broncos"], 1.0, 1.0),
        (
            "Denver",
            &["Denver Broncos", "Carolina Panthers"],
            0.0,
            2.0 / 3.0,
        ),
        // Only articles: both sides normalize to nothing.
        ("The", &["a"], 1.0, 1.0),
        ("", &["Broncos"], 0.0, 0.0),
    ];
    let em_reward = reward(&plugins, json!({"outcome": "em"}));
    for (pred, refs, em, f1) in cases {
        let out = r.score(&traj(Some(pred), refs)).unwrap();
        assert!(
            (out.outcome - f1).abs() < 1e-9,
            "F1 of {pred:?} vs {refs:?}: {} != {f1}",
            out.outcome
        );
        let d = out.details.unwrap();
        assert_eq!(d["em"].as_f64().unwrap(), *em, "EM of {pred:?} vs {refs:?}");
        assert!(out.turn_rewards.is_none());
        let out = em_reward.score(&traj(Some(pred), refs)).unwrap();
        assert_eq!(out.outcome, *em, "EM outcome of {pred:?} vs {refs:?}");
    }
}

#[test]
fn qa_reward_format_penalty_and_turn_rewards_come_from_config() {
    let plugins = plugins_or_skip!("qa_reward_format_penalty_and_turn_rewards_come_from_config");
    let r = reward(&plugins, json!({"format_penalty": 0.5}));
    assert_eq!(r.score(&traj(None, &["x"])).unwrap().outcome, -0.5);
    assert_eq!(r.score(&traj(Some("x"), &["x"])).unwrap().outcome, 1.0);

    let turn = |p: f64| TurnRecord {
        text: "<search>q</search>".into(),
        tool_name: Some("search".into()),
        tool_arguments: Some(r#"{"query":"q"}"#.into()),
        tool_result: Some("Doc 1 ...".into()),
        gt_probability: Some(p),
    };
    let mut t = traj(Some("x"), &["x"]);
    t.initial_gt_probability = Some(0.1);
    t.turns = vec![turn(0.5), turn(0.2), turn(0.25)];
    let r = reward(
        &plugins,
        json!({"turn_rewards": "clipped_ig", "ig_clip": 0.3}),
    );
    let tr = r.score(&t).unwrap().turn_rewards.unwrap();
    let want = [0.3, -0.3, 0.05];
    for (a, b) in tr.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{tr:?} != {want:?}");
    }
    // The engine scores no probe after the answer turn: its IG is 0.
    let mut u = t.clone();
    u.turns[2].gt_probability = None;
    let tr = r.score(&u).unwrap().turn_rewards.unwrap();
    assert!((tr[0] - 0.3).abs() < 1e-12 && (tr[1] + 0.3).abs() < 1e-12 && tr[2] == 0.0);
    let r = reward(&plugins, json!({"turn_rewards": "zero"}));
    assert_eq!(r.score(&t).unwrap().turn_rewards.unwrap(), vec![0.0; 3]);

    // A plugin error is an error, never a silent 0.
    let e = reward(&plugins, json!({}))
        .score(&traj(Some("x"), &[]))
        .unwrap_err();
    assert!(
        matches!(e, PluginError::Failed { .. }) && e.to_string().contains("no reference answers"),
        "{e}"
    );
    t.turns[1].gt_probability = None;
    let e = reward(&plugins, json!({"turn_rewards": "clipped_ig"}))
        .score(&t)
        .unwrap_err()
        .to_string();
    assert!(e.contains("turn 1 has no gt-probability"), "{e}");
    let e = RewardPlugin::load(
        &host(&plugins),
        &PluginSpec::new(plugins.join("qa-reward.wasm")).config(json!({"outcome": "bleu"})),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(r#"config_schema: at /outcome: "bleu" is not one of "f1" or "em""#),
        "{e}"
    );
}

// -------------------------------------------------------------- qa-dataset

fn dataset(
    plugins: &Path,
    dir: &Path,
    config: serde_json::Value,
) -> Result<DatasetPlugin, PluginError> {
    DatasetPlugin::load(
        &host(plugins),
        &PluginSpec::new(plugins.join("qa-dataset.wasm"))
            .readonly_dir(dir)
            .config(config),
    )
}

#[test]
fn qa_dataset_parses_each_real_file() {
    let plugins = plugins_or_skip!("qa_dataset_parses_each_real_file");
    let data = common::data_dir();

    let squad = dataset(&plugins, &data, json!({"file": "squad-dev-v1.1.json"})).unwrap();
    assert_eq!(squad.info().name, "qa-dataset");
    let n = squad.len(None).unwrap();
    assert!(n > 10_000, "{n}");
    let e = squad.get(None, 0).unwrap();
    assert_eq!(e.id, "56be4db0acb8001400a502ec");
    assert_eq!(
        e.question,
        "Which NFL team represented the AFC at Super Bowl 50?"
    );
    assert_eq!(e.answers, vec!["Denver Broncos"]);
    assert_eq!(e.metadata["title"], "Super Bowl 50");
    assert_eq!(e.metadata["paragraph"], "squad:0:0");
    assert!(squad.splits().is_empty());

    let bb = dataset(&plugins, &data, json!({"file": "qa-wikidata.json"})).unwrap();
    assert_eq!(bb.len(None).unwrap(), 20_442);
    let e = bb.get(None, 0).unwrap();
    assert_eq!(e.question, "The genre of \"Weird Al\" Yankovic is");
    assert_eq!(e.answers, vec!["comedy", "parody"]);
    assert_eq!(bb.get(None, 1).unwrap().answers, vec!["English"]);

    let fq = dataset(&plugins, &data, json!({"file": "fanoutqa-dev.json"})).unwrap();
    assert_eq!(fq.len(None).unwrap(), 310);
    let e = fq.get(None, 0).unwrap();
    assert_eq!(e.id, "7dcbbbdc7f1120cd");
    assert!(e
        .question
        .starts_with("What is the batting hand of each of the first five picks"));
    assert!(
        e.answers[0].contains("Pat Burrell: Right"),
        "{:?}",
        e.answers
    );
    assert_eq!(e.metadata["answer"]["Mark Mulder"], "Left");
    assert!(e.metadata["sub_questions"].as_u64().unwrap() >= 5);

    // Search-R1 / FlashRAG JSONL, derived from the real SQuAD file.
    let dir = scratch("dataset-jsonl");
    let mut jsonl = String::new();
    for i in 0..50 {
        let e = squad.get(None, i).unwrap();
        jsonl.push_str(&json!({"id": e.id, "question": e.question, "golden_answers": e.answers, "source": "squad"}).to_string());
        jsonl.push('\n');
    }
    std::fs::write(dir.join("squad-50.jsonl"), jsonl).unwrap();
    let j = dataset(&plugins, &dir, json!({"file": "squad-50.jsonl"})).unwrap();
    assert_eq!(j.len(None).unwrap(), 50);
    let e = j.get(None, 0).unwrap();
    assert_eq!(
        (e.id.as_str(), e.answers.clone()),
        (
            "56be4db0acb8001400a502ec",
            vec!["Denver Broncos".to_string()]
        )
    );
    assert_eq!(e.metadata["source"], "squad");
    // A broken line names the file and line.
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"question\":\"q\",\"golden_answers\":[\"a\"]}\n{oops\n",
    )
    .unwrap();
    let err = dataset(&plugins, &dir, json!({"file": "bad.jsonl"}))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`bad.jsonl` line 2"), "{err}");
}

#[test]
fn qa_dataset_seeded_shuffle_and_splits() {
    let plugins = plugins_or_skip!("qa_dataset_seeded_shuffle_and_splits");
    let data = common::data_dir();
    let cfg = |seed: u64| json!({"file": "fanoutqa-dev.json", "shuffle": true, "seed": seed, "dev_fraction": 0.1});
    let a = dataset(&plugins, &data, cfg(7)).unwrap();
    let b = dataset(&plugins, &data, cfg(7)).unwrap();
    let c = dataset(&plugins, &data, cfg(8)).unwrap();
    assert_eq!(a.splits(), ["train", "dev"]);
    assert_eq!(
        (a.len(Some("train")).unwrap(), a.len(Some("dev")).unwrap()),
        (279, 31)
    );
    let ids = |d: &DatasetPlugin| {
        d.examples(None)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let (ia, ib, ic) = (ids(&a), ids(&b), ids(&c));
    assert_eq!(ia, ib, "same seed, same order");
    assert_ne!(ia, ic, "another seed, another order");
    let unshuffled = ids(&dataset(&plugins, &data, json!({"file": "fanoutqa-dev.json"})).unwrap());
    let mut sorted_a = ia.clone();
    sorted_a.sort();
    let mut sorted_u = unshuffled.clone();
    sorted_u.sort();
    assert_eq!(sorted_a, sorted_u, "a permutation");
    assert_eq!(a.get(Some("dev"), 0).unwrap().id, ia[279]);
    let e = a.get(Some("dev"), 31).unwrap_err().to_string();
    assert!(
        e.contains("index 31 out of range: split dev has 31 examples"),
        "{e}"
    );
    let e = a.get(Some("test"), 0).unwrap_err().to_string();
    assert!(e.contains("no split `test`"), "{e}");
    let e = dataset(&plugins, &data, json!({"file": "nope.json"}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("init failed: `nope.json`"), "{e}");
}

// ---------------------------------------------------- Python calculator

#[test]
fn python_calculator_tool_runs_through_the_host() {
    let plugins = plugins_or_skip!("python_calculator_tool_runs_through_the_host");
    let wasm = plugins.join("calculator.wasm");
    let host = host(&plugins);
    let t0 = Instant::now();
    let d = inspect(&host, &wasm).unwrap();
    eprintln!(
        "calculator: compiled or loaded in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((d.world, d.name.as_str()), (World::Tool, "calculator"));
    assert_eq!(d.parameters_schema.unwrap()["required"][0], "expression");
    let tool = ToolPlugin::load(
        &host,
        &PluginSpec::new(&wasm).config(json!({"precision": 6})),
    )
    .unwrap();
    let calc = |e: &str| tool.call(&json!({ "expression": e }).to_string());
    assert_eq!(calc("2 * (3 + 4)").unwrap(), "14");
    assert_eq!(calc("sqrt(16) + 2**10").unwrap(), "1028");
    assert_eq!(calc("pi").unwrap(), "3.14159");
    let e = calc("7 // 2, 1").unwrap_err().to_string();
    assert!(
        e.starts_with(
            "tool `calculator`: invalid arguments: unsupported expression element: Tuple("
        ),
        "{e}"
    );
    match calc("__import__('os').getcwd()") {
        Err(ToolError::InvalidArguments { message, .. }) => assert!(
            message.starts_with("unsupported expression element"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    match calc("1 / 0") {
        Err(ToolError::Failed { message, .. }) => {
            assert_eq!(message, "ZeroDivisionError: division by zero")
        }
        other => panic!("{other:?}"),
    }
    match tool.call("not json") {
        Err(ToolError::InvalidArguments { message, .. }) => {
            // (the host's check, against the tool's parameters_schema)
            assert!(
                message.starts_with("not valid JSON (expected ident"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    let e = ToolPlugin::load(&host, &PluginSpec::new(&wasm).config(json!({"digits": 3})))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "config_schema: Additional properties are not allowed ('digits' was unexpected)"
        ),
        "{e}"
    );
}

// ------------------------------------------------ check, kinds, the pool

#[test]
fn inspect_names_the_world_or_the_missing_export() {
    let plugins = plugins_or_skip!("inspect_names_the_world_or_the_missing_export");
    let host = host(&plugins);
    for (file, world, name) in [
        ("bm25-search.wasm", World::Tool, "search"),
        ("echo-tool.wasm", World::Tool, "echo"),
        ("qa-reward.wasm", World::Reward, "qa-reward"),
        ("qa-dataset.wasm", World::Dataset, "qa-dataset"),
    ] {
        let d = inspect(&host, &plugins.join(file)).unwrap();
        assert_eq!((d.world, d.name.as_str()), (world, name), "{file}");
        assert_eq!(d.export, format!("{}@0.1.0", world.interface()));
        assert!(d.config_schema.is_object(), "{file}: config schema is JSON");
    }
    // A valid component that exports nothing of ours (the empty component).
    let dir = scratch("inspect");
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let e = inspect(&host, &empty).unwrap_err().to_string();
    assert!(
        e.contains("implements none of the igpo:plugins@0.1.0 worlds: missing export `igpo:plugins/tool-api@0.1.0`")
            && e.contains("(it exports: nothing)"),
        "{e}"
    );
    // A plugin built against another contract version (the export names
    // patched in place: same length, still a valid component).
    let bytes = std::fs::read(plugins.join("echo-tool.wasm")).unwrap();
    let (from, to) = (
        b"igpo:plugins/tool-api@0.1.0",
        b"igpo:plugins/tool-api@0.9.0",
    );
    let mut patched = bytes.clone();
    let mut hits = 0;
    for i in 0..patched.len() - from.len() {
        if &patched[i..i + from.len()] == from {
            patched[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
    }
    assert!(hits > 0);
    let old = dir.join("echo-v0.9.wasm");
    std::fs::write(&old, patched).unwrap();
    let e = inspect(&host, &old).unwrap_err().to_string();
    assert!(
        e.ends_with("exports `igpo:plugins/tool-api@0.9.0`, but this host speaks igpo:plugins@0.1.0; rebuild the plugin against this engine's wit/"),
        "{e}"
    );
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let e = inspect(&host, &junk).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: not a valid WebAssembly component",
            junk.display()
        )),
        "{e}"
    );
    // The wrong kind where a tool is needed.
    let e = ToolPlugin::load(&host, &PluginSpec::new(plugins.join("qa-reward.wasm")))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.ends_with("is a reward plugin, but a tool plugin is needed here"),
        "{e}"
    );
}

#[test]
fn tool_pool_serves_many_threads_and_names_unknown_tools() {
    let plugins = plugins_or_skip!("tool_pool_serves_many_threads_and_names_unknown_tools");
    let host = host(&plugins);
    let specs = [
        PluginSpec::new(plugins.join("echo-tool.wasm")).limits(limits(|l| l.instances = 2)),
        PluginSpec::new(plugins.join("echo-tool.wasm")).name("echo2"),
    ];
    let pool = ToolPool::load(&host, &specs).unwrap();
    assert_eq!(
        pool.infos()
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>(),
        ["echo", "echo2"]
    );
    std::thread::scope(|s| {
        for t in 0..4 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..200 {
                    let args = format!("{{\"t\":{t},\"i\":{i}}}");
                    assert_eq!(
                        pool.call(if i % 2 == 0 { "echo" } else { "echo2" }, &args)
                            .unwrap(),
                        args
                    );
                }
            });
        }
    });
    let e = pool.call("search", "{}").unwrap_err();
    assert_eq!(e.to_string(), "no tool named `search` (tools: echo, echo2)");
    assert!(e
        .agent_message()
        .contains("there is no tool named `search`"));
    let e = ToolPool::load(&host, &[specs[0].clone(), specs[0].clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("a tool named `echo` is already loaded"), "{e}");
}

// ----------------------------------------------------- hostile plugins

fn hostile(plugins: &Path, f: impl FnOnce(&mut SandboxLimits)) -> ToolPlugin {
    ToolPlugin::load(
        &host(plugins),
        &PluginSpec::new(plugins.join("hostile-tool.wasm")).limits(limits(f)),
    )
    .unwrap()
}

fn still_serves(tool: &ToolPlugin) {
    let args = r#"{"mode":"echo","n":1}"#;
    assert_eq!(
        tool.call(args).unwrap(),
        args,
        "the host must keep serving after a bad call"
    );
}

#[test]
fn hostile_infinite_loop_is_stopped_within_the_time_limit() {
    let plugins = plugins_or_skip!("hostile_infinite_loop_is_stopped_within_the_time_limit");
    let tool = hostile(&plugins, |l| {
        l.call_timeout = Duration::from_millis(300);
        l.instances = 2;
    });
    // While one call spins, the other instance keeps answering.
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t0 = Instant::now();
            let e = tool.call(r#"{"mode":"loop"}"#).unwrap_err();
            (e, t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..20 {
            still_serves(&tool);
        }
        let (e, took) = h.join().unwrap();
        assert!(
            matches!(e, ToolError::Plugin(PluginError::Timeout { .. })),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "hostile (hostile-tool.wasm): call exceeded the time limit of 300 ms and was stopped"
        );
        assert_eq!(e.agent_message(), "Error: the tool timed out after 300 ms");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "stopped after {took:?}"
        );
    });
    still_serves(&tool);
}

#[test]
fn hostile_memory_bomb_is_stopped_at_the_cap() {
    let plugins = plugins_or_skip!("hostile_memory_bomb_is_stopped_at_the_cap");
    let tool = hostile(&plugins, |l| {
        l.memory_bytes = 64 << 20;
        l.call_timeout = Duration::from_secs(5);
    });
    let e = tool.call(r#"{"mode":"bomb"}"#).unwrap_err();
    assert!(
        matches!(
            e,
            ToolError::Plugin(PluginError::MemoryLimit {
                limit_bytes: 67_108_864,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .ends_with("call exceeded the memory cap of 67108864 bytes and was stopped"),
        "{e}"
    );
    still_serves(&tool);
}

#[test]
fn hostile_files_outside_the_grant_env_and_network_are_denied() {
    let plugins = plugins_or_skip!("hostile_files_outside_the_grant_env_and_network_are_denied");
    let root = scratch("hostile-fs");
    let granted = root.join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("allowed.txt"), "fine").unwrap();
    std::fs::write(root.join("secret.txt"), "top secret").unwrap();
    let tool = ToolPlugin::load(
        &host(&plugins),
        &PluginSpec::new(plugins.join("hostile-tool.wasm")).readonly_dir(&granted),
    )
    .unwrap();
    let call = |mode: &str, path: &str| tool.call(&json!({"mode": mode, "path": path}).to_string());
    assert_eq!(call("read", "/data/allowed.txt").unwrap(), "fine");
    assert_eq!(call("list", "/data").unwrap(), "allowed.txt");
    let secret = root.join("secret.txt").display().to_string();
    for path in [
        "/data/../secret.txt",
        "../secret.txt",
        secret.as_str(),
        "/etc/passwd",
        "/proc/self/environ",
    ] {
        match call("read", path) {
            Err(ToolError::Failed { message, .. }) => {
                assert!(!message.contains("top secret"), "{message}")
            }
            other => panic!("reading {path} must fail, got {other:?}"),
        }
    }
    // Read-only: no writes, even inside the grant.
    let e = call("write", "/data/new.txt").unwrap_err();
    assert!(matches!(e, ToolError::Failed { .. }), "{e:?}");
    assert!(!granted.join("new.txt").exists());
    // No environment: the host has PATH, the guest sees nothing.
    assert!(std::env::var_os("PATH").is_some());
    match call("env", "") {
        Err(ToolError::Failed { message, .. }) => {
            assert_eq!(message, "no environment variables visible")
        }
        other => panic!("{other:?}"),
    }
    // No network.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    match call("connect", &addr) {
        Err(ToolError::Failed { message, .. }) => assert!(
            message.starts_with(&format!("connect {addr}:")),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    still_serves(&tool);
}

#[test]
fn hostile_panic_traps_with_its_message() {
    let plugins = plugins_or_skip!("hostile_panic_traps_with_its_message");
    let tool = hostile(&plugins, |_| {});
    let e = tool.call(r#"{"mode":"panic"}"#).unwrap_err();
    assert!(
        matches!(e, ToolError::Plugin(PluginError::Trap { .. })),
        "{e:?}"
    );
    let s = e.to_string();
    assert!(
        s.starts_with("hostile (hostile-tool.wasm): call trapped: "),
        "{s}"
    );
    assert!(
        s.contains("hostile plugin panics on purpose"),
        "the guest's panic message is quoted: {s}"
    );
    assert!(!s.contains('\n'), "one line: {s}");
    assert_eq!(e.agent_message(), "Error: the tool crashed");
    still_serves(&tool);
}

#[test]
fn hostile_100mb_output_is_truncated_with_a_note() {
    let plugins = plugins_or_skip!("hostile_100mb_output_is_truncated_with_a_note");
    let tool = hostile(&plugins, |l| {
        l.memory_bytes = 512 << 20;
        l.max_output_bytes = 4096;
    });
    let out = tool.call(r#"{"mode":"big","bytes":104857600}"#).unwrap();
    assert!(
        out.starts_with(&"x".repeat(4096)),
        "keeps the first 4096 bytes"
    );
    assert_eq!(
        &out[4096..],
        "\n[output truncated: 104857600 bytes, limit 4096 bytes]"
    );
    still_serves(&tool);
}

#[test]
fn hostile_invalid_utf8_in_and_out_are_clear_errors() {
    let plugins = plugins_or_skip!("hostile_invalid_utf8_in_and_out_are_clear_errors");
    let tool = hostile(&plugins, |_| {});
    let e = tool
        .call_bytes(b"{\"mode\":\"echo\",\"x\":\"\xff\xfe\"}")
        .unwrap_err();
    assert!(
        matches!(
            e,
            ToolError::Plugin(PluginError::InvalidUtf8 { offset: 20, .. })
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "hostile (hostile-tool.wasm): arguments are not valid UTF-8 (invalid byte at offset 20)"
    );
    // A guest that returns bytes that are not UTF-8 through a WIT string.
    let e = tool.call(r#"{"mode":"badutf8"}"#).unwrap_err();
    assert!(
        matches!(e, ToolError::Plugin(PluginError::Trap { .. })),
        "{e:?}"
    );
    assert!(e.to_string().to_lowercase().contains("utf-8"), "{e}");
    still_serves(&tool);
    assert_eq!(
        tool.call_bytes(br#"{"mode":"echo"}"#).unwrap(),
        r#"{"mode":"echo"}"#
    );
}

// ------------------------------------------- schemas enforced by the host

/// `counting-tool` in one instance: its output says how many calls entered it.
fn counter(plugins: &Path) -> ToolPlugin {
    ToolPlugin::load(
        &host(plugins),
        &PluginSpec::new(plugins.join("counting-tool.wasm")).limits(limits(|l| l.instances = 1)),
    )
    .unwrap()
}

#[test]
fn arguments_breaking_the_schema_never_reach_the_plugin() {
    let plugins = plugins_or_skip!("arguments_breaking_the_schema_never_reach_the_plugin");
    let tool = counter(&plugins);
    // (arguments, what the agent's message must name)
    let bad = [
        (r#"{"text": "a""#, "not valid JSON"),
        ("search for cats", "not valid JSON"),
        (r#"{"text": 5}"#, r#"at /text: 5 is not of type "string""#),
        (r#"{"times": 2}"#, r#""text" is a required property"#),
        (
            r#"{"text": "a", "colour": "red"}"#,
            "('colour' was unexpected)",
        ),
        (
            r#"{"text": "a", "times": 0}"#,
            "at /times: 0 is less than the minimum of 1",
        ),
        (r#"["a"]"#, r#"is not of type "object""#),
    ];
    for (args, names) in bad {
        let e = tool.call(args).unwrap_err();
        assert!(
            matches!(e, ToolError::InvalidArguments { .. }),
            "{args}: {e:?}"
        );
        let msg = e.agent_message();
        assert!(
            msg.starts_with("Error: invalid arguments: ") && msg.contains(names),
            "{args}: {msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    // Raw bytes (decoded model output) take the same path.
    let e = tool.call_bytes(br#"{"text": true}"#).unwrap_err();
    assert!(e.agent_message().contains("at /text"), "{e}");
    // Not one of those calls entered the guest.
    assert_eq!(
        tool.call(r#"{"text": "a", "times": 2}"#).unwrap(),
        "calls entered: 1"
    );
    assert_eq!(tool.call(r#"{"text": ""}"#).unwrap(), "calls entered: 2");
}

#[test]
fn a_config_breaking_config_schema_fails_the_load_with_its_path() {
    let plugins = plugins_or_skip!("a_config_breaking_config_schema_fails_the_load_with_its_path");
    let load = |config: serde_json::Value| {
        ToolPlugin::load(
            &host(&plugins),
            &PluginSpec::new(plugins.join("counting-tool.wasm")).config(config),
        )
    };
    for (config, want) in [
        (
            json!({"start": -1}),
            "the config does not match the plugin's config_schema: at /start: -1 is less than the minimum of 0",
        ),
        (
            json!({"prefix": ["x"]}),
            r#"config_schema: at /prefix: ["x"] is not of type "string""#,
        ),
        (json!({"prefx": "x"}), "('prefx' was unexpected)"),
        (json!([1]), r#"[1] is not of type "object""#),
    ] {
        let e = load(config.clone()).err().unwrap();
        assert!(matches!(e, PluginError::ConfigSchema { .. }), "{e:?}");
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("{}: ", plugins.join("counting-tool.wasm").display()))
                && s.contains(want),
            "{config}: {s}"
        );
    }
    assert!(load(json!({"prefix": "> ", "start": 3})).is_ok());
}

#[test]
fn a_schema_that_is_not_json_schema_fails_check_and_load() {
    let plugins = plugins_or_skip!("a_schema_that_is_not_json_schema_fails_check_and_load");
    let file = plugins.join("bad-schema-tool.wasm");
    let want =
        "its parameters_schema is not a valid JSON Schema: at /properties/query/type: \"strng\"";
    let e = inspect(&host(&plugins), &file).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = ToolPlugin::load(&host(&plugins), &PluginSpec::new(&file))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains(want), "{e}");
    // The CLI: one error line, exit code 2.
    let (code, out, err) = common::igpo(&["plugin", "check", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(want), "{err}");
}

// ------------------------------------------- JavaScript authors' mistakes

#[test]
fn a_javascript_tool_that_throws_an_error_object_is_told_what_to_throw() {
    let plugins =
        plugins_or_skip!("a_javascript_tool_that_throws_an_error_object_is_told_what_to_throw");
    let file = plugins.join("js-throws.wasm");
    let host = host(&plugins);
    let tool = ToolPlugin::load(
        &host,
        &PluginSpec::new(&file).limits(limits(|l| l.instances = 1)),
    )
    .unwrap();
    // The convention works: a thrown tagged object is a tool error.
    match tool.call(r#"{"throw": "tagged"}"#) {
        Err(ToolError::Failed { message, .. }) => assert_eq!(message, "the index is not loaded"),
        other => panic!("{other:?}"),
    }
    // Anything else thrown traps; the error says what to throw instead and
    // keeps what the guest said.
    for (what, quoted) in [
        ("error", "(received `Error: the index is not loaded`)"),
        ("object", "(received `[object Object]`)"),
    ] {
        let e = tool
            .call(&json!({ "throw": what }).to_string())
            .unwrap_err();
        assert!(
            matches!(e, ToolError::Plugin(PluginError::Trap { .. })),
            "{what}: {e:?}"
        );
        assert_eq!(e.agent_message(), "Error: the tool crashed");
        let s = e.to_string();
        assert!(
            s.starts_with(
                "js-throws (js-throws.wasm): call trapped: JavaScript: `call` must return a \
                 string, or throw { tag: 'invalid-arguments' | 'failed', val: 'message' }"
            ) && s.contains(quoted),
            "{what}: {s}"
        );
    }
    // Returning an object instead of a string.
    let e = tool
        .call(r#"{"throw": "return-object"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "call trapped: JavaScript: `call` must return a string (JSON.stringify an object)"
        ),
        "{e}"
    );
    // The trapped instance was replaced.
    assert_eq!(
        tool.call(r#"{"throw": "nothing"}"#).unwrap(),
        "nothing thrown"
    );
    // `init` throwing an Error object: the load fails, saying to throw a string.
    let e = ToolPlugin::load(
        &host,
        &PluginSpec::new(&file).config(json!({"init_throws_error": true})),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("init trapped: JavaScript: `init` must throw a string as its error"),
        "{e}"
    );
}
