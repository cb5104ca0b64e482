//! The fused log-prob op's extra memory is bounded by the vocabulary chunk,
//! not the vocabulary: on the real 151,936-token Qwen2.5 vocabulary, 2,048
//! rows would need 1.2 GB of logits unfused. A counting allocator measures
//! the peak heap growth of the forward and the backward.
//! (One test in this binary, so no other test allocates meanwhile.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use igpo::backend::{Backend, Cpu};
use igpo::tensor::Tensor;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), SeqCst) + l.size();
            PEAK.fetch_max(now, SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Peak heap growth (bytes) while running `f`.
fn peak_extra<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = CURRENT.load(SeqCst);
    PEAK.store(base, SeqCst);
    let r = f();
    (r, PEAK.load(SeqCst) - base)
}

#[test]
fn fused_logprob_memory_is_bounded_by_the_chunk() {
    const VOCAB: usize = 151_936;
    const ROWS: usize = 2048;
    const D: usize = 64;
    const CHUNK: usize = 2048;
    let w = Tensor::from_vec(
        &[VOCAB, D],
        (0..VOCAB * D)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect(),
    );
    let h = Tensor::from_vec(
        &[ROWS, D],
        (0..ROWS * D)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) * 2e-3)
            .collect(),
    );
    let targets: Vec<u32> = (0..ROWS).map(|i| (i * 74 % VOCAB) as u32).collect();
    let unfused = ROWS * VOCAB * 4;
    let chunk_bytes = ROWS * CHUNK * 4;
    // The weight's own packed copies (the CPU GEMM's panels and, from the
    // first backward, the transposed ones, made on first use and kept with
    // the weight as training leaves them) are not the op's memory: one row
    // made them before the measurement.
    let one = Tensor::from_vec(&[1, D], h.row(0).to_vec());
    let first = Cpu.token_logprobs(&one, &w, &targets[..1], CHUNK, false);
    let mut dw1 = Tensor::zeros(&[VOCAB, D]);
    let g1 = Tensor::from_vec(&[1], vec![-1.0]);
    Cpu.token_logprobs_backward(
        (&one, &w),
        &targets[..1],
        &first,
        (&g1, None),
        CHUNK,
        &mut dw1,
    );
    drop(dw1);
    let (out, fwd) = peak_extra(|| Cpu.token_logprobs(&h, &w, &targets, CHUNK, true));
    let mut dw = Tensor::zeros(&[VOCAB, D]);
    let dlogp = Tensor::from_vec(&[ROWS], vec![-1.0 / ROWS as f32; ROWS]);
    let (_dh, bwd) = peak_extra(|| {
        Cpu.token_logprobs_backward((&h, &w), &targets, &out, (&dlogp, None), CHUNK, &mut dw)
    });
    eprintln!(
        "unfused logits would take {:.0} MB; fused forward peak {:.1} MB, backward peak {:.1} MB (chunk {:.1} MB)",
        unfused as f64 / 1e6,
        fwd as f64 / 1e6,
        bwd as f64 / 1e6,
        chunk_bytes as f64 / 1e6
    );
    assert!(out.logp.data().iter().all(|l| l.is_finite() && *l <= 0.0));
    // One chunk of logits plus per-row vectors and the GEMM's packing buffers.
    let bound = 2 * chunk_bytes + 8 * 1024 * 1024;
    assert!(fwd < bound, "forward peak {fwd} B exceeds {bound} B");
    assert!(
        bwd < bound + ROWS * D * 4,
        "backward peak {bwd} B exceeds the bound"
    );
    assert!(
        bound * 20 < unfused,
        "the test must be one the unfused op could not pass"
    );
}
