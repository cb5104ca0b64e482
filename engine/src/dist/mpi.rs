//! [`Collective`] over MPI (the `mpi` crate over the system's Open MPI or
//! MPICH): the CPU backend's collectives, and the bootstrap of NCCL's.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{check_len, Collective, CommError};

/// `MPI_COMM_WORLD`. Calls are serialized by the mutex (MPI is initialized
/// for serialized use: any thread, one at a time).
pub struct Mpi {
    comm: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
}

// SAFETY: the communicator is a handle to MPI_COMM_WORLD; MPI was
// initialized with `Threading::Serialized` and every call holds the mutex.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

/// Initializes MPI (serialized threading) and returns the universe (its
/// drop finalizes MPI) and the world communicator.
pub(super) fn join() -> Result<(Universe, Mpi), CommError> {
    let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
        .ok_or_else(|| CommError("MPI was already initialized".into()))?;
    if level < mpi::Threading::Serialized {
        return Err(CommError(format!(
            "this MPI offers {level:?} threading; igpo needs Serialized"
        )));
    }
    let comm = universe.world();
    let (rank, size) = (comm.rank() as usize, comm.size() as usize);
    Ok((
        universe,
        Mpi {
            comm: Mutex::new(comm),
            rank,
            size,
        },
    ))
}

impl Mpi {
    fn comm(&self) -> std::sync::MutexGuard<'_, SimpleCommunicator> {
        self.comm.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CommError> {
        let send = buf.to_vec();
        self.comm()
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), CommError> {
        let send = buf.to_vec();
        self.comm()
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn reduce_scatter_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("reduce_scatter", send.len(), recv.len() * self.size)?;
        self.comm()
            .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }
    fn all_gather(&self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        check_len("all_gather", recv.len(), send.len() * self.size)?;
        self.comm().all_gather_into(send, recv);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError(format!(
                "broadcast from rank {root} of {}",
                self.size
            )));
        }
        self.comm().process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn barrier(&self) -> Result<(), CommError> {
        self.comm().barrier();
        Ok(())
    }
}
