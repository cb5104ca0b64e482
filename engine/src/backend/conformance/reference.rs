//! The float64 reference of every [`Backend`](crate::backend::Backend) op:
//! plain loops over row-major `f64` slices, written once, for the
//! conformance bodies (forward values, analytic gradients, and the losses
//! whose central differences check those gradients).

#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::ops::Range;

use crate::backend::{AdamWStep, AttnMask, AttnShape, Rope, SamplingParams};

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `x[m, k] @ w[n, k]^T (+ bias[n])`.
pub(crate) fn linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, k: usize) -> Vec<f64> {
    let (m, n) = (x.len() / k, w.len() / k);
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] =
                dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]) + bias.map_or(0.0, |b| b[j]);
        }
    }
    out
}

/// `(dx, dw, db)` of [`linear`] for the output gradient `dy[m, n]`.
pub(crate) fn linear_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    k: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n) = (x.len() / k, w.len() / k);
    let (mut dx, mut dw, mut db) = (vec![0.0; m * k], vec![0.0; n * k], vec![0.0; n]);
    for i in 0..m {
        for j in 0..n {
            let g = dy[i * n + j];
            db[j] += g;
            for t in 0..k {
                dx[i * k + t] += g * w[j * k + t];
                dw[j * k + t] += g * x[i * k + t];
            }
        }
    }
    (dx, dw, db)
}

/// Row-wise RMSNorm of `x[rows, d]` with weight `w[d]` (a head norm is the
/// same over the `[rows*heads, head_dim]` view).
pub(crate) fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let inv = 1.0 / (dot(row, row) / d as f64 + eps).sqrt();
        for j in 0..d {
            o[j] = row[j] * inv * w[j];
        }
    }
    out
}

/// `(dx, dw)` of [`rms_norm`].
pub(crate) fn rms_norm_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let d = w.len();
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; d]);
    for r in 0..x.len() / d {
        let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let inv = 1.0 / (dot(xr, xr) / d as f64 + eps).sqrt();
        let s: f64 = (0..d).map(|j| xr[j] * gr[j] * w[j]).sum();
        let c = inv * inv * inv * s / d as f64;
        for j in 0..d {
            dx[r * d + j] = inv * w[j] * gr[j] - c * xr[j];
            dw[j] += gr[j] * xr[j] * inv;
        }
    }
    (dx, dw)
}

/// RoPE ("rotate half") of `x[rows, heads*head_dim]`, row `r` at
/// `positions[r]`, by `sign` times the angle (-1: the backward), cos and sin
/// times `attention_scaling`. The angle is `position * inv_freq` rounded to
/// f32, as every backend forms it; everything after that is f64.
pub(crate) fn rope(x: &[f64], positions: &[usize], rope: &Rope, sign: f64) -> Vec<f64> {
    let d = rope.head_dim;
    let half = d / 2;
    let cols = x.len() / positions.len();
    let s = rope.attention_scaling as f64;
    let mut out = x.to_vec();
    for (r, &p) in positions.iter().enumerate() {
        for (i, &f) in rope.inv_freq.iter().enumerate() {
            let angle = (p as f32 * f) as f64;
            let (sin, cos) = (sign * angle.sin() * s, angle.cos() * s);
            for h in 0..cols / d {
                let at = r * cols + h * d;
                let (a, b) = (x[at + i], x[at + i + half]);
                out[at + i] = a * cos - b * sin;
                out[at + i + half] = b * cos + a * sin;
            }
        }
    }
    out
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `silu(gate) * up`.
pub(crate) fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| g * sigmoid(g) * u)
        .collect()
}

/// `(dgate, dup)` of [`swiglu`].
pub(crate) fn swiglu_backward(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dg = (0..gate.len())
        .map(|i| {
            let s = sigmoid(gate[i]);
            dy[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s))
        })
        .collect();
    let du = (0..gate.len())
        .map(|i| dy[i] * gate[i] * sigmoid(gate[i]))
        .collect();
    (dg, du)
}

