//! Tests of the GGUF import: synthetic models for the happy path and every
//! error the importer reports (written with the fuzz seed's GGUF writer),
//! and the real SmolLM2 file when `IGPO_SMOLLM2_GGUF` names it.
use super::*;
use crate::fuzz::gguf_seed::{Kv, Tensor};
use std::str::FromStr;

// ---- a GGUF file under construction -------------------------------------

#[derive(Clone)]
struct Gguf {
    version: u32,
    alignment: u64,
    kv: Vec<(String, Kv)>,
    tensors: Vec<Tensor>,
}

impl Gguf {
    fn set(&mut self, key: &str, v: Kv) {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.kv.push((key.to_string(), v)),
        }
    }

    fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _)| k != key);
    }

    fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .expect("tensor in test model")
    }

    fn bytes(&self) -> Vec<u8> {
        crate::fuzz::gguf_seed::write(self.version, self.alignment, &self.kv, &self.tensors)
    }
}

// ---- the tiny model -----------------------------------------------------

const HIDDEN: u64 = 64;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const HEAD_DIM: u64 = 16;
const FF: u64 = 96;
const LAYERS: u64 = 2;
const VOCAB_ROWS: u64 = 264;

/// Deterministic values that bf16 holds exactly (k/64, |k| <= 100).
fn exact_values(seed: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            ((seed.wrapping_mul(31).wrapping_add(i * 7919)) % 201) as f32 / 64.0 - 100.0 / 64.0
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Random-looking blocks of a quantized type, with finite f16 scales.
fn raw_blocks(ty: GgmlType, n_elements: u64, seed: u64) -> Vec<u8> {
    let (block, bytes) = ty.layout().expect("known type");
    let n_blocks = (n_elements / block) as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n_blocks * bytes as usize);
    for _ in 0..n_blocks {
        let mut b: Vec<u8> = (0..bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        b[0..2].copy_from_slice(&half::f16::from_f32(0.0123).to_bits().to_le_bytes());
        if ty == GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_bits().to_le_bytes());
        }
        out.extend(b);
    }
    out
}

