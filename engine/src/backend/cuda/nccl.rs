//! NCCL for data-parallel training (cargo feature `nccl`): gradients summed
//! and weights broadcast between the GPUs of a job without leaving them.
//! `libnccl.so.2` is loaded at run time like the other CUDA libraries (the
//! `nvidia-nccl` wheel PyTorch installs carries one: put its `lib` folder on
//! `LD_LIBRARY_PATH`). The ranks meet over MPI: rank 0 makes the group's
//! id, `dist::join_device_group` sends it to the others.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::{CudaTensor, Data};

/// A fresh group id (rank 0 makes it) as bytes.
pub(super) fn new_id() -> Result<Vec<u8>, String> {
    let id = Id::new()
        .map_err(|e| format!("ncclGetUniqueId: {e:?} (is libnccl.so.2 on LD_LIBRARY_PATH?)"))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// This rank's NCCL communicator, on the backend's stream (so collectives
/// queue behind the backward that made the gradients, with no host wait).
pub(super) struct Group(Comm);

// SAFETY: the communicator is only used behind the backend's mutex, one
// call at a time, on the stream it was made for.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

fn nccl_err(op: &str) -> impl Fn(cudarc::nccl::result::NcclError) -> String + '_ {
    move |e| format!("{op}: {e:?}")
}

impl Group {
    pub(super) fn join(
        stream: Arc<CudaStream>,
        id: &[u8],
        rank: usize,
        size: usize,
    ) -> Result<Group, String> {
        let internal: [std::ffi::c_char; 128] = id
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| format!("an NCCL group id is 128 bytes, not {}", id.len()))?;
        let comm = Comm::from_rank(stream, rank, size, Id::uninit(internal))
            .map_err(nccl_err("ncclCommInitRank"))?;
        Ok(Group(comm))
    }

    /// Sums each tensor's stored values over the group (f32 gradients, or
    /// bf16 ones summed in bf16).
    pub(super) fn all_reduce(&self, tensors: &mut [CudaTensor]) -> Result<(), String> {
        for t in tensors.iter_mut() {
            let n = t.numel();
            match &mut t.data {
                Data::F32(s) => sum(&self.0, &mut s.slice_mut(0..n))?,
                Data::Bf16(s) => sum(&self.0, &mut s.slice_mut(0..n))?,
                Data::Param { master, work } => {
                    sum(&self.0, &mut master.slice_mut(0..n))?;
                    sum(&self.0, &mut work.slice_mut(0..n))?;
                }
            }
        }
        Ok(())
    }

    /// Each tensor (each of a parameter's f32 master and bf16 copy) becomes
    /// rank `root`'s.
    pub(super) fn broadcast(&self, tensors: &mut [CudaTensor], root: usize) -> Result<(), String> {
        let root = root as i32;
        for t in tensors.iter_mut() {
            let n = t.numel();
            match &mut t.data {
                Data::F32(s) => from_root(&self.0, &mut s.slice_mut(0..n), root)?,
                Data::Bf16(s) => from_root(&self.0, &mut s.slice_mut(0..n), root)?,
                Data::Param { master, work } => {
                    from_root(&self.0, &mut master.slice_mut(0..n), root)?;
                    from_root(&self.0, &mut work.slice_mut(0..n), root)?;
                }
            }
        }
        Ok(())
    }
}

fn sum<T: NcclType>(
    comm: &Comm,
    buf: &mut cudarc::driver::CudaViewMut<'_, T>,
) -> Result<(), String> {
    comm.all_reduce_in_place(buf, &ReduceOp::Sum)
        .map(|_| ())
        .map_err(nccl_err("ncclAllReduce"))
}

fn from_root<T: NcclType>(
    comm: &Comm,
    buf: &mut cudarc::driver::CudaViewMut<'_, T>,
    root: i32,
) -> Result<(), String> {
    comm.broadcast_in_place(buf, root)
        .map(|_| ())
        .map_err(nccl_err("ncclBroadcast"))
}
