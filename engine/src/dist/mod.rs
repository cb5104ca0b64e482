//! Data-parallel training's one seam: [`Collective`], the collectives over
//! flat buffers that training code calls (never MPI or NCCL directly).
//!
//! A process started alone uses [`Solo`] (every collective the identity), so
//! a single process computes bit for bit what it did before ranks existed.
//! Under `mpirun` / `srun`, [`init`] (called once by the `igpo` binary) joins
//! the job over MPI (cargo feature `mpi`) and [`world`] hands out that
//! communicator from then on.

pub mod buckets;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(test)]
pub(crate) mod threads;
mod watchdog;

pub use watchdog::{timeout_from_env, Watched};

use std::ops::Range;
use std::sync::OnceLock;

use crate::backend::Backend;

/// A collective that failed (a rank gone, a size mismatch): one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommError(pub String);

/// Collectives over the ranks of one job. Every rank calls the same
/// collectives in the same order with buffers of the same lengths.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// How many ranks the job has.
    fn size(&self) -> usize;
    /// `buf` becomes the element-wise sum of every rank's `buf`.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError>;
    /// [`Collective::all_reduce_sum`] of f64 values (metrics, statistics).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError>;
    /// Rank r's `recv` (`send.len() / size()` values) becomes the sum over
    /// ranks of the r-th block of `send`.
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    /// `recv` (`size() * send.len()` values) becomes every rank's `send`,
    /// in rank order.
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError>;
    /// Every rank's `buf` becomes rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), CommError>;
}

/// The job of one process: rank 0 of 1.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), CommError> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<(), CommError> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("reduce_scatter", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("all_gather", recv.len(), send.len())?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], root: usize) -> Result<(), CommError> {
        if root != 0 {
            return Err(CommError(format!("broadcast from rank {root} of 1")));
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        Ok(())
    }
}

fn check_len(op: &str, got: usize, want: usize) -> Result<(), CommError> {
    if got != want {
        return Err(CommError(format!(
            "{op}: buffer of {got} values where {want} are needed"
        )));
    }
    Ok(())
}

/// A tensor shaped `shape` as the matrix ZeRO shards by rows: its first
/// dimension by the rest (one row when it has one dimension).
pub fn as_matrix(shape: &[usize]) -> (usize, usize) {
    match shape {
        [rows, rest @ ..] if !rest.is_empty() => (*rows, rest.iter().product()),
        _ => (1, shape.iter().product()),
    }
}

/// The shape of rows `span` of a tensor shaped `shape` (`[0]` for none).
pub fn rows_shape(shape: &[usize], span: Range<usize>) -> Vec<usize> {
    let (rows, _) = as_matrix(shape);
    match span.len() {
        0 => vec![0],
        n if n == rows => shape.to_vec(),
        n => [&[n][..], &shape[1..]].concat(),
    }
}

/// Every rank's `tensors` become rank 0's (the weights at the start of a
/// data-parallel run), on the device when the ranks joined a device group.
/// A solo job without one returns at once.
pub fn broadcast_tensors<B: Backend>(
    b: &B,
    comm: &dyn Collective,
    tensors: &mut [B::Tensor],
) -> Result<(), CommError> {
    if let Some(done) = b.device_broadcast(tensors, 0) {
        return done.map_err(CommError);
    }
    if comm.size() == 1 {
        return Ok(());
    }
    for t in tensors.iter_mut() {
        let mut h = b.download(t);
        comm.broadcast(h.data_mut(), 0)?;
        *t = b.upload(&h);
    }
    Ok(())
}

/// A cheap fingerprint of a model's weights that needs no copy to the
/// host: each tensor's sum of squares (the backend's own reduction, the same
/// bits for the same weights), weighted by its position.
pub fn weights_checksum<B: Backend>(b: &B, tensors: &[B::Tensor]) -> f64 {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (i + 1) as f64 * b.sum_squares(t))
        .sum()
}

/// Checks that every rank holds rank 0's `checksum` (of its weights, which
/// data parallelism keeps identical). Each rank's value reaches every rank
/// exactly: an all-reduce of a vector that is zero but at the rank's own
/// place (adding zeros changes no bits).
pub fn replicas_agree(comm: &dyn Collective, checksum: f64, step: u64) -> Result<(), CommError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut all = vec![0.0f64; comm.size()];
    all[comm.rank()] = checksum;
    comm.all_reduce_sum_f64(&mut all)?;
    let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let differ: Vec<String> = (1..all.len())
        .filter(|&r| !same(all[r], all[0]))
        .map(|r| format!("rank {r} ({:e})", all[r]))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(CommError(format!(
        "step {step}: the weights of {} differ from rank 0's ({:e}); the ranks no longer train one model",
        differ.join(", "),
        all[0]
    )))
}