/// Rows `ids` of `table[vocab, d]`.
pub(crate) fn embedding(table: &[f64], ids: &[u32], d: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].iter().copied())
        .collect()
}

/// The embedding backward as the trait defines its order: `dtable` (f32)
/// plus each row of `dy` in turn, f32 additions in the order of `ids` (the
/// bits every backend must give).
pub(crate) fn embedding_backward_f32(ids: &[u32], dy: &[f32], dtable: &mut [f32], d: usize) {
    for (&id, row) in ids.iter().zip(dy.chunks(d)) {
        let at = id as usize * d;
        for (a, b) in dtable[at..at + d].iter_mut().zip(row) {
            *a += b;
        }
    }
}

/// What one attention call gives: `out[m, H*d]`, `lse[m, H]` and, for an
/// output gradient, `(dq, dk, dv)`.
pub(crate) struct Attention {
    pub out: Vec<f64>,
    pub lse: Vec<f64>,
    pub grads: Option<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

/// Masked GQA softmax attention (scale `1/sqrt(head_dim)`) and, when `dout`
/// is given, its backward.
pub(crate) fn attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    s: AttnShape,
    mask: &AttnMask,
    dout: Option<&[f64]>,
) -> Attention {
    let (hh, d) = (s.n_heads, s.head_dim);
    let (qc, kc, group) = (hh * d, s.n_kv_heads * d, hh / s.n_kv_heads);
    let (m, n) = (q.len() / qc, k.len() / kc);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; m * qc];
    let mut lse = vec![f64::NEG_INFINITY; m * hh];
    let (mut dq, mut dk, mut dv) = (vec![0.0; m * qc], vec![0.0; n * kc], vec![0.0; n * kc]);
    for i in 0..m {
        let keys: Vec<usize> = mask
            .visible(i)
            .into_iter()
            .flat_map(|r: Range<usize>| r.start..r.end.min(n))
            .collect();
        for h in 0..hh {
            let g = h / group;
            let qi = &q[i * qc + h * d..i * qc + (h + 1) * d];
            let key = |j: usize| &k[j * kc + g * d..j * kc + (g + 1) * d];
            let val = |j: usize| &v[j * kc + g * d..j * kc + (g + 1) * d];
            if keys.is_empty() {
                continue;
            }
            let sc: Vec<f64> = keys.iter().map(|&j| dot(qi, key(j)) * scale).collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = mx + sc.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            lse[i * hh + h] = l;
            let p: Vec<f64> = sc.iter().map(|x| (x - l).exp()).collect();
            let o = &mut out[i * qc + h * d..i * qc + (h + 1) * d];
            for (&j, &pj) in keys.iter().zip(&p) {
                for t in 0..d {
                    o[t] += pj * val(j)[t];
                }
            }
            let Some(dout) = dout else { continue };
            let go = &dout[i * qc + h * d..i * qc + (h + 1) * d];
            let delta = dot(go, &out[i * qc + h * d..i * qc + (h + 1) * d]);
            for (&j, &pj) in keys.iter().zip(&p) {
                let ds = pj * (dot(go, val(j)) - delta);
                for t in 0..d {
                    dv[j * kc + g * d + t] += pj * go[t];
                    dq[i * qc + h * d + t] += scale * ds * key(j)[t];
                    dk[j * kc + g * d + t] += scale * ds * qi[t];
                }
            }
        }
    }
    Attention {
        out,
        lse,
        grads: dout.map(|_| (dq, dk, dv)),
    }
}

/// Per-row `(logp[target], lse, entropy)` of the logits `z[rows, vocab]`.
pub(crate) fn log_softmax_rows(
    z: &[f64],
    vocab: usize,
    targets: &[u32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut logp, mut lse, mut ent) = (vec![], vec![], vec![]);
    for (row, &t) in z.chunks(vocab).zip(targets) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        logp.push(row[t as usize] - l);
        lse.push(l);
        ent.push(-row.iter().map(|x| (x - l).exp() * (x - l)).sum::<f64>());
    }
    (logp, lse, ent)
}

