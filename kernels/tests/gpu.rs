//! The kernels on a real GPU through the launch wrappers, against plain Rust
//! reference loops that mirror the CPU backend (the same cases as the CPU
//! emulator in `emu/`, plus what only a GPU shows: argument order of every
//! wrapper, alignment, the real memory model). Skipped, with the reason
//! printed, where there is no NVIDIA driver. The embedding and sampling
//! kernels have no reference here: the engine's conformance suite checks
//! them through the backend as strictly (`engine/src/backend/conformance`:
//! the table's bits, the backward's bits, every pick and its log-prob).
//! Run under
//! `compute-sanitizer --tool memcheck cargo test -p igpo-kernels --test gpu`
//! on a GPU machine.

#![allow(clippy::needless_range_loop, clippy::single_range_in_vec_init)]

use half::bf16;
use igpo_kernels::host::MaskArgs;
use igpo_kernels::launch::{
    driver_present, AdamW, AdamWState, AttnArgs, AttnDims, AttnGrads, AttnKernels, DecodeArgs,
    Kernels, LogprobChunk, NormInput, Reused, RopeArgs, SwigluInput, VarlenSeqs,
};
use igpo_kernels::PtxCache;

fn gpu() -> Option<Kernels> {
    if !driver_present() {
        eprintln!("SKIPPED: no CUDA driver (libcuda.so.1) on this machine");
        return None;
    }
    match Kernels::new(0, &PtxCache::default_location()) {
        Ok(k) => Some(k),
        Err(e) => panic!("a driver is present but the kernels do not load: {e}"),
    }
}

struct Rand(u64);
impl Rand {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// `n` values in [-a, a), already representable in bf16.
    fn bf(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n)
            .map(|_| bf16::from_f32(((self.uniform() * 2.0 - 1.0) as f32) * a).to_f32())
            .collect()
    }
}

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}
fn from_bf(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// |got - want| <= atol + rtol |want| everywhere.
fn close(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{name}: element {i}: got {g}, want {w}"
        );
        worst = worst.max(err);
    }
    eprintln!("{name}: max error {worst:.3e}");
}

