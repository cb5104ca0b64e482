//! GGUF -> Hugging Face folder: reads hyper-parameters, maps tensor names
//! and shapes, dequantizes to bf16 (undoing llama.cpp's q/k permutation for
//! Llama), rebuilds the tokenizer, and writes every file through a temp name
//! and a rename. Everything that can fail on the input is checked before the
//! first byte is written; `config.json` is written last, so a folder without
//! it is an unfinished import.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;
use rayon::prelude::*;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value as Json};

use super::dequant::{self, GgmlType, Kernel};
use super::reader::{GgufFile, TensorInfo, Value};
use super::vocab;
use super::{GgufError, ImportSummary};

/// The files an import writes, `config.json` last.
const OUTPUT_FILES: [&str; 5] = [
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "config.json",
];

fn temp_name(name: &str) -> String {
    format!(".{name}.igpo-import.tmp")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Llama,
    Qwen2,
}

/// Hyper-parameters read from `{arch}.*` metadata.
#[derive(Debug)]
struct HParams {
    n_layer: u64,
    hidden: u64,
    ff: u64,
    n_head: u64,
    n_kv: u64,
    head_dim: u64,
    eps: f64,
    rope_theta: f64,
    context: u64,
    vocab: u64,
    rope_scaling: Option<Json>,
}

/// The f64 a metadata float stands for: an f32 is written as the shortest
/// decimal that reads back as the same f32 (1e-5, not 9.999999747378752e-6).
fn float_of(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => x.to_string().parse().ok(),
        _ => v.as_f64(),
    }
}

fn read_float(file: &GgufFile, key: &str) -> Result<Option<f64>, GgufError> {
    file.opt_f64(key)?; // type check with a clear error
    Ok(file.get(key).and_then(float_of))
}

/// A `BadMetadata` error of `file`'s `key`.
fn bad(file: &GgufFile, key: &str, reason: String) -> GgufError {
    GgufError::BadMetadata {
        path: file.path.clone(),
        key: key.to_string(),
        reason,
    }
}

/// `file`'s `key` as a positive integer.
fn positive(file: &GgufFile, key: &str) -> Result<u64, GgufError> {
    let v = file.req_u64(key)?;
    if v == 0 {
        return Err(bad(file, key, "must be positive".into()));
    }
    Ok(v)
}

impl HParams {
    fn read(file: &GgufFile, arch: &str) -> Result<HParams, GgufError> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_layer = positive(file, &key("block_count"))?;
        let hidden = positive(file, &key("embedding_length"))?;
        let ff = positive(file, &key("feed_forward_length"))?;
        let n_head = positive(file, &key("attention.head_count"))?;
        let n_kv = kv_heads(file, arch, n_head)?;
        let head_dim = head_dim(file, arch, hidden, n_head)?;
        let eps_key = key("attention.layer_norm_rms_epsilon");
        let eps = read_float(file, &eps_key)?.ok_or_else(|| GgufError::MissingKey {
            path: file.path.clone(),
            key: eps_key.clone(),
        })?;
        let rope_theta = read_float(file, &key("rope.freq_base"))?.unwrap_or(10000.0);
        let context = positive(file, &key("context_length"))?;
        let rope_scaling = rope_scaling(file, arch, head_dim, rope_theta)?;
        let vocab = vocab_rows(file, arch, hidden)?;
        Ok(HParams {
            n_layer,
            hidden,
            ff,
            n_head,
            n_kv,
            head_dim,
            eps,
            rope_theta,
            context,
            vocab,
            rope_scaling,
        })
    }
}

/// Key/value heads: `attention.head_count_kv` (one count, or the same count
/// per layer), else the query heads; they must divide the query heads.
fn kv_heads(file: &GgufFile, arch: &str, n_head: u64) -> Result<u64, GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let kv_key = key("attention.head_count_kv");
    let n_kv = match file.get(&kv_key) {
        None => n_head,
        // Some converters store one count per layer.
        Some(Value::Array(_)) => {
            let per_layer = file.opt_int_array(&kv_key)?.unwrap_or_default();
            match per_layer.first() {
                Some(&first) if first > 0 && per_layer.iter().all(|&n| n == first) => first as u64,
                _ => {
                    return Err(bad(
                        file,
                        &kv_key,
                        "per-layer counts that differ are not supported".into(),
                    ))
                }
            }
        }
        Some(_) => positive(file, &kv_key)?,
    };
    if !n_head.is_multiple_of(n_kv) {
        return Err(bad(
            file,
            &kv_key,
            format!("{n_kv} does not divide the {n_head} attention heads"),
        ));
    }
    Ok(n_kv)
}

