//! The generic bodies, one per op (or per forward + backward pair) of
//! [`Backend`]; the rules they apply are the module doc's.

use std::ops::Range;

use super::reference as r;
use super::{close, f64s, grad, input, moved, same_bits, Tol};
use crate::backend::{
    cached_attention_per_sequence, clip_factor, AdamWStep, AttnMask, AttnShape, Backend, Rope,
    SamplingParams,
};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Rows `rows` of a host matrix.
fn host_rows(t: &Tensor, rows: Range<usize>) -> Tensor {
    let c = t.cols();
    Tensor::from_vec(
        &[rows.len(), c],
        t.data()[rows.start * c..rows.end * c].to_vec(),
    )
}

/// A device tensor of `shape` filled with `value` (a gradient buffer that
/// already holds something: backwards add into it).
fn filled<B: Backend>(b: &B, shape: &[usize], value: f32) -> B::Tensor {
    let mut t = b.zeros(shape);
    let n = shape.iter().product();
    b.add_assign(&mut t, &b.upload(&Tensor::from_vec(shape, vec![value; n])));
    t
}

/// `t - c` elementwise (what a backward added to a buffer filled with `c`).
fn minus(t: &Tensor, c: f32) -> Tensor {
    Tensor::from_vec(t.shape(), t.data().iter().map(|v| v - c).collect())
}

/// `sum(out(x moved at i) * dy)`: the probe whose central differences check
/// a gradient of `x`.
fn probe(out: Vec<f64>, dy: &[f64]) -> f64 {
    r::dot(&out, dy)
}

/// Consecutive bounds of sequences of `lens` rows.
fn bounds_of(lens: &[usize]) -> Vec<Range<usize>> {
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            at += n;
            at - n..at
        })
        .collect()
}

// ---- linear ----

/// `linear` (with and without bias) and `linear_backward` (adding into `dw`,
/// `db`); on the CPU each output row is the bits it gets in any batch.
pub(crate) fn linear<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(1);
    let (m, n, k) = (37, 130, 96);
    let x = input(&mut rng, &[m, k], 1.0);
    let w = input(&mut rng, &[n, k], 0.1);
    let bias = input(&mut rng, &[n], 0.1);
    let dy = input(&mut rng, &[m, n], 1.0);
    let (x64, w64, b64, dy64) = (f64s(&x), f64s(&w), f64s(&bias), f64s(&dy));
    let (xd, wd, bd, dyd) = (b.upload(&x), b.upload(&w), b.upload(&bias), b.upload(&dy));
    let y = b.download(&b.linear(&xd, &wd, Some(&bd)));
    close(
        "linear",
        &y,
        &r::linear(&x64, &w64, Some(&b64[..]), k),
        tol.fwd,
    );
    close(
        "linear without bias",
        &b.download(&b.linear(&xd, &wd, None)),
        &r::linear(&x64, &w64, None, k),
        tol.fwd,
    );
    same_bits(
        "linear twice",
        &y,
        &b.download(&b.linear(&xd, &wd, Some(&bd))),
    );
    if tol.exact {
        for rows in [vec![0], vec![36], vec![5, 0, 36, 17], (0..32).collect()] {
            let part = b.download(&b.linear(&b.gather_rows(&xd, &rows), &wd, Some(&bd)));
            for (i, &row) in rows.iter().enumerate() {
                assert!(
                    part.row(i) == y.row(row),
                    "linear: row {row} in a batch of {} differs from the batch of {m}",
                    rows.len()
                );
            }
        }
    }
    let backward = || {
        let (mut dw, mut db) = (filled(b, &[n, k], 0.5), filled(b, &[n], 0.5));
        let dx = b.linear_backward(&xd, &wd, &dyd, &mut dw, Some(&mut db));
        (
            b.download(&dx),
            minus(&b.download(&dw), 0.5),
            minus(&b.download(&db), 0.5),
        )
    };
    let (dx, dw, db) = backward();
    let (wdx, wdw, wdb) = r::linear_backward(&x64, &w64, &dy64, k);
    grad("linear dx", &dx, &wdx, tol.bwd, |i, e| {
        probe(
            r::linear(&moved(&x64, i, e), &w64, Some(&b64[..]), k),
            &dy64,
        )
    });
    grad("linear dw", &dw, &wdw, tol.bwd, |i, e| {
        probe(
            r::linear(&x64, &moved(&w64, i, e), Some(&b64[..]), k),
            &dy64,
        )
    });
    grad("linear db", &db, &wdb, tol.sum, |i, e| {
        probe(
            r::linear(&x64, &w64, Some(&moved(&b64, i, e)[..]), k),
            &dy64,
        )
    });
    let (dx2, dw2, db2) = backward();
    same_bits("linear_backward dx twice", &dx, &dx2);
    same_bits("linear_backward dw twice", &dw, &dw2);
    same_bits("linear_backward db twice", &db, &db2);
}

// ---- norms ----

/// `rms_norm` and `rms_norm_backward` (adding into `dw`).
pub(crate) fn rms_norm<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(2);
    let (rows, d, eps) = (37, 96, 1e-6f32);
    let x = input(&mut rng, &[rows, d], 1.0);
    let w = input(&mut rng, &[d], 1.0);
    let dy = input(&mut rng, &[rows, d], 1.0);
    let (x64, w64, dy64, e) = (f64s(&x), f64s(&w), f64s(&dy), eps as f64);
    let (xd, wd, dyd) = (b.upload(&x), b.upload(&w), b.upload(&dy));
    let y = b.download(&b.rms_norm(&xd, &wd, eps));
    close("rms_norm", &y, &r::rms_norm(&x64, &w64, e), tol.fwd);
    same_bits(
        "rms_norm twice",
        &y,
        &b.download(&b.rms_norm(&xd, &wd, eps)),
    );
    let backward = || {
        let mut dw = filled(b, &[d], 0.5);
        let dx = b.rms_norm_backward(&xd, &wd, &dyd, eps, &mut dw);
        (b.download(&dx), minus(&b.download(&dw), 0.5))
    };
    let (dx, dw) = backward();
    let (wdx, wdw) = r::rms_norm_backward(&x64, &w64, &dy64, e);
    grad("rms_norm dx", &dx, &wdx, tol.bwd, |i, d| {
        probe(r::rms_norm(&moved(&x64, i, d), &w64, e), &dy64)
    });
    grad("rms_norm dw", &dw, &wdw, tol.bwd, |i, d| {
        probe(r::rms_norm(&x64, &moved(&w64, i, d), e), &dy64)
    });
    let (dx2, dw2) = backward();
    same_bits("rms_norm_backward dx twice", &dx, &dx2);
    same_bits("rms_norm_backward dw twice", &dw, &dw2);
}

