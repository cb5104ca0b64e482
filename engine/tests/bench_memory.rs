//! The CPU backend's memory figure under the counting allocator the `igpo`
//! binary installs, and what `igpo bench score` reports with it.

use igpo::backend::cpu::CountingAllocator;
use igpo::backend::{Backend, Cpu};
use igpo::bench::{score_bench, ScoreBenchSpec};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn peak_memory_counts_live_bytes_exactly_and_the_fused_op_stays_below_the_logits() {
    // One test function: the counters are process-wide, parallel tests would mix.
    let cpu = Cpu;
    cpu.reset_peak_memory();
    let before = cpu.memory_usage().expect("counting allocator installed");
    let block = vec![7u8; 10 << 20];
    let during = cpu.memory_usage().unwrap();
    assert!(during.in_use >= before.in_use + (10 << 20));
    drop(block);
    let after = cpu.memory_usage().unwrap();
    assert!(
        after.in_use < before.in_use + (1 << 20),
        "freed bytes leave the count"
    );
    assert!(
        after.peak >= before.in_use + (10 << 20),
        "the peak remembers them"
    );
    cpu.reset_peak_memory();
    assert_eq!(
        cpu.memory_usage().unwrap().peak,
        cpu.memory_usage().unwrap().in_use
    );

    // 256 tokens x 20,000 vocabulary: full f32 logits would be 20 MB; the
    // fused op holds one 256 x 2048 chunk (2 MiB) plus small vectors.
    let spec = ScoreBenchSpec {
        tokens: 256,
        hidden: 64,
        vocab: 20_000,
        chunk: 2048,
        repeats: 1,
    };
    let r = score_bench(&cpu, &spec);
    let fwd = r.forward_peak_bytes.expect("measured");
    assert!(
        fwd >= 256 * 2048 * 4,
        "forward peak {fwd} must hold a chunk"
    );
    assert!(
        fwd < r.full_logits_f32_bytes / 2,
        "forward peak {fwd} vs logits {}",
        r.full_logits_f32_bytes
    );
    // The backward adds the f32 lm-head gradient [vocab, hidden] and dh.
    let bwd = r.forward_backward_peak_bytes.expect("measured");
    assert!(
        bwd >= 20_000 * 64 * 4,
        "fwd+bwd peak {bwd} must hold the lm-head gradient"
    );
}