/// How `ranks` shard matrices (ZeRO): `shapes` are `(rows, cols)` in
/// order, seen as one run of elements cut into `ranks` equal spans at row
/// boundaries (a row goes to the span that holds its first element). Per
/// matrix, per rank, the rows that rank owns (empty for most).
pub fn partition_rows(shapes: &[(usize, usize)], ranks: usize) -> Vec<Vec<Range<usize>>> {
    let total: usize = shapes.iter().map(|(r, c)| r * c).sum();
    let span_of = |at: usize| {
        let r = at as u128 * ranks as u128 / total.max(1) as u128;
        (r as usize).min(ranks.saturating_sub(1))
    };
    let mut before = 0usize;
    shapes
        .iter()
        .map(|&(rows, cols)| {
            let mut out = vec![0..0; ranks];
            let mut row = 0;
            while row < rows {
                let r = span_of(before + row * cols);
                let mut end = row + 1;
                while end < rows && span_of(before + end * cols) == r {
                    end += 1;
                }
                out[r] = row..end;
                row = end;
            }
            before += rows * cols;
            out
        })
        .collect()
}

/// Every rank's `n`, in rank order, exactly (one f64 per rank).
pub fn all_counts(comm: &dyn Collective, n: usize) -> Result<Vec<usize>, CommError> {
    if comm.size() == 1 {
        return Ok(vec![n]);
    }
    let mut all = vec![0.0f64; comm.size()];
    all[comm.rank()] = n as f64;
    comm.all_reduce_sum_f64(&mut all)?;
    Ok(all.iter().map(|&v| v as usize).collect())
}

/// Every rank's `mine`, in rank order: for a step's small records (a few
/// kilobytes to megabytes), never for tensors. The bytes travel three to an
/// f32 (integers below 2^24 are exact floats) in one all-gather padded to
/// the longest message.
pub fn all_gather_bytes(comm: &dyn Collective, mine: &[u8]) -> Result<Vec<Vec<u8>>, CommError> {
    if comm.size() == 1 {
        return Ok(vec![mine.to_vec()]);
    }
    let lens = all_counts(comm, mine.len())?;
    let words = lens.iter().max().copied().unwrap_or(0).div_ceil(3);
    let mut send = vec![0.0f32; words];
    for (w, c) in send.iter_mut().zip(mine.chunks(3)) {
        let v = c.iter().rev().fold(0u32, |acc, &b| (acc << 8) | b as u32);
        *w = v as f32;
    }
    let mut recv = vec![0.0f32; words * comm.size()];
    comm.all_gather(&send, &mut recv)?;
    Ok(lens
        .iter()
        .enumerate()
        .map(|(r, &len)| {
            let words = &recv[r * words..(r + 1) * words];
            let mut bytes: Vec<u8> = words
                .iter()
                .flat_map(|&w| {
                    let v = w as u32;
                    [v as u8, (v >> 8) as u8, (v >> 16) as u8]
                })
                .collect();
            bytes.truncate(len);
            bytes
        })
        .collect())
}

/// Every rank's `value`, in rank order ([`all_gather_bytes`] of its
/// `postcard` encoding: exact floats, NaN included).
pub fn all_gather_values<T>(comm: &dyn Collective, value: &T) -> Result<Vec<T>, CommError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = postcard::to_allocvec(value).map_err(|e| CommError(format!("encode: {e}")))?;
    all_gather_bytes(comm, &bytes)?
        .iter()
        .map(|b| postcard::from_bytes(b).map_err(|e| CommError(format!("decode: {e}"))))
        .collect()
}

static WORLD: OnceLock<Box<dyn Collective>> = OnceLock::new();

/// The job's communicator: the one [`init`] joined, else [`Solo`].
pub fn world() -> &'static dyn Collective {
    WORLD.get_or_init(|| Box::new(Solo)).as_ref()
}

/// The rank and size a launcher (Open MPI's `mpirun`, Slurm's `srun`, any
/// PMI launcher) gave this process, from its environment; `None` when it
/// was started alone.
pub fn launched_rank() -> Option<(usize, usize)> {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.parse::<usize>().ok())
    };
    let size = var(&[
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_NTASKS",
    ])?;
    let rank = var(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])?;
    (size > 1).then_some((rank, size))
}