/// `head_rms_norm` and its backward (Qwen3's q/k norm: every head of a row
/// normed alone, all heads sharing `w[head_dim]`); on the CPU the bits of
/// `rms_norm` over the `[rows*heads, head_dim]` view.
pub(crate) fn head_rms_norm<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(11);
    let eps = 1e-6f32;
    let e = eps as f64;
    for (rows, cols, hd) in [(37, 128, 64), (37, 96, 32), (3, 32, 8)] {
        let name = format!("head_rms_norm {rows}x{cols}/{hd}");
        let x = input(&mut rng, &[rows, cols], 1.0);
        let w = input(&mut rng, &[hd], 1.0);
        let dy = input(&mut rng, &[rows, cols], 1.0);
        let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
        let (xd, wd, dyd) = (b.upload(&x), b.upload(&w), b.upload(&dy));
        let y = b.download(&b.head_rms_norm(&xd, &wd, eps));
        close(&name, &y, &r::rms_norm(&x64, &w64, e), tol.fwd);
        same_bits(
            &format!("{name} twice"),
            &y,
            &b.download(&b.head_rms_norm(&xd, &wd, eps)),
        );
        if tol.exact {
            let view = b.upload(&x.clone().reshape(&[rows * cols / hd, hd]));
            let rows_normed = b.download(&b.rms_norm(&view, &wd, eps));
            assert!(
                rows_normed.data() == y.data(),
                "{name}: not the bits of rms_norm over the heads' view"
            );
        }
        let backward = || {
            let mut dw = filled(b, &[hd], 0.5);
            let dx = b.head_rms_norm_backward(&xd, &wd, &dyd, eps, &mut dw);
            (b.download(&dx), minus(&b.download(&dw), 0.5))
        };
        let (dx, dw) = backward();
        let (wdx, wdw) = r::rms_norm_backward(&x64, &w64, &dy64, e);
        grad(&format!("{name} dx"), &dx, &wdx, tol.bwd, |i, d| {
            probe(r::rms_norm(&moved(&x64, i, d), &w64, e), &dy64)
        });
        grad(&format!("{name} dw"), &dw, &wdw, tol.bwd, |i, d| {
            probe(r::rms_norm(&x64, &moved(&w64, i, d), e), &dy64)
        });
        let (dx2, dw2) = backward();
        same_bits(&format!("{name} backward dx twice"), &dx, &dx2);
        same_bits(&format!("{name} backward dw twice"), &dw, &dw2);
    }
}

// ---- RoPE ----

/// `rope` and `rope_backward`, plain and scaled (llama3 / yarn-style
/// frequencies, yarn's cos/sin factor), at positions up to 32767.
pub(crate) fn rope<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(3);
    let plain = Rope::new(64, 1e6);
    let scaled = Rope {
        head_dim: 64,
        inv_freq: plain
            .inv_freq
            .iter()
            .enumerate()
            .map(|(i, f)| f / (1.0 + i as f32 * 0.25))
            .collect(),
        attention_scaling: 1.2,
    };
    let slow = Rope {
        head_dim: 32,
        inv_freq: Rope::new(32, 5e5)
            .inv_freq
            .iter()
            .map(|f| f / 8.0)
            .collect(),
        attention_scaling: 0.9,
    };
    let yarn_like = Rope {
        head_dim: 8,
        inv_freq: vec![1.0, 0.3, 0.02, 0.001],
        attention_scaling: 1.2,
    };
    let by7: Vec<usize> = (0..37).map(|i| i * 7).collect();
    let by3: Vec<usize> = (0..37).map(|i| 3 * i + 1).collect();
    let cases: Vec<(&str, Rope, usize, Vec<usize>)> = vec![
        ("plain", plain.clone(), 128, by7.clone()),
        ("scaled", scaled, 128, by7),
        ("scaled slow", slow, 96, by3),
        ("plain far", plain, 192, vec![0, 1, 17, 1000, 32767]),
        ("head 8", Rope::new(8, 1e4), 16, vec![0, 3, 17, 1000]),
        ("yarn-like head 8", yarn_like, 16, vec![0, 3, 17, 1000]),
    ];
    for (what, rp, cols, pos) in cases {
        let name = format!("rope {what}");
        let rows = pos.len();
        let x = input(&mut rng, &[rows, cols], 1.0);
        let dy = input(&mut rng, &[rows, cols], 1.0);
        let (x64, dy64) = (f64s(&x), f64s(&dy));
        let run = |t: &Tensor, backward: bool| {
            let mut d = b.upload(t);
            if backward {
                b.rope_backward(&mut d, &pos, &rp);
            } else {
                b.rope(&mut d, &pos, &rp);
            }
            b.download(&d)
        };
        let y = run(&x, false);
        close(&name, &y, &r::rope(&x64, &pos, &rp, 1.0), tol.fwd);
        same_bits(&format!("{name} twice"), &y, &run(&x, false));
        let dx = run(&dy, true);
        grad(
            &format!("{name} backward"),
            &dx,
            &r::rope(&dy64, &pos, &rp, -1.0),
            tol.bwd,
            |i, e| probe(r::rope(&moved(&x64, i, e), &pos, &rp, 1.0), &dy64),
        );
        same_bits(&format!("{name} backward twice"), &dx, &run(&dy, true));
    }
}

// ---- attention ----

/// The span mask of the old CUDA test: 70 queries over 78 keys, the first
/// 40 causal after 8 cached keys, then probes of 6 that see a 48-key prefix
/// and themselves.
fn probe_spans() -> AttnMask {
    AttnMask::Spans(
        (0..70)
            .map(|j| {
                if j < 40 {
                    vec![0..j + 9]
                } else {
                    vec![0..48, 48 + (j - 40) / 6 * 6..j + 9]
                }
            })
            .collect(),
    )
}

/// A shared prefix 0..3, then two probes (3..5 and 5..7) that each see
/// the prefix and themselves, not each other (7 queries over 7 keys).
fn small_spans() -> AttnMask {
    AttnMask::Spans(
        (0..7)
            .map(|j| match j {
                0..=2 => vec![0..j + 1],
                3 | 4 => vec![0..3, 3..j + 1],
                _ => vec![0..2, 5..j + 1],
            })
            .collect(),
    )
}

