//! Lab bench: the CPU backend's `x @ w^T` kernels side by side on the shapes
//! of SmolLM2-135M decode, prefill and scoring (GFLOP/s, 2 x m x n x k per
//! call). `cargo run --release --example matmul_nt_lab`; numbers and what
//! they decided are in docs/benchmarks.md. The packed kernel's weights are
//! packed once before timing (as the backend packs each weight once).
//! Decode shapes also run with cold weights: a fresh copy per call, as a real
//! decode step streams every weight matrix once from memory.

use std::time::Instant;

use igpo::backend::cpu::packed::{self, PackedWeights};
use igpo::backend::cpu::{dot, gemm};

type Kernel<'a> = &'a dyn Fn(&[f32], &[f32], &mut [f32], usize, usize, usize);

/// GFLOP/s of `kernel` on `copies` distinct weight matrices used in turn
/// (more copies than the caches hold: every call reads its weights from
/// memory).
fn gflops(kernel: Kernel, (m, n, k): (usize, usize, usize), copies: usize, bf16: bool) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    // 0.1 steps are not bf16 values; rounded, the packed kernel also keeps
    // bf16 panels (which calls of up to 16 rows stream).
    let value = |v: f32| {
        if bf16 {
            f32::from_bits(v.to_bits() & 0xffff_0000)
        } else {
            v
        }
    };
    let ws: Vec<Vec<f32>> = (0..copies)
        .map(|c| {
            (0..n * k)
                .map(|i| value(((i + c) % 5) as f32 * 0.1))
                .collect()
        })
        .collect();
    let mut out = vec![0.0f32; m * n];
    for w in &ws {
        kernel(&x, w, &mut out, m, n, k); // warm-up; packs each copy once
    }
    let flops = 2.0 * (m * n * k) as f64;
    let reps = (2e9 / flops).clamp(3.0, 1000.0) as usize;
    let start = Instant::now();
    for r in 0..reps {
        kernel(&x, &ws[r % copies], &mut out, m, n, k);
    }
    flops * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    println!(
        "| m x n x k | weights | gemm crate | dot | packed | packed, bf16 weights | GFLOP/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    let cache: std::cell::RefCell<Vec<(usize, PackedWeights)>> = Default::default();
    let packed_kernel = |x: &[f32], w: &[f32], out: &mut [f32], m, n, k| {
        // Pack each distinct weight matrix once (keyed by its address).
        let key = w.as_ptr() as usize;
        let mut cache = cache.borrow_mut();
        if !cache.iter().any(|(a, _)| *a == key) {
            cache.push((key, PackedWeights::pack(w, n, k)));
        }
        let p = &cache.iter().find(|(a, _)| *a == key).unwrap().1;
        packed::matmul_nt(x, m, p, 0..n, out);
    };
    for (shape, copies) in [
        ((1, 1536, 576), 1),
        ((1, 1536, 576), 24),
        ((1, 576, 1536), 24),
        ((1, 49152, 576), 1),
        ((4, 1536, 576), 24),
        ((8, 1536, 576), 24),
        ((16, 1536, 576), 24),
        ((16, 576, 1536), 24),
        ((64, 1536, 576), 24),
        ((512, 192, 576), 1),
        ((512, 576, 576), 1),
        ((512, 1536, 576), 1),
        ((512, 576, 1536), 1),
        ((512, 8192, 576), 1),
        ((2048, 1536, 576), 1),
        ((2048, 8192, 576), 1),
        ((2048, 576, 8192), 1),
    ] {
        cache.borrow_mut().clear();
        let g = gflops(&gemm::matmul_nt, shape, copies, false);
        let d = gflops(&dot::matmul_nt, shape, copies, false);
        let p = gflops(&packed_kernel, shape, copies, false);
        cache.borrow_mut().clear();
        let b = gflops(&packed_kernel, shape, copies, true);
        let weights = if copies > 1 { "cold" } else { "cached" };
        println!(
            "| {} x {} x {} | {weights} | {g:.1} | {d:.1} | {p:.1} | {b:.1} |",
            shape.0, shape.1, shape.2
        );
    }
}
