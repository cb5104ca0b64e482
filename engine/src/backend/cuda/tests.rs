//! The CUDA backend against the CPU backend, op by op, within bf16
//! tolerances. Every test but the first needs an NVIDIA GPU and prints
//! SKIPPED without one.

#![allow(clippy::single_range_in_vec_init)]

use super::*;
use crate::backend::Cpu;
use crate::rng::Rng;

fn gpu() -> Option<Cuda> {
    if !igpo_kernels::launch::driver_present() {
        eprintln!("SKIPPED: no CUDA driver (libcuda.so.1) on this machine");
        return None;
    }
    Some(Cuda::new(0).unwrap_or_else(|e| panic!("a driver is present but: {e}")))
}

fn rand(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n).map(|_| (rng.normal() * scale) as f32).collect(),
    )
}

/// Relative to the largest magnitude of `want` (bf16 storage: ~2^-8).
fn assert_close(name: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let scale = want.data().iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let worst = got
        .data()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{name}: max error {worst:.3e} (scale {scale:.3e})");
    assert!(
        worst <= rel * scale,
        "{name}: max error {worst} > {rel} x {scale}"
    );
}

#[test]
fn without_a_gpu_new_is_a_clear_error() {
    if igpo_kernels::launch::driver_present() {
        return;
    }
    let e = Cuda::new(0).err().expect("no GPU here");
    assert!(e.to_string().contains("no NVIDIA GPU"), "{e}");
}

#[test]
fn forward_ops_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let c = Cpu;
    let mut rng = Rng::new(1);
    let (x, w, b) = (
        rand(&mut rng, &[37, 96], 1.0),
        rand(&mut rng, &[130, 96], 0.1),
        rand(&mut rng, &[130], 0.1),
    );
    let (xg, wg, bg) = (g.upload(&x), g.upload(&w), g.upload(&b));
    assert_close(
        "linear",
        &g.download(&g.linear(&xg, &wg, Some(&bg))),
        &c.linear(&x, &w, Some(&b)),
        2e-2,
    );
    let nw = rand(&mut rng, &[96], 1.0);
    assert_close(
        "rms_norm",
        &g.download(&g.rms_norm(&xg, &g.upload(&nw), 1e-6)),
        &c.rms_norm(&x, &nw, 1e-6),
        2e-2,
    );
    let rope = Rope::new(64, 1e6);
    let pos: Vec<usize> = (0..37).map(|i| i * 7).collect();
    let q = rand(&mut rng, &[37, 128], 1.0);
    let (mut qc, mut qg) = (q.clone(), g.upload(&q));
    c.rope(&mut qc, &pos, &rope);
    g.rope(&mut qg, &pos, &rope);
    assert_close("rope", &g.download(&qg), &qc, 2e-2);
    let up = rand(&mut rng, &[37, 96], 1.0);
    assert_close(
        "swiglu",
        &g.download(&g.swiglu(&xg, &g.upload(&up))),
        &c.swiglu(&x, &up),
        2e-2,
    );
    let ids = [3u32, 0, 129, 3];
    assert_close(
        "embedding",
        &g.download(&g.embedding(&wg, &ids)),
        &c.embedding(&w, &ids),
        1e-2,
    );
    // attention: causal prefill after a cache, and IGPO span masks, GQA
    let s = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let (q, k, v) = (
        rand(&mut rng, &[70, 256], 1.0),
        rand(&mut rng, &[78, 128], 1.0),
        rand(&mut rng, &[78, 128], 1.0),
    );
    let spans: Vec<Vec<Range<usize>>> = (0..70)
        .map(|j| {
            if j < 40 {
                vec![0..j + 9]
            } else {
                vec![0..48, 48 + (j - 40) / 6 * 6..j + 9]
            }
        })
        .collect();
    for mask in [AttnMask::Causal { offset: 8 }, AttnMask::Spans(spans)] {
        let (qg, kg, vg) = (g.upload(&q), g.upload(&k), g.upload(&v));
        assert_close(
            &format!("attention {mask:?}")
                .chars()
                .take(40)
                .collect::<String>(),
            &g.download(&g.attention(&qg, &kg, &vg, s, &mask)),
            &c.attention(&q, &k, &v, s, &mask),
            2e-2,
        );
    }
}