/// `attention`, `attention_train` (its output is `attention`'s bits; its
/// log-sum-exp) and `attention_backward`: GQA, causal with and without a
/// cache offset, one decode row, IGPO's probe span masks, head sizes 64 and
/// 128.
pub(crate) fn attention<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(6);
    let wide = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    // The GPU's attention kernels exist for head sizes 64 and 128.
    let wide128 = AttnShape {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 128,
    };
    let cases = vec![
        (wide, 70, 78, AttnMask::Causal { offset: 8 }),
        (wide, 70, 78, probe_spans()),
        (wide, 1, 78, AttnMask::Causal { offset: 77 }),
        (wide, 6, 6, AttnMask::Causal { offset: 0 }),
        (wide, 2, 5, AttnMask::Causal { offset: 3 }),
        (wide, 7, 7, small_spans()),
        (wide128, 33, 33, AttnMask::Causal { offset: 0 }),
    ];
    for (s, m, n, mask) in cases {
        let kind = match &mask {
            AttnMask::Causal { offset } => format!("causal offset {offset}"),
            AttnMask::Spans(_) => "spans".to_string(),
        };
        let name = format!("attention {m}x{n} d{} {kind}", s.head_dim);
        let (qc, kc) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
        let q = input(&mut rng, &[m, qc], 1.0);
        let k = input(&mut rng, &[n, kc], 1.0);
        let v = input(&mut rng, &[n, kc], 1.0);
        let dout = input(&mut rng, &[m, qc], 1.0);
        let (q64, k64, v64, do64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&dout));
        let (qd, kd, vd, dod) = (b.upload(&q), b.upload(&k), b.upload(&v), b.upload(&dout));
        let want = r::attention(&q64, &k64, &v64, s, &mask, Some(&do64[..]));
        let (out_d, lse_d) = b.attention_train(&qd, &kd, &vd, s, &mask);
        let (out, lse) = (b.download(&out_d), b.download(&lse_d));
        close(&format!("{name} out"), &out, &want.out, tol.fwd);
        close(&format!("{name} lse"), &lse, &want.lse, tol.fwd);
        same_bits(
            &format!("{name}: attention is attention_train's output"),
            &b.download(&b.attention(&qd, &kd, &vd, s, &mask)),
            &out,
        );
        let (out2, lse2) = b.attention_train(&qd, &kd, &vd, s, &mask);
        same_bits(&format!("{name} out twice"), &b.download(&out2), &out);
        same_bits(&format!("{name} lse twice"), &b.download(&lse2), &lse);
        let backward = || {
            let (dq, dk, dv) =
                b.attention_backward((&qd, &kd, &vd), (&out_d, &lse_d), &dod, s, &mask);
            (b.download(&dq), b.download(&dk), b.download(&dv))
        };
        let (dq, dk, dv) = backward();
        let (wdq, wdk, wdv) = want.grads.expect("asked for");
        let fwd = |q: &[f64], k: &[f64], v: &[f64]| {
            probe(r::attention(q, k, v, s, &mask, None).out, &do64)
        };
        grad(&format!("{name} dq"), &dq, &wdq, tol.attn_bwd, |i, e| {
            fwd(&moved(&q64, i, e), &k64, &v64)
        });
        grad(&format!("{name} dk"), &dk, &wdk, tol.attn_bwd, |i, e| {
            fwd(&q64, &moved(&k64, i, e), &v64)
        });
        grad(&format!("{name} dv"), &dv, &wdv, tol.attn_bwd, |i, e| {
            fwd(&q64, &k64, &moved(&v64, i, e))
        });
        let (dq2, dk2, dv2) = backward();
        same_bits(&format!("{name} dq twice"), &dq, &dq2);
        same_bits(&format!("{name} dk twice"), &dk, &dk2);
        same_bits(&format!("{name} dv twice"), &dv, &dv2);
    }
}

/// Host-side KV caches of sequences with `lens` cached rows each.
fn host_caches(rng: &mut Rng, lens: &[usize], kc: usize) -> Vec<(Tensor, Tensor)> {
    lens.iter()
        .map(|&n| (input(rng, &[n, kc], 1.0), input(rng, &[n, kc], 1.0)))
        .collect()
}

/// Appends each sequence's new key and value rows to its host cache and
/// returns the f64 reference of its queries over the whole cache.
fn reference_step(
    host: &mut [(Tensor, Tensor)],
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    bounds: &[Range<usize>],
    shape: AttnShape,
) -> Vec<f64> {
    let mut want = vec![];
    for ((hk, hv), range) in host.iter_mut().zip(bounds) {
        let offset = hk.rows();
        hk.append_rows(&host_rows(k, range.clone()));
        hv.append_rows(&host_rows(v, range.clone()));
        let mask = AttnMask::Causal { offset };
        let a = r::attention(
            &f64s(&host_rows(q, range.clone())),
            &f64s(hk),
            &f64s(hv),
            shape,
            &mask,
            None,
        );
        want.extend(a.out);
    }
    want
}

/// A prefill chunk plus two decodes, decodes for everyone, then a mix:
/// new rows per sequence at each step.
const CACHE_STEPS: [[usize; 3]; 3] = [[3, 1, 1], [1, 1, 1], [2, 1, 4]];
/// Cached rows before the first step: none (prefill), a few, more than the
/// CUDA backend's 16-row initial capacity (uploaded caches have no spare
/// room: the first append grows).
const CACHE_OLD: [usize; 3] = [0, 5, 37];

/// One `cached_attention` call of the stacked batch over `caches`.
fn cached_call<B: Backend>(
    b: &B,
    caches: &mut [(B::Tensor, B::Tensor)],
    (q, k, v): (&B::Tensor, &B::Tensor, &B::Tensor),
    bounds: &[Range<usize>],
    shape: AttnShape,
    per_sequence: bool,
) -> Tensor {
    let mut refs: Vec<(&mut B::Tensor, &mut B::Tensor)> =
        caches.iter_mut().map(|(k, v)| (k, v)).collect();
    let out = if per_sequence {
        cached_attention_per_sequence(b, q, k, v, &mut refs, bounds, shape)
    } else {
        b.cached_attention(q, k, v, &mut refs, bounds, shape)
    };
    b.download(&out)
}

