//! Finite-difference checks of every CPU backward op. Each op's scalar
//! probe is `L = sum(out * R)` for a fixed random `R`; the analytic gradient
//! from the backward must match central differences of `L`.

use super::Cpu;
use crate::backend::{AttnMask, AttnShape, Backend, Rope};
use crate::rng::Rng;
use crate::tensor::Tensor;

fn rand_tensor(shape: &[usize], rng: &mut Rng, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n).map(|_| (scale * rng.normal()) as f32).collect(),
    )
}

fn probe(out: &Tensor, r: &Tensor) -> f64 {
    out.data()
        .iter()
        .zip(r.data())
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum()
}

/// Compares `analytic` with central differences of `loss` w.r.t. `x`, at
/// up to 24 coordinates spread over the tensor.
fn check(name: &str, x: &Tensor, analytic: &Tensor, loss: impl Fn(&Tensor) -> f64) {
    assert_eq!(x.shape(), analytic.shape(), "{name}: gradient shape");
    let n = x.numel();
    let scale = analytic
        .data()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-3);
    let eps = 1e-2f32;
    for t in 0..24.min(n) {
        let i = (t * 7919 + 13) % n;
        let mut plus = x.clone();
        plus.data_mut()[i] += eps;
        let mut minus = x.clone();
        minus.data_mut()[i] -= eps;
        let fd = ((loss(&plus) - loss(&minus)) / (2.0 * eps as f64)) as f32;
        let a = analytic.data()[i];
        assert!(
            (fd - a).abs() <= 2e-3 * scale + 1e-4,
            "{name}[{i}]: backward {a} vs finite difference {fd} (scale {scale})"
        );
    }
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(1));
    let x = rand_tensor(&[5, 7], &mut rng, 1.0);
    let w = rand_tensor(&[4, 7], &mut rng, 0.5);
    let bias = rand_tensor(&[4], &mut rng, 0.5);
    let r = rand_tensor(&[5, 4], &mut rng, 1.0);
    let (mut dw, mut db) = (Tensor::zeros(&[4, 7]), Tensor::zeros(&[4]));
    let dx = cpu.linear_backward(&x, &w, &r, &mut dw, Some(&mut db));
    check("linear dx", &x, &dx, |x| {
        probe(&cpu.linear(x, &w, Some(&bias)), &r)
    });
    check("linear dw", &w, &dw, |w| {
        probe(&cpu.linear(&x, w, Some(&bias)), &r)
    });
    check("linear db", &bias, &db, |b| {
        probe(&cpu.linear(&x, &w, Some(b)), &r)
    });
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(2));
    let x = rand_tensor(&[3, 16], &mut rng, 1.0);
    let w = rand_tensor(&[16], &mut rng, 1.0);
    let r = rand_tensor(&[3, 16], &mut rng, 1.0);
    let mut dw = Tensor::zeros(&[16]);
    let dx = cpu.rms_norm_backward(&x, &w, &r, 1e-6, &mut dw);
    check("rmsnorm dx", &x, &dx, |x| {
        probe(&cpu.rms_norm(x, &w, 1e-6), &r)
    });
    check("rmsnorm dw", &w, &dw, |w| {
        probe(&cpu.rms_norm(&x, w, 1e-6), &r)
    });
}

#[test]
fn head_rms_norm_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(11));
    // 3 rows of 4 heads of 8 (Qwen3's q_norm over each head).
    let x = rand_tensor(&[3, 32], &mut rng, 1.0);
    let w = rand_tensor(&[8], &mut rng, 1.0);
    let r = rand_tensor(&[3, 32], &mut rng, 1.0);
    let mut dw = Tensor::zeros(&[8]);
    let dx = cpu.head_rms_norm_backward(&x, &w, &r, 1e-6, &mut dw);
    check("head rmsnorm dx", &x, &dx, |x| {
        probe(&cpu.head_rms_norm(x, &w, 1e-6), &r)
    });
    check("head rmsnorm dw", &w, &dw, |w| {
        probe(&cpu.head_rms_norm(&x, w, 1e-6), &r)
    });
    // Each head is the whole-row norm of its own 8 values.
    let y = cpu.head_rms_norm(&x, &w, 1e-6);
    let one_head = Tensor::from_vec(&[1, 8], x.data()[8..16].to_vec());
    assert_eq!(cpu.rms_norm(&one_head, &w, 1e-6).data(), &y.data()[8..16]);
}

#[test]
fn scaled_rope_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(12));
    // Yarn-like: other frequencies and cos/sin times 1.2.
    let rope = Rope {
        head_dim: 8,
        inv_freq: vec![1.0, 0.3, 0.02, 0.001],
        attention_scaling: 1.2,
    };
    let x = rand_tensor(&[4, 16], &mut rng, 1.0);
    let r = rand_tensor(&[4, 16], &mut rng, 1.0);
    let pos = [0, 3, 17, 1000];
    let mut dx = r.clone();
    cpu.rope_backward(&mut dx, &pos, &rope);
    check("scaled rope dx", &x, &dx, |x| {
        let mut y = x.clone();
        cpu.rope(&mut y, &pos, &rope);
        probe(&y, &r)
    });
}