#[test]
fn backward_ops_and_logprobs_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let c = Cpu;
    let mut rng = Rng::new(2);
    let (x, w, dy) = (
        rand(&mut rng, &[37, 96], 1.0),
        rand(&mut rng, &[130, 96], 0.1),
        rand(&mut rng, &[37, 130], 1.0),
    );
    let (mut dwc, mut dwg) = (c.zeros(&[130, 96]), g.zeros(&[130, 96]));
    let (mut dbc, mut dbg) = (c.zeros(&[130]), g.zeros(&[130]));
    let dxc = c.linear_backward(&x, &w, &dy, &mut dwc, Some(&mut dbc));
    let dxg = g.linear_backward(
        &g.upload(&x),
        &g.upload(&w),
        &g.upload(&dy),
        &mut dwg,
        Some(&mut dbg),
    );
    assert_close("linear_backward dx", &g.download(&dxg), &dxc, 2e-2);
    assert_close("linear_backward dw", &g.download(&dwg), &dwc, 2e-2);
    assert_close("linear_backward db", &g.download(&dbg), &dbc, 1e-2);

    // fused log-prob over a 151,936 vocabulary, several chunks
    let (rows, d, vocab) = (8usize, 64usize, 151_936usize);
    let h = rand(&mut rng, &[rows, d], 1.0);
    let lm = rand(&mut rng, &[vocab, d], 0.05);
    let targets: Vec<u32> = (0..rows as u32).map(|i| i * 18_000 + 7).collect();
    let outc = c.token_logprobs(&h, &lm, &targets, 32_768, true);
    let (hg, lmg) = (g.upload(&h), g.upload(&lm));
    let outg = g.token_logprobs(&hg, &lmg, &targets, 32_768, true);
    assert_close("logp", &g.download(&outg.logp), &outc.logp, 2e-2);
    assert_close(
        "entropy",
        &g.download(outg.entropy.as_ref().unwrap()),
        outc.entropy.as_ref().unwrap(),
        2e-2,
    );
    let dlogp = rand(&mut rng, &[rows], 1.0);
    let dent = rand(&mut rng, &[rows], 1.0);
    let mut dwc = c.zeros(&[vocab, d]);
    let mut dwg = g.zeros(&[vocab, d]);
    let dhc = c.token_logprobs_backward(
        &h,
        &lm,
        &targets,
        &outc,
        &dlogp,
        Some(&dent),
        32_768,
        &mut dwc,
    );
    let dhg = g.token_logprobs_backward(
        &hg,
        &lmg,
        &targets,
        &outg,
        &g.upload(&dlogp),
        Some(&g.upload(&dent)),
        32_768,
        &mut dwg,
    );
    assert_close("logprob dh", &g.download(&dhg), &dhc, 3e-2);
    assert_close("logprob dW", &g.download(&dwg), &dwc, 3e-2);

    // AdamW on f32 master weights
    let p = rand(&mut rng, &[1000], 1.0);
    let gr = rand(&mut rng, &[1000], 0.01);
    let st = AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1: 0.1,
        bias_correction2: 0.05,
        grad_scale: 0.5,
    };
    let (mut pc, mut mc, mut vc) = (p.clone(), c.zeros(&[1000]), c.zeros(&[1000]));
    c.adamw(&mut pc, &gr, &mut mc, &mut vc, &st);
    let (mut pg, mut mg, mut vg) = (g.upload(&p), g.zeros(&[1000]), g.zeros(&[1000]));
    g.adamw(&mut pg, &g.upload(&gr), &mut mg, &mut vg, &st);
    assert_close("adamw", &g.download(&pg), &pc, 1e-6);
    let ss = g.sum_squares(&g.upload(&gr));
    assert!((ss - c.sum_squares(&gr)).abs() <= 1e-9 * ss.max(1e-30));
}