/// `cached_attention` over a batch (prefill and decode rows, caches empty,
/// short and past the initial capacity): against the f64 reference; the
/// bits of the per-sequence default, of the same call again, and of each
/// sequence alone; the caches hold exactly the appended rows.
pub(crate) fn cached_attention<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(9);
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let (qc, kc) = (256, 128);
    let mut host = host_caches(&mut rng, &CACHE_OLD, kc);
    let up = |caches: &[(Tensor, Tensor)]| -> Vec<(B::Tensor, B::Tensor)> {
        caches
            .iter()
            .map(|(k, v)| (b.upload(k), b.upload(v)))
            .collect()
    };
    let (mut batched, mut single, mut alone) = (up(&host), up(&host), up(&host));
    for new in CACHE_STEPS {
        let name = format!("cached_attention {new:?}");
        let rows: usize = new.iter().sum();
        let q = input(&mut rng, &[rows, qc], 1.0);
        let k = input(&mut rng, &[rows, kc], 1.0);
        let v = input(&mut rng, &[rows, kc], 1.0);
        let bounds = bounds_of(&new);
        let (qd, kd, vd) = (b.upload(&q), b.upload(&k), b.upload(&v));
        let mut again = batched.clone();
        let got = cached_call(b, &mut batched, (&qd, &kd, &vd), &bounds, shape, false);
        let twice = cached_call(b, &mut again, (&qd, &kd, &vd), &bounds, shape, false);
        same_bits(&format!("{name} twice"), &got, &twice);
        let one = cached_call(b, &mut single, (&qd, &kd, &vd), &bounds, shape, true);
        same_bits(&format!("{name}: batched vs per sequence"), &got, &one);
        for (s, range) in bounds.iter().enumerate() {
            let part = (
                &b.slice_rows(&qd, range.clone()),
                &b.slice_rows(&kd, range.clone()),
                &b.slice_rows(&vd, range.clone()),
            );
            let mine = cached_call(
                b,
                std::slice::from_mut(&mut alone[s]),
                part,
                &[0..range.len()],
                shape,
                false,
            );
            same_bits(
                &format!("{name}: sequence {s} alone vs in the batch"),
                &mine,
                &host_rows(&got, range.clone()),
            );
        }
        let want = reference_step(&mut host, (&q, &k, &v), &bounds, shape);
        close(&name, &got, &want, tol.fwd);
        for (i, (hk, hv)) in host.iter().enumerate() {
            for (what, caches) in [
                ("batched", &batched),
                ("per sequence", &single),
                ("alone", &alone),
            ] {
                let (kb, vb) = &caches[i];
                same_bits(&format!("{name}: {what} K cache {i}"), &b.download(kb), hk);
                same_bits(&format!("{name}: {what} V cache {i}"), &b.download(vb), hv);
            }
        }
    }
}

/// `write_kv` and `paged_attention` over blocks of 4 rows scattered in the
/// pools: `write_kv` writes exactly its rows (the others stay 0);
/// `paged_attention` against the f64 reference, the same call again, each
/// sequence alone, and the contiguous `cached_attention` of the same keys
/// (the same bits on the CPU).
pub(crate) fn paged_attention<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(19);
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let (qc, kc, block, blocks) = (256, 128, 4usize, 40usize);
    // Sequence s owns blocks order[13 s .. 13 (s + 1)] (a permutation of
    // the pool's blocks); the last 1 block is never used.
    let order: Vec<usize> = (0..blocks).map(|i| (i * 17 + 5) % blocks).collect();
    let slot = |s: usize, p: usize| order[13 * s + p / block] * block + p % block;
    let slots = |s: usize, r: Range<usize>| r.map(|p| slot(s, p)).collect::<Vec<_>>();
    let pool = || {
        let mut p = b.empty_rows(kc);
        b.append_rows(&mut p, &b.zeros(&[blocks * block, kc]));
        p
    };
    let (mut kp, mut vp) = (pool(), pool());
    let mut host = host_caches(&mut rng, &CACHE_OLD, kc);
    let mut contiguous: Vec<(B::Tensor, B::Tensor)> = host
        .iter()
        .map(|(k, v)| (b.upload(k), b.upload(v)))
        .collect();
    let mut lens = CACHE_OLD.to_vec();
    // The cached rows before the first step, in one write.
    let rows: Vec<usize> = (0..3).flat_map(|s| slots(s, 0..lens[s])).collect();
    let cat = |i: usize| {
        let mut t = Tensor::from_vec(&[0, kc], vec![]);
        for h in &host {
            t.append_rows(if i == 0 { &h.0 } else { &h.1 });
        }
        t
    };
    let (k0, v0) = (cat(0), cat(1));
    b.write_kv(&mut kp, &mut vp, &rows, &b.upload(&k0), &b.upload(&v0));
    same_bits(
        "write_kv of the cached rows",
        &b.download(&b.gather_rows(&kp, &rows)),
        &k0,
    );
    for new in CACHE_STEPS {
        let name = format!("paged_attention {new:?}");
        let n: usize = new.iter().sum();
        let q = input(&mut rng, &[n, qc], 1.0);
        let k = input(&mut rng, &[n, kc], 1.0);
        let v = input(&mut rng, &[n, kc], 1.0);
        let bounds = bounds_of(&new);
        let (qd, kd, vd) = (b.upload(&q), b.upload(&k), b.upload(&v));
        let rows: Vec<usize> = (0..3)
            .flat_map(|s| slots(s, lens[s]..lens[s] + new[s]))
            .collect();
        b.write_kv(&mut kp, &mut vp, &rows, &kd, &vd);
        same_bits(
            &format!("{name}: write_kv K rows"),
            &b.download(&b.gather_rows(&kp, &rows)),
            &k,
        );
        same_bits(
            &format!("{name}: write_kv V rows"),
            &b.download(&b.gather_rows(&vp, &rows)),
            &v,
        );
        for (l, n) in lens.iter_mut().zip(new) {
            *l += n;
        }
        let keys: Vec<Vec<usize>> = (0..3).map(|s| slots(s, 0..lens[s])).collect();
        let got = b.download(&b.paged_attention(&qd, &kp, &vp, &keys, &bounds, shape));
        same_bits(
            &format!("{name} twice"),
            &got,
            &b.download(&b.paged_attention(&qd, &kp, &vp, &keys, &bounds, shape)),
        );
        for (s, range) in bounds.iter().enumerate() {
            let mine = b.paged_attention(
                &b.slice_rows(&qd, range.clone()),
                &kp,
                &vp,
                std::slice::from_ref(&keys[s]),
                &[0..range.len()],
                shape,
            );
            same_bits(
                &format!("{name}: sequence {s} alone vs in the batch"),
                &b.download(&mine),
                &host_rows(&got, range.clone()),
            );
        }
        let cached = cached_call(b, &mut contiguous, (&qd, &kd, &vd), &bounds, shape, false);
        if tol.exact {
            same_bits(&format!("{name} vs cached_attention"), &got, &cached);
        } else {
            close(
                &format!("{name} vs cached_attention"),
                &got,
                &f64s(&cached),
                tol.fwd,
            );
        }
        let want = reference_step(&mut host, (&q, &k, &v), &bounds, shape);
        close(&name, &got, &want, tol.fwd);
    }
    // The one block no sequence owns was never written.
    let unused = order[blocks - 1] * block;
    let rows: Vec<usize> = (unused..unused + block).collect();
    for (what, p) in [("K", &kp), ("V", &vp)] {
        assert!(
            b.download(&b.gather_rows(p, &rows))
                .data()
                .iter()
                .all(|v| *v == 0.0),
            "write_kv touched rows it was not given ({what} pool)"
        );
    }
}

// ---- MLP, embedding ----

