//! Lab bench: the CPU backend's two `x @ w^T` kernels side by side on the
//! shapes of SmolLM2-135M decode, prefill and scoring (GFLOP/s, 2 x m x n x
//! k per call). `cargo run --release --example matmul_nt_lab`; numbers and
//! what they decided are in docs/benchmarks.md.

use std::time::Instant;

use igpo::backend::cpu::{dot, gemm};

type Kernel = fn(&[f32], &[f32], &mut [f32], usize, usize, usize);

fn gflops(kernel: Kernel, (m, n, k): (usize, usize, usize)) -> f64 {
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; m * n];
    kernel(&x, &w, &mut out, m, n, k);
    let flops = 2.0 * (m * n * k) as f64;
    let reps = (2e9 / flops).clamp(3.0, 1000.0) as usize;
    let start = Instant::now();
    for _ in 0..reps {
        kernel(&x, &w, &mut out, m, n, k);
    }
    flops * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    println!("| m x n x k | gemm crate GFLOP/s | dot GFLOP/s |");
    println!("|---|---:|---:|");
    for shape in [
        (1, 1536, 576),
        (1, 576, 1536),
        (1, 49152, 576),
        (16, 1536, 576),
        (512, 1536, 576),
        (512, 576, 1536),
        (2048, 8192, 576),
    ] {
        let (g, d) = (
            gflops(gemm::matmul_nt, shape),
            gflops(dot::matmul_nt, shape),
        );
        println!(
            "| {} x {} x {} | {g:.1} | {d:.1} |",
            shape.0, shape.1, shape.2
        );
    }
}
