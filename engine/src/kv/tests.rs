//! The paged cache's block bookkeeping on the CPU backend: reuse,
//! exhaustion without side effects, pool growth, copy-on-write of a shared
//! partial block.

use super::*;
use crate::backend::{Backend, Cpu};
use crate::tensor::Tensor;

const COLS: usize = 2;

fn cache(initial: usize, max: usize) -> PagedKv<Cpu> {
    let cfg = KvConfig {
        block_size: 4,
        initial_blocks: initial,
        max_blocks: max,
    };
    PagedKv::new(Cpu, 2, COLS, cfg)
}

/// Writes `n` positions into `seq`, position `p` of it holding
/// `[tag + p, -(tag + p)]` in K (and its negation in V) of every layer.
fn write(kv: &mut PagedKv<Cpu>, seq: SeqId, n: usize, tag: f32) -> Result<(), KvError> {
    let len = kv.len(seq)?;
    let slots = kv.reserve(&[seq], &[n])?.concat();
    let k: Vec<f32> = (len..len + n)
        .flat_map(|p| [tag + p as f32, -(tag + p as f32)])
        .collect();
    let k = Tensor::from_vec(&[n, COLS], k);
    let mut v = k.clone();
    Cpu.scale(&mut v, -1.0);
    for l in 0..2 {
        let (kp, vp) = kv.pools_mut(l);
        Cpu.write_kv(kp, vp, &slots, &k, &v);
    }
    kv.commit(&[seq], &[n]);
    Ok(())
}

/// Layer `l`'s K rows of every position of `seq`, through its table.
fn keys(kv: &mut PagedKv<Cpu>, seq: SeqId, l: usize) -> Vec<f32> {
    let slots = kv.key_slots(seq, kv.len(seq).unwrap());
    let (kp, _) = kv.pools_mut(l);
    Cpu.gather_rows(kp, &slots).data().to_vec()
}

fn expect(range: std::ops::Range<usize>, tag: f32) -> Vec<f32> {
    range
        .flat_map(|p| [tag + p as f32, -(tag + p as f32)])
        .collect()
}

#[test]
fn finished_sequences_give_their_blocks_back_for_reuse() {
    let mut kv = cache(4, 4);
    let a = kv.new_seq();
    write(&mut kv, a, 9, 0.0).unwrap();
    assert_eq!(kv.table(a).unwrap().blocks(), &[0, 1, 2]);
    assert_eq!(kv.allocator().free_blocks(), 1);
    kv.free(a).unwrap();
    assert_eq!(kv.allocator().free_blocks(), 4);
    assert_eq!(kv.len(a), Err(KvError::NoSequence(a)));
    let b = kv.new_seq();
    write(&mut kv, b, 16, 100.0).unwrap();
    let mut got = kv.table(b).unwrap().blocks().to_vec();
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3], "the freed blocks are reused");
    assert_eq!(keys(&mut kv, b, 1), expect(0..16, 100.0));
    assert_eq!(kv.stats().peak_blocks, 4);
}

#[test]
fn exhaustion_is_one_error_and_changes_nothing() {
    let mut kv = cache(3, 3);
    let (a, b) = (kv.new_seq(), kv.new_seq());
    write(&mut kv, a, 6, 0.0).unwrap();
    write(&mut kv, b, 1, 50.0).unwrap();
    // a needs 1 more block (positions 8..10), b needs 1 (4..5): 2 > 0 free.
    let before = (
        kv.table(a).unwrap().clone(),
        kv.table(b).unwrap().clone(),
        kv.allocator().free_blocks(),
    );
    let err = kv.reserve(&[a, b], &[4, 4]).unwrap_err();
    assert_eq!(
        err,
        KvError::Exhausted {
            needed: 2,
            free: 0,
            max_blocks: 3,
            block_size: 4
        }
    );
    assert_eq!(
        err.to_string(),
        "KV cache exhausted: 2 more blocks of 4 positions needed, 0 free of at most 3"
    );
    let after = (
        kv.table(a).unwrap().clone(),
        kv.table(b).unwrap().clone(),
        kv.allocator().free_blocks(),
    );
    assert_eq!(before, after, "a refused reservation changes no table");
    assert_eq!(keys(&mut kv, a, 0), expect(0..6, 0.0));
    assert_eq!(keys(&mut kv, b, 0), expect(0..1, 50.0));
    // What fits still goes: b's block has room for 3 more.
    write(&mut kv, b, 3, 50.0).unwrap();
    assert_eq!(keys(&mut kv, b, 1), expect(0..4, 50.0));
    assert!(write(&mut kv, b, 1, 50.0).is_err());
}