/// `swiglu` and `swiglu_backward`.
pub(crate) fn swiglu<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(4);
    let gate = input(&mut rng, &[37, 96], 2.0);
    let up = input(&mut rng, &[37, 96], 1.0);
    let dy = input(&mut rng, &[37, 96], 1.0);
    let (g64, u64_, dy64) = (f64s(&gate), f64s(&up), f64s(&dy));
    let (gd, ud, dyd) = (b.upload(&gate), b.upload(&up), b.upload(&dy));
    let y = b.download(&b.swiglu(&gd, &ud));
    close("swiglu", &y, &r::swiglu(&g64, &u64_), tol.fwd);
    same_bits("swiglu twice", &y, &b.download(&b.swiglu(&gd, &ud)));
    let backward = || {
        let (dg, du) = b.swiglu_backward(&gd, &ud, &dyd);
        (b.download(&dg), b.download(&du))
    };
    let (dg, du) = backward();
    let (wdg, wdu) = r::swiglu_backward(&g64, &u64_, &dy64);
    grad("swiglu dgate", &dg, &wdg, tol.bwd, |i, e| {
        probe(r::swiglu(&moved(&g64, i, e), &u64_), &dy64)
    });
    grad("swiglu dup", &du, &wdu, tol.bwd, |i, e| {
        probe(r::swiglu(&g64, &moved(&u64_, i, e)), &dy64)
    });
    let (dg2, du2) = backward();
    same_bits("swiglu dgate twice", &dg, &dg2);
    same_bits("swiglu dup twice", &du, &du2);
}

/// `embedding` (the table's bits) and `embedding_backward` (adding into
/// `dtable` the bits of f32 additions in the order of the ids, repeated ids
/// included).
pub(crate) fn embedding<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(5);
    let cases: [(usize, usize, &[u32]); 2] = [
        (130, 96, &[3, 0, 129, 3]),
        (50, 96, &[3, 7, 3, 0, 49, 3, 7, 1, 3]),
    ];
    for (vocab, d, ids) in cases {
        let name = format!("embedding {vocab}x{d}");
        let table = input(&mut rng, &[vocab, d], 1.0);
        let dy = input(&mut rng, &[ids.len(), d], 1.0);
        let (t64, dy64) = (f64s(&table), f64s(&dy));
        let td = b.upload(&table);
        let y = b.download(&b.embedding(&td, ids));
        let rows = Tensor::from_vec(
            &[ids.len(), d],
            r::embedding(&t64, ids, d)
                .iter()
                .map(|&v| v as f32)
                .collect(),
        );
        same_bits(&format!("{name}: the table's rows"), &y, &rows);
        let backward = || {
            let mut dt = filled(b, &[vocab, d], 0.25);
            b.embedding_backward(ids, &b.upload(&dy), &mut dt);
            b.download(&dt)
        };
        let dt = backward();
        let mut want = vec![0.25f32; vocab * d];
        r::embedding_backward_f32(ids, dy.data(), &mut want, d);
        same_bits(
            &format!("{name} backward: f32 sums in the order of the ids"),
            &dt,
            &Tensor::from_vec(&[vocab, d], want),
        );
        let mut wdt = vec![0.0f64; vocab * d];
        for (&id, row) in ids.iter().zip(dy64.chunks(d)) {
            for (a, g) in wdt[id as usize * d..(id as usize + 1) * d]
                .iter_mut()
                .zip(row)
            {
                *a += g;
            }
        }
        grad(
            &format!("{name} backward"),
            &minus(&dt, 0.25),
            &wdt,
            tol.bwd,
            |i, e| probe(r::embedding(&moved(&t64, i, e), ids, d), &dy64),
        );
        same_bits(&format!("{name} backward twice"), &dt, &backward());
    }
}

// ---- the fused log-prob ----

/// One case of [`token_logprobs`]: `h[rows, d]`, the lm-head `w[vocab, d]`.
struct LogprobCase {
    name: &'static str,
    rows: usize,
    d: usize,
    vocab: usize,
    w_scale: f64,
    targets: Vec<u32>,
    /// Every chunk is checked forward; the first also backward.
    chunks: Vec<usize>,
}

/// `token_logprobs` (log p(target), log-sum-exp, entropy; with and without
/// the entropy; chunks that do and do not divide the vocabulary, one of
/// one row, one past it) and `token_logprobs_backward` (with and without
/// `dentropy`, adding into `dw`), on a small vocabulary and on Qwen's
/// 151,936; on the CPU a row's log-prob is the bits it gets alone.
pub(crate) fn token_logprobs<B: Backend>(b: &B, tol: Tol) {
    let cases = [
        LogprobCase {
            name: "small",
            rows: 5,
            d: 8,
            vocab: 37,
            w_scale: 0.7,
            targets: vec![3, 36, 0, 17, 17],
            chunks: vec![10, 1, 7, 37, 64],
        },
        LogprobCase {
            name: "vocab 151936",
            rows: 8,
            d: 64,
            vocab: 151_936,
            w_scale: 0.05,
            targets: (0..8).map(|i| i * 18_000 + 7).collect(),
            chunks: vec![32_768],
        },
    ];
    for (seed, case) in cases.iter().enumerate() {
        logprob_case(b, tol, case, seed as u64 + 10);
    }
}