#[test]
fn norm_rope_mlp_adamw_match_the_reference() {
    let Some(k) = gpu() else { return };
    let mut r = Rand(0x1234_5678);
    // RMSNorm forward and backward
    let (rows, d, eps) = (300usize, 896usize, 1e-6f32);
    let (x, w, dy) = (r.bf(rows * d, 2.0), r.bf(d, 1.0), r.bf(rows * d, 1.0));
    let (xd, wd, dyd) = (
        k.upload(&to_bf(&x)).unwrap(),
        k.upload(&to_bf(&w)).unwrap(),
        k.upload(&to_bf(&dy)).unwrap(),
    );
    let mut out = k.zeros::<bf16>(rows * d).unwrap();
    let norm = NormInput {
        x: &xd,
        w: &wd,
        eps,
    };
    k.rms_norm(&mut out, None, &norm, rows, d).unwrap();
    let mut want = vec![0.0f64; rows * d];
    let mut want_dx = vec![0.0f64; rows * d];
    let mut want_dw = vec![0.0f64; d];
    for i in 0..rows {
        let xr = &x[i * d..(i + 1) * d];
        let ss: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum();
        let inv = 1.0 / (ss / d as f64 + eps as f64).sqrt();
        let dot: f64 = (0..d)
            .map(|j| xr[j] as f64 * dy[i * d + j] as f64 * w[j] as f64)
            .sum();
        let c = inv * inv * inv * dot / d as f64;
        for j in 0..d {
            want[i * d + j] = xr[j] as f64 * inv * w[j] as f64;
            want_dx[i * d + j] = inv * w[j] as f64 * dy[i * d + j] as f64 - c * xr[j] as f64;
            want_dw[j] += dy[i * d + j] as f64 * xr[j] as f64 * inv;
        }
    }
    close(
        "rms_norm",
        &from_bf(&k.download(&out).unwrap()),
        &want,
        1e-3,
        1.0 / 128.0,
    );
    let mut dx = k.zeros::<bf16>(rows * d).unwrap();
    let mut dw = k.zeros::<f32>(d).unwrap();
    k.rms_norm_backward(&mut dx, &mut dw, &norm, &dyd, rows, d)
        .unwrap();
    close(
        "rms_norm_backward dx",
        &from_bf(&k.download(&dx).unwrap()),
        &want_dx,
        2e-3,
        1.0 / 64.0,
    );
    close(
        "rms_norm_backward dw",
        &k.download(&dw).unwrap(),
        &want_dw,
        1e-3,
        1e-4,
    );

    // RoPE: forward against the formula, backward undoes it
    let (rows, hd, heads) = (5usize, 64usize, 3usize);
    let cols = hd * heads;
    let pos: Vec<i32> = vec![0, 1, 17, 1000, 32767];
    let inv: Vec<f32> = (0..hd / 2)
        .map(|i| (1.0 / 1e6f64.powf(2.0 * i as f64 / hd as f64)) as f32)
        .collect();
    let x = r.bf(rows * cols, 1.0);
    let mut xd = k.upload(&to_bf(&x)).unwrap();
    let (pd, fd) = (k.upload(&pos).unwrap(), k.upload(&inv).unwrap());
    let rot = RopeArgs {
        positions: &pd,
        inv_freq: &fd,
        head_dim: hd,
        scale: 1.0,
    };
    k.rope(&mut xd, rows, cols, &rot, false).unwrap();
    let mut want = vec![0.0f64; rows * cols];
    for row in 0..rows {
        for h in 0..heads {
            for i in 0..hd / 2 {
                let ang = pos[row] as f32 * inv[i];
                let (s, c) = (ang.sin() as f64, ang.cos() as f64);
                let at = row * cols + h * hd;
                let (a, b) = (x[at + i] as f64, x[at + i + hd / 2] as f64);
                want[at + i] = a * c - b * s;
                want[at + i + hd / 2] = b * c + a * s;
            }
        }
    }
    close(
        "rope",
        &from_bf(&k.download(&xd).unwrap()),
        &want,
        2e-3,
        1.0 / 128.0,
    );
    k.rope(&mut xd, rows, cols, &rot, true).unwrap();
    let back: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    close(
        "rope backward",
        &from_bf(&k.download(&xd).unwrap()),
        &back,
        1e-2,
        1.0 / 64.0,
    );

    // SwiGLU
    let n = 4864usize;
    let (g, u, dy) = (r.bf(n, 4.0), r.bf(n, 1.0), r.bf(n, 1.0));
    let (gd, ud, dyd) = (
        k.upload(&to_bf(&g)).unwrap(),
        k.upload(&to_bf(&u)).unwrap(),
        k.upload(&to_bf(&dy)).unwrap(),
    );
    let mut out = k.zeros::<bf16>(n).unwrap();
    let (mut dg, mut du) = (k.zeros::<bf16>(n).unwrap(), k.zeros::<bf16>(n).unwrap());
    let input = SwigluInput {
        gate: &gd,
        up: &ud,
        rows: 1,
        cols: n,
    };
    k.swiglu(&mut out, &input).unwrap();
    k.swiglu_backward(&mut dg, &mut du, &input, &dyd).unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let want: Vec<f64> = (0..n)
        .map(|i| g[i] as f64 * sig(g[i] as f64) * u[i] as f64)
        .collect();
    let want_du: Vec<f64> = (0..n)
        .map(|i| dy[i] as f64 * g[i] as f64 * sig(g[i] as f64))
        .collect();
    let want_dg: Vec<f64> = (0..n)
        .map(|i| {
            let s = sig(g[i] as f64);
            dy[i] as f64 * u[i] as f64 * s * (1.0 + g[i] as f64 * (1.0 - s))
        })
        .collect();
    close(
        "swiglu",
        &from_bf(&k.download(&out).unwrap()),
        &want,
        1e-3,
        1.0 / 128.0,
    );
    close(
        "swiglu dup",
        &from_bf(&k.download(&du).unwrap()),
        &want_du,
        1e-3,
        1.0 / 128.0,
    );
    close(
        "swiglu dgate",
        &from_bf(&k.download(&dg).unwrap()),
        &want_dg,
        1e-3,
        1.0 / 128.0,
    );

    // AdamW with the clip factor on the device
    let n = 100_003usize;
    let p: Vec<f32> = (0..n).map(|_| r.uniform() as f32 - 0.5).collect();
    let g: Vec<f32> = (0..n).map(|_| (r.uniform() as f32 - 0.5) * 0.01).collect();
    let (mut pd, gd) = (k.upload(&p).unwrap(), k.upload(&g).unwrap());
    let (mut md, mut vd) = (k.zeros::<f32>(n).unwrap(), k.zeros::<f32>(n).unwrap());
    let mut pb = k.zeros::<bf16>(n).unwrap();
    let mut ss = k.zeros::<f64>(1).unwrap();
    k.sum_squares(&mut ss, &gd, n).unwrap();
    let want_ss: f64 = g.iter().map(|&v| v as f64 * v as f64).sum();
    let got_ss = k.download(&ss).unwrap()[0];
    assert!(
        (got_ss - want_ss).abs() <= 1e-12 * want_ss,
        "{got_ss} vs {want_ss}"
    );
    let mut scale = k.zeros::<f32>(1).unwrap();
    k.clip_factor(&mut scale, None, &ss, 0.5, 0.1).unwrap();
    let norm = want_ss.sqrt() * 0.5;
    let clip = if norm > 0.1 { 0.1 / (norm + 1e-6) } else { 1.0 };
    let s = (0.5 * clip) as f32;
    let st = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1: 0.1,
        bias_correction2: 0.05,
        grad_scale: 1.0,
    };
    let state = AdamWState {
        master: &mut pd,
        param_bf16: Some(&mut pb),
        m: &mut md,
        v: &mut vd,
    };
    k.adamw(state, &gd, Some(&scale), n, &st).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let gi = g[i] * s;
            let m = (1.0 - st.beta1) * gi;
            let v = (1.0 - st.beta2) * gi * gi;
            let upd =
                st.lr * (m / st.bias_correction1) / ((v / st.bias_correction2).sqrt() + st.eps);
            (p[i] * (1.0 - st.lr * st.weight_decay) - upd) as f64
        })
        .collect();
    close("adamw", &k.download(&pd).unwrap(), &want, 1e-7, 1e-6);
    close(
        "adamw bf16 copy",
        &from_bf(&k.download(&pb).unwrap()),
        &want,
        1e-7,
        1.0 / 128.0,
    );
}