/// The head size: `attention.key_length`, else hidden / heads; even (RoPE),
/// and equal to the value length and the rotary dimensions when given.
fn head_dim(file: &GgufFile, arch: &str, hidden: u64, n_head: u64) -> Result<u64, GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let head_dim = match file.opt_u64(&key("attention.key_length"))? {
        Some(d) if d > 0 => d,
        Some(_) => {
            return Err(bad(
                file,
                &key("attention.key_length"),
                "must be positive".into(),
            ))
        }
        None => {
            if !hidden.is_multiple_of(n_head) {
                return Err(bad(
                    file,
                    &key("attention.head_count"),
                    format!("{n_head} heads do not divide embedding_length {hidden}"),
                ));
            }
            hidden / n_head
        }
    };
    if head_dim % 2 != 0 {
        return Err(bad(
            file,
            &key("attention.key_length"),
            format!("head size {head_dim} is odd; RoPE needs it even"),
        ));
    }
    if let Some(v) = file.opt_u64(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(bad(
                file,
                &key("attention.value_length"),
                format!(
                    "{v} differs from the key length {head_dim}, which Llama/Qwen2 cannot express"
                ),
            ));
        }
    }
    if let Some(r) = file.opt_u64(&key("rope.dimension_count"))? {
        if r != head_dim {
            return Err(bad(
                file,
                &key("rope.dimension_count"),
                format!("rotary dims {r} differ from the head size {head_dim} (partial RoPE is not supported)"),
            ));
        }
    }
    Ok(head_dim)
}

/// `rope_scaling` for config.json: `rope.scaling.type` (linear, yarn), or
/// what a `rope_freqs.weight` tensor stands for (Llama 3.x).
fn rope_scaling(
    file: &GgufFile,
    arch: &str,
    head_dim: u64,
    rope_theta: f64,
) -> Result<Option<Json>, GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let scaling_key = key("rope.scaling.type");
    let rope_scaling = match file.opt_str(&scaling_key)? {
        None | Some("none") => None,
        Some(kind @ ("linear" | "yarn")) => {
            let factor = read_float(file, &key("rope.scaling.factor"))?.ok_or_else(|| {
                GgufError::MissingKey {
                    path: file.path.clone(),
                    key: key("rope.scaling.factor"),
                }
            })?;
            let mut s = json!({"rope_type": kind, "factor": factor});
            if kind == "yarn" {
                if let Some(orig) = file.opt_u64(&key("rope.scaling.original_context_length"))? {
                    s["original_max_position_embeddings"] = json!(orig);
                }
            }
            Some(s)
        }
        Some(other) => {
            return Err(bad(
                file,
                &scaling_key,
                format!("unsupported RoPE scaling `{other}`"),
            ))
        }
    };
    Ok(match (rope_scaling, file.tensor("rope_freqs.weight")) {
        (None, Some(t)) => rope_freqs_scaling(file, t, head_dim, rope_theta)?,
        (s, _) => s,
    })
}

/// The vocabulary size: the rows of the embedding matrix (`vocab_size`,
/// when declared, must agree).
fn vocab_rows(file: &GgufFile, arch: &str, hidden: u64) -> Result<u64, GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufError::MissingTensor {
            path: file.path.clone(),
            tensor: "token_embd.weight".into(),
        })?;
    let vocab = match embd.dims.as_slice() {
        [h, v] if *h == hidden && *v > 0 => *v,
        _ => {
            let declared = file.opt_u64(&key("vocab_size"))?;
            return Err(GgufError::TensorShape {
                path: file.path.clone(),
                tensor: embd.name.clone(),
                expected: vec![hidden, declared.unwrap_or(0)],
                got: embd.dims.clone(),
            });
        }
    };
    if let Some(declared) = file.opt_u64(&key("vocab_size"))? {
        if declared != vocab {
            return Err(GgufError::TensorShape {
                path: file.path.clone(),
                tensor: embd.name.clone(),
                expected: vec![hidden, declared],
                got: embd.dims.clone(),
            });
        }
    }
    Ok(vocab)
}

