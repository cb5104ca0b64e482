//! `IGPO_PROFILE=1`: where a step's time goes, per phase of work, without nsys.
//!
//! [`Profiled`] wraps a backend and brackets every op with two marks of the
//! backend's own timeline ([`Timeline`]): an `Instant` on the CPU (whose ops
//! run to completion before they return) and a CUDA event recorded on the
//! stream on a GPU (so the device time of each op is measured without
//! stopping the host between ops). [`Backend::take_profile`] sums the
//! intervals per [`Phase`]; `igpo bench forward` prints the sums next to the
//! wall time of what it measured, and what the ops do not cover is host work
//! or idle device ("outside ops").
//!
//! The wrapper only delegates: results are the inner backend's, bit for bit.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{
    AdamWStep, AttnMask, AttnShape, Backend, LogProbs, MemoryUsage, Rope, SampledToken,
    SamplingParams,
};
use crate::tensor::Tensor;

/// Whether `IGPO_PROFILE` asks for profiling (`1`, `true`, `yes`, `on`).
pub fn requested() -> bool {
    std::env::var("IGPO_PROFILE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Points in a backend's timeline, for measuring how long its ops take.
pub trait Timeline {
    /// A recorded point: ops queued before it have finished when it is reached.
    type Mark: Send + Sync;
    fn mark(&self) -> Self::Mark;
    /// Seconds from `start` to `end` (waits until `end` is reached).
    fn seconds_between(&self, start: &Self::Mark, end: &Self::Mark) -> f64;
}

/// The kinds of work a step is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Linear layers, forward and backward (the GEMMs).
    Gemm,
    /// Attention forward and backward, KV-cache attention.
    Attention,
    /// RMSNorm, RoPE, SwiGLU, embedding, residual adds, scaling.
    Elementwise,
    /// The fused lm-head log-prob and its backward.
    #[serde(rename = "logprob")]
    LogProb,
    /// Sampling of next tokens.
    Sampling,
    /// AdamW and the gradient norm.
    Optimizer,
    /// Uploads, downloads, row copies, zero tensors.
    Memory,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Gemm => "gemm",
            Phase::Attention => "attention",
            Phase::Elementwise => "elementwise",
            Phase::LogProb => "logprob",
            Phase::Sampling => "sampling",
            Phase::Optimizer => "optimizer",
            Phase::Memory => "memory",
        }
    }
}

/// Time and op count of one phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PhaseTime {
    pub seconds: f64,
    pub ops: u64,
}

/// Time per phase: every phase that ran.
pub type PhaseTimes = BTreeMap<Phase, PhaseTime>;

/// What [`Backend::take_profile`] returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Profile {
    pub phases: PhaseTimes,
    /// Ops whose result the host reads (downloads, sampled ids, squared
    /// norms, the optimizer's gradient norm): on a GPU each one waits for the
    /// device to finish everything queued before it.
    pub host_reads: u64,
    /// What the device was asked in the same span, where the backend counts
    /// it ([`Backend::device_counters`]; the CUDA backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceCounters>,
}

/// Driver work a backend asked for: kernel launches (cuBLAS GEMMs
/// included), buffer allocations, waits of the host for the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounters {
    pub launches: u64,
    pub allocations: u64,
    pub host_waits: u64,
}

impl DeviceCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: DeviceCounters) -> DeviceCounters {
        DeviceCounters {
            launches: self.launches - earlier.launches,
            allocations: self.allocations - earlier.allocations,
            host_waits: self.host_waits - earlier.host_waits,
        }
    }
}

/// One line per phase with its share of `wall_seconds`, and what the ops do
/// not cover.
pub fn format_profile(label: &str, profile: &Profile, wall_seconds: f64) -> String {
    let times = &profile.phases;
    let mut out = format!(
        "profile {label}: wall {:.3} ms, {} host reads",
        wall_seconds * 1e3,
        profile.host_reads
    );
    if let Some(d) = profile.device {
        out.push_str(&format!(
            "; device: {} launches, {} allocations, {} host waits",
            d.launches, d.allocations, d.host_waits
        ));
    }
    out.push('\n');
    let share = |s: f64| {
        if wall_seconds > 0.0 {
            100.0 * s / wall_seconds
        } else {
            0.0
        }
    };
    let mut covered = 0.0;
    for (phase, t) in times {
        covered += t.seconds;
        out.push_str(&format!(
            "  {:<12} {:>10.3} ms {:>6.1} % {:>7} ops\n",
            phase.name(),
            t.seconds * 1e3,
            share(t.seconds),
            t.ops
        ));
    }
    let outside = (wall_seconds - covered).max(0.0);
    out.push_str(&format!(
        "  {:<12} {:>10.3} ms {:>6.1} %   (host work, launches, idle device)\n",
        "outside ops",
        outside * 1e3,
        share(outside)
    ));
    out
}