#[test]
fn logprob_chunks_match_the_reference() {
    let Some(k) = gpu() else { return };
    let mut r = Rand(99);
    let (rows, vocab, chunk) = (4usize, 151_936usize, 32_768usize);
    let z: Vec<f32> = (0..rows * vocab)
        .map(|_| (r.uniform() as f32 - 0.5) * 12.0)
        .collect();
    let targets: Vec<i32> = vec![0, 151_935, 77_777, 32_768];
    let td = k.upload(&targets).unwrap();
    let mut st = k.logprob_state(rows).unwrap();
    for lo in (0..vocab).step_by(chunk) {
        let c = chunk.min(vocab - lo);
        let zc: Vec<f32> = (0..rows)
            .flat_map(|i| z[i * vocab + lo..i * vocab + lo + c].iter().copied())
            .collect();
        let zd = k.upload(&zc).unwrap();
        let chunk = LogprobChunk {
            z: &zd,
            targets: &td,
            rows,
            c,
            lo,
        };
        k.logprob_chunk(&mut st, &chunk).unwrap();
    }
    let (mut lp, mut lse, mut ent) = (
        k.zeros::<f32>(rows).unwrap(),
        k.zeros::<f32>(rows).unwrap(),
        k.zeros::<f32>(rows).unwrap(),
    );
    let mut viol = k.zeros::<i32>(1).unwrap();
    k.logprob_finalize(&mut lp, &mut lse, Some(&mut ent), &mut viol, &st, rows)
        .unwrap();
    let (mut wl, mut wlp, mut we) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
    for i in 0..rows {
        let zr = &z[i * vocab..(i + 1) * vocab];
        let m = zr.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let s: f64 = zr.iter().map(|&v| (v as f64 - m).exp()).sum();
        wl[i] = m + s.ln();
        wlp[i] = zr[targets[i] as usize] as f64 - wl[i];
        we[i] = -zr
            .iter()
            .map(|&v| {
                let l = v as f64 - wl[i];
                l.exp() * l
            })
            .sum::<f64>();
    }
    close("logprob lse", &k.download(&lse).unwrap(), &wl, 1e-5, 1e-6);
    close("logprob logp", &k.download(&lp).unwrap(), &wlp, 1e-4, 1e-5);
    close(
        "logprob entropy",
        &k.download(&ent).unwrap(),
        &we,
        1e-4,
        1e-5,
    );
    assert_eq!(k.download(&viol).unwrap()[0], 0);
}