/// The `rope_scaling` that `rope_freqs.weight` (f32 divisors, Llama 3.x)
/// stands for; see `rope_factors.rs`.
fn rope_freqs_scaling(
    file: &GgufFile,
    t: &TensorInfo,
    head_dim: u64,
    theta: f64,
) -> Result<Option<Json>, GgufError> {
    let refuse = |what: String| GgufError::BadTensor {
        path: file.path.clone(),
        tensor: t.name.clone(),
        what,
    };
    if t.ty != GgmlType::F32 {
        return Err(refuse(format!("type {} (f32 expected)", t.ty.name())));
    }
    let divisors: Vec<f32> = file
        .tensor_data(t)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    super::rope_factors::llama3_from_divisors(&divisors, head_dim as usize, theta).map_err(refuse)
}

/// One tensor to write.
struct Planned<'a> {
    src: &'a TensorInfo,
    hf_name: String,
    /// Hugging Face shape (GGUF dims reversed).
    hf_shape: Vec<usize>,
    /// Undo llama.cpp's RoPE row permutation with this many heads.
    unpermute: Option<usize>,
    data: &'a [u8],
}

/// The Hugging Face name, expected GGUF dims and un-permute head count of a
/// GGUF tensor name; None for a name with no counterpart.
fn map_name(name: &str, hp: &HParams, family: Family) -> Option<(String, Vec<u64>, Option<u64>)> {
    let (h, ff, q, kv) = (
        hp.hidden,
        hp.ff,
        hp.n_head * hp.head_dim,
        hp.n_kv * hp.head_dim,
    );
    let llama = family == Family::Llama;
    let (qh, kh) = if llama {
        (Some(hp.n_head), Some(hp.n_kv))
    } else {
        (None, None)
    };
    match name {
        "token_embd.weight" => {
            return Some(("model.embed_tokens.weight".into(), vec![h, hp.vocab], None))
        }
        "output_norm.weight" => return Some(("model.norm.weight".into(), vec![h], None)),
        "output.weight" => return Some(("lm_head.weight".into(), vec![h, hp.vocab], None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let n: u64 = layer.parse().ok()?;
    if n >= hp.n_layer || layer != n.to_string() {
        return None;
    }
    let (hf, dims, heads) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", vec![h], None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", vec![h], None),
        "attn_q.weight" => ("self_attn.q_proj.weight", vec![h, q], qh),
        "attn_k.weight" => ("self_attn.k_proj.weight", vec![h, kv], kh),
        "attn_v.weight" => ("self_attn.v_proj.weight", vec![h, kv], None),
        "attn_output.weight" => ("self_attn.o_proj.weight", vec![q, h], None),
        "attn_q.bias" => ("self_attn.q_proj.bias", vec![q], qh),
        "attn_k.bias" => ("self_attn.k_proj.bias", vec![kv], kh),
        "attn_v.bias" => ("self_attn.v_proj.bias", vec![kv], None),
        // HF Llama with attention_bias has an o_proj bias; Qwen2 has none.
        "attn_output.bias" if llama => ("self_attn.o_proj.bias", vec![h], None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", vec![h, ff], None),
        "ffn_up.weight" => ("mlp.up_proj.weight", vec![h, ff], None),
        "ffn_down.weight" => ("mlp.down_proj.weight", vec![ff, h], None),
        _ => return None,
    };
    Some((format!("model.layers.{n}.{hf}"), dims, heads))
}

/// Maps and checks every tensor: name, shape, type and data bounds.
fn plan_tensors<'a>(
    file: &'a GgufFile,
    hp: &HParams,
    family: Family,
    arch: &str,
    notes: &mut Vec<String>,
) -> Result<(Vec<Planned<'a>>, bool), GgufError> {
    let mut plan = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let Some((hf_name, expected, heads)) = map_name(&t.name, hp, family) else {
            if t.name == "rope_freqs.weight" || t.name.starts_with("rope_factors") {
                notes.push(format!(
                    "skipped `{}`: RoPE frequency factors have no Hugging Face tensor (config.json's rope_scaling: {})",
                    t.name,
                    hp.rope_scaling.as_ref().map_or("none".to_string(), |s| s.to_string())
                ));
                continue;
            }
            if !(t.name.ends_with(".weight") || t.name.ends_with(".bias")) {
                notes.push(format!("skipped `{}`: not a weight", t.name));
                continue;
            }
            return Err(GgufError::UnknownTensor {
                path: file.path.clone(),
                tensor: t.name.clone(),
                arch: arch.to_string(),
            });
        };
        // Allow trailing unit dims beyond the expected rank.
        let rank_ok =
            t.dims.len() >= expected.len() && t.dims[expected.len()..].iter().all(|&d| d == 1);
        if !rank_ok || t.dims[..expected.len()] != expected[..] {
            return Err(GgufError::TensorShape {
                path: file.path.clone(),
                tensor: t.name.clone(),
                expected,
                got: t.dims.clone(),
            });
        }
        if !t.ty.can_dequantize() {
            return Err(GgufError::UnsupportedTensorType {
                path: file.path.clone(),
                tensor: t.name.clone(),
                ty: t.ty.name(),
                supported: GgmlType::supported_names(),
            });
        }
        let data = file.tensor_data(t)?;
        let hf_shape: Vec<usize> = expected.iter().rev().map(|&d| d as usize).collect();
        plan.push(Planned {
            src: t,
            hf_name,
            hf_shape,
            unpermute: heads.map(|n| n as usize),
            data,
        });
    }

    // Every tensor the architecture needs must be there.
    let have: std::collections::HashSet<&str> = plan.iter().map(|p| p.src.name.as_str()).collect();
    let missing = |name: String| GgufError::MissingTensor {
        path: file.path.clone(),
        tensor: name,
    };
    let any_bias = have.iter().any(|n| n.ends_with(".attn_q.bias"));
    let attention_bias = family == Family::Qwen2 || any_bias;
    let mut required: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    for n in 0..hp.n_layer {
        for part in [
            "attn_norm.weight",
            "attn_q.weight",
            "attn_k.weight",
            "attn_v.weight",
            "attn_output.weight",
            "ffn_norm.weight",
            "ffn_gate.weight",
            "ffn_up.weight",
            "ffn_down.weight",
        ] {
            required.push(format!("blk.{n}.{part}"));
        }
        if attention_bias {
            for part in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
                required.push(format!("blk.{n}.{part}"));
            }
            if family == Family::Llama {
                required.push(format!("blk.{n}.attn_output.bias"));
            }
        }
    }
    if let Some(name) = required.into_iter().find(|r| !have.contains(r.as_str())) {
        return Err(missing(name));
    }
    plan.sort_by(|a, b| a.hf_name.cmp(&b.hf_name));
    Ok((plan, attention_bias))
}