/// The ops recorded so far: phase, start and end marks.
type Spans<M> = Arc<Mutex<Vec<(Phase, M, M)>>>;

/// A backend whose ops are timed per [`Phase`]; clones share the record.
pub struct Profiled<B: Backend + Timeline> {
    inner: B,
    spans: Spans<B::Mark>,
    host_reads: Arc<AtomicU64>,
    /// The inner backend's counters when the record last started.
    counted_from: Arc<Mutex<Option<DeviceCounters>>>,
}

// By hand: a derive would ask for `B::Mark: Clone`, which CUDA events are not.
impl<B: Backend + Timeline> Clone for Profiled<B> {
    fn clone(&self) -> Self {
        Profiled {
            inner: self.inner.clone(),
            spans: self.spans.clone(),
            host_reads: self.host_reads.clone(),
            counted_from: self.counted_from.clone(),
        }
    }
}

impl<B: Backend + Timeline> Profiled<B> {
    pub fn new(inner: B) -> Profiled<B> {
        let counted_from = Arc::new(Mutex::new(inner.device_counters()));
        Profiled {
            inner,
            spans: Arc::default(),
            host_reads: Arc::default(),
            counted_from,
        }
    }

    /// [`Profiled::timed`] for an op whose result the host reads.
    fn read<T>(&self, phase: Phase, op: impl FnOnce(&B) -> T) -> T {
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        self.timed(phase, op)
    }

    fn timed<T>(&self, phase: Phase, op: impl FnOnce(&B) -> T) -> T {
        let start = self.inner.mark();
        let out = op(&self.inner);
        let end = self.inner.mark();
        self.spans
            .lock()
            .expect("profile lock")
            .push((phase, start, end));
        out
    }
}

impl<B: Backend + Timeline> Backend for Profiled<B> {
    type Tensor = B::Tensor;