/// f64 attention forward and backward for one case.
#[allow(clippy::type_complexity)]
fn ref_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    dims: AttnDims,
    visible: &dyn Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n, hh, kv, d) = (dims.m, dims.n, dims.n_heads, dims.n_kv_heads, dims.head_dim);
    let (qc, kc, group) = (hh * d, kv * d, hh / kv);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; m * qc];
    let mut lse = vec![f64::NEG_INFINITY; m * hh];
    let (mut dq, mut dk, mut dv) = (vec![0.0; m * qc], vec![0.0; n * kc], vec![0.0; n * kc]);
    for h in 0..hh {
        let g = h / group;
        for i in 0..m {
            let keys: Vec<usize> = (0..n).filter(|&j| visible(i, j)).collect();
            if keys.is_empty() {
                continue;
            }
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    (0..d)
                        .map(|t| q[i * qc + h * d + t] as f64 * k[j * kc + g * d + t] as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l = mx + s.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            lse[i * hh + h] = l;
            let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
            for (&j, &pj) in keys.iter().zip(&p) {
                for t in 0..d {
                    out[i * qc + h * d + t] += pj * v[j * kc + g * d + t] as f64;
                }
            }
            let delta: f64 = (0..d)
                .map(|t| dout[i * qc + h * d + t] as f64 * out[i * qc + h * d + t])
                .sum();
            for (&j, &pj) in keys.iter().zip(&p) {
                let dp: f64 = (0..d)
                    .map(|t| dout[i * qc + h * d + t] as f64 * v[j * kc + g * d + t] as f64)
                    .sum();
                let ds = pj * (dp - delta);
                for t in 0..d {
                    dv[j * kc + g * d + t] += pj * dout[i * qc + h * d + t] as f64;
                    dq[i * qc + h * d + t] += scale * ds * k[j * kc + g * d + t] as f64;
                    dk[j * kc + g * d + t] += scale * ds * q[i * qc + h * d + t] as f64;
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, b| a.max(b.abs()))
}

/// Both kernel sets (tensor-core, then scalar) against the f64 reference.
#[test]
fn attention_matches_the_reference() {
    let Some(mut kn) = gpu() else { return };
    for which in [AttnKernels::TensorCore, AttnKernels::Scalar] {
        kn.set_attention_kernels(which);
        attention_cases_match_the_reference(&kn, which);
    }
}

fn attention_cases_match_the_reference(kn: &Kernels, which: AttnKernels) {
    let mut r = Rand(7);
    // (dims, mask): causal after a cache, IGPO probes with one empty row, d128
    let mut spans: Vec<Vec<std::ops::Range<usize>>> = Vec::new();
    for j in 0..150usize {
        spans.push(if j == 133 {
            vec![]
        } else if j < 100 {
            vec![0..j + 1]
        } else {
            let p0 = 100 + (j - 100) / 10 * 10;
            vec![0..100, p0..j + 1]
        });
    }
    let cases = vec![
        (
            AttnDims {
                m: 200,
                n: 264,
                n_heads: 14,
                n_kv_heads: 2,
                head_dim: 64,
            },
            MaskArgs::Causal { offset: 64 },
        ),
        (
            AttnDims {
                m: 150,
                n: 150,
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 64,
            },
            MaskArgs::from_spans(&spans, 150).unwrap(),
        ),
        (
            AttnDims {
                m: 70,
                n: 70,
                n_heads: 12,
                n_kv_heads: 2,
                head_dim: 128,
            },
            MaskArgs::Causal { offset: 0 },
        ),
    ];
    for (dims, mask) in cases {
        let (qc, kc) = (
            dims.n_heads * dims.head_dim,
            dims.n_kv_heads * dims.head_dim,
        );
        let (q, k, v, dout) = (
            r.bf(dims.m * qc, 1.0),
            r.bf(dims.n * kc, 1.0),
            r.bf(dims.n * kc, 1.0),
            r.bf(dims.m * qc, 1.0),
        );
        let visible = |i: usize, j: usize| match &mask {
            MaskArgs::Causal { offset } => j <= *offset as usize + i,
            MaskArgs::Spans { span_ptr, spans } => (span_ptr[i]..span_ptr[i + 1]).any(|s| {
                j >= spans[2 * s as usize] as usize && j < spans[2 * s as usize + 1] as usize
            }),
        };
        let (wo, wl, wdq, wdk, wdv) = ref_attention(&q, &k, &v, &dout, dims, &visible);
        let run = run_attention(kn, &q, &k, &v, &dout, dims, &mask);
        let name = format!(
            "attention {which:?} m={} n={} d={}",
            dims.m, dims.n, dims.head_dim
        );
        close(&format!("{name} out"), &run.out, &wo, 4e-3, 1.0 / 64.0);
        for (i, (&g, &w)) in run.lse.iter().zip(&wl).enumerate() {
            if w.is_infinite() {
                assert!(g.is_infinite() && g < 0.0, "{name} lse {i}: {g}");
            } else {
                assert!((g as f64 - w).abs() < 1e-4, "{name} lse {i}: {g} vs {w}");
            }
        }
        for (what, got, want) in [
            ("dq", &run.dq, &wdq),
            ("dk", &run.dk, &wdk),
            ("dv", &run.dv, &wdv),
        ] {
            close(
                &format!("{name} {what}"),
                got,
                want,
                2e-2 * max_abs(want),
                1.0 / 32.0,
            );
        }
        // Decode of the last row (causal cases): same bits as the forward.
        if let MaskArgs::Causal { .. } = mask {
            decode_matches_the_forward(kn, &name, (&q, &k, &v), dims, (&run, &wo));
        }
    }
}

/// The last query row of a causal case through `attention_varlen` (the same
/// bits as the forward's row) and `attention_decode` (close to the reference
/// `want_out`).
fn decode_matches_the_forward(
    kn: &Kernels,
    name: &str,
    (q, k, v): (&[f32], &[f32], &[f32]),
    dims: AttnDims,
    (run, want_out): (&AttnRun, &[f64]),
) {
    let qc = dims.n_heads * dims.head_dim;
    let last = dims.m - 1;
    let q_last = kn.upload(&to_bf(&q[last * qc..])).unwrap();
    let (kd, vd) = (kn.upload(&to_bf(k)).unwrap(), kn.upload(&to_bf(v)).unwrap());
    use cudarc::driver::DevicePtr;
    let (kp, _a) = kd.device_ptr(kn.stream());
    let (vp, _b) = vd.device_ptr(kn.stream());
    let (kpd, vpd) = (kn.upload(&[kp]).unwrap(), kn.upload(&[vp]).unwrap());
    let mut o1 = kn.zeros::<bf16>(qc).unwrap();
    let mut l1 = kn.zeros::<f32>(dims.n_heads).unwrap();
    let seqs = VarlenSeqs {
        rows: &[1],
        keys: &[dims.n],
        n_heads: dims.n_heads,
        n_kv_heads: dims.n_kv_heads,
        head_dim: dims.head_dim,
    };
    kn.attention_varlen(&mut o1, &mut l1, &q_last, &kpd, &vpd, &seqs)
        .unwrap();
    // bf16 to f32 is exact: equal as f32 where equal as bf16.
    assert_eq!(
        from_bf(&kn.download(&o1).unwrap()),
        run.out[last * qc..].to_vec(),
        "{name}: decode row != forward row"
    );
    assert_eq!(
        kn.download(&l1).unwrap(),
        run.lse[last * dims.n_heads..].to_vec()
    );
    let lens = kn.upload(&[dims.n as i32]).unwrap();
    let mut o2 = kn.zeros::<bf16>(qc).unwrap();
    let decode = DecodeArgs {
        q: &q_last,
        k_ptrs: &kpd,
        v_ptrs: &vpd,
        lens: &lens,
        batch: 1,
        n_heads: dims.n_heads,
        n_kv_heads: dims.n_kv_heads,
        head_dim: dims.head_dim,
    };
    kn.attention_decode(&mut o2, &decode).unwrap();
    close(
        &format!("{name} attn_decode"),
        &from_bf(&kn.download(&o2).unwrap()),
        &want_out[last * qc..],
        4e-3,
        1.0 / 64.0,
    );
}

/// Outputs of one attention forward + backward.
struct AttnRun {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run_attention(
    kn: &Kernels,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    dims: AttnDims,
    mask: &MaskArgs,
) -> AttnRun {
    let (qc, kc) = (
        dims.n_heads * dims.head_dim,
        dims.n_kv_heads * dims.head_dim,
    );
    let dm = kn.mask(mask).unwrap();
    let up = |x: &[f32]| kn.upload(&to_bf(x)).unwrap();
    let (qd, kd, vd, dod) = (up(q), up(k), up(v), up(dout));
    let mut out = kn.zeros::<bf16>(dims.m * qc).unwrap();
    let mut lse = kn.zeros::<f32>(dims.m * dims.n_heads).unwrap();
    let args = AttnArgs {
        q: &qd,
        k: &kd,
        v: &vd,
        dims,
        mask: &dm,
    };
    kn.attention(&mut out, &mut lse, &args).unwrap();
    let (mut dq, mut dk, mut dv) = (
        kn.zeros::<bf16>(dims.m * qc).unwrap(),
        kn.zeros::<bf16>(dims.n * kc).unwrap(),
        kn.zeros::<bf16>(dims.n * kc).unwrap(),
    );
    let grads = AttnGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
    };
    kn.attention_backward(grads, &args, &out, &lse, &dod)
        .unwrap();
    let down = |x: &cudarc::driver::CudaSlice<bf16>| from_bf(&kn.download(x).unwrap());
    AttnRun {
        out: down(&out),
        lse: kn.download(&lse).unwrap(),
        dq: down(&dq),
        dk: down(&dk),
        dv: down(&dv),
    }
}

/// The tensor-core kernels against the scalar ones on prefill-sized shapes
/// (several query and key tiles, ragged ends, GQA 7:1 and 4:1, a long cache
/// offset, IGPO probe spans), and bit-for-bit repeatable (no atomics).
#[test]
fn tensor_core_attention_matches_the_scalar_kernels() {
    let Some(mut kn) = gpu() else { return };
    let mut r = Rand(17);
    let mut spans: Vec<Vec<std::ops::Range<usize>>> = Vec::new();
    for j in 0..333usize {
        spans.push(if j == 300 {
            vec![]
        } else if j < 200 {
            vec![0..j + 1]
        } else {
            let p0 = 200 + (j - 200) / 19 * 19;
            vec![0..200, p0..j + 1]
        });
    }
    let dims = |m, n, n_heads, n_kv_heads, head_dim| AttnDims {
        m,
        n,
        n_heads,
        n_kv_heads,
        head_dim,
    };
    let cases = vec![
        (dims(517, 517, 8, 2, 128), MaskArgs::Causal { offset: 0 }),
        (dims(300, 1100, 14, 2, 64), MaskArgs::Causal { offset: 800 }),
        (
            dims(333, 333, 4, 1, 128),
            MaskArgs::from_spans(&spans, 333).unwrap(),
        ),
        (dims(1, 777, 14, 2, 64), MaskArgs::Causal { offset: 776 }),
    ];
    for (d, mask) in cases {
        let (qn, kn_) = (
            d.m * d.n_heads * d.head_dim,
            d.n * d.n_kv_heads * d.head_dim,
        );
        let (q, k, v, dout) = (r.bf(qn, 1.0), r.bf(kn_, 1.0), r.bf(kn_, 1.0), r.bf(qn, 1.0));
        kn.set_attention_kernels(AttnKernels::Scalar);
        let want = run_attention(&kn, &q, &k, &v, &dout, d, &mask);
        kn.set_attention_kernels(AttnKernels::TensorCore);
        let got = run_attention(&kn, &q, &k, &v, &dout, d, &mask);
        let again = run_attention(&kn, &q, &k, &v, &dout, d, &mask);
        let name = format!("tensor-core vs scalar m={} n={} d={}", d.m, d.n, d.head_dim);
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        close(
            &format!("{name} out"),
            &got.out,
            &f64s(&want.out),
            8e-3,
            1.0 / 32.0,
        );
        for (i, (&g, &w)) in got.lse.iter().zip(&want.lse).enumerate() {
            if w.is_infinite() {
                assert!(g.is_infinite() && g < 0.0, "{name} lse {i}: {g}");
            } else {
                assert!((g - w).abs() < 2e-4, "{name} lse {i}: {g} vs {w}");
            }
        }
        for (what, g, w) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
        ] {
            let w = f64s(w);
            close(
                &format!("{name} {what}"),
                g,
                &w,
                3e-2 * max_abs(&w),
                1.0 / 16.0,
            );
        }
        assert!(
            got.out == again.out
                && got.lse == again.lse
                && got.dq == again.dq
                && got.dk == again.dk
                && got.dv == again.dv,
            "{name}: two runs differ"
        );
    }
}

#[test]
fn cublas_linear_and_its_backward_match_the_reference() {
    let Some(kn) = gpu() else { return };
    let blas = igpo_kernels::gemm::Blas::new(kn.stream().clone()).unwrap();
    let mut r = Rand(21);
    let (m, n, k) = (37usize, 130usize, 96usize);
    let (x, w, dy) = (r.bf(m * k, 1.0), r.bf(n * k, 1.0), r.bf(m * n, 1.0));
    let (xd, wd, dyd) = (
        kn.upload(&to_bf(&x)).unwrap(),
        kn.upload(&to_bf(&w)).unwrap(),
        kn.upload(&to_bf(&dy)).unwrap(),
    );
    let mut y = kn.zeros::<f32>(m * n).unwrap();
    blas.linear(&mut y, &xd, &wd, (m, n, k)).unwrap();
    let mut want = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
        }
    }
    close(
        "linear (f32 out)",
        &kn.download(&y).unwrap(),
        &want,
        1e-4,
        1e-4,
    );
    let mut dx = kn.zeros::<f32>(m * k).unwrap();
    let mut dw = kn.upload(&vec![0.5f32; n * k]).unwrap();
    blas.linear_backward(&mut dx, &mut dw, &xd, &wd, &dyd, (m, n, k))
        .unwrap();
    let mut want_dx = vec![0.0f64; m * k];
    let mut want_dw = vec![0.5f64; n * k];
    for i in 0..m {
        for t in 0..k {
            want_dx[i * k + t] = (0..n)
                .map(|j| dy[i * n + j] as f64 * w[j * k + t] as f64)
                .sum();
        }
    }
    for j in 0..n {
        for t in 0..k {
            want_dw[j * k + t] += (0..m)
                .map(|i| dy[i * n + j] as f64 * x[i * k + t] as f64)
                .sum::<f64>();
        }
    }
    close(
        "linear_backward dx",
        &kn.download(&dx).unwrap(),
        &want_dx,
        1e-4,
        1e-4,
    );
    close(
        "linear_backward dw (+=)",
        &kn.download(&dw).unwrap(),
        &want_dw,
        1e-4,
        1e-4,
    );
}