/// Row `r` of the Hugging Face matrix comes from this row of the GGUF one.
/// llama.cpp stored `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`,
/// so HF row (h, a, b) sits at GGUF row (h, b, a).
fn gguf_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let half = hd / 2;
    let (h, w) = (r / hd, r % hd);
    let (a, b) = (w / half, w % half);
    h * hd + 2 * b + a
}

/// Dequantizes one planned tensor to little-endian bf16 bytes in HF layout.
fn tensor_bf16(p: &Planned<'_>) -> Vec<u8> {
    let n = p.src.n_elements() as usize;
    let mut out = vec![0u8; n * 2];
    // The plan checked the type and the byte count.
    let k = Kernel::of(p.src.ty).expect("planned tensors have a kernel");
    if let (Some(n_head), [len]) = (p.unpermute, p.hf_shape.as_slice()) {
        // A permuted bias: elements move one by one, so go through f32.
        let mut values = vec![0f32; n];
        dequant::dequantize(p.src.ty, p.data, &mut values).expect("planned tensors dequantize");
        for (r, dst) in out.chunks_exact_mut(2).enumerate() {
            let v = values[gguf_row(r, *len, n_head)];
            dst.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
        }
        return out;
    }
    // GGUF row i (ne0 elements, whole blocks) is HF row i, or the row the
    // permutation moved there; each row goes straight from blocks to bf16.
    let cols = p.src.dims[0] as usize;
    let rows = n / cols;
    let row_bytes = cols / k.block * k.bytes;
    out.par_chunks_mut(cols * 2)
        .enumerate()
        .with_min_len((8192 / cols).max(1))
        .for_each(|(r, dst)| {
            let src_row = match p.unpermute {
                Some(n_head) => gguf_row(r, rows, n_head),
                None => r,
            };
            k.row_to_bf16(&p.data[src_row * row_bytes..(src_row + 1) * row_bytes], dst);
        });
    out
}