    fn name(&self) -> String {
        format!("{} (profiled)", self.inner.name())
    }
    fn stored_elem_bytes(&self) -> usize {
        self.inner.stored_elem_bytes()
    }
    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.inner.in_pool(f)
    }
    fn weight_read_bytes(&self, w: &Self::Tensor) -> usize {
        self.inner.weight_read_bytes(w)
    }
    fn take_profile(&self) -> Option<Profile> {
        let spans = std::mem::take(&mut *self.spans.lock().expect("profile lock"));
        let mut phases = PhaseTimes::new();
        for (phase, start, end) in &spans {
            let t = phases.entry(*phase).or_default();
            t.seconds += self.inner.seconds_between(start, end);
            t.ops += 1;
        }
        let now = self.inner.device_counters();
        let then = std::mem::replace(&mut *self.counted_from.lock().expect("profile lock"), now);
        Some(Profile {
            phases,
            host_reads: self.host_reads.swap(0, Ordering::Relaxed),
            device: now.zip(then).map(|(now, then)| now.since(then)),
        })
    }
    fn device_counters(&self) -> Option<DeviceCounters> {
        self.inner.device_counters()
    }
    fn upload(&self, t: &Tensor) -> Self::Tensor {
        self.timed(Phase::Memory, |b| b.upload(t))
    }
    fn download(&self, t: &Self::Tensor) -> Tensor {
        self.read(Phase::Memory, |b| b.download(t))
    }
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize] {
        self.inner.shape(t)
    }
    fn empty_rows(&self, cols: usize) -> Self::Tensor {
        self.inner.empty_rows(cols)
    }
    fn memory_usage(&self) -> Option<MemoryUsage> {
        self.inner.memory_usage()
    }
    fn reset_peak_memory(&self) {
        self.inner.reset_peak_memory()
    }
    fn sample_rows(
        &self,
        logits: &Self::Tensor,
        params: &SamplingParams,
        uniforms: &[f64],
    ) -> Vec<SampledToken> {
        self.read(Phase::Sampling, |b| b.sample_rows(logits, params, uniforms))
    }
    fn synchronize(&self) {
        self.inner.synchronize()
    }
    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        self.timed(Phase::Gemm, |b| b.linear(x, w, bias))
    }
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| b.rms_norm(x, w, eps))
    }
    fn head_rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| b.head_rms_norm(x, w, eps))
    }
    fn rope(&self, x: &mut Self::Tensor, positions: &[usize], rope: &Rope) {
        self.timed(Phase::Elementwise, |b| b.rope(x, positions, rope))
    }
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> Self::Tensor {
        self.timed(Phase::Attention, |b| b.attention(q, k, v, shape, mask))
    }
    fn cached_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        caches: &mut [(&mut Self::Tensor, &mut Self::Tensor)],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Self::Tensor {
        self.timed(Phase::Attention, |b| {
            b.cached_attention(q, k, v, caches, bounds, shape)
        })
    }
    fn write_kv(
        &self,
        k_pool: &mut Self::Tensor,
        v_pool: &mut Self::Tensor,
        rows: &[usize],
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) {
        self.timed(Phase::Memory, |b| b.write_kv(k_pool, v_pool, rows, k, v))
    }
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        k_pool: &Self::Tensor,
        v_pool: &Self::Tensor,
        keys: &[Vec<usize>],
        bounds: &[Range<usize>],
        shape: AttnShape,
    ) -> Self::Tensor {
        self.timed(Phase::Attention, |b| {
            b.paged_attention(q, k_pool, v_pool, keys, bounds, shape)
        })
    }
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| b.swiglu(gate, up))
    }
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| b.embedding(table, ids))
    }
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) {
        self.timed(Phase::Elementwise, |b| b.add_assign(x, y))
    }
    fn append_rows(&self, dst: &mut Self::Tensor, new: &Self::Tensor) {
        self.timed(Phase::Memory, |b| b.append_rows(dst, new))
    }
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Self::Tensor {
        self.timed(Phase::Memory, |b| b.gather_rows(x, rows))
    }
    fn slice_rows(&self, x: &Self::Tensor, range: Range<usize>) -> Self::Tensor {
        self.timed(Phase::Memory, |b| b.slice_rows(x, range))
    }
    fn concat_rows(&self, parts: &[Self::Tensor]) -> Self::Tensor {
        self.timed(Phase::Memory, |b| b.concat_rows(parts))
    }
    fn zeros(&self, shape: &[usize]) -> Self::Tensor {
        self.timed(Phase::Memory, |b| b.zeros(shape))
    }
    fn attention_train(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> (Self::Tensor, Self::Tensor) {
        self.timed(Phase::Attention, |b| {
            b.attention_train(q, k, v, shape, mask)
        })
    }
    fn attention_backward(
        &self,
        (q, k, v): (&Self::Tensor, &Self::Tensor, &Self::Tensor),
        (out, lse): (&Self::Tensor, &Self::Tensor),
        dout: &Self::Tensor,
        shape: AttnShape,
        mask: &AttnMask,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor) {
        self.timed(Phase::Attention, |b| {
            b.attention_backward((q, k, v), (out, lse), dout, shape, mask)
        })
    }
    fn linear_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        dw: &mut Self::Tensor,
        db: Option<&mut Self::Tensor>,
    ) -> Self::Tensor {
        self.timed(Phase::Gemm, |b| b.linear_backward(x, w, dy, dw, db))
    }
    fn rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        eps: f32,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| {
            b.rms_norm_backward(x, w, dy, eps, dw)
        })
    }
    fn head_rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        dy: &Self::Tensor,
        eps: f32,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor {
        self.timed(Phase::Elementwise, |b| {
            b.head_rms_norm_backward(x, w, dy, eps, dw)
        })
    }
    fn rope_backward(&self, dx: &mut Self::Tensor, positions: &[usize], rope: &Rope) {
        self.timed(Phase::Elementwise, |b| b.rope_backward(dx, positions, rope))
    }
    fn swiglu_backward(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        dy: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor) {
        self.timed(Phase::Elementwise, |b| b.swiglu_backward(gate, up, dy))
    }
    fn embedding_backward(&self, ids: &[u32], dy: &Self::Tensor, dtable: &mut Self::Tensor) {
        self.timed(Phase::Elementwise, |b| {
            b.embedding_backward(ids, dy, dtable)
        })
    }
    fn token_logprobs(
        &self,
        h: &Self::Tensor,
        w: &Self::Tensor,
        targets: &[u32],
        chunk: usize,
        want_entropy: bool,
    ) -> LogProbs<Self::Tensor> {
        self.timed(Phase::LogProb, |b| {
            b.token_logprobs(h, w, targets, chunk, want_entropy)
        })
    }
    fn token_logprobs_backward(
        &self,
        (h, w): (&Self::Tensor, &Self::Tensor),
        targets: &[u32],
        out: &LogProbs<Self::Tensor>,
        (dlogp, dentropy): (&Self::Tensor, Option<&Self::Tensor>),
        chunk: usize,
        dw: &mut Self::Tensor,
    ) -> Self::Tensor {
        self.timed(Phase::LogProb, |b| {
            b.token_logprobs_backward((h, w), targets, out, (dlogp, dentropy), chunk, dw)
        })
    }
    fn sum_squares(&self, t: &Self::Tensor) -> f64 {
        self.read(Phase::Optimizer, |b| b.sum_squares(t))
    }
    fn scale(&self, x: &mut Self::Tensor, s: f32) {
        self.timed(Phase::Elementwise, |b| b.scale(x, s))
    }
    fn adamw(
        &self,
        param: &mut Self::Tensor,
        grad: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        step: &AdamWStep,
    ) {
        self.timed(Phase::Optimizer, |b| b.adamw(param, grad, m, v, step))
    }
    fn adamw_clipped(
        &self,
        params: &mut [Self::Tensor],
        grads: &[Self::Tensor],
        (m, v): (&mut [Self::Tensor], &mut [Self::Tensor]),
        steps: &[AdamWStep],
        avg: f64,
        max_norm: f64,
    ) -> f64 {
        self.read(Phase::Optimizer, |b| {
            b.adamw_clipped(params, grads, (m, v), steps, avg, max_norm)
        })
    }
}