/// This rank's index among the job's ranks on its node (the launcher's
/// `OMPI_COMM_WORLD_LOCAL_RANK`, `SLURM_LOCALID`, `MPI_LOCALRANKID` or
/// `PMI_LOCAL_RANK`): which GPU of the node it takes. 0 alone.
pub fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
    ]
    .iter()
    .find_map(|n| std::env::var(n).ok()?.parse().ok())
    .filter(|_| world().size() > 1)
    .unwrap_or(0)
}

/// Whether the ranks sum on the device: always in a job of several ranks
/// whose backend has device collectives, and alone with `IGPO_NCCL=1` (a
/// one-rank group: the NCCL path checked on one GPU).
fn wants_device_group(comm: &dyn Collective) -> bool {
    comm.size() > 1 || std::env::var("IGPO_NCCL").is_ok_and(|v| v == "1")
}

/// Joins the job's ranks in a device group (NCCL) when `b` offers one:
/// rank 0 makes the group's id and every rank learns it over `comm`.
/// Returns whether the collectives now run on the device.
pub fn join_device_group<B: Backend>(b: &B, comm: &dyn Collective) -> Result<bool, CommError> {
    if !wants_device_group(comm) {
        return Ok(false);
    }
    let id = match comm.rank() {
        0 => b.new_device_group_id().map_err(CommError)?,
        _ => None,
    };
    let ids = all_gather_values(comm, &id)?;
    let Some(id) = &ids[0] else {
        return Ok(false);
    };
    b.join_device_group(id, comm.rank(), comm.size())
        .map_err(CommError)?;
    tracing::info!(
        "rank {}: gradients summed on the device ({} ranks)",
        comm.rank(),
        comm.size()
    );
    Ok(true)
}

/// Held by `main` for the life of the process: dropping it leaves the job
/// (MPI_Finalize), which every rank must do before it exits.
pub struct Membership {
    #[cfg(feature = "mpi")]
    _universe: Option<::mpi::environment::Universe>,
}

impl Membership {
    /// Leaves the job (MPI_Finalize under MPI): the last thing before exit.
    pub fn leave(self) {
        #[cfg(feature = "mpi")]
        drop(self._universe);
    }
}

/// Joins the job this process was launched into (nothing for a process
/// started alone). Launched as one of several ranks by a binary built
/// without the `mpi` feature, it is an error, not a silent solo run.
pub fn init() -> Result<Membership, CommError> {
    let Some((rank, size)) = launched_rank() else {
        return Ok(Membership {
            #[cfg(feature = "mpi")]
            _universe: None,
        });
    };
    #[cfg(feature = "mpi")]
    {
        let (universe, comm) = mpi::join()?;
        if (comm.rank(), comm.size()) != (rank, size) {
            return Err(CommError(format!(
                "MPI says rank {} of {}, the launcher's environment rank {rank} of {size}",
                comm.rank(),
                comm.size()
            )));
        }
        let timeout = timeout_from_env()?;
        let comm = Watched::new(comm, timeout, |line| {
            eprintln!("error: {line}");
            std::process::exit(2);
        });
        if WORLD.set(Box::new(comm)).is_err() {
            return Err(CommError("the communicator was joined twice".into()));
        }
        Ok(Membership {
            _universe: Some(universe),
        })
    }
    #[cfg(not(feature = "mpi"))]
    Err(CommError(format!(
        "launched as rank {rank} of {size}, but this igpo was built without MPI: build it \
         with `cargo build --release --features igpo/mpi` (needs Open MPI and libclang)"
    )))
}

#[cfg(test)]
mod tests {
    use super::threads::Threads;
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn a_solo_job_is_rank_0_of_1_and_every_collective_the_identity() {
        let w = Solo;
        assert_eq!((w.rank(), w.size()), (0, 1));
        let mut buf = vec![1.5f32, -2.0];
        w.all_reduce_sum(&mut buf).unwrap();
        w.broadcast(&mut buf, 0).unwrap();
        assert_eq!(buf, [1.5, -2.0]);
        let mut out = vec![0.0; 2];
        w.all_gather(&buf, &mut out).unwrap();
        assert_eq!(out, buf);
        w.reduce_scatter_sum(&buf, &mut out).unwrap();
        assert_eq!(out, buf);
        assert!(w.broadcast(&mut buf, 1).is_err());
        assert!(w.all_gather(&buf, &mut [0.0; 3]).is_err());
        assert!(replicas_agree(&w, 1.25, 3).is_ok());
    }