fn logprob_case<B: Backend>(b: &B, tol: Tol, c: &LogprobCase, seed: u64) {
    let mut rng = Rng::new(seed);
    let (rows, d, vocab, targets) = (c.rows, c.d, c.vocab, &c.targets[..]);
    let h = input(&mut rng, &[rows, d], 1.0);
    let w = input(&mut rng, &[vocab, d], c.w_scale);
    let gl = input(&mut rng, &[rows], 1.0);
    let ge = input(&mut rng, &[rows], 1.0);
    let (h64, w64, gl64, ge64) = (f64s(&h), f64s(&w), f64s(&gl), f64s(&ge));
    let z = r::linear(&h64, &w64, None, d);
    let (wlp, wlse, went) = r::log_softmax_rows(&z, vocab, targets);
    let (hd, wd) = (b.upload(&h), b.upload(&w));
    for (i, &chunk) in c.chunks.iter().enumerate() {
        let name = format!("token_logprobs {} chunk {chunk}", c.name);
        let out = b.token_logprobs(&hd, &wd, targets, chunk, true);
        let (lp, lse) = (b.download(&out.logp), b.download(&out.lse));
        let ent = b.download(out.entropy.as_ref().expect("asked for"));
        close(&format!("{name} logp"), &lp, &wlp, tol.fwd);
        close(&format!("{name} lse"), &lse, &wlse, tol.fwd);
        close(&format!("{name} entropy"), &ent, &went, tol.fwd);
        assert!(
            lp.data().iter().all(|v| *v <= 0.0),
            "{name}: log-probs <= 0"
        );
        let again = b.token_logprobs(&hd, &wd, targets, chunk, true);
        same_bits(&format!("{name} logp twice"), &lp, &b.download(&again.logp));
        same_bits(
            &format!("{name} entropy twice"),
            &ent,
            &b.download(again.entropy.as_ref().expect("asked for")),
        );
        let bare = b.token_logprobs(&hd, &wd, targets, chunk, false);
        assert!(bare.entropy.is_none(), "{name}: no entropy unless asked");
        close(
            &format!("{name} logp without entropy"),
            &b.download(&bare.logp),
            &wlp,
            tol.fwd,
        );
        if tol.exact {
            for row in [0, rows - 1] {
                let one = b.token_logprobs(
                    &b.slice_rows(&hd, row..row + 1),
                    &wd,
                    &targets[row..row + 1],
                    chunk,
                    true,
                );
                assert!(
                    b.download(&one.logp).data()[0].to_bits() == lp.data()[row].to_bits(),
                    "{name}: row {row} alone differs from the batch"
                );
            }
        }
        if i > 0 {
            continue;
        }
        let (gld, ged) = (b.upload(&gl), b.upload(&ge));
        let backward = |with_entropy: bool| {
            let o = if with_entropy { &out } else { &bare };
            let mut dw = filled(b, &[vocab, d], 0.5);
            let dh = b.token_logprobs_backward(
                (&hd, &wd),
                targets,
                o,
                (&gld, with_entropy.then_some(&ged)),
                chunk,
                &mut dw,
            );
            (b.download(&dh), minus(&b.download(&dw), 0.5))
        };
        let (dh, dw) = backward(true);
        let dz = r::log_softmax_rows_backward(&z, vocab, targets, &gl64, Some(&ge64[..]));
        let loss = |z: &[f64]| {
            let (lp, _, ent) = r::log_softmax_rows(z, vocab, targets);
            r::dot(&lp, &gl64) + r::dot(&ent, &ge64)
        };
        // Moving h[r, j] moves row r's logits by w[:, j]; moving w[v, j]
        // moves every row's logit v by h[r, j].
        grad(
            &format!("{name} dh"),
            &dh,
            &r::matmul_nn(&dz, &w64, d),
            tol.logprob_bwd,
            |i, e| {
                let (row, j) = (i / d, i % d);
                let mut zz = z.clone();
                for v in 0..vocab {
                    zz[row * vocab + v] += e * w64[v * d + j];
                }
                loss(&zz)
            },
        );
        grad(
            &format!("{name} dw"),
            &dw,
            &r::matmul_tn(&dz, &h64, d),
            tol.logprob_bwd,
            |i, e| {
                let (v, j) = (i / d, i % d);
                let mut zz = z.clone();
                for row in 0..rows {
                    zz[row * vocab + v] += e * h64[row * d + j];
                }
                loss(&zz)
            },
        );
        let (dh2, dw2) = backward(true);
        same_bits(&format!("{name} dh twice"), &dh, &dh2);
        same_bits(&format!("{name} dw twice"), &dw, &dw2);
        let (dh, dw) = backward(false);
        let dz = r::log_softmax_rows_backward(&z, vocab, targets, &gl64, None);
        close(
            &format!("{name} dh without entropy"),
            &dh,
            &r::matmul_nn(&dz, &w64, d),
            tol.logprob_bwd,
        );
        close(
            &format!("{name} dw without entropy"),
            &dw,
            &r::matmul_tn(&dz, &h64, d),
            tol.logprob_bwd,
        );
    }
}

// ---- sampling ----

/// `sample_rows`: greedy is the argmax (lowest id on ties); a uniform picks
/// by the inverse CDF of the (top-k / top-p cut) softmax at the temperature
/// (hand-computed cases, then the reference on a GEMM's logits and on a row
/// of 4096); the reported log-prob is log softmax(logits / t) of the pick
/// over the whole row; the same call twice gives the same picks and bits.
pub(crate) fn sample_rows<B: Backend>(b: &B, tol: Tol) {
    // p = 0.1, 0.2, 0.3, 0.4: sorted 3, 2, 1, 0 with cumulative mass
    // 0.4, 0.7, 0.9, 1.0; at t = 1/2, p^2 / 0.3: 0.533, 0.833, 0.967, 1.
    let p = [0.1f32, 0.2, 0.3, 0.4];
    let logits = Tensor::from_vec(
        &[4, 4],
        (0..4).flat_map(|_| p.iter().map(|v| v.ln())).collect(),
    );
    let ld = b.upload(&logits);
    let params = |temperature, top_k, top_p| SamplingParams {
        temperature,
        top_k,
        top_p,
    };
    let hand: [(SamplingParams, [f64; 4], [u32; 4]); 5] = [
        (params(0.0, 0, 1.0), [0.05, 0.5, 0.75, 0.95], [3, 3, 3, 3]),
        (params(1.0, 0, 1.0), [0.05, 0.5, 0.75, 0.95], [3, 2, 1, 0]),
        (params(1.0, 2, 1.0), [0.3, 0.6, 0.2, 0.99], [3, 2, 3, 2]),
        (params(1.0, 0, 0.65), [0.3, 0.6, 0.2, 0.99], [3, 2, 3, 2]),
        (params(0.5, 0, 1.0), [0.5, 0.8, 0.95, 0.99], [3, 2, 1, 0]),
    ];
    for (sp, us, ids) in hand {
        let got = b.sample_rows(&ld, &sp, &us);
        let t = if sp.temperature > 0.0 {
            sp.temperature as f64
        } else {
            1.0
        };
        let norm: f64 = p.iter().map(|&v| (v as f64).powf(1.0 / t)).sum();
        for (row, (tok, &want)) in got.iter().zip(&ids).enumerate() {
            assert_eq!(tok.id, want, "{sp:?} u {}: the inverse-CDF pick", us[row]);
            let lp = (p[want as usize] as f64).powf(1.0 / t).ln() - norm.ln();
            assert!(
                (tok.logprob as f64 - lp).abs() < 1e-5,
                "{sp:?}: logprob {} vs {lp}",
                tok.logprob
            );
        }
    }

    // Logits out of a linear layer (bf16 on the GPU), sampled as decode does.
    let mut rng = Rng::new(5);
    let h = input(&mut rng, &[48, 64], 1.0);
    let w = input(&mut rng, &[3001, 64], 0.3);
    let dev = b.linear(&b.upload(&h), &b.upload(&w), None);
    let host = b.download(&dev);
    let uniforms: Vec<f64> = (0..48).map(|_| rng.uniform()).collect();
    let settings = [
        params(0.0, 0, 1.0),
        params(1.0, 0, 1.0),
        params(0.7, 20, 1.0),
        params(1.0, 0, 0.9),
    ];
    for sp in settings {
        let got = b.sample_rows(&dev, &sp, &uniforms);
        let twice = b.sample_rows(&dev, &sp, &uniforms);
        assert!(got == twice, "{sp:?}: the same call twice");
        let mut misses = 0;
        for (row, tok) in got.iter().enumerate() {
            let want = r::sample(host.row(row), &sp, uniforms[row]);
            if tok.id != want {
                misses += 1;
                continue;
            }
            let lp = r::sampled_logprob(host.row(row), &sp, want);
            assert!(
                (tok.logprob as f64 - lp).abs() < 1e-4 * (1.0 + lp.abs()) && tok.logprob <= 0.0,
                "{sp:?} row {row}: logprob {} vs {lp}",
                tok.logprob
            );
        }
        eprintln!("sample_rows {sp:?}: {misses}/48 rows pick another token");
        let allowed = if sp.temperature > 0.0 {
            tol.sample_misses
        } else {
            0
        };
        assert!(
            misses <= allowed,
            "{sp:?}: {misses}/48 rows differ from the reference's pick"
        );
    }

    // One row of 4096 f32 logits in [-4, 4), 64 times, at 64 uniforms
    // spread over [0, 1): every pick exact.
    let row: Vec<f32> = (0..4096)
        .map(|_| ((rng.uniform() - 0.5) * 8.0) as f32)
        .collect();
    let mat = Tensor::from_vec(&[64, 4096], (0..64).flat_map(|_| row.clone()).collect());
    let md = b.upload(&mat);
    let us: Vec<f64> = (0..64).map(|i| (i as f64 + 0.5) / 64.0).collect();
    for sp in [
        params(0.0, 0, 1.0),
        params(1.0, 0, 1.0),
        params(0.7, 40, 1.0),
        params(1.0, 0, 0.9),
        params(1.2, 100, 0.8),
    ] {
        let got = b.sample_rows(&md, &sp, &us);
        for (i, tok) in got.iter().enumerate() {
            let want = r::sample(&row, &sp, us[i]);
            assert_eq!(tok.id, want, "{sp:?} u {}", us[i]);
            let lp = r::sampled_logprob(&row, &sp, want);
            assert!(
                (tok.logprob as f64 - lp).abs() < 1e-4,
                "{sp:?} u {}: logprob {} vs {lp}",
                us[i],
                tok.logprob
            );
        }
    }
}