#[test]
fn the_pool_grows_up_to_max_blocks_keeping_every_row() {
    let mut kv = cache(1, 5);
    let a = kv.new_seq();
    write(&mut kv, a, 3, 0.0).unwrap();
    write(&mut kv, a, 14, 0.0).unwrap();
    assert_eq!(kv.allocator().num_blocks(), 5, "doubled to 2, then 5");
    assert_eq!(keys(&mut kv, a, 0), expect(0..17, 0.0));
    assert!(matches!(
        write(&mut kv, a, 4, 0.0),
        Err(KvError::Exhausted { max_blocks: 5, .. })
    ));
}

#[test]
fn forks_share_blocks_and_copy_a_shared_partial_block_on_write() {
    let mut kv = cache(8, 8);
    let p = kv.new_seq();
    write(&mut kv, p, 6, 0.0).unwrap(); // one full block, one with 2 rows
    let f = kv.fork(p).unwrap();
    assert_eq!(kv.table(f).unwrap(), kv.table(p).unwrap());
    let [full, partial] = kv.table(p).unwrap().blocks() else {
        panic!("two blocks")
    };
    let (full, partial) = (*full, *partial);
    assert_eq!(kv.allocator().refs(partial), 2);
    assert_eq!(kv.len(f).unwrap(), 6);
    // The fork writes first: its partial block becomes a private copy.
    write(&mut kv, f, 3, 1000.0).unwrap();
    assert_eq!(kv.stats().cow_copies, 1);
    let ft = kv.table(f).unwrap().blocks().to_vec();
    assert_eq!(ft[0], full, "the full block stays shared");
    assert_ne!(ft[1], partial);
    assert_eq!(kv.allocator().refs(full), 2);
    assert_eq!(kv.allocator().refs(partial), 1);
    let mut want = expect(0..6, 0.0);
    want.extend(expect(6..9, 1000.0));
    assert_eq!(keys(&mut kv, f, 1), want);
    // The parent's rows are untouched, and it now owns its partial block:
    // its write needs no copy.
    assert_eq!(keys(&mut kv, p, 1), expect(0..6, 0.0));
    write(&mut kv, p, 1, 7.0).unwrap();
    assert_eq!(kv.stats().cow_copies, 1);
    assert_eq!(kv.table(p).unwrap().blocks(), &[full, partial]);
    let mut want = expect(0..6, 0.0);
    want.extend(expect(6..7, 7.0));
    assert_eq!(keys(&mut kv, p, 0), want);
    // Freeing the parent keeps the shared block alive for the fork.
    kv.free(p).unwrap();
    assert_eq!(kv.allocator().refs(full), 1);
    assert_eq!(keys(&mut kv, f, 0)[..12], expect(0..6, 0.0)[..]);
    kv.free(f).unwrap();
    assert_eq!(kv.allocator().free_blocks(), 8);
    assert_eq!(kv.stats().forks, 1);
}

#[test]
fn a_fork_of_a_block_aligned_prefix_copies_nothing() {
    let mut kv = cache(4, 4);
    let p = kv.new_seq();
    write(&mut kv, p, 8, 0.0).unwrap();
    let f = kv.fork(p).unwrap();
    write(&mut kv, f, 1, 9.0).unwrap();
    write(&mut kv, p, 1, 5.0).unwrap();
    assert_eq!(kv.stats().cow_copies, 0);
    assert_eq!(kv.allocator().used_blocks(), 4);
}
