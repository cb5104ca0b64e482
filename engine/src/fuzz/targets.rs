//! The fuzz targets: what each one feeds, and its seeds.
//!
//! Several targets read more than one file or string: their input is the
//! parts joined by `\0` (see [`parts`]).

use std::path::Path;

use serde_json::json;

use super::mutate::{self, Mutator};
use super::{gguf_seed, Target};
use crate::rng::Rng;

pub static TARGETS: &[Target] = &[
    Target {
        name: "protocol",
        about: "turn parser and streaming stop of both protocols (tags, native and Llama JSON calls): no panic, stop on any chunking = stop on the whole text, parse(text[..stop]) = parse(text), rendered calls parse back",
        run: protocol,
        seeds: protocol_seeds,
        dict: &[
            "<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>",
            "<search>", "</search>", "<|python_tag|>", "{", "}", "\"name\"", "\"arguments\"",
            "\"parameters\"", ":", ",", "\"", "\\", "é", "😀", " ",
        ],
        structured: None,
        max_len: 1024,
    },
    Target {
        name: "gguf",
        about: "GGUF reader, tensor bounds, dequantizers and the whole import (a mutated tiny Llama file)",
        run: gguf,
        seeds: gguf_seeds,
        dict: &["GGUF", "general.alignment", "llama.block_count", "tokenizer.ggml.tokens"],
        structured: Some(gguf_structured),
        max_len: 1 << 16,
    },
    Target {
        name: "dequant",
        about: "every supported ggml block type dequantized from arbitrary bytes (f32 and bf16 paths, size checks)",
        run: dequant,
        seeds: dequant_seeds,
        dict: &[],
        structured: None,
        max_len: 4096,
    },
    Target {
        name: "safetensors",
        about: "model.safetensors header and data read by stored_dtype and load_weights (tiny config)",
        run: safetensors,
        seeds: safetensors_seeds,
        dict: &["\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"F32\"", "\"BF16\"", "\"F16\"", "\"I64\"", "1099511627776", "18446744073709551615"],
        structured: Some(safetensors_structured),
        max_len: 1 << 16,
    },
    Target {
        name: "model_config",
        about: "config.json of a model folder: ModelConfig::load, tensor shapes, parameter count",
        run: model_config,
        seeds: model_config_seeds,
        dict: &["\"rope_scaling\"", "\"llama3\"", "\"yarn\"", "\"linear\"", "\"dynamic\"", "\"head_dim\"", "\"num_key_value_heads\"", "\"eos_token_id\""],
        structured: Some(mutate::json),
        max_len: 8192,
    },
    Target {
        name: "runfile",
        about: "run files with --set overrides (apply_overrides), parsed as sft, train and rollout/eval configs",
        run: runfile,
        seeds: runfile_seeds,
        dict: &["=", ".", "[", "]", "[[tools]]", "rl.", "tools.0.", "0", "99999999999999999999", "\"", "{ k = 2 }", "\n", "#"],
        structured: None,
        max_len: 8192,
    },
    Target {
        name: "tokenizer",
        about: "tokenizer.json + tokenizer_config.json (chat template) + generation_config.json loaded by Tokenizer::load_dir, then encode, decode and a chat render",
        run: tokenizer,
        seeds: tokenizer_seeds,
        dict: &["\"model\"", "\"vocab\"", "\"merges\"", "\"added_tokens\"", "\"chat_template\"", "{{", "}}", "{%", "%}", "\"eos_token_id\"", "\"pre_tokenizer\"", "\"normalizer\""],
        structured: Some(mutate::json),
        max_len: 1 << 16,
    },
    Target {
        name: "report",
        about: "a run folder's metrics.jsonl, eval.jsonl, samples/step-N.jsonl and config.toml read by load_run, then the HTML report rendered",
        run: report,
        seeds: report_seeds,
        dict: &["null", "NaN", "1e308", "-1", "\"step\"", "\"gt_probability\"", "<|im_start|>assistant\n", "<|im_end|>"],
        structured: Some(mutate::json),
        max_len: 1 << 14,
    },
    Target {
        name: "plugin_args",
        about: "the plugin host's argument checks (a declared JSON Schema compiled, tool arguments checked against it) and output truncation",
        run: plugin_args,
        seeds: plugin_args_seeds,
        dict: &["\"type\"", "\"object\"", "\"string\"", "\"properties\"", "\"required\"", "\"minimum\"", "\"maxLength\"", "\"$ref\"", "\"#/$defs/a\"", "\"pattern\"", "\"enum\"", "\"items\"", "é", "😀"],
        structured: Some(mutate::json),
        max_len: 4096,
    },
    Target {
        name: "plugin_results",
        about: "the host's checks of what plugins return: reward outputs (outcome, turn rewards, details JSON) and dataset examples' metadata JSON",
        run: plugin_results,
        seeds: plugin_results_seeds,
        dict: &["NaN", "inf", "{", "}", "[", "]", "null", "\"x\""],
        structured: Some(mutate::json),
        max_len: 4096,
    },
    Target {
        name: "plugin_call",
        about: "the echo tool plugin (IGPO_PLUGIN_DIR) called through the host with arbitrary argument bytes: invalid UTF-8 and JSON refused, the rest answered",
        run: plugin_call,
        seeds: plugin_call_seeds,
        dict: &["{", "}", "\"text\"", ":", "\\u0000", "é"],
        structured: Some(mutate::json),
        max_len: 4096,
    },
];