// ---- row moves, elementwise ----

/// `empty_rows`, `zeros`, `gather_rows`, `slice_rows`, `concat_rows` and
/// `append_rows` (onto an empty matrix, past 16 rows one at a time, onto
/// an uploaded one): the input bits, in the right places.
pub(crate) fn rows<B: Backend>(b: &B, _tol: Tol) {
    let mut rng = Rng::new(7);
    let x = input(&mut rng, &[10, 24], 1.0);
    let y = input(&mut rng, &[3, 24], 1.0);
    let (xd, yd) = (b.upload(&x), b.upload(&y));
    let e = b.empty_rows(24);
    assert_eq!(b.shape(&e), &[0, 24], "empty_rows");
    assert_eq!(b.download(&e).numel(), 0, "empty_rows");
    let z = b.download(&b.zeros(&[4, 5]));
    assert!(
        z.shape() == [4, 5] && z.data().iter().all(|v| v.to_bits() == 0),
        "zeros"
    );
    let gather = |t: &Tensor, rows: &[usize]| {
        let mut out = Tensor::from_vec(&[0, t.cols()], vec![]);
        for &r in rows {
            out.append_rows(&host_rows(t, r..r + 1));
        }
        out
    };
    let picked = [7, 0, 7, 9, 3];
    same_bits(
        "gather_rows",
        &b.download(&b.gather_rows(&xd, &picked)),
        &gather(&x, &picked),
    );
    same_bits(
        "slice_rows",
        &b.download(&b.slice_rows(&xd, 2..6)),
        &host_rows(&x, 2..6),
    );
    same_bits(
        "slice_rows whole",
        &b.download(&b.slice_rows(&xd, 0..10)),
        &x,
    );
    let mut cat = x.clone();
    cat.append_rows(&y);
    cat.append_rows(&host_rows(&x, 2..6));
    same_bits(
        "concat_rows",
        &b.download(&b.concat_rows(&[xd.clone(), yd.clone(), b.slice_rows(&xd, 2..6)])),
        &cat,
    );
    // Grown from empty, one row at a time past 16 rows, then a block.
    let mut grown = b.empty_rows(24);
    let mut want = Tensor::from_vec(&[0, 24], vec![]);
    for i in 0..20 {
        let r = i % 10;
        b.append_rows(&mut grown, &b.slice_rows(&xd, r..r + 1));
        want.append_rows(&host_rows(&x, r..r + 1));
    }
    b.append_rows(&mut grown, &yd);
    want.append_rows(&y);
    same_bits("append_rows", &b.download(&grown), &want);
    let mut onto = b.upload(&x);
    b.append_rows(&mut onto, &yd);
    let mut want = x.clone();
    want.append_rows(&y);
    same_bits("append_rows onto an upload", &b.download(&onto), &want);
}

/// `add_assign`, `scale` (on uploads, on f32 buffers from `zeros`, on an
/// op's output) and `sum_squares` (f64 accumulation: 1e-9).
pub(crate) fn elementwise<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(8);
    let x = input(&mut rng, &[37, 96], 1.0);
    let y = input(&mut rng, &[37, 96], 1.0);
    let (x64, y64) = (f64s(&x), f64s(&y));
    let (xd, yd) = (b.upload(&x), b.upload(&y));
    let sum: Vec<f64> = x64.iter().zip(&y64).map(|(a, c)| a + c).collect();
    let mut a = b.upload(&x);
    b.add_assign(&mut a, &yd);
    close("add_assign (upload)", &b.download(&a), &sum, tol.fwd);
    let ids: Vec<u32> = (0..37).collect();
    let mut act = b.embedding(&xd, &ids);
    b.add_assign(&mut act, &yd);
    close(
        "add_assign (an op's output)",
        &b.download(&act),
        &sum,
        tol.fwd,
    );
    let mut g = b.zeros(&[37, 96]);
    b.add_assign(&mut g, &xd);
    b.add_assign(&mut g, &yd);
    close("add_assign (f32 buffer)", &b.download(&g), &sum, tol.fwd);
    let scaled: Vec<f64> = x64.iter().map(|v| v * 0.37f32 as f64).collect();
    for (what, mut t) in [
        ("upload", b.upload(&x)),
        ("an op's output", b.embedding(&xd, &ids)),
        ("f32 buffer", {
            let mut t = b.zeros(&[37, 96]);
            b.add_assign(&mut t, &xd);
            t
        }),
    ] {
        b.scale(&mut t, 0.37);
        close(
            &format!("scale ({what})"),
            &b.download(&t),
            &scaled,
            tol.fwd,
        );
    }
    let want: f64 = x64.iter().map(|v| v * v).sum();
    for (what, t) in [("upload", &xd), ("f32 buffer", &g)] {
        let host = b.download(t);
        let want = if what == "upload" {
            want
        } else {
            host.data().iter().map(|&v| v as f64 * v as f64).sum()
        };
        let got = b.sum_squares(t);
        assert!(
            (got - want).abs() <= 1e-9 * want,
            "sum_squares ({what}): {got} vs {want}"
        );
        assert_eq!(
            got.to_bits(),
            b.sum_squares(t).to_bits(),
            "sum_squares twice"
        );
    }
}