/// `d(sum(dlogp * logp + dent * entropy)) / dz` for the logits `z[rows, vocab]`.
pub(crate) fn log_softmax_rows_backward(
    z: &[f64],
    vocab: usize,
    targets: &[u32],
    dlogp: &[f64],
    dent: Option<&[f64]>,
) -> Vec<f64> {
    let (_, lse, ent) = log_softmax_rows(z, vocab, targets);
    let mut dz = vec![0.0; z.len()];
    for r in 0..targets.len() {
        for c in 0..vocab {
            let lp = z[r * vocab + c] - lse[r];
            let p = lp.exp();
            let mut g = -dlogp[r] * p;
            if c == targets[r] as usize {
                g += dlogp[r];
            }
            if let Some(de) = dent {
                g -= de[r] * p * (lp + ent[r]);
            }
            dz[r * vocab + c] = g;
        }
    }
    dz
}

/// `dz[rows, n] @ w[n, k]` (the input gradient of `x @ w^T`).
pub(crate) fn matmul_nn(dz: &[f64], w: &[f64], k: usize) -> Vec<f64> {
    let n = w.len() / k;
    let mut out = vec![0.0; dz.len() / n * k];
    for (o, g) in out.chunks_mut(k).zip(dz.chunks(n)) {
        for j in 0..n {
            for t in 0..k {
                o[t] += g[j] * w[j * k + t];
            }
        }
    }
    out
}

/// `dz[rows, n]^T @ x[rows, k]` (the weight gradient of `x @ w^T`).
pub(crate) fn matmul_tn(dz: &[f64], x: &[f64], k: usize) -> Vec<f64> {
    let rows = x.len() / k;
    let n = dz.len() / rows;
    let mut out = vec![0.0; n * k];
    for r in 0..rows {
        for j in 0..n {
            for t in 0..k {
                out[j * k + t] += dz[r * n + j] * x[r * k + t];
            }
        }
    }
    out
}

/// log softmax(logits / t)[id] over the whole row (greedy counts as t = 1).
pub(crate) fn sampled_logprob(logits: &[f32], params: &SamplingParams, id: u32) -> f64 {
    let t = if params.temperature > 0.0 {
        params.temperature as f64
    } else {
        1.0
    };
    let z: Vec<f64> = logits.iter().map(|&v| v as f64 / t).collect();
    let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    z[id as usize] - mx - z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln()
}

/// The token `Backend::sample_rows` draws for one row: greedy = the first
/// largest logit; else the candidates `logits / t` (f32, as the backends form
/// them) sorted by value (ties by id), the top `k`, softmax in f64, the
/// smallest prefix reaching `top_p` renormalized, and the inverse CDF at `u`.
pub(crate) fn sample(logits: &[f32], params: &SamplingParams, u: f64) -> u32 {
    if params.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let t = params.temperature;
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v / t))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 && params.top_k < cand.len() {
        cand.truncate(params.top_k);
    }
    let mx = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - mx) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= params.top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return cand[i].0;
        }
    }
    cand[probs.len() - 1].0
}

/// One AdamW step in f64 on `(param, m, v)`.
pub(crate) fn adamw(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], st: &AdamWStep) {
    let (b1, b2) = (st.beta1 as f64, st.beta2 as f64);
    let (lr, wd, eps) = (st.lr as f64, st.weight_decay as f64, st.eps as f64);
    for i in 0..p.len() {
        let gi = g[i] * st.grad_scale as f64;
        m[i] = b1 * m[i] + (1.0 - b1) * gi;
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        let mh = m[i] / st.bias_correction1 as f64;
        let vh = v[i] / st.bias_correction2 as f64;
        p[i] = p[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
    }
}
