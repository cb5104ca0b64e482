//! `igpo plugin check|describe|call|prompt` and `igpo data corpus` as a user runs
//! them: one clear line on error, exit code 2.

use crate::common;
use crate::plugins_support;

use std::process::{Command, Output};

use plugins_support::{plugin_dir, scratch};

fn igpo(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_igpo"))
        .args(args)
        .env("IGPO_CACHE_DIR", cache)
        .output()
        .expect("run igpo")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn plugin_check_describe_and_call() {
    let Some(plugins) = plugin_dir("plugin_check_describe_and_call") else {
        return;
    };
    // A fresh cache for the caching check; the shared one (where the test
    // binaries already compiled the 18 MB Python component) for the rest.
    let fresh = scratch("cli-cache");
    let cache = plugins.join(".cache");
    let p = |f: &str| plugins.join(f).display().to_string();

    let out = igpo(&fresh, &["plugin", "check", &p("bm25-search.wasm")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("implements the `tool` world (igpo:plugins/tool-api@0.1.0)"),
        "{s}"
    );
    assert!(s.contains("name:        search"), "{s}");
    // The first run compiled and cached the component.
    let cached = std::fs::read_dir(fresh.join("components")).unwrap().count();
    assert_eq!(cached, 1, "one precompiled component in the cache");
    let again = igpo(&fresh, &["plugin", "check", &p("bm25-search.wasm")]);
    assert_eq!(text(&again.stdout), s);

    let out = igpo(&cache, &["plugin", "describe", &p("qa-reward.wasm")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["world"], "reward");
    assert_eq!(d["config_schema"]["properties"]["outcome"]["default"], "f1");

    let out = igpo(
        &cache,
        &[
            "plugin",
            "call",
            &p("calculator.wasm"),
            "--args",
            r#"{"expression": "6*7"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");

    let traj =
        r#"{"question":"Who won?","references":["Denver Broncos"],"final_answer":"the Broncos"}"#;
    let out = igpo(
        &cache,
        &["plugin", "call", &p("qa-reward.wasm"), "--args", traj],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (r["outcome"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "{r}"
    );

    let data = common::data_dir().display().to_string();
    let out = igpo(
        &cache,
        &[
            "plugin",
            "call",
            &p("qa-dataset.wasm"),
            "--dir",
            &data,
            "--config",
            r#"{"file":"fanoutqa-dev.json","dev_size":10}"#,
            "--args",
            r#"{"split":"dev","index":9}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(e["question"].is_string() && e["answers"].is_array(), "{e}");
}

#[test]
fn plugin_errors_are_one_line() {
    let Some(plugins) = plugin_dir("plugin_errors_are_one_line") else {
        return;
    };
    let cache = scratch("cli-cache-errors");
    let dir = scratch("cli-errors");
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let empty_s = empty.display().to_string();
    let hostile = plugins.join("hostile-tool.wasm").display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["plugin", "check", &empty_s], format!("error: {empty_s}: implements none of the igpo:plugins@0.1.0 worlds: missing export `igpo:plugins/tool-api@0.1.0`")),
        (vec!["plugin", "check", "/nonexistent.wasm"], "error: /nonexistent.wasm: No such file".into()),
        (vec!["plugin", "call", &hostile, "--args", r#"{"mode":"loop"}"#, "--limits", r#"{"call_timeout_ms":200}"#], "error: hostile (hostile-tool.wasm): call exceeded the time limit of 200 ms".into()),
        (vec!["plugin", "call", &hostile, "--args", r#"{"mode":"nope"}"#], "error: tool `hostile`: invalid arguments: unknown mode `nope`".into()),
        (vec!["plugin", "call", &hostile, "--limits", r#"{"timeout":1}"#], "error: --limits: unknown field `timeout`".into()),
    ];
    for (args, want) in cases {
        let out = igpo(&cache, &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(&want), "{args:?}:\n{err}\nwanted: {want}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line:\n{err}"
        );
    }
}

#[test]
fn data_corpus_writes_12100_passages() {
    let dir = scratch("cli-corpus");
    let data = common::data_dir();
    let out_file = dir.join("corpus.jsonl");
    let out = igpo(
        &dir,
        &[
            "data",
            "corpus",
            "--squad",
            &data.join("squad-dev-v1.1.json").display().to_string(),
            "--wiki",
            &data.join("wiki-summaries-en.json").display().to_string(),
            "--out",
            &out_file.display().to_string(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 12_100);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["id"], "squad:0:0");
    assert_eq!(first["title"], "Super Bowl 50");
    let out = igpo(
        &dir,
        &[
            "data",
            "corpus",
            "--squad",
            "/nonexistent.json",
            "--out",
            "x.jsonl",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: /nonexistent.json: No such file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plugin_prompt_prints_the_agent_system_prompt() {
    let Some(plugins) = plugin_dir("plugin_prompt_prints_the_agent_system_prompt") else {
        return;
    };
    let cache = plugins.join(".cache");
    let files = [
        plugins.join("hostile-tool.wasm"),
        plugins.join("echo-tool.wasm"),
    ];
    let pool = igpo::plugins::ToolPool::load(
        &plugins_support::host(&plugins),
        &files
            .iter()
            .map(igpo::plugins::PluginSpec::new)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for protocol in [
        igpo::rollout::protocol::Protocol::ToolCall,
        igpo::rollout::protocol::Protocol::SearchTags,
    ] {
        let name = serde_json::to_value(protocol).unwrap();
        let out = igpo(
            &cache,
            &[
                "plugin",
                "prompt",
                &files[0].display().to_string(),
                &files[1].display().to_string(),
                "--protocol",
                name.as_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let cfg = igpo::rollout::AgentConfig {
            protocol,
            ..Default::default()
        };
        let want = igpo::rollout::agent_system_prompt(
            &cfg,
            Some(&pool),
            &igpo::tokenizer::ToolCallFormat::Prompted,
        );
        assert_eq!(text(&out.stdout), format!("{want}\n"));
    }
    let out = igpo(
        &cache,
        &[
            "plugin",
            "prompt",
            &files[1].display().to_string(),
            "--protocol",
            "xml",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: --protocol: `xml` is not one of tool_call, search_tags\n"
    );
}

#[test]
fn plugin_bench_measures_any_tool_single_and_pooled() {
    let Some(plugins) = plugin_dir("plugin_bench_measures_any_tool_single_and_pooled") else {
        return;
    };
    let cache = plugins.join(".cache");
    let dir = scratch("cli-plugin-bench");
    let json = dir.join("bench.json");
    let counter = plugins.join("counting-tool.wasm").display().to_string();
    let out = igpo(
        &cache,
        &[
            "plugin",
            "bench",
            &counter,
            "--args",
            r#"{"text": "a"}"#,
            "--args",
            r#"{"text": "b", "times": 2}"#,
            "--calls",
            "40",
            "--instances",
            "3",
            "--out",
            json.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("(`counter`)") && s.contains("single   1 thread(s)"),
        "{s}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["tool"], "counter");
    assert_eq!(
        (
            r["single"]["threads"].as_u64(),
            r["single"]["calls"].as_u64()
        ),
        (Some(1), Some(40))
    );
    assert_eq!(
        (
            r["pooled"]["threads"].as_u64(),
            r["pooled"]["calls"].as_u64()
        ),
        (Some(3), Some(40))
    );
    for key in ["compile_s", "first_instance_s"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    // The counter's static data and stack: at least one 64 KiB page.
    assert!(r["instance_memory_bytes"].as_u64().unwrap() >= 65536, "{r}");
    assert_eq!(
        r["component_bytes"].as_u64().unwrap(),
        std::fs::metadata(&counter).unwrap().len()
    );
    // Arguments the tool refuses stop the bench with one line naming them.
    let out = igpo(
        &cache,
        &["plugin", "bench", &counter, "--args", r#"{"txt": "a"}"#],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(r#"error: a call with arguments {"txt": "a"} failed: tool `counter`: invalid arguments: "#),
        "{err}"
    );
    let out = igpo(&cache, &["plugin", "bench", &counter]);
    assert!(text(&out.stderr).contains("give the call arguments: --args JSON"));
}