/// Splits a multi-part input at `\0` into `n` parts (missing ones empty).
fn parts(input: &[u8], n: usize) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = input.splitn(n, |&b| b == 0).collect();
    v.resize(n, &[]);
    v
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&0u8)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create scratch folder");
    }
    std::fs::write(path, bytes).expect("write scratch file");
}

// ------------------------------------------------------------- protocol

fn protocol(input: &[u8], _: &Path) {
    use crate::rollout::protocol::{
        parse_turn_in, stop_at_in, tags_balanced, truncate_result, Protocol, ToolCallFormat,
        TurnAction, TurnFormat,
    };
    let text = text(input);
    let formats = [
        TurnFormat::new(Protocol::ToolCall, ToolCallFormat::Prompted),
        TurnFormat::new(Protocol::ToolCall, ToolCallFormat::Hermes),
        TurnFormat::new(
            Protocol::ToolCall,
            ToolCallFormat::LlamaJson {
                python_tag: Some("<|python_tag|>".into()),
            },
        ),
        TurnFormat::new(
            Protocol::ToolCall,
            ToolCallFormat::LlamaJson { python_tag: None },
        ),
        TurnFormat::new(Protocol::SearchTags, ToolCallFormat::Prompted),
    ];
    for format in &formats {
        let whole = stop_at_in(format, &text);
        let parsed = parse_turn_in(format, &text, "search");
        if let TurnAction::Malformed(m) = &parsed {
            assert!(m.starts_with("error: "), "{format:?}: message {m:?}");
        }
        if let Some(n) = whole {
            assert!(
                text.is_char_boundary(n),
                "{format:?}: stop at {n} inside a char"
            );
            assert_eq!(
                parse_turn_in(format, &text[..n], "search"),
                parsed,
                "{format:?}: parse of the text up to the stop differs"
            );
        }
        // Streaming: the text arrives in chunks (sizes drawn from the input);
        // the stop fires at the first chunk that completes the action, at
        // the same place as on the whole text.
        let mut rng = Rng::new(super::driver::fnv1a(input));
        let mut end = 0;
        let mut streamed = None;
        while end < text.len() {
            end = (end + 1 + (rng.next_u64() % 12) as usize).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if let Some(n) = stop_at_in(format, &text[..end]) {
                assert!(n <= end);
                streamed = Some(n);
                break;
            }
        }
        assert_eq!(
            streamed, whole,
            "{format:?}: streamed stop differs from the whole text's"
        );
    }
    // A call as the format asks the model to write it parses back.
    let name = text.trim();
    if !name.is_empty() && !text.contains('<') {
        let args = json!({ "q": text, "n": input.len() });
        for format in &formats[..4] {
            let call = format.calls.call_text(name, &args);
            let expected = TurnAction::ToolCall {
                name: name.to_string(),
                arguments: args.clone(),
            };
            assert_eq!(
                parse_turn_in(format, &call, "search"),
                expected,
                "{format:?}"
            );
            assert_eq!(stop_at_in(format, &call), Some(call.len()), "{format:?}");
        }
    }
    tags_balanced(&text);
    let max = input.first().map_or(0, |&b| b as usize % 64);
    let cut = truncate_result(&text, max);
    let kept: String = text.chars().take(max).collect();
    assert!(cut.starts_with(&kept));
    if text.chars().count() <= max {
        assert_eq!(cut, text);
    }
}