    #[test]
    fn replicas_agree_only_on_the_same_bits_and_name_the_rank_that_differs() {
        let x = 0.1f64 + 0.2;
        let next = f64::from_bits(x.to_bits() + 1);
        for (other, ok) in [(x, true), (next, false)] {
            let got = Threads::run(2, |c| {
                replicas_agree(c, if c.rank() == 1 { other } else { x }, 4)
            });
            for (rank, r) in got.into_iter().enumerate() {
                match r {
                    Ok(()) => assert!(ok),
                    Err(err) => {
                        assert!(!ok, "{err}");
                        // Every rank names the one that differs, with its value.
                        let want = "step 4: the weights of rank 1 (3.000000000000001e-1) \
                                    differ from rank 0's (3.0000000000000004e-1)";
                        assert!(err.0.contains(want), "rank {rank}: {err}");
                    }
                }
            }
        }
        let sums = |scale: f32| {
            let t = |v: Vec<f32>| Tensor::from_vec(&[v.len()], v);
            let ts = [t(vec![1.0, -2.0]), t(vec![scale])];
            weights_checksum(&crate::backend::Cpu, &ts)
        };
        assert_eq!(sums(3.0), 5.0 + 2.0 * 9.0);
        assert_ne!(sums(3.0), sums(3.0001));
    }

    #[test]
    fn gathered_values_arrive_bit_for_bit_through_the_f32_packing() {
        // Every byte value, a length that is not a multiple of 3, floats
        // whose last bits matter, NaN and infinities.
        let value: (Vec<u8>, Vec<f64>, String) = (
            (0..=255u8).chain([7, 255]).collect(),
            vec![0.1 + 0.2, f64::NAN, -f64::INFINITY, 1e-310, f64::MAX],
            "Zürich, 東京".into(),
        );
        for v in [value.clone(), (vec![], vec![], String::new())] {
            let all = Threads::run(2, |c| all_gather_values(c, &v).unwrap()).remove(1);
            assert_eq!(all.len(), 2);
            for got in &all {
                assert_eq!(got.0, v.0);
                assert_eq!(got.2, v.2);
                let bits = |x: &[f64]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got.1), bits(&v.1));
            }
        }
        let counts = Threads::run(2, |c| all_counts(c, 5 + c.rank()).unwrap());
        assert_eq!(counts, vec![vec![5, 6], vec![5, 6]]);
        assert_eq!(
            all_gather_bytes(&Solo, b"ab").unwrap(),
            vec![b"ab".to_vec()]
        );
    }

    #[test]
    fn a_partition_cuts_the_rows_into_equal_spans() {
        // 4 matrices of 10 values over 2 ranks: two each.
        let p = partition_rows(&[(5, 2); 4], 2);
        assert_eq!(
            p,
            vec![
                vec![0..5, 0..0],
                vec![0..5, 0..0],
                vec![0..0, 0..5],
                vec![0..0, 0..5]
            ]
        );
        // One big matrix is cut between ranks at a row.
        let p = partition_rows(&[(1, 4), (10, 8), (1, 4)], 3);
        assert_eq!(
            p,
            vec![
                vec![0..1, 0..0, 0..0],
                vec![0..4, 4..7, 7..10],
                vec![0..0, 0..0, 0..1]
            ]
        );
        // Every row has one owner; every rank's load is within a row of
        // an equal share.
        let shapes: Vec<(usize, usize)> = (1..=30)
            .map(|i| ((i * 7) % 13 + 1, (i * 5) % 11 + 1))
            .collect();
        let p = partition_rows(&shapes, 4);
        let total: usize = shapes.iter().map(|(r, c)| r * c).sum();
        for (i, per_rank) in p.iter().enumerate() {
            let rows: usize = per_rank.iter().map(|r| r.len()).sum();
            assert_eq!(rows, shapes[i].0, "matrix {i}");
        }
        for r in 0..4 {
            let load: usize = p.iter().zip(&shapes).map(|(pr, s)| pr[r].len() * s.1).sum();
            assert!(
                load.abs_diff(total / 4) <= 11 * 2,
                "rank {r}: {load} of {total}"
            );
        }
        assert_eq!(partition_rows(&[(3, 1)], 1), vec![vec![0..3]]);
    }
}
