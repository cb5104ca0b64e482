//! `igpo bench machine`: what this CPU can do at best, measured, so the
//! model benchmarks can say how near they run to it: the f32 GEMM peak (the
//! faster of the packed kernel and the `gemm` crate on a large square
//! product, every thread) and memory bandwidth (a parallel read of a buffer
//! far larger than the caches, and a copy).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::cpu::{gemm, packed};

#[derive(Debug, Serialize)]
pub struct MachineBenchResult {
    pub threads: usize,
    /// m = n = k of the timed product.
    pub gemm_size: usize,
    pub packed_gflops: f64,
    pub gemm_crate_gflops: f64,
    /// The better of the two: the share of it a model measurement reaches
    /// is its "share of the GEMM peak".
    pub peak_gflops: f64,
    /// Bytes read per second by a parallel sum over `buffer_mib` (a decode
    /// step is such a stream of weights).
    pub read_gb_per_s: f64,
    /// Bytes read plus bytes written per second by a parallel copy.
    pub copy_gb_per_s: f64,
    pub buffer_mib: usize,
}

/// Best of `repeats` timings of `run` after one warm-up, seconds.
fn best(repeats: usize, mut run: impl FnMut()) -> f64 {
    run();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn machine_bench(gemm_size: usize, buffer_mib: usize, repeats: usize) -> MachineBenchResult {
    let n = gemm_size;
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed) % 2001) as f32 - 1000.0) * 1e-3)
            .collect()
    };
    let (x, w) = (values(n * n, 1), values(n * n, 2));
    let mut out = vec![0.0f32; n * n];
    let flops = 2.0 * (n * n * n) as f64;
    let p = packed::PackedWeights::pack(&w, n, n);
    let packed_s = best(repeats, || packed::matmul_nt(&x, n, &p, 0..n, &mut out));
    let crate_s = best(repeats, || gemm::matmul_nt(&x, &w, &mut out, n, n, n));
    let (packed_gflops, gemm_crate_gflops) = (flops / packed_s / 1e9, flops / crate_s / 1e9);

    let len = buffer_mib << 18; // f32 values
    let src = values(len, 3);
    let mut dst = vec![0.0f32; len];
    let chunk = 1 << 16;
    let mut sink = 0.0f32;
    let read_s = best(repeats, || {
        sink += src
            .par_chunks(chunk)
            .map(|c| {
                // 16 lanes of sums: vectorized, so the loads are the limit.
                let mut lanes = [0.0f32; 16];
                for block in c.chunks_exact(16) {
                    lanes.iter_mut().zip(block).for_each(|(l, v)| *l += v);
                }
                lanes.iter().sum::<f32>()
            })
            .sum::<f32>();
    });
    let copy_s = best(repeats, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
    });
    std::hint::black_box((sink, &dst));
    let bytes = (len * 4) as f64;
    MachineBenchResult {
        threads: rayon::current_num_threads(),
        gemm_size: n,
        packed_gflops,
        gemm_crate_gflops,
        peak_gflops: packed_gflops.max(gemm_crate_gflops),
        read_gb_per_s: bytes / read_s / 1e9,
        copy_gb_per_s: 2.0 * bytes / copy_s / 1e9,
        buffer_mib,
    }
}