#[test]
fn rope_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(3));
    let rope = Rope::new(8, 10000.0);
    let x = rand_tensor(&[4, 16], &mut rng, 1.0);
    let r = rand_tensor(&[4, 16], &mut rng, 1.0);
    let pos = [0, 3, 17, 1000];
    let mut dx = r.clone();
    cpu.rope_backward(&mut dx, &pos, &rope);
    check("rope dx", &x, &dx, |x| {
        let mut y = x.clone();
        cpu.rope(&mut y, &pos, &rope);
        probe(&y, &r)
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(4));
    let g = rand_tensor(&[3, 10], &mut rng, 2.0);
    let u = rand_tensor(&[3, 10], &mut rng, 1.0);
    let r = rand_tensor(&[3, 10], &mut rng, 1.0);
    let (dg, du) = cpu.swiglu_backward(&g, &u, &r);
    check("swiglu dgate", &g, &dg, |g| probe(&cpu.swiglu(g, &u), &r));
    check("swiglu dup", &u, &du, |u| probe(&cpu.swiglu(&g, u), &r));
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let (cpu, mut rng) = (Cpu, Rng::new(5));
    let table = rand_tensor(&[6, 4], &mut rng, 1.0);
    let ids = [2u32, 5, 2, 0];
    let r = rand_tensor(&[4, 4], &mut rng, 1.0);
    let mut dt = Tensor::zeros(&[6, 4]);
    cpu.embedding_backward(&ids, &r, &mut dt);
    check("embedding dtable", &table, &dt, |t| {
        probe(&cpu.embedding(t, &ids), &r)
    });
}

fn check_attention(mask: AttnMask, m: usize, n: usize, seed: u64) {
    let (cpu, mut rng) = (Cpu, Rng::new(seed));
    let s = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let q = rand_tensor(&[m, 32], &mut rng, 1.0);
    let k = rand_tensor(&[n, 16], &mut rng, 1.0);
    let v = rand_tensor(&[n, 16], &mut rng, 1.0);
    let r = rand_tensor(&[m, 32], &mut rng, 1.0);
    let (out, lse) = cpu.attention_train(&q, &k, &v, s, &mask);
    assert_eq!(
        out,
        cpu.attention(&q, &k, &v, s, &mask),
        "attention_train output equals attention"
    );
    let (dq, dk, dv) = cpu.attention_backward(&q, &k, &v, &out, &lse, &r, s, &mask);
    check("attention dq", &q, &dq, |q| {
        probe(&cpu.attention(q, &k, &v, s, &mask), &r)
    });
    check("attention dk", &k, &dk, |k| {
        probe(&cpu.attention(&q, k, &v, s, &mask), &r)
    });
    check("attention dv", &v, &dv, |v| {
        probe(&cpu.attention(&q, &k, v, s, &mask), &r)
    });
}

#[test]
fn causal_gqa_attention_backward_matches_finite_differences() {
    check_attention(AttnMask::Causal { offset: 0 }, 6, 6, 6);
    check_attention(AttnMask::Causal { offset: 3 }, 2, 5, 7);
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // span lists, some of one range
fn block_mask_attention_backward_matches_finite_differences() {
    // A shared prefix 0..3, then two probes (3..5 and 5..7) that each see
    // the prefix and themselves, not each other.
    let mut spans = vec![];
    for j in 0..7 {
        spans.push(match j {
            0..=2 => vec![0..j + 1],
            3 | 4 => vec![0..3, 3..j + 1],
            _ => vec![0..2, 5..j + 1],
        });
    }
    check_attention(AttnMask::Spans(spans), 7, 7, 8);
}

#[test]
fn token_logprobs_backward_matches_finite_differences_with_entropy() {
    let (cpu, mut rng) = (Cpu, Rng::new(9));
    let h = rand_tensor(&[4, 8], &mut rng, 1.0);
    let w = rand_tensor(&[37, 8], &mut rng, 0.7);
    let targets = [3u32, 36, 0, 17];
    let gl = rand_tensor(&[4], &mut rng, 1.0);
    let ge = rand_tensor(&[4], &mut rng, 1.0);
    // chunk 10 does not divide 37: the tail chunk is exercised too.
    let out = cpu.token_logprobs(&h, &w, &targets, 10, true);
    let mut dw = Tensor::zeros(&[37, 8]);
    let dh = cpu.token_logprobs_backward(&h, &w, &targets, &out, &gl, Some(&ge), 10, &mut dw);
    let loss = |h: &Tensor, w: &Tensor| {
        let o = cpu.token_logprobs(h, w, &targets, 10, true);
        probe(&o.logp, &gl) + probe(o.entropy.as_ref().unwrap(), &ge)
    };
    check("logprob dh", &h, &dh, |h| loss(h, &w));
    check("logprob dw", &w, &dw, |w| loss(&h, w));
}

#[test]
fn token_logprobs_equal_naive_log_softmax_for_any_chunk() {
    let (cpu, mut rng) = (Cpu, Rng::new(10));
    let h = rand_tensor(&[5, 6], &mut rng, 1.0);
    let w = rand_tensor(&[50, 6], &mut rng, 1.0);
    let targets = [0u32, 49, 7, 7, 25];
    let logits = cpu.linear(&h, &w, None);
    for chunk in [1, 7, 50, 64] {
        let out = cpu.token_logprobs(&h, &w, &targets, chunk, true);
        for (r, &t) in targets.iter().enumerate() {
            let row: Vec<f64> = logits.row(r).iter().map(|v| *v as f64).collect();
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            let ent: f64 = -row.iter().map(|v| (v - lse).exp() * (v - lse)).sum::<f64>();
            let got = out.logp.data()[r] as f64;
            assert!(
                (got - (row[t as usize] - lse)).abs() < 1e-5,
                "chunk {chunk} row {r}: logp"
            );
            assert!(
                (out.entropy.as_ref().unwrap().data()[r] as f64 - ent).abs() < 1e-5,
                "chunk {chunk} row {r}: entropy"
            );
            assert!(got <= 0.0);
        }
    }
}
