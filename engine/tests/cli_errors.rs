//! Bad input gets one clear error line naming what is wrong, and exit code 2.

use crate::common;

use common::igpo;
use std::path::{Path, PathBuf};

/// Asserts failure with exactly one stderr line that contains every `needle`.
fn assert_one_line_error(args: &[&str], needles: &[&str]) {
    let (code, _, err) = igpo(args);
    assert_eq!(code, 2, "{args:?} should fail; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got:\n{err}"
    );
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "{args:?}: `{n}` missing from: {}",
            lines[0]
        );
    }
}

fn tiny_model(dir: &Path) {
    common::init_tiny_model(dir, &["--seed", "3"]);
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("igpo-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn init_then_inspect_and_generate_work() {
    let dir = scratch("ok");
    tiny_model(&dir);
    let d = dir.to_str().unwrap();
    let (code, out, err) = igpo(&["model", "inspect", d]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Qwen2ForCausalLM") && out.contains("stored dtype:  bf16"),
        "{out}"
    );
    let (code, _, err) = igpo(&[
        "generate",
        "--model",
        d,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("new tokens"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_name_file_and_field() {
    let dir = scratch("cfg");
    tiny_model(&dir);
    let d = dir.to_str().unwrap();
    let cfg = dir.join("config.json");
    let cfg_s = cfg.to_str().unwrap();

    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["MambaForCausalLM"])
    });
    assert_one_line_error(
        &["model", "inspect", d],
        &[cfg_s, "unknown architecture `MambaForCausalLM`"],
    );

    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        v.as_object_mut().unwrap().remove("num_attention_heads");
    });
    assert_one_line_error(
        &["generate", "--model", d, "--prompt", "x"],
        &[cfg_s, "num_attention_heads"],
    );

    std::fs::write(&cfg, "{ not json").unwrap();
    assert_one_line_error(&["model", "inspect", d], &[cfg_s, "not valid JSON"]);

    std::fs::remove_file(&cfg).unwrap();
    assert_one_line_error(&["model", "inspect", d], &[cfg_s]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn weight_errors_name_the_tensor() {
    let dir = scratch("w");
    tiny_model(&dir);
    let d = dir.to_str().unwrap();
    // Claim a wider MLP than the checkpoint holds: the first mismatching tensor is named.
    edit_config(&dir, |v| v["intermediate_size"] = serde_json::json!(96));
    assert_one_line_error(
        &["generate", "--model", d, "--prompt", "x"],
        &["mlp", "[64, 32]", "expected [96, 32]"],
    );
    // Claim a second layer that the checkpoint lacks.
    edit_config(&dir, |v| {
        v["intermediate_size"] = serde_json::json!(64);
        v["num_hidden_layers"] = serde_json::json!(2);
    });
    assert_one_line_error(
        &["generate", "--model", d, "--prompt", "x"],
        &["no tensor `model.layers.1."],
    );
    // A truncated safetensors file.
    edit_config(&dir, |v| v["num_hidden_layers"] = serde_json::json!(1));
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &["generate", "--model", d, "--prompt", "x"],
        &["model.safetensors", "truncated"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_are_explained() {
    assert_one_line_error(
        &["generate", "--model", "/nonexistent-igpo", "--prompt", "x"],
        &["/nonexistent-igpo"],
    );
    let tok = common::data_dir().join("qwen2.5-tokenizer.json");
    assert_one_line_error(
        &[
            "model",
            "init",
            "--preset",
            "gpt5",
            "--vocab-from",
            tok.to_str().unwrap(),
            "/tmp/igpo-never",
        ],
        &["unknown --preset `gpt5`"],
    );
}

/// `model inspect` names the architecture, whether heads are q/k-normed and
/// the RoPE scaling with its parameters.
#[test]
fn inspect_prints_the_architecture_and_the_rope_scaling() {
    let tok = common::data_dir().join("qwen2.5-tokenizer.json");
    let init = |dir: &Path, arch: &str| common::init_tiny_model_of(dir, arch, &tok, &[]);
    let qwen3 = scratch("inspect-qwen3");
    init(&qwen3, "qwen3");
    let (code, out, err) = igpo(&["model", "inspect", qwen3.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("architecture:  Qwen3ForCausalLM (qwen3)"),
        "{out}"
    );
    assert!(out.contains("qkv bias false, q/k norm true"), "{out}");
    assert!(
        out.contains("rope:          theta 1000000, scaling none"),
        "{out}"
    );

    let llama = scratch("inspect-llama3");
    init(&llama, "llama");
    edit_config(&llama, |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        v["max_position_embeddings"] = serde_json::json!(131072);
    });
    let (code, out, err) = igpo(&["model", "inspect", llama.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("q/k norm false"), "{out}");
    assert!(
        out.contains("rope:          theta 10000, scaling llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192), max positions 131072"),
        "{out}"
    );
    for dir in [qwen3, llama] {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