impl Timeline for super::Cpu {
    type Mark = std::time::Instant;
    fn mark(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    fn seconds_between(&self, start: &std::time::Instant, end: &std::time::Instant) -> f64 {
        end.duration_since(*start).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    #[test]
    fn profiled_ops_give_the_inner_results_and_are_counted_per_phase() {
        let cpu = Cpu;
        let p = Profiled::new(Cpu);
        let x = Tensor::from_vec(&[2, 3], vec![1.0, -2.0, 0.5, 3.0, 0.25, -1.0]);
        let w = Tensor::from_vec(&[4, 3], (0..12).map(|i| i as f32 * 0.1 - 0.5).collect());
        let g = Tensor::from_vec(&[3], vec![1.0, 0.5, 2.0]);
        let (xp, wp, gp) = (p.upload(&x), p.upload(&w), p.upload(&g));
        let y = p.linear(&xp, &wp, None);
        let n = p.rms_norm(&xp, &gp, 1e-6);
        let (xc, wc, gc) = (cpu.upload(&x), cpu.upload(&w), cpu.upload(&g));
        assert_eq!(
            p.download(&y).data(),
            cpu.download(&cpu.linear(&xc, &wc, None)).data()
        );
        assert_eq!(
            p.download(&n).data(),
            cpu.download(&cpu.rms_norm(&xc, &gc, 1e-6)).data()
        );
        let profile = p.take_profile().unwrap();
        assert_eq!(profile.host_reads, 2);
        let times = profile.phases;
        assert_eq!(times[&Phase::Gemm].ops, 1);
        assert_eq!(times[&Phase::Elementwise].ops, 1);
        // 3 uploads + 2 downloads
        assert_eq!(times[&Phase::Memory].ops, 5);
        assert!(!times.contains_key(&Phase::Attention));
        assert!(times.values().all(|t| t.seconds >= 0.0));
        // Taken: the next profile starts empty.
        assert_eq!(p.take_profile().unwrap(), Profile::default());
        // An unprofiled backend has none.
        assert!(cpu.take_profile().is_none());
    }

    #[test]
    fn the_report_has_one_line_per_phase_and_what_ops_do_not_cover() {
        let mut times = PhaseTimes::new();
        times.insert(
            Phase::Gemm,
            PhaseTime {
                seconds: 0.006,
                ops: 10,
            },
        );
        times.insert(
            Phase::Attention,
            PhaseTime {
                seconds: 0.002,
                ops: 2,
            },
        );
        let mut profile = Profile {
            phases: times,
            host_reads: 3,
            device: None,
        };
        let s = format_profile("train", &profile, 0.010);
        assert!(
            s.starts_with("profile train: wall 10.000 ms, 3 host reads\n"),
            "{s}"
        );
        profile.device = Some(DeviceCounters {
            launches: 40,
            allocations: 12,
            host_waits: 3,
        });
        let with_device = format_profile("train", &profile, 0.010);
        assert!(
            with_device.starts_with("profile train: wall 10.000 ms, 3 host reads; device: 40 launches, 12 allocations, 3 host waits\n"),
            "{with_device}"
        );
        assert!(
            s.contains("gemm              6.000 ms   60.0 %      10 ops"),
            "{s}"
        );
        assert!(
            s.contains("attention         2.000 ms   20.0 %       2 ops"),
            "{s}"
        );
        assert!(s.contains("outside ops       2.000 ms   20.0 %"), "{s}");
    }
}