fn protocol_seeds() -> Vec<Vec<u8>> {
    [
        "<think>I need the capital.</think>\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"capital of France\"}}\n</tool_call>",
        "<think>ok</think><answer> Paris </answer>",
        "<think>x</think><search> capital of France </search>",
        "<tool_call>{\"name\": \"search\", \"arguments\": \"{\\\"query\\\": \\\"a\\\"}\"}</tool_call> trailing",
        "<answer>unclosed",
        "<tool_call><tool_call>{}</tool_call>",
        "<think>a</think>\n<|python_tag|>{\"name\": \"search\", \"parameters\": {\"query\": \"x\"}}",
        "{\"name\": \"search\", \"parameters\": {\"query\": \"}\"}} <answer>x</answer>",
        "</answer><answer>a</tool_call></answer>",
        "plain text, no action. é 😀",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

// ----------------------------------------------------------------- gguf

fn gguf(input: &[u8], scratch: &Path) {
    let path = scratch.join("model.gguf");
    write(&path, input);
    // The reader on its own: every tensor's bytes, dequantized when small.
    if let Ok(file) = crate::model::gguf::reader::GgufFile::open(&path) {
        for t in &file.tensors {
            let Ok(data) = file.tensor_data(t) else {
                continue;
            };
            let n = t.n_elements();
            if n <= 1 << 16 && t.ty.can_dequantize() {
                let mut dst = vec![0f32; n as usize];
                crate::model::gguf::dequant::dequantize(t.ty, data, &mut dst)
                    .expect("a tensor whose bytes the reader accepted dequantizes");
            }
        }
    }
    // The whole import; a success must have written a loadable config.
    if crate::model::gguf::import_gguf(&path, &scratch.join("out")).is_ok() {
        crate::model::ModelConfig::load(&scratch.join("out"))
            .expect("an imported folder's config.json loads");
    }
}

fn gguf_seeds() -> Vec<Vec<u8>> {
    vec![gguf_seed::tiny_llama(32), gguf_seed::tiny_llama(64)]
}

/// Header fields: an interesting integer at a random 4- or 8-byte slot of
/// the header region (counts, lengths, dims, types, offsets all live there).
// `&mut Vec`: the signature every structured mutation shares.
#[allow(clippy::ptr_arg)]
fn gguf_structured(m: &mut Mutator, b: &mut Vec<u8>) -> bool {
    let header_len = b.len().min(8192);
    if header_len < 24 {
        return false;
    }
    let at = 8 + m.below(header_len - 16);
    let v: u64 = [0, 1, 4, 5, 9, 13, 255, 1 << 31, 1 << 32, 1 << 40, u64::MAX][m.below(11)];
    let width = if m.chance(0.5) { 4 } else { 8 };
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    true
}

// -------------------------------------------------------------- dequant

fn dequant(input: &[u8], _: &Path) {
    use crate::model::gguf::dequant::{dequantize, DequantError, GgmlType, Kernel};
    const TYPES: [GgmlType; 17] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::F64,
        GgmlType::BF16,
    ];
    let Some((&sel, src)) = input.split_first() else {
        return;
    };
    let ty = TYPES[sel as usize % TYPES.len()];
    let k = Kernel::of(ty).expect("every listed type has a kernel");
    let blocks = src.len() / k.bytes;
    let whole = &src[..blocks * k.bytes];
    let mut dst = vec![0f32; blocks * k.block];
    dequantize(ty, whole, &mut dst).expect("whole blocks dequantize");
    // bf16 straight from the blocks matches f32-then-round, bit for bit.
    let mut bf = vec![0u8; dst.len() * 2];
    k.row_to_bf16(whole, &mut bf);
    for (v, b) in dst.iter().zip(bf.chunks_exact(2)) {
        let want = half::bf16::from_f32(*v).to_bits();
        let got = u16::from_le_bytes([b[0], b[1]]);
        assert!(
            want == got || (v.is_nan() && half::bf16::from_bits(got).is_nan()),
            "{}: bf16 {got:#x} for {v}",
            ty.name()
        );
    }
    // Sizes that do not fit the layout are refused, not read past.
    if src.len() != whole.len() {
        assert!(matches!(
            dequantize(ty, src, &mut dst),
            Err(DequantError::Size { .. })
        ));
    }
    if !dst.is_empty() {
        let n = dst.len() + 1;
        assert!(dequantize(ty, whole, &mut vec![0f32; n]).is_err());
    }
}

fn dequant_seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(3);
    (0u8..17)
        .map(|ty| {
            let mut v = vec![ty];
            v.extend((0..600).map(|_| rng.next_u64() as u8));
            v
        })
        .collect()
}