// ---- the optimizer ----

fn adamw_step(bias_correction1: f32, bias_correction2: f32) -> AdamWStep {
    AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        bias_correction1,
        bias_correction2,
        grad_scale: 0.5,
    }
}

/// `adamw`: two steps on f32 master weights (parameters and both moments
/// against the f64 reference after each), the same bits when run again.
pub(crate) fn adamw<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(12);
    let p = input(&mut rng, &[1000], 1.0);
    let grads = [
        input(&mut rng, &[1000], 0.01),
        input(&mut rng, &[1000], 0.01),
    ];
    let steps = [adamw_step(0.1, 0.05), adamw_step(0.19, 0.0975)];
    let run = || {
        let (mut pd, mut m, mut v) = (b.upload(&p), b.zeros(&[1000]), b.zeros(&[1000]));
        let mut p64 = f64s(&p);
        let (mut m64, mut v64) = (vec![0.0; 1000], vec![0.0; 1000]);
        for (i, (g, st)) in grads.iter().zip(&steps).enumerate() {
            b.adamw(&mut pd, &b.upload(g), &mut m, &mut v, st);
            r::adamw(&mut p64, &f64s(g), &mut m64, &mut v64, st);
            close(
                &format!("adamw step {i} param"),
                &b.download(&pd),
                &p64,
                tol.optim,
            );
            close(
                &format!("adamw step {i} m"),
                &b.download(&m),
                &m64,
                tol.optim,
            );
            close(
                &format!("adamw step {i} v"),
                &b.download(&v),
                &v64,
                tol.optim,
            );
        }
        b.download(&pd)
    };
    same_bits("adamw twice", &run(), &run());
}

/// `adamw_clipped`: the pre-clip norm `sqrt(sum of squares) * avg` (1e-9),
/// the parameters of AdamW with `grad_scale = avg * clip` (f64 reference),
/// with clipping off and on (a case that clips), the same bits again.
pub(crate) fn adamw_clipped<B: Backend>(b: &B, tol: Tol) {
    let mut rng = Rng::new(13);
    let shapes: [&[usize]; 3] = [&[7, 33], &[1000], &[1]];
    let ps: Vec<Tensor> = shapes.iter().map(|s| input(&mut rng, s, 1.0)).collect();
    let gs: Vec<Tensor> = shapes.iter().map(|s| input(&mut rng, s, 0.05)).collect();
    let st = adamw_step(0.1, 0.05);
    let steps = vec![
        st,
        AdamWStep {
            weight_decay: 0.0,
            ..st
        },
        st,
    ];
    let avg = 0.5;
    let sq: f64 = gs.iter().flat_map(f64s).map(|v| v * v).sum();
    let want_norm = sq.sqrt() * avg;
    for max_norm in [0.0, 0.5] {
        let run = || {
            let mut pd: Vec<_> = ps.iter().map(|p| b.upload(p)).collect();
            let gd: Vec<_> = gs.iter().map(|g| b.upload(g)).collect();
            let (mut m, mut v): (Vec<_>, Vec<_>) =
                shapes.iter().map(|s| (b.zeros(s), b.zeros(s))).unzip();
            let norm = b.adamw_clipped(&mut pd, &gd, (&mut m, &mut v), &steps, avg, max_norm);
            (norm, pd.iter().map(|p| b.download(p)).collect::<Vec<_>>())
        };
        let (norm, params) = run();
        assert!(
            (norm - want_norm).abs() <= 1e-9 * want_norm,
            "adamw_clipped max_norm {max_norm}: norm {norm} vs {want_norm}"
        );
        if max_norm > 0.0 {
            assert!(want_norm > max_norm, "the case must clip: norm {want_norm}");
        }
        let clip = clip_factor(want_norm, max_norm);
        for (i, got) in params.iter().enumerate() {
            let mut p64 = f64s(&ps[i]);
            let (mut m64, mut v64) = (vec![0.0; p64.len()], vec![0.0; p64.len()]);
            let step = AdamWStep {
                grad_scale: (avg * clip) as f32,
                ..steps[i]
            };
            r::adamw(&mut p64, &f64s(&gs[i]), &mut m64, &mut v64, &step);
            close(
                &format!("adamw_clipped max_norm {max_norm} param {i}"),
                got,
                &p64,
                tol.optim,
            );
        }
        let (norm2, params2) = run();
        assert_eq!(norm.to_bits(), norm2.to_bits(), "adamw_clipped norm twice");
        for (a, c) in params.iter().zip(&params2) {
            same_bits("adamw_clipped twice", a, c);
        }
    }
    // A NaN or infinite gradient anywhere: the norm says so and nothing
    // moves (the trainer skips that update).
    for bad in [f32::NAN, f32::INFINITY] {
        let mut gs = gs.clone();
        gs[1].data_mut()[17] = bad;
        let mut pd: Vec<_> = ps.iter().map(|p| b.upload(p)).collect();
        let gd: Vec<_> = gs.iter().map(|g| b.upload(g)).collect();
        let ones = |s: &[usize]| b.upload(&Tensor::from_vec(s, vec![0.25; s.iter().product()]));
        let (mut m, mut v): (Vec<_>, Vec<_>) = shapes.iter().map(|s| (ones(s), ones(s))).unzip();
        let norm = b.adamw_clipped(&mut pd, &gd, (&mut m, &mut v), &steps, avg, 0.5);
        assert!(
            !norm.is_finite(),
            "adamw_clipped with a {bad} gradient: norm {norm}"
        );
        for (i, p) in pd.iter().enumerate() {
            same_bits("adamw_clipped non-finite: param", &b.download(p), &ps[i]);
            let quarter = Tensor::from_vec(shapes[i], vec![0.25; ps[i].numel()]);
            same_bits("adamw_clipped non-finite: m", &b.download(&m[i]), &quarter);
            same_bits("adamw_clipped non-finite: v", &b.download(&v[i]), &quarter);
        }
    }
}