/// llama.cpp's permute, written the way its convert script reads:
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for a in 0..2 {
            for b in 0..half {
                let src = h * 2 * half + a * half + b; // [h, a, b]
                let dst = h * 2 * half + b * 2 + a; // [h, b, a]
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The fuzz seed's byte-level BPE vocabulary (independent of vocab.rs),
/// plus `<think>` (type 4).
fn tokens() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let (mut toks, mut types, merges) = crate::fuzz::gguf_seed::vocab();
    toks.push("<think>".into());
    types.push(4);
    (toks, types, merges)
}

/// HF q_proj and k_proj matrices of layer 0, which the tests check after
/// the un-permutation.
fn hf_qk() -> (Vec<f32>, Vec<f32>) {
    let q = exact_values(11, (HEADS * HEAD_DIM * HIDDEN) as usize);
    let k = exact_values(12, (KV_HEADS * HEAD_DIM * HIDDEN) as usize);
    (q, k)
}

fn tiny_llama() -> Gguf {
    let (toks, types, merges) = tokens();
    let mut g = Gguf {
        version: 3,
        alignment: 32,
        kv: vec![],
        tensors: vec![],
    };
    g.set("general.architecture", Kv::Str("llama".into()));
    g.set("general.name", Kv::Str("tiny".into()));
    g.set("llama.block_count", Kv::U32(LAYERS as u32));
    g.set("llama.context_length", Kv::U32(256));
    g.set("llama.embedding_length", Kv::U32(HIDDEN as u32));
    g.set("llama.feed_forward_length", Kv::U32(FF as u32));
    g.set("llama.attention.head_count", Kv::U32(HEADS as u32));
    g.set("llama.attention.head_count_kv", Kv::U32(KV_HEADS as u32));
    g.set("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5));
    g.set("llama.rope.dimension_count", Kv::U32(HEAD_DIM as u32));
    g.set("tokenizer.ggml.model", Kv::Str("gpt2".into()));
    g.set("tokenizer.ggml.pre", Kv::Str("smollm".into()));
    g.set("tokenizer.ggml.tokens", Kv::StrArr(toks));
    g.set("tokenizer.ggml.token_type", Kv::I32Arr(types));
    g.set("tokenizer.ggml.merges", Kv::StrArr(merges));
    g.set("tokenizer.ggml.bos_token_id", Kv::U32(1));
    g.set("tokenizer.ggml.eos_token_id", Kv::U32(2));
    g.set("tokenizer.ggml.padding_token_id", Kv::U32(2));
    g.set("tokenizer.ggml.add_bos_token", Kv::Bool(false));
    g.set(
        "tokenizer.chat_template",
        Kv::Str("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
    );

    let mut push = |name: String, dims: Vec<u64>, ty: GgmlType, seed: u64| {
        let n: u64 = dims.iter().product();
        let data = match ty {
            GgmlType::F32 => f32_bytes(&exact_values(seed, n as usize)),
            GgmlType::F16 => exact_values(seed, n as usize)
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
                .collect(),
            _ => raw_blocks(ty, n, seed),
        };
        g.tensors.push(Tensor {
            name,
            dims,
            ty: ty.0,
            data,
        });
    };
    push(
        "token_embd.weight".into(),
        vec![HIDDEN, VOCAB_ROWS],
        GgmlType::Q8_0,
        1,
    );
    let (q, k) = hf_qk();
    for n in 0..LAYERS {
        let s = 100 * (n + 1);
        push(
            format!("blk.{n}.attn_norm.weight"),
            vec![HIDDEN],
            GgmlType::F32,
            s,
        );
        push(
            format!("blk.{n}.attn_q.weight"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            GgmlType::F32,
            s + 1,
        );
        push(
            format!("blk.{n}.attn_k.weight"),
            vec![HIDDEN, KV_HEADS * HEAD_DIM],
            GgmlType::F16,
            s + 2,
        );
        push(
            format!("blk.{n}.attn_v.weight"),
            vec![HIDDEN, KV_HEADS * HEAD_DIM],
            GgmlType::Q4_0,
            s + 3,
        );
        push(
            format!("blk.{n}.attn_output.weight"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            GgmlType::Q4_1,
            s + 4,
        );
        push(
            format!("blk.{n}.ffn_norm.weight"),
            vec![HIDDEN],
            GgmlType::F32,
            s + 5,
        );
        push(
            format!("blk.{n}.ffn_gate.weight"),
            vec![HIDDEN, FF],
            GgmlType::Q8_0,
            s + 6,
        );
        push(
            format!("blk.{n}.ffn_up.weight"),
            vec![HIDDEN, FF],
            GgmlType::Q4_0,
            s + 7,
        );
        push(
            format!("blk.{n}.ffn_down.weight"),
            vec![FF, HIDDEN],
            GgmlType::F16,
            s + 8,
        );
    }
    push("output_norm.weight".into(), vec![HIDDEN], GgmlType::F32, 3);
    // Layer 0's q/k hold known HF matrices, permuted as llama.cpp does.
    let rows_q = (HEADS * HEAD_DIM) as usize;
    let rows_k = (KV_HEADS * HEAD_DIM) as usize;
    g.tensor_mut("blk.0.attn_q.weight").data = f32_bytes(&llama_cpp_permute(
        &q,
        rows_q,
        HIDDEN as usize,
        HEADS as usize,
    ));
    let kp = llama_cpp_permute(&k, rows_k, HIDDEN as usize, KV_HEADS as usize);
    g.tensor_mut("blk.0.attn_k.weight").data = kp
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect();
    // Llama 3.1's RoPE scaling (factor 8 over 8192) as llama.cpp stores it.
    g.tensors.push(Tensor {
        name: "rope_freqs.weight".into(),
        dims: vec![HEAD_DIM / 2],
        ty: GgmlType::F32.0,
        data: f32_bytes(&crate::model::gguf::rope_factors::llama3_divisors(
            HEAD_DIM as usize,
            10000.0,
            8.0,
            8192.0,
        )),
    });
    g
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("igpo-gguf-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_gguf(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.0.join(name);
    fs::write(&p, bytes).expect("write test gguf");
    p
}

fn read_json(p: &Path) -> Json {
    serde_json::from_str(&fs::read_to_string(p).expect("read json")).expect("parse json")
}

fn bf16_tensor(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
    let v = t
        .data()
        .chunks_exact(2)
        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect();
    (t.shape().to_vec(), v)
}

// ---- happy path ----------------------------------------------------------

#[test]
fn imports_a_tiny_llama() {
    let tmp = TempDir::new("tiny");
    let g = tiny_llama();
    let src = write_gguf(&tmp, "tiny.gguf", &g.bytes());
    let out = tmp.0.join("hf");
    let s = import_gguf(&src, &out).expect("import");

    assert_eq!(s.architecture, "llama");
    assert_eq!(s.n_tensors, 2 + 9 * LAYERS as usize);
    assert_eq!(s.vocab_size, VOCAB_ROWS as usize);
    let per_layer = 2 * HIDDEN
        + 2 * HIDDEN * HEADS * HEAD_DIM
        + 2 * HIDDEN * KV_HEADS * HEAD_DIM
        + 3 * HIDDEN * FF;
    assert_eq!(
        s.n_params,
        HIDDEN * VOCAB_ROWS + HIDDEN + LAYERS * per_layer
    );
    assert_eq!(
        s.tensor_types,
        vec![
            ("F16".to_string(), 4),
            ("F32".into(), 8),
            ("Q4_0".into(), 4),
            ("Q4_1".into(), 2),
            ("Q8_0".into(), 3)
        ]
    );
    assert!(
        s.notes.iter().any(|n| n.contains("rope_freqs.weight")),
        "{:?}",
        s.notes
    );
    assert!(
        s.notes
            .iter()
            .any(|n| n.contains("264 rows for 263 tokens")),
        "{:?}",
        s.notes
    );

    // config.json
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["vocab_size"], VOCAB_ROWS);
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], FF);
    assert_eq!(c["num_hidden_layers"], LAYERS);
    assert_eq!(c["num_attention_heads"], HEADS);
    assert_eq!(c["num_key_value_heads"], KV_HEADS);
    assert!(c.get("head_dim").is_none());
    assert_eq!(c["rms_norm_eps"], json!(1e-5));
    assert_eq!(c["rope_theta"], json!(10000.0));
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["pad_token_id"], 2);
    assert_eq!(c["hidden_act"], "silu");
    assert_eq!(c["torch_dtype"], "bfloat16");
    assert_eq!(c["attention_bias"], false);
    assert_eq!(c["mlp_bias"], false);
    assert_eq!(
        c["rope_scaling"],
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    );
    // ... and the engine's own config reader accepts it.
    crate::model::ModelConfig::from_json(&c, "config.json").expect("engine reads the config");

    // model.safetensors
    let bytes = fs::read(out.join("model.safetensors")).expect("safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parses");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("metadata");
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let mut names = st.names();
    names.sort();
    let mut want = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ];
    for n in 0..LAYERS {
        for p in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            want.push(format!("model.layers.{n}.{p}"));
        }
    }
    want.sort();
    assert_eq!(
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        want
    );

    let (q, k) = hf_qk();
    let (shape, got) = bf16_tensor(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(shape, vec![(HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
    assert_eq!(got, q, "q_proj un-permuted back to the HF layout");
    let (shape, got) = bf16_tensor(&st, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(shape, vec![(KV_HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
    assert_eq!(got, k, "k_proj un-permuted with the kv head count");

    // v_proj: Q4_0, no permutation, rounded to bf16.
    let v_src = &g
        .tensors
        .iter()
        .find(|t| t.name == "blk.1.attn_v.weight")
        .unwrap()
        .data;
    let mut v = vec![0f32; (KV_HEADS * HEAD_DIM * HIDDEN) as usize];
    dequant::dequantize(GgmlType::Q4_0, v_src, &mut v).unwrap();
    let (shape, got) = bf16_tensor(&st, "model.layers.1.self_attn.v_proj.weight");
    assert_eq!(shape, vec![(KV_HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
    let want: Vec<f32> = v.iter().map(|x| bf16::from_f32(*x).to_f32()).collect();
    assert_eq!(got, want);
    let (shape, _) = bf16_tensor(&st, "model.embed_tokens.weight");
    assert_eq!(shape, vec![VOCAB_ROWS as usize, HIDDEN as usize]);
    let (shape, _) = bf16_tensor(&st, "model.layers.1.mlp.down_proj.weight");
    assert_eq!(shape, vec![HIDDEN as usize, FF as usize]);
    let (shape, got) = bf16_tensor(&st, "model.norm.weight");
    assert_eq!(shape, vec![HIDDEN as usize]);
    assert_eq!(got, exact_values(3, HIDDEN as usize));

    // tokenizer.json
    let tok =
        tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).expect("tokenizer loads");
    assert_eq!(tok.get_vocab_size(true), 263);
    let ids = |s: &str| tok.encode(s, true).expect("encode").get_ids().to_vec();
    let the = 3 + 256 + 2;
    assert_eq!(ids(" the"), vec![the]);
    let byte = |b: u8| 3 + u32::from(b);
    assert_eq!(ids("the"), vec![byte(b't'), 3 + 256 + 1]);
    assert_eq!(
        ids("<|im_start|> the<think>12"),
        vec![1, the, 262, byte(b'1'), byte(b'2')]
    );
    assert_eq!(
        tok.decode(&ids("<|im_start|> the<think>"), false).unwrap(),
        "<|im_start|> the<think>"
    );

    // tokenizer_config.json and generation_config.json
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|im_end|>");
    assert_eq!(tc["add_bos_token"], false);
    assert_eq!(tc["model_max_length"], 256);
    assert!(tc["chat_template"].as_str().unwrap().contains("messages"));
    let gc = read_json(&out.join("generation_config.json"));
    assert_eq!(gc["bos_token_id"], 1);
    assert_eq!(gc["eos_token_id"], 2);

    // Nothing else in the folder, no temp files left.
    let mut files: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = OUTPUT_FILES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(files, expected);

    // A second import over the first one is allowed and gives the same files.
    let before = fs::read(out.join("model.safetensors")).unwrap();
    import_gguf(&src, &out).expect("re-import over our own files");
    assert_eq!(fs::read(out.join("model.safetensors")).unwrap(), before);
}

#[test]
fn bias_and_alignment_and_untied_output() {
    // Qwen2 layout: q/k/v biases, no permutation, an lm_head, and a
    // non-default alignment.
    let tmp = TempDir::new("qwen2");
    let mut g = tiny_llama();
    g.alignment = 64;
    g.set("general.alignment", Kv::U32(64));
    let kv: Vec<(String, Kv)> =
        g.kv.iter()
            .map(|(k, v)| (k.replacen("llama.", "qwen2.", 1), v.clone()))
            .collect();
    g.kv = kv;
    g.set("general.architecture", Kv::Str("qwen2".into()));
    g.set("tokenizer.ggml.pre", Kv::Str("qwen2".into()));
    g.set("qwen2.rope.freq_base", Kv::F32(1_000_000.0));
    g.tensors.retain(|t| t.name != "rope_freqs.weight");
    for n in 0..LAYERS {
        for (p, len) in [
            ("attn_q.bias", HEADS * HEAD_DIM),
            ("attn_k.bias", KV_HEADS * HEAD_DIM),
            ("attn_v.bias", KV_HEADS * HEAD_DIM),
        ] {
            g.tensors.push(Tensor {
                name: format!("blk.{n}.{p}"),
                dims: vec![len],
                ty: 0,
                data: f32_bytes(&exact_values(len + n, len as usize)),
            });
        }
    }
    g.tensors.push(Tensor {
        name: "output.weight".into(),
        dims: vec![HIDDEN, VOCAB_ROWS],
        ty: GgmlType::F16.0,
        data: vec![0x3c; (HIDDEN * VOCAB_ROWS * 2) as usize],
    });
    let src = write_gguf(&tmp, "q.gguf", &g.bytes());
    let out = tmp.0.join("hf");
    let s = import_gguf(&src, &out).expect("import");
    assert_eq!(s.architecture, "qwen2");
    assert_eq!(s.n_tensors, 3 + 12 * LAYERS as usize);
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"], json!(["Qwen2ForCausalLM"]));
    assert_eq!(c["model_type"], "qwen2");
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["rope_theta"], json!(1_000_000.0));
    crate::model::ModelConfig::from_json(&c, "config.json").expect("engine reads the config");
    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (shape, got) = bf16_tensor(&st, "model.layers.1.self_attn.q_proj.bias");
    assert_eq!(shape, vec![(HEADS * HEAD_DIM) as usize]);
    assert_eq!(
        got,
        exact_values(HEADS * HEAD_DIM + 1, (HEADS * HEAD_DIM) as usize),
        "Qwen2 biases are not permuted"
    );
    // Qwen2 q/k are stored unpermuted: layer 0's q comes out as stored.
    let (q_hf, _) = hf_qk();
    let stored = llama_cpp_permute(
        &q_hf,
        (HEADS * HEAD_DIM) as usize,
        HIDDEN as usize,
        HEADS as usize,
    );
    let (_, got) = bf16_tensor(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(got, stored);
    let (shape, got) = bf16_tensor(&st, "lm_head.weight");
    assert_eq!(shape, vec![VOCAB_ROWS as usize, HIDDEN as usize]);
    assert!(got
        .iter()
        .all(|&x| x == bf16::from_f32(half::f16::from_bits(0x3c3c).to_f32()).to_f32()));
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.encode(" the", false).unwrap().get_ids(), &[3 + 256 + 2]);
}

#[test]
fn llama_biases_are_unpermuted_too() {
    let tmp = TempDir::new("llama-bias");
    let mut g = tiny_llama();
    let rows = (HEADS * HEAD_DIM) as usize;
    let bias_hf: Vec<f32> = (0..rows).map(|i| i as f32).collect();
    for n in 0..LAYERS {
        for (p, len) in [
            ("attn_q.bias", HEADS * HEAD_DIM),
            ("attn_k.bias", KV_HEADS * HEAD_DIM),
            ("attn_v.bias", KV_HEADS * HEAD_DIM),
            ("attn_output.bias", HIDDEN),
        ] {
            let data = if n == 0 && p == "attn_q.bias" {
                f32_bytes(&llama_cpp_permute(&bias_hf, rows, 1, HEADS as usize))
            } else {
                f32_bytes(&exact_values(7, len as usize))
            };
            g.tensors.push(Tensor {
                name: format!("blk.{n}.{p}"),
                dims: vec![len],
                ty: 0,
                data,
            });
        }
    }
    let src = write_gguf(&tmp, "b.gguf", &g.bytes());
    let out = tmp.0.join("hf");
    import_gguf(&src, &out).expect("import");
    assert_eq!(read_json(&out.join("config.json"))["attention_bias"], true);
    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, got) = bf16_tensor(&st, "model.layers.0.self_attn.q_proj.bias");
    assert_eq!(got, bias_hf);
    bf16_tensor(&st, "model.layers.1.self_attn.o_proj.bias");

    // With q/k/v biases but no o_proj bias, HF Llama cannot hold the model.
    let mut g2 = g.clone();
    g2.tensors.retain(|t| t.name != "blk.1.attn_output.bias");
    let src = write_gguf(&tmp, "b2.gguf", &g2.bytes());
    let err = import_gguf(&src, &tmp.0.join("hf2")).unwrap_err();
    assert!(
        matches!(err, GgufError::MissingTensor { ref tensor, .. } if tensor == "blk.1.attn_output.bias"),
        "{err}"
    );
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    for (rows, n_head) in [(64usize, 4usize), (48, 3), (8, 1)] {
        let w: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        let p = llama_cpp_permute(&w, rows, 1, n_head);
        let back: Vec<f32> = (0..rows).map(|r| p[gguf_row(r, rows, n_head)]).collect();
        assert_eq!(back, w);
    }
}

// ---- errors ----------------------------------------------------------------

/// Imports `bytes` and returns the error; checks nothing was written.
fn import_err(tag: &str, bytes: &[u8]) -> (GgufError, String) {
    let tmp = TempDir::new(tag);
    let src = write_gguf(&tmp, "bad.gguf", bytes);
    let out = tmp.0.join("hf");
    let err = import_gguf(&src, &out).expect_err("import must fail");
    assert!(
        !out.exists(),
        "a failed import must not create {}",
        out.display()
    );
    let msg = err.to_string();
    assert!(msg.contains("bad.gguf"), "error names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    (err, msg)
}

#[test]
fn error_not_gguf() {
    let (err, msg) = import_err("magic", b"GGML\x03\x00\x00\x00 and then some bytes");
    assert!(matches!(err, GgufError::NotGguf { .. }), "{err:?}");
    assert!(
        msg.contains("not a GGUF file") && msg.contains("\"GGML\""),
        "{msg}"
    );
    let (err, _) = import_err("tiny-file", b"GG");
    assert!(matches!(err, GgufError::NotGguf { .. }), "{err:?}");
}

#[test]
fn error_unsupported_version() {
    for (v, tag) in [(1u32, "v1"), (4, "v4"), (0x0300_0000, "big-endian")] {
        let mut g = tiny_llama();
        g.version = v;
        let (err, msg) = import_err(tag, &g.bytes());
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version, .. } if version == v),
            "{err:?}"
        );
        assert!(msg.contains(&format!("version {v}")), "{msg}");
        if tag == "big-endian" {
            assert!(msg.contains("big-endian"), "{msg}");
        }
    }
    // Version 2 reads like 3.
    let tmp = TempDir::new("v2");
    let mut g = tiny_llama();
    g.version = 2;
    let src = write_gguf(&tmp, "v2.gguf", &g.bytes());
    import_gguf(&src, &tmp.0.join("hf")).expect("v2 imports");
}

#[test]
fn error_truncated() {
    let g = tiny_llama();
    let bytes = g.bytes();
    let (err, msg) = import_err("trunc-header", &bytes[..10]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    assert!(msg.contains("header"), "{msg}");

    // Cut inside the token list.
    let cut = bytes.windows(9).position(|w| w == b"<|im_end|").unwrap() + 3;
    let (err, msg) = import_err("trunc-meta", &bytes[..cut]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");

    // Cut inside the tensor infos.
    let cut = bytes
        .windows(17)
        .position(|w| w == b"blk.1.attn_q.weig")
        .unwrap()
        + 20;
    let (err, msg) = import_err("trunc-infos", &bytes[..cut]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    assert!(msg.contains("blk.1.attn_q.weight"), "{msg}");

    // Cut the data: the last tensor in the file runs past the end.
    let last = g.tensors.last().unwrap().name.clone();
    let (err, msg) = import_err("trunc-data", &bytes[..bytes.len() - 5]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
    assert!(msg.contains(&format!("data of tensor `{last}`")), "{msg}");
}

#[test]
fn error_unsupported_tensor_type() {
    let mut g = tiny_llama();
    let t = g.tensor_mut("blk.1.attn_v.weight");
    t.ty = 16; // IQ2_XXS
    let (err, msg) = import_err("iq2", &g.bytes());
    assert!(
        matches!(err, GgufError::UnsupportedTensorType { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("blk.1.attn_v.weight") && msg.contains("IQ2_XXS"),
        "{msg}"
    );

    let mut g = tiny_llama();
    g.tensor_mut("blk.0.ffn_up.weight").ty = 77;
    let (_, msg) = import_err("type77", &g.bytes());
    assert!(
        msg.contains("blk.0.ffn_up.weight") && msg.contains("type 77"),
        "{msg}"
    );
}

#[test]
fn error_missing_metadata() {
    for key in [
        "llama.attention.head_count",
        "llama.embedding_length",
        "llama.attention.layer_norm_rms_epsilon",
        "general.architecture",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let mut g = tiny_llama();
        g.remove(key);
        let (err, msg) = import_err("missing-key", &g.bytes());
        assert!(
            matches!(err, GgufError::MissingKey { .. }),
            "{key}: {err:?}"
        );
        assert!(msg.contains(&format!("`{key}`")), "{msg}");
    }
    let mut g = tiny_llama();
    g.set("llama.block_count", Kv::Str("two".into()));
    let (err, msg) = import_err("key-type", &g.bytes());
    assert!(matches!(err, GgufError::KeyType { .. }), "{err:?}");
    assert!(
        msg.contains("llama.block_count") && msg.contains("string"),
        "{msg}"
    );
}

#[test]
fn error_tensor_shape() {
    let mut g = tiny_llama();
    let t = g.tensor_mut("blk.1.attn_k.weight");
    t.dims = vec![HIDDEN, HEADS * HEAD_DIM];
    t.data = vec![0; (HIDDEN * HEADS * HEAD_DIM * 2) as usize];
    let (err, msg) = import_err("shape", &g.bytes());
    assert!(matches!(err, GgufError::TensorShape { .. }), "{err:?}");
    assert!(
        msg.contains("blk.1.attn_k.weight")
            && msg.contains("[64, 64]")
            && msg.contains("expected [64, 32]"),
        "{msg}"
    );

    let mut g = tiny_llama();
    g.tensors.retain(|t| t.name != "blk.1.ffn_down.weight");
    let (err, msg) = import_err("missing-tensor", &g.bytes());
    assert!(matches!(err, GgufError::MissingTensor { .. }), "{err:?}");
    assert!(msg.contains("blk.1.ffn_down.weight"), "{msg}");

    let mut g = tiny_llama();
    g.tensors.push(Tensor {
        name: "blk.0.attn_q_norm.weight".into(),
        dims: vec![HEAD_DIM],
        ty: 0,
        data: vec![0; 64],
    });
    let (err, msg) = import_err("unknown-tensor", &g.bytes());
    assert!(matches!(err, GgufError::UnknownTensor { .. }), "{err:?}");
    assert!(msg.contains("blk.0.attn_q_norm.weight"), "{msg}");
}

#[test]
fn error_unsupported_model_or_tokenizer() {
    let mut g = tiny_llama();
    g.set("general.architecture", Kv::Str("gemma".into()));
    let (err, msg) = import_err("arch", &g.bytes());
    assert!(
        matches!(err, GgufError::UnsupportedArchitecture { .. }),
        "{err:?}"
    );
    assert!(msg.contains("`gemma`"), "{msg}");

    let mut g = tiny_llama();
    g.set("tokenizer.ggml.model", Kv::Str("llama".into()));
    let (_, msg) = import_err("tok-model", &g.bytes());
    assert!(msg.contains("unsupported tokenizer model llama"), "{msg}");

    let mut g = tiny_llama();
    g.set("tokenizer.ggml.pre", Kv::Str("mystery".into()));
    let (err, msg) = import_err("tok-pre", &g.bytes());
    assert!(
        matches!(err, GgufError::UnsupportedPreTokenizer { .. }),
        "{err:?}"
    );
    assert!(msg.contains("`mystery`"), "{msg}");

    let mut g = tiny_llama();
    g.set("tokenizer.ggml.eos_token_id", Kv::U32(999));
    let (err, msg) = import_err("tok-eos", &g.bytes());
    assert!(matches!(err, GgufError::BadMetadata { .. }), "{err:?}");
    assert!(
        msg.contains("tokenizer.ggml.eos_token_id") && msg.contains("999"),
        "{msg}"
    );
}

#[test]
fn refuses_a_foreign_out_dir() {
    let tmp = TempDir::new("foreign");
    let src = write_gguf(&tmp, "m.gguf", &tiny_llama().bytes());
    let out = tmp.0.join("hf");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = import_gguf(&src, &out).unwrap_err();
    assert!(
        matches!(err, GgufError::OutDirNotEmpty { ref file, .. } if file == "notes.txt"),
        "{err}"
    );
    assert!(err.to_string().contains("notes.txt"));
    assert_eq!(fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);

    // Leftovers of an interrupted import are fine and get replaced.
    let out2 = tmp.0.join("hf2");
    fs::create_dir_all(&out2).unwrap();
    fs::write(out2.join(temp_name("model.safetensors")), "partial").unwrap();
    fs::write(out2.join("tokenizer.json"), "old").unwrap();
    import_gguf(&src, &out2).expect("import over leftovers");
    assert!(!out2.join(temp_name("model.safetensors")).exists());
    tokenizers::Tokenizer::from_file(out2.join("tokenizer.json")).expect("replaced");
}

// ---- the real SmolLM2 file -----------------------------------------------

/// SmolLM2-135M-Instruct Q4_1, when `IGPO_SMOLLM2_GGUF` names it
/// (`IGPO_GGUF_IMPORT_OUT=DIR` keeps the imported folder in DIR).
#[test]
fn smollm2_end_to_end() {
    let Ok(path) = std::env::var("IGPO_SMOLLM2_GGUF") else {
        println!("skipped: IGPO_SMOLLM2_GGUF not set");
        return;
    };
    let tmp = TempDir::new("smollm2");
    // IGPO_GGUF_IMPORT_OUT keeps the folder, e.g. for
    // tools/reference/check_gguf_import.py.
    let out = match std::env::var("IGPO_GGUF_IMPORT_OUT") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => tmp.0.join("hf"),
    };
    let t0 = std::time::Instant::now();
    let s = import_gguf(Path::new(&path), &out).expect("import SmolLM2");
    println!("SmolLM2 import took {:.2?}", t0.elapsed());
    assert_eq!(s.architecture, "llama");
    assert_eq!(s.n_tensors, 272);
    assert_eq!(s.n_params, 134_515_008);
    assert_eq!(s.vocab_size, 49152);
    assert_eq!(
        s.tensor_types,
        vec![
            ("F32".to_string(), 61),
            ("Q4_1".into(), 210),
            ("Q8_0".into(), 1)
        ]
    );

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["vocab_size"], 49152);
    assert_eq!(c["hidden_size"], 576);
    assert_eq!(c["intermediate_size"], 1536);
    assert_eq!(c["num_hidden_layers"], 30);
    assert_eq!(c["num_attention_heads"], 9);
    assert_eq!(c["num_key_value_heads"], 3);
    assert!(c.get("head_dim").is_none());
    assert_eq!(c["rms_norm_eps"], json!(1e-5));
    assert_eq!(c["rope_theta"], json!(100000.0));
    assert_eq!(c["max_position_embeddings"], 8192);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(c["pad_token_id"], 2);
    crate::model::ModelConfig::from_json(&c, "config.json").expect("engine reads the config");

    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 272);
    assert!(st.tensor("lm_head.weight").is_err(), "tied: no lm_head");
    let shape = |n: &str| {
        st.tensor(n)
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .shape()
            .to_vec()
    };
    assert_eq!(shape("model.embed_tokens.weight"), vec![49152, 576]);
    assert_eq!(shape("model.norm.weight"), vec![576]);
    for n in 0..30 {
        let l = |p: &str| format!("model.layers.{n}.{p}");
        assert_eq!(shape(&l("input_layernorm.weight")), vec![576]);
        assert_eq!(shape(&l("post_attention_layernorm.weight")), vec![576]);
        assert_eq!(shape(&l("self_attn.q_proj.weight")), vec![576, 576]);
        assert_eq!(shape(&l("self_attn.k_proj.weight")), vec![192, 576]);
        assert_eq!(shape(&l("self_attn.v_proj.weight")), vec![192, 576]);
        assert_eq!(shape(&l("self_attn.o_proj.weight")), vec![576, 576]);
        assert_eq!(shape(&l("mlp.gate_proj.weight")), vec![1536, 576]);
        assert_eq!(shape(&l("mlp.up_proj.weight")), vec![1536, 576]);
        assert_eq!(shape(&l("mlp.down_proj.weight")), vec![576, 1536]);
    }

    // Ids from transformers' GGUF tokenizer (AutoTokenizer with gguf_file=).
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = |s: &str| tok.encode(s, true).unwrap().get_ids().to_vec();
    assert_eq!(
        ids("What is the capital of France?"),
        vec![1780, 314, 260, 3575, 282, 4649, 47]
    );
    assert_eq!(
        ids("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
        vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    );
    assert_eq!(
        ids("In 2024, x=12345; caf\u{e9} \u{6771}\u{4eac} \u{1f642}"),
        vec![
            788, 216, 34, 32, 34, 36, 28, 1792, 45, 33, 34, 35, 36, 37, 43, 37366, 17097, 247, 126,
            16736, 122, 47526
        ]
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(tc["eos_token"], "<|im_end|>");
    let _ =
        tokenizers::Tokenizer::from_str(&fs::read_to_string(out.join("tokenizer.json")).unwrap())
            .unwrap();
}