// ---------------------------------------------------------- safetensors

fn tiny_config() -> crate::model::ModelConfig {
    use crate::model::init::Dims;
    crate::model::ModelConfig::from_dims(
        crate::model::Arch::Llama,
        Dims {
            vocab: 16,
            hidden: 8,
            intermediate: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            tied: true,
        },
    )
    .expect("a valid tiny shape")
}

fn safetensors(input: &[u8], scratch: &Path) {
    write(&scratch.join("model.safetensors"), input);
    let config = tiny_config();
    let _ = crate::model::stored_dtype(scratch);
    if let Ok(tensors) = crate::model::load_weights(scratch, &config) {
        for (name, shape) in config.tensor_shapes() {
            assert_eq!(tensors[&name].shape(), shape.as_slice(), "{name}");
        }
    }
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    use crate::tensor::DType;
    let config = tiny_config();
    let weights = crate::model::init::random_weights(&config, 1);
    let dir = std::env::temp_dir().join(format!("igpo-fuzz-seed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("seed folder");
    let seeds = [DType::F32, DType::BF16, DType::F16]
        .iter()
        .map(|&dtype| {
            let path = dir.join("model.safetensors");
            crate::model::save_safetensors(&path, &weights, dtype).expect("write seed");
            std::fs::read(&path).expect("read seed")
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    seeds
}

/// The JSON header (after its u64 length), mutated and re-framed.
fn safetensors_structured(m: &mut Mutator, b: &mut Vec<u8>) -> bool {
    if b.len() < 8 {
        return false;
    }
    let n = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
    if n > b.len() - 8 {
        return false;
    }
    let mut header = b[8..8 + n].to_vec();
    if !m.mutate_json_text(&mut header) {
        return false;
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(&b[8 + n..]);
    *b = out;
    true
}

// --------------------------------------------------------- model_config

fn model_config(input: &[u8], scratch: &Path) {
    write(&scratch.join("config.json"), input);
    if let Ok(c) = crate::model::ModelConfig::load(scratch) {
        let _ = c.tensor_shapes();
        let _ = c.num_parameters();
        let _ = c.rope_description();
        // What the engine writes, it reads back the same.
        let again = crate::model::ModelConfig::from_json(&c.to_json(), "config.json")
            .expect("a config's own JSON loads");
        assert_eq!(again, c);
    }
}

fn model_config_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = ["qwen2.5-0.5b", "smollm2-135m"]
        .iter()
        .map(|p| {
            let c = crate::model::init::preset(p).expect("a preset");
            serde_json::to_vec(&c.to_json()).expect("json")
        })
        .collect();
    let mut llama3 = crate::model::init::preset("smollm2-135m")
        .expect("a preset")
        .to_json();
    llama3["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    seeds.push(serde_json::to_vec(&llama3).expect("json"));
    let mut yarn = llama3.clone();
    yarn["rope_scaling"] =
        json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
    seeds.push(serde_json::to_vec(&yarn).expect("json"));
    seeds
}

// -------------------------------------------------------------- runfile

fn runfile(input: &[u8], scratch: &Path) {
    use crate::runfile::{apply_overrides, RunFile};
    let all = text(input);
    let mut pieces = all.split('\0');
    let file_text = pieces.next().unwrap_or_default().to_string();
    let sets: Vec<String> = pieces.map(str::to_string).collect();
    let Ok(merged) = apply_overrides(&file_text, &sets) else {
        return;
    };
    if !sets.is_empty() {
        // The merged text is TOML again, and applying nothing keeps it.
        merged
            .parse::<toml::Table>()
            .expect("merged run file is TOML");
    }
    let file = RunFile {
        path: scratch.join("run.toml"),
        text: merged,
    };
    let _ = crate::train::SftConfig::from_run_file(&file);
    let _ = crate::train::RlRunConfig::from_run_file(&file);
    let _ = crate::eval::AgentRunConfig::from_run_file(&file);
}

fn runfile_seeds() -> Vec<Vec<u8>> {
    let files = [
        include_str!("../../../examples/demo/igpo.toml"),
        include_str!("../../../examples/demo/sft.toml"),
        include_str!("../../../examples/demo/eval.toml"),
        include_str!("../../../examples/agent/squad-igpo.toml"),
        include_str!("../../../examples/sft/smollm2-capitals.toml"),
    ];
    let sets = [
        vec![],
        vec!["rl.group_size=4"],
        vec!["tools.0.config.k=3", "train.lr=1e-6"],
        vec!["model=/models/x", "seed=7"],
        vec!["agent.max_turns=[1, 2]", "new.table.key={ k = 2 }"],
    ];
    files
        .iter()
        .flat_map(|f| {
            sets.iter().map(move |s| {
                let mut v = f.as_bytes().to_vec();
                for set in s {
                    v.push(0);
                    v.extend(set.as_bytes());
                }
                v
            })
        })
        .collect()
}

// ------------------------------------------------------------ tokenizer

fn tokenizer(input: &[u8], scratch: &Path) {
    use crate::tokenizer::{Message, Tokenizer};
    let p = parts(input, 3);
    write(&scratch.join("tokenizer.json"), p[0]);
    if !p[1].is_empty() {
        write(&scratch.join("tokenizer_config.json"), p[1]);
    }
    if !p[2].is_empty() {
        write(&scratch.join("generation_config.json"), p[2]);
    }
    let Ok(tok) = Tokenizer::load_dir(scratch) else {
        return;
    };
    let _ = tok.end_of_turn_ids();
    let _ = tok.stop_ids();
    let _ = tok.vocab_size();
    if let Ok(ids) = tok.encode("the <|im_end|> thé 😀") {
        let _ = tok.decode(&ids, false);
        let _ = tok.decode(&ids, true);
    }
    let _ = tok.decode(&[0, 1, u32::MAX], false);
    let _ = tok.id_token(u32::MAX);
    let messages = [Message::new("system", "s"), Message::new("user", "q")];
    let _ = tok.encode_chat(&messages, true);
}

fn tokenizer_seeds() -> Vec<Vec<u8>> {
    let texts: Vec<String> = (0..40)
        .map(|i| format!("the quick brown fox {i} jumps over the lazy dog; thé 😀"))
        .collect();
    let tok = crate::tokenizer::train_bpe(&texts, 300).expect("train a tiny BPE");
    let json = tok.to_string(false).expect("tokenizer JSON");
    let config =
        serde_json::to_string(&crate::tokenizer::chat::chatml_tokenizer_config()).expect("json");
    let generation = r#"{"eos_token_id": [2, 0], "bos_token_id": 1}"#;
    vec![
        json.clone().into_bytes(),
        join(&[json.as_bytes(), config.as_bytes(), generation.as_bytes()]),
    ]
}

// --------------------------------------------------------------- report

fn report(input: &[u8], scratch: &Path) {
    let p = parts(input, 4);
    write(&scratch.join("metrics.jsonl"), p[0]);
    if !p[1].is_empty() {
        write(&scratch.join("eval.jsonl"), p[1]);
    }
    if !p[2].is_empty() {
        write(&scratch.join("samples/step-3.jsonl"), p[2]);
    }
    if !p[3].is_empty() {
        write(&scratch.join("config.toml"), p[3]);
    }
    if let Ok(run) = crate::report::load_run(scratch) {
        let _ = crate::report::render(&[run]);
    }
}

fn report_seeds() -> Vec<Vec<u8>> {
    let metric = |step: u64, r: f64| {
        json!({"step": step, "outcome_reward": r, "f1": r, "mean_turns": 2.0,
            "ig_mean": [0.1, null], "ig_std": [0.0, 0.2], "gt_entropy_drop": 0.1,
            "zero_adv_ratio": 0.25, "kl": null, "entropy": 1.5, "clip_frac": 0.0,
            "cum_grad_tokens": step * 100, "rollout_s": 1.0, "scoring_s": 0.5, "update_s": 2.0})
        .to_string()
    };
    let metrics = (1..=4)
        .map(|s| metric(s, s as f64 / 4.0))
        .collect::<Vec<_>>()
        .join("\n");
    let evals = [
        json!({"step": 0, "cum_grad_tokens": 0, "f1": 0.1, "em": 0.0}),
        json!({"step": 4, "cum_grad_tokens": 400, "f1": 0.3, "em": 0.2}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    let sample = json!({"id": "a", "question": "Capital of France?", "answers": ["Paris"],
        "final_answer": "Paris", "f1": 1.0, "outcome_reward": 1.0,
        "gt_probability": [0.1, 0.5, 0.9], "turn_rewards": [0.4, 0.4, 1.0],
        "text": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>\n<|im_start|>assistant\n<answer>Paris</answer>"})
    .to_string();
    let config = "[rl]\nestimator = \"igpo\"\n[eval]\nsplit = \"dev\"\n[dataset.plugin]\npath = \"qa.wasm\"\nconfig = { file = \"squad.json\" }\n";
    vec![
        metrics.clone().into_bytes(),
        join(&[
            metrics.as_bytes(),
            evals.as_bytes(),
            sample.as_bytes(),
            config.as_bytes(),
        ]),
    ]
}

// ---------------------------------------------------------- plugin_args

fn plugin_args(input: &[u8], _: &Path) {
    use crate::plugins::schema::Schema;
    let p = parts(input, 3);
    if let Ok(schema) = Schema::compile(&text(p[0])) {
        if let Err(message) = schema.check_arguments(&text(p[1])) {
            assert!(!message.is_empty());
        }
    }
    let max = p[2]
        .iter()
        .fold(0usize, |a, &b| a.wrapping_mul(7).wrapping_add(b as usize))
        % 4096;
    let original = text(p[1]);
    let cut = crate::plugins::truncate_output(original.clone(), max);
    if original.len() <= max {
        assert_eq!(cut, original);
    } else {
        let kept = cut.split("\n[output truncated").next().unwrap_or_default();
        assert!(kept.len() <= max && original.starts_with(kept));
    }
}

fn plugin_args_seeds() -> Vec<Vec<u8>> {
    let schemas = [
        r#"{"type":"object","properties":{"query":{"type":"string","minLength":1,"maxLength":200}},"required":["query"],"additionalProperties":false}"#,
        r#"{"type":"object","properties":{"k":{"type":"integer","minimum":1,"maximum":20},"tags":{"type":"array","items":{"enum":["a","b"]}}}}"#,
        r##"{"$schema":"http://json-schema.org/draft-07/schema#","definitions":{"a":{"type":"string","pattern":"^[a-z]+$"}},"properties":{"x":{"$ref":"#/definitions/a"}}}"##,
        r##"{"$defs":{"a":{"type":"number"}},"properties":{"x":{"$ref":"#/$defs/a"}},"oneOf":[{"required":["x"]},{"required":["y"]}]}"##,
    ];
    let args = [
        r#"{"query":"capital of France"}"#,
        r#"{"k":0,"tags":["c"]}"#,
        r#"{"x":"abc","y":[1,2,{"z":null}]}"#,
        "not json",
    ];
    schemas
        .iter()
        .zip(args)
        .map(|(s, a)| join(&[s.as_bytes(), a.as_bytes(), b"\x10\x02"]))
        .collect()
}

// ------------------------------------------------------- plugin_results

fn plugin_results(input: &[u8], _: &Path) {
    use crate::plugins::kinds::{check_reward_output, example_metadata};
    let p = parts(input, 3);
    // Part 0: {"outcome": x, "turn_rewards": [..] | null, "details": "..." | null}
    // as a reward plugin returns it; part 1: the number of turns; part 2:
    // a dataset example's metadata-json.
    let v: serde_json::Value = serde_json::from_slice(p[0]).unwrap_or_default();
    let outcome = v
        .get("outcome")
        .and_then(|x| x.as_f64())
        .unwrap_or(f64::NAN);
    let turn_rewards = v.get("turn_rewards").and_then(|r| {
        r.as_array().map(|a| {
            a.iter()
                .map(|x| x.as_f64().unwrap_or(f64::INFINITY))
                .collect()
        })
    });
    let details = v
        .get("details")
        .and_then(|d| d.as_str())
        .map(str::to_string);
    let n_turns = p[1].len();
    match check_reward_output("fuzz.wasm", outcome, turn_rewards.clone(), details, n_turns) {
        Ok(out) => {
            assert!(out.outcome.is_finite());
            if let Some(r) = &out.turn_rewards {
                assert_eq!(r.len(), n_turns);
                assert!(r.iter().all(|x| x.is_finite()));
            }
            assert!(out.details.as_ref().is_none_or(|d| d.is_object()));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = example_metadata("fuzz.wasm", 3, &text(p[2]));
}

fn plugin_results_seeds() -> Vec<Vec<u8>> {
    vec![
        join(&[
            br#"{"outcome":1.0,"turn_rewards":[0.5,1.0],"details":"{\"f1\":1.0}"}"#,
            b"ab",
            br#"{"source":"squad","n":3}"#,
        ]),
        join(&[
            br#"{"outcome":0.0,"turn_rewards":null,"details":null}"#,
            b"",
            b"",
        ]),
    ]
}

// ---------------------------------------------------------- plugin_call

/// The echo tool, loaded once per process (compiling it takes seconds, so
/// `plugin_call_seeds` loads it before the first timed input).
fn echo_tool() -> &'static crate::plugins::ToolPlugin {
    static TOOL: std::sync::OnceLock<crate::plugins::ToolPlugin> = std::sync::OnceLock::new();
    TOOL.get_or_init(|| {
        let dir = std::env::var_os("IGPO_PLUGIN_DIR").expect(
            "the plugin_call target needs IGPO_PLUGIN_DIR (the built plugins: cargo xtask plugins)",
        );
        let path = Path::new(&dir).join("echo-tool.wasm");
        let host = crate::plugins::PluginHost::new(crate::plugins::PluginHost::default_cache_dir());
        crate::plugins::ToolPlugin::load(&host, &crate::plugins::PluginSpec::new(&path))
            .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
    })
}

fn plugin_call(input: &[u8], _: &Path) {
    use crate::plugins::ToolError;
    let tool = echo_tool();
    match tool.call_bytes(input) {
        Ok(out) => {
            let args = std::str::from_utf8(input).expect("only UTF-8 reaches the guest");
            serde_json::from_str::<serde_json::Value>(args).expect("only JSON reaches the guest");
            assert!(out.len() <= crate::plugins::SandboxLimits::default().max_output_bytes + 100);
        }
        Err(ToolError::Plugin(e)) if std::str::from_utf8(input).is_ok() => {
            panic!("valid UTF-8 arguments crashed the echo tool: {e}")
        }
        Err(_) => {}
    }
}

fn plugin_call_seeds() -> Vec<Vec<u8>> {
    echo_tool();
    vec![
        br#"{"text":"hello"}"#.to_vec(),
        br#"{"a":[1,2,3],"b":{"c":null}}"#.to_vec(),
        b"{}".to_vec(),
    ]
}

/// The seeds are valid inputs: each one gets past the format's checks
/// (otherwise the mutations would only ever test the first check).
pub fn check_seeds() -> Result<(), String> {
    let scratch = std::env::temp_dir().join(format!("igpo-fuzz-seeds-{}", std::process::id()));
    let fresh = |name: &str| {
        let d = scratch.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("seed of {what}: {e}");
    for (i, seed) in gguf_seeds().iter().enumerate() {
        let d = fresh("gguf");
        write(&d.join("m.gguf"), seed);
        let s = crate::model::gguf::import_gguf(&d.join("m.gguf"), &d.join("out"))
            .map_err(|e| fail(&format!("gguf #{i}"), &e))?;
        if s.n_tensors != 11 {
            return Err(format!("gguf seed #{i}: {} tensors", s.n_tensors));
        }
    }
    for seed in safetensors_seeds() {
        let d = fresh("st");
        write(&d.join("model.safetensors"), &seed);
        crate::model::load_weights(&d, &tiny_config()).map_err(|e| fail("safetensors", &e))?;
    }
    for seed in model_config_seeds() {
        let v: serde_json::Value = serde_json::from_slice(&seed).map_err(|e| fail("config", &e))?;
        crate::model::ModelConfig::from_json(&v, "config.json").map_err(|e| fail("config", &e))?;
    }
    for seed in runfile_seeds() {
        let all = text(&seed);
        let mut pieces = all.split('\0');
        let file_text = pieces.next().unwrap_or_default().to_string();
        let sets: Vec<String> = pieces.map(str::to_string).collect();
        crate::runfile::apply_overrides(&file_text, &sets).map_err(|e| fail("runfile", &e))?;
    }
    for seed in tokenizer_seeds() {
        let d = fresh("tok");
        let p = parts(&seed, 3);
        write(&d.join("tokenizer.json"), p[0]);
        if !p[1].is_empty() {
            write(&d.join("tokenizer_config.json"), p[1]);
        }
        let tok = crate::tokenizer::Tokenizer::load_dir(&d).map_err(|e| fail("tokenizer", &e))?;
        tok.encode("the fox").map_err(|e| fail("tokenizer", &e))?;
    }
    for seed in report_seeds() {
        let d = fresh("report");
        let p = parts(&seed, 4);
        write(&d.join("metrics.jsonl"), p[0]);
        for (name, part) in [
            ("eval.jsonl", p[1]),
            ("samples/step-3.jsonl", p[2]),
            ("config.toml", p[3]),
        ] {
            if !part.is_empty() {
                write(&d.join(name), part);
            }
        }
        let run = crate::report::load_run(&d).map_err(|e| fail("report", &e))?;
        crate::report::render(&[run]).map_err(|e| fail("report", &e))?;
    }
    for seed in plugin_args_seeds().iter().take(3) {
        let p = parts(seed, 3);
        crate::plugins::schema::Schema::compile(&text(p[0]))
            .map_err(|e| fail("plugin_args", &e))?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