/// A JSON object that keeps its keys in the order given.
struct Ordered(Vec<(&'static str, Json)>);

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn write_err(path: &Path, reason: impl std::fmt::Display) -> GgufError {
    GgufError::Write {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Creates `dir`, or accepts it when it only holds files an import writes
/// (a previous import, possibly interrupted). Removes a previous
/// `config.json` first, so the folder does not look complete while the new
/// files replace the old ones.
fn prepare_out_dir(dir: &Path) -> Result<(), GgufError> {
    if !dir.exists() {
        return fs::create_dir_all(dir).map_err(|e| GgufError::io(dir, e));
    }
    if !dir.is_dir() {
        return Err(write_err(dir, "exists and is not a directory"));
    }
    let ours: Vec<String> = OUTPUT_FILES
        .iter()
        .flat_map(|f| [f.to_string(), temp_name(f)])
        .collect();
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| GgufError::io(dir, e))? {
        let entry = entry.map_err(|e| GgufError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !ours.contains(&name) {
            return Err(GgufError::OutDirNotEmpty {
                dir: dir.display().to_string(),
                file: name,
            });
        }
        entries.push(name);
    }
    for stale in ["config.json".to_string(), temp_name("config.json")] {
        if entries.contains(&stale) {
            let p = dir.join(&stale);
            fs::remove_file(&p).map_err(|e| GgufError::io(&p, e))?;
        }
    }
    Ok(())
}

/// Moves `dir/.name.tmp` onto `dir/name`.
fn commit(dir: &Path, name: &str) -> Result<(), GgufError> {
    let tmp = dir.join(temp_name(name));
    let dst = dir.join(name);
    fs::rename(&tmp, &dst).map_err(|e| GgufError::io(&dst, e))
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
    let tmp = dir.join(temp_name(name));
    let mut f = File::create(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| GgufError::io(&tmp, e))?;
    f.sync_all().map_err(|e| GgufError::io(&tmp, e))?;
    drop(f);
    commit(dir, name)
}

fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), GgufError> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| write_err(&dir.join(name), e))?;
    text.push('\n');
    write_atomic(dir, name, text.as_bytes())
}

/// Streams the tensors into `model.safetensors` (bf16, `format: pt`), one
/// tensor in memory at a time, then checks the file parses before renaming.
fn write_safetensors(dir: &Path, plan: &[Planned<'_>]) -> Result<(), GgufError> {
    let name = "model.safetensors";
    let tmp: PathBuf = dir.join(temp_name(name));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for p in plan {
        let len = p.hf_shape.iter().product::<usize>() * 2;
        header.insert(
            p.hf_name.clone(),
            json!({"dtype": "BF16", "shape": p.hf_shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| write_err(&tmp, e))?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let file = File::create(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| GgufError::io(&tmp, e);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    // Dequantize the next tensor while the previous one is written.
    let mut pending: Option<Vec<u8>> = None;
    for p in plan {
        let (next, written) = rayon::join(
            || tensor_bf16(p),
            || match pending.take() {
                Some(bytes) => w.write_all(&bytes),
                None => Ok(()),
            },
        );
        written.map_err(io)?;
        pending = Some(next);
    }
    if let Some(bytes) = pending {
        w.write_all(&bytes).map_err(io)?;
    }
    let file = w
        .into_inner()
        .map_err(|e| GgufError::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);

    // Read it back with the safetensors crate before it takes the real name.
    let f = File::open(&tmp).map_err(io)?;
    // SAFETY: our own temp file, not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| write_err(&tmp, format!("written file does not parse: {e}")))?;
    if st.len() != plan.len() {
        return Err(write_err(
            &tmp,
            format!("holds {} tensors, expected {}", st.len(), plan.len()),
        ));
    }
    drop(map);
    commit(dir, name)
}

/// Converts the GGUF file at `gguf_path` into a Hugging Face model folder at
/// `out_dir` (created if needed; an existing folder may only hold files an
/// import writes). See the module docs for what is written.
pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<ImportSummary, GgufError> {
    let file = GgufFile::open(gguf_path)?;
    let mut notes = Vec::new();
    let arch = file.req_str("general.architecture")?.to_string();
    let (family, hf_class) = match arch.as_str() {
        "llama" => (Family::Llama, "LlamaForCausalLM"),
        "qwen2" => (Family::Qwen2, "Qwen2ForCausalLM"),
        _ => {
            return Err(GgufError::UnsupportedArchitecture {
                path: file.path.clone(),
                arch,
            })
        }
    };
    let hp = HParams::read(&file, &arch)?;
    let (plan, attention_bias) = plan_tensors(&file, &hp, family, &arch, &mut notes)?;
    let tied = file.tensor("output.weight").is_none();
    let tok = vocab::build(&file, hp.vocab as usize, hp.context, &mut notes)?;
    if tok.n_tokens < hp.vocab as usize {
        notes.push(format!(
            "the embedding has {} rows for {} tokens; the extra rows are padding",
            hp.vocab, tok.n_tokens
        ));
    }

    let mut config = vec![
        ("architectures", json!([hf_class])),
        ("model_type", json!(arch)),
        ("vocab_size", json!(hp.vocab)),
        ("hidden_size", json!(hp.hidden)),
        ("intermediate_size", json!(hp.ff)),
        ("num_hidden_layers", json!(hp.n_layer)),
        ("num_attention_heads", json!(hp.n_head)),
        ("num_key_value_heads", json!(hp.n_kv)),
    ];
    if hp.head_dim * hp.n_head != hp.hidden {
        config.push(("head_dim", json!(hp.head_dim)));
    }
    config.extend([
        ("hidden_act", json!("silu")),
        ("rms_norm_eps", json!(hp.eps)),
        ("rope_theta", json!(hp.rope_theta)),
        (
            "rope_scaling",
            hp.rope_scaling.clone().unwrap_or(Json::Null),
        ),
        ("max_position_embeddings", json!(hp.context)),
        ("tie_word_embeddings", json!(tied)),
        ("attention_bias", json!(attention_bias)),
        ("attention_dropout", json!(0.0)),
        ("mlp_bias", json!(false)),
    ]);
    if family == Family::Qwen2 {
        config.extend([
            ("use_sliding_window", json!(false)),
            ("sliding_window", Json::Null),
            ("max_window_layers", json!(hp.n_layer)),
        ]);
    }
    for (k, id) in [
        ("bos_token_id", tok.bos_token_id),
        ("eos_token_id", tok.eos_token_id),
        ("pad_token_id", tok.pad_token_id),
    ] {
        if let Some(id) = id {
            config.push((k, json!(id)));
        }
    }
    config.extend([
        ("initializer_range", json!(0.02)),
        ("use_cache", json!(true)),
        ("torch_dtype", json!("bfloat16")),
    ]);

    let mut generation = Vec::new();
    if let Some(b) = tok.bos_token_id {
        generation.push(("bos_token_id", json!(b)));
    }
    match (tok.eos_token_id, tok.eot_token_id) {
        (Some(e), Some(t)) => generation.push(("eos_token_id", json!([e, t]))),
        (Some(e), None) => generation.push(("eos_token_id", json!(e))),
        (None, Some(t)) => generation.push(("eos_token_id", json!(t))),
        (None, None) => {}
    }
    if let Some(p) = tok.pad_token_id {
        generation.push(("pad_token_id", json!(p)));
    }

    // Summary, before the plan is consumed.
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in &file.tensors {
        *types.entry(t.ty.name()).or_insert(0) += 1;
    }
    let n_params: u64 = plan.iter().map(|p| p.src.n_elements()).sum();

    // Everything is checked; write.
    prepare_out_dir(out_dir)?;
    write_safetensors(out_dir, &plan)?;
    write_atomic(out_dir, "tokenizer.json", tok.tokenizer_json.as_bytes())?;
    write_json(out_dir, "tokenizer_config.json", &tok.tokenizer_config)?;
    write_json(out_dir, "generation_config.json", &Ordered(generation))?;
    write_json(out_dir, "config.json", &Ordered(config))?;
    if let Ok(d) = File::open(out_dir) {
        // Make the renames durable; not every platform can sync a directory.
        let _ = d.sync_all();
    }

    Ok(ImportSummary {
        architecture: arch,
        n_tensors: plan.len(),
        n_params,
        vocab_size: hp.vocab as usize,
        tensor_types: types.into_iter().collect(),
        notes,
    })
}

#[cfg(test)]
#[path = "import_tests.rs"]
mod tests;