#[test]
fn reused_uploads_are_shared_only_while_the_host_array_is_equal() {
    let Some(k) = gpu() else { return };
    let slot = Reused::<i32>::default();
    let a = slot.get(&k, &[3, 4, 5]).unwrap();
    let b = slot.get(&k, &[3, 4, 5]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "equal array: one upload");
    let c = slot.get(&k, &[3, 4, 6]).unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&a, &c),
        "changed array: a new upload"
    );
    assert_eq!(k.download(&c).unwrap(), vec![3, 4, 6]);
    // The first copy stays valid for whoever still holds it.
    assert_eq!(k.download(&a).unwrap(), vec![3, 4, 5]);
}

/// One paged attention case: pools of `blocks` blocks of 16 rows with
/// random contents, each sequence's blocks a scattered pick of them.
struct PagedCase {
    h: usize,
    kv: usize,
    d: usize,
    keys: Vec<usize>,
    rows: Vec<usize>,
}

/// f64 reference of every query row of `c` (packed in sequence order).
#[allow(clippy::too_many_arguments)]
fn ref_paged(
    c: &PagedCase,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tables: &[Vec<i32>],
    bs: usize,
) -> Vec<f64> {
    let (qc, kc, group) = (c.h * c.d, c.kv * c.d, c.h / c.kv);
    let scale = 1.0 / (c.d as f64).sqrt();
    let mut out = vec![];
    let mut row = 0;
    for (b, (&keys, &m)) in c.keys.iter().zip(&c.rows).enumerate() {
        for j in 0..m {
            let n = keys - m + j + 1;
            let mut o = vec![0.0f64; qc];
            for h in 0..c.h {
                let g = h / group;
                let pr = |key: usize| tables[b][key / bs] as usize * bs + key % bs;
                let s: Vec<f64> = (0..n)
                    .map(|key| {
                        (0..c.d)
                            .map(|t| {
                                q[row * qc + h * c.d + t] as f64
                                    * k[pr(key) * kc + g * c.d + t] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let tot: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for (key, sk) in s.iter().enumerate() {
                    let w = (sk - mx).exp() / tot;
                    for t in 0..c.d {
                        o[h * c.d + t] += w * v[pr(key) * kc + g * c.d + t] as f64;
                    }
                }
            }
            out.extend(o);
            row += 1;
        }
    }
    out
}

/// Split-K paged attention (two launches) against the f64 reference; a
/// sequence alone gives the bits it gets in the batch; one split per row
/// agrees with 256-key splits within rounding; the row scatter of write_kv.
#[test]
fn paged_attention_matches_the_reference() {
    use igpo_kernels::launch::{PagedAttnArgs, PagedSeq, SPLIT_KEYS};
    let Some(kn) = gpu() else { return };
    let mut r = Rand(0x5eed);
    let bs = 16usize;
    let cases = [
        PagedCase {
            h: 8,
            kv: 2,
            d: 64,
            keys: vec![1, 15, 16, 17, 300, 1000, 70, 8192],
            rows: vec![1, 1, 1, 1, 5, 1, 8, 1],
        },
        PagedCase {
            h: 12,
            kv: 1,
            d: 128,
            keys: vec![1, 15, 16, 17, 300, 1000, 4100],
            rows: vec![1, 1, 1, 1, 3, 1, 2],
        },
        PagedCase {
            h: 28,
            kv: 4,
            d: 128,
            keys: vec![33, 2000],
            rows: vec![1, 1],
        },
    ];
    for c in &cases {
        let name = format!("paged H{} KV{} D{}", c.h, c.kv, c.d);
        let blocks: usize = c.keys.iter().map(|k| k.div_ceil(bs)).sum::<usize>() + 7;
        let pool_rows = blocks * bs;
        let kc = c.kv * c.d;
        let (kf, vf) = (r.bf(pool_rows * kc, 2.0), r.bf(pool_rows * kc, 1.0));
        let mut perm: Vec<i32> = (0..blocks as i32).collect();
        for i in (1..perm.len()).rev() {
            perm.swap(i, (r.uniform() * (i + 1) as f64) as usize);
        }
        let mut next = 0;
        let tables: Vec<Vec<i32>> = c
            .keys
            .iter()
            .map(|k| {
                let t = perm[next..next + k.div_ceil(bs)].to_vec();
                next += t.len();
                t
            })
            .collect();
        let total: usize = c.rows.iter().sum();
        let qf = r.bf(total * c.h * c.d, 1.0);
        let (qd, kd, vd) = (
            kn.upload(&to_bf(&qf)).unwrap(),
            kn.upload(&to_bf(&kf)).unwrap(),
            kn.upload(&to_bf(&vf)).unwrap(),
        );
        let mut starts = vec![0];
        for m in &c.rows {
            starts.push(starts.last().unwrap() + m);
        }
        let seqs: Vec<PagedSeq> = (0..c.keys.len())
            .map(|b| PagedSeq {
                table: &tables[b],
                rows: starts[b]..starts[b + 1],
                keys: c.keys[b],
            })
            .collect();
        let run = |seqs: &[PagedSeq], q: &cudarc::driver::CudaSlice<bf16>, split_keys: usize| {
            let rows: usize = seqs.iter().map(|s| s.rows.end).max().unwrap_or(0);
            let mut out = kn.zeros::<bf16>(rows * c.h * c.d).unwrap();
            let before = kn.counters().launches;
            kn.paged_attention(
                &mut out,
                &PagedAttnArgs {
                    q,
                    k_pool: &kd,
                    v_pool: &vd,
                    pool_rows,
                    block_size: bs,
                    seqs,
                    n_heads: c.h,
                    n_kv_heads: c.kv,
                    head_dim: c.d,
                    split_keys,
                },
            )
            .unwrap();
            assert_eq!(kn.counters().launches - before, 2, "split + merge");
            from_bf(&kn.download(&out).unwrap())
        };
        let got = run(&seqs, &qd, SPLIT_KEYS);
        let want = ref_paged(c, &qf, &kf, &vf, &tables, bs);
        close(&name, &got, &want, 4e-3, 1.0 / 64.0);
        // Each sequence alone, its rows from 0: the batch's bits.
        let qc = c.h * c.d;
        for b in 0..c.keys.len() {
            let qs = kn
                .upload(&to_bf(&qf[starts[b] * qc..starts[b + 1] * qc]))
                .unwrap();
            let alone = [PagedSeq {
                table: &tables[b],
                rows: 0..c.rows[b],
                keys: c.keys[b],
            }];
            let solo = run(&alone, &qs, SPLIT_KEYS);
            assert!(
                solo == got[starts[b] * qc..starts[b + 1] * qc],
                "{name}: sequence {b} ({} keys) alone != in the batch",
                c.keys[b]
            );
        }
        let one = run(&seqs, &qd, 8192 + 64);
        let one64: Vec<f64> = one.iter().map(|&x| x as f64).collect();
        close(
            &format!("{name} one split vs 256-key splits"),
            &got,
            &one64,
            1e-3,
            1.0 / 128.0,
        );
    }

    // write_kv's scatter: both pools in one launch; untouched rows stay.
    let (pool_rows, cols) = (40usize, 128usize);
    let rows = [33usize, 2, 17, 18, 0, 39, 5];
    let (kn_new, vn_new) = (r.bf(rows.len() * cols, 1.0), r.bf(rows.len() * cols, 1.0));
    let mut kp = kn
        .upload(&vec![bf16::from_f32(7.0); pool_rows * cols])
        .unwrap();
    let mut vp = kn
        .upload(&vec![bf16::from_f32(7.0); pool_rows * cols])
        .unwrap();
    let (ks, vs) = (
        kn.upload(&to_bf(&kn_new)).unwrap(),
        kn.upload(&to_bf(&vn_new)).unwrap(),
    );
    kn.scatter_rows(
        &mut kp,
        Some(&mut vp),
        &rows,
        &ks,
        Some(&vs),
        (pool_rows, cols),
    )
    .unwrap();
    let (kg, vg) = (
        from_bf(&kn.download(&kp).unwrap()),
        from_bf(&kn.download(&vp).unwrap()),
    );
    let (mut wk, mut wv) = (
        vec![7.0f32; pool_rows * cols],
        vec![7.0f32; pool_rows * cols],
    );
    for (i, &row) in rows.iter().enumerate() {
        wk[row * cols..(row + 1) * cols].copy_from_slice(&kn_new[i * cols..(i + 1) * cols]);
        wv[row * cols..(row + 1) * cols].copy_from_slice(&vn_new[i * cols..(i + 1) * cols]);
    }
    assert!(
        kg == wk && vg == wv,
        "scatter_rows: pools after the scatter"
    );
    let e = kn
        .scatter_rows(&mut kp, None, &[3, 3], &ks, None, (pool_rows, cols))
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}
