//! Typed launch wrappers: every kernel of `src/cu` behind a Rust function that
//! checks buffer lengths against the dimensions before launching (a kernel
//! never reads or writes out of bounds because of a wrong length), picks the
//! grid, and passes arguments in the order the kernel declares them.
//!
//! Nothing here runs without an NVIDIA GPU: [`Kernels::new`] checks for the
//! driver and NVRTC first and returns [`Error::NoDriver`] / [`Error::NoNvrtc`].
//!
//! This file holds what every family shares: [`Kernels`] (loading, buffers,
//! counters, device memory) and the launch helpers. Each `.cu` family has its
//! own file of wrappers, named after it: `norm.rs`, `rope.rs`, `mlp.rs`,
//! `embedding.rs`, `optimizer.rs`, `logprob.rs`, `sampling.rs`,
//! `attention.rs` (`attention.cu` and `attention_tc.cu`) and
//! `paged_attention.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::compile::{load_nvrtc, CompileOptions, PtxCache};
use crate::{Error, Family, Result};

mod attention;
mod embedding;
mod logprob;
mod mlp;
mod norm;
mod optimizer;
mod paged_attention;
mod rope;
mod sampling;

pub use attention::{
    AttnArgs, AttnDims, AttnGrads, AttnKernels, DecodeArgs, DeviceMask, KvAppend, VarlenSeqs,
};
pub use logprob::{LogprobChunk, LogprobState};
pub use mlp::SwigluInput;
pub use norm::NormInput;
pub use optimizer::{AdamW, AdamWState};
pub use paged_attention::{PagedAttnArgs, PagedMeta, PagedSeq, SPLIT_KEYS};
pub use rope::RopeArgs;
pub use sampling::SampleArgs;

/// A null device pointer for the kernels' optional arguments.
static NULL: u64 = 0;

/// Threads of the row kernels (one block per row) and of elementwise kernels.
const ROW_THREADS: u32 = 256;
const ELEM_THREADS: u32 = 256;

/// Whether the CUDA driver library can be opened (cudarc panics otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open libcuda by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Name and memory of one device, as the driver reports them.
#[derive(Clone, Debug)]
pub struct DeviceMemory {
    pub name: String,
    /// Bytes free right now (other processes' allocations excluded).
    pub free: usize,
    pub total: usize,
}

/// Device memory held by the engine's buffers, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUsage {
    pub in_use: u64,
    /// The most in use at once since the last reset.
    pub peak: u64,
}

/// Checks the driver and that device `ordinal` exists (cudarc panics or
/// reports an opaque code otherwise).
fn check_device(ordinal: usize) -> Result<()> {
    if !driver_present() {
        return Err(Error::NoDriver);
    }
    let count = CudaContext::device_count().map_err(cuda)?.max(0) as usize;
    if ordinal >= count {
        return Err(Error::NoDevice { ordinal, count });
    }
    Ok(())
}

/// Free and total memory of device `ordinal`, without compiling or loading
/// any kernel (NVRTC is not needed). Without a driver: [`Error::NoDriver`].
pub fn device_memory(ordinal: usize) -> Result<DeviceMemory> {
    check_device(ordinal)?;
    let ctx = CudaContext::new(ordinal).map_err(cuda)?;
    let (free, total) = ctx.mem_get_info().map_err(cuda)?;
    Ok(DeviceMemory {
        name: ctx.name().map_err(cuda)?,
        free,
        total,
    })
}

fn cuda<E: std::fmt::Debug>(e: E) -> Error {
    Error::Cuda(format!("{e:?}"))
}

fn check_len<T>(what: &str, s: &CudaSlice<T>, want: usize) -> Result<()> {
    if s.len() < want {
        return Err(Error::Invalid(format!(
            "{what}: buffer holds {} elements, the launch needs {want}",
            s.len()
        )));
    }
    Ok(())
}

fn elem_cfg(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEM_THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The compiled kernels of every family, loaded into one CUDA context.
pub struct Kernels {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    arch: (u32, u32),
    /// Varlen row starts and key counts: the same for every layer of a step.
    varlen_starts: Reused<i32>,
    varlen_keys: Reused<i32>,
    /// The int32 description of a paged attention call
    /// (`paged_attention.rs`): the same for every layer of a step.
    paged_meta: Reused<i32>,
    /// Which attention kernels run (`IGPO_ATTENTION`).
    attn: AttnKernels,
    counters: Counters,
}

/// What the host asked of the device: kernel launches (ours and cuBLAS's
/// GEMMs, counted by their callers), buffer allocations, and waits (a
/// download or a synchronize), so a step's cost in driver work can be read.
#[derive(Default)]
struct Counters {
    launches: AtomicU64,
    allocations: AtomicU64,
    host_waits: AtomicU64,
}

/// A snapshot of the [`Kernels::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub launches: u64,
    pub allocations: u64,
    pub host_waits: u64,
}

impl Counters {
    fn values(&self) -> CounterValues {
        CounterValues {
            launches: self.launches.load(Ordering::Relaxed),
            allocations: self.allocations.load(Ordering::Relaxed),
            host_waits: self.host_waits.load(Ordering::Relaxed),
        }
    }
}

/// The last host array uploaded through it and its device copy, handed out
/// again while the host array is equal: a decode step sends the same RoPE
/// positions to every layer's q and k and the same sequence lengths to every
/// layer's attention, so one host-to-device copy serves all of them. The
/// device copy is only ever read by kernels.
pub struct Reused<T> {
    slot: Mutex<Option<HostAndDevice<T>>>,
}

/// A host array and its device copy.
type HostAndDevice<T> = (Vec<T>, Arc<CudaSlice<T>>);

impl<T> Default for Reused<T> {
    fn default() -> Self {
        Reused {
            slot: Mutex::new(None),
        }
    }
}

impl<T: DeviceRepr + Clone + PartialEq> Reused<T> {
    /// `host` on the device (non-empty: CUDA has no zero-length buffer).
    pub fn get(&self, k: &Kernels, host: &[T]) -> Result<Arc<CudaSlice<T>>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((h, d)) = slot.as_ref() {
            if h.as_slice() == host {
                return Ok(d.clone());
            }
        }
        let d = Arc::new(k.upload(host)?);
        *slot = Some((host.to_vec(), d.clone()));
        Ok(d)
    }
}

impl Kernels {
    /// Compiles (or takes from `cache`) every family for device `ordinal`'s
    /// compute capability and loads it.
    pub fn new(ordinal: usize, cache: &PtxCache) -> Result<Kernels> {
        check_device(ordinal)?;
        load_nvrtc()?;
        let ctx = CudaContext::new(ordinal).map_err(cuda)?;
        let (major, minor) = ctx.compute_capability().map_err(cuda)?;
        let arch = (major as u32, minor as u32);
        let opts = CompileOptions::for_arch(arch.0, arch.1);
        let attn = AttnKernels::from_env()?;
        let mut funcs = HashMap::new();
        for family in Family::ALL {
            let ptx = cache.get_or_compile(family, &opts)?;
            let module = ctx.load_module(Ptx::from_src(ptx)).map_err(cuda)?;
            for name in family.kernel_names() {
                let f = module.load_function(&name).map_err(cuda)?;
                funcs.insert(name, f);
            }
        }
        attention::opt_in_shared_memory(&funcs)?;
        // One stream does all the work (kernels, cuBLAS, copies), so the
        // per-buffer events cudarc records to order uses across streams only
        // cost driver calls (~4 per op output).
        // SAFETY: no second stream exists; nothing is used across streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let k = Kernels {
            ctx,
            stream,
            funcs,
            arch,
            varlen_starts: Reused::default(),
            varlen_keys: Reused::default(),
            paged_meta: Reused::default(),
            attn,
            counters: Counters::default(),
        };
        if k.ctx.has_async_alloc() {
            k.keep_pool_memory()?;
        }
        Ok(k)
    }

    /// The stream-ordered allocator returns freed memory to the device only
    /// past the pool's release threshold, which is 0 by default: every
    /// synchronize then hands the step's gigabytes back and the next step
    /// maps them again. At the maximum the pool keeps what it has grown to.
    fn keep_pool_memory(&self) -> Result<()> {
        let pool = self.memory_pool()?;
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the pool is our device's; the attribute takes a u64.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .result()
            .map_err(cuda)
        }
    }

    /// Launches, allocations and host waits since the kernels were loaded.
    pub fn counters(&self) -> CounterValues {
        self.counters.values()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compute capability the kernels were compiled for.
    pub fn arch(&self) -> (u32, u32) {
        self.arch
    }

    fn f(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("kernel `{name}` is not loaded")))
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(cuda)
    }

    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.counters.allocations.fetch_add(1, Ordering::Relaxed);
        self.stream.alloc_zeros(n.max(1)).map_err(cuda)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        self.counters.host_waits.fetch_add(1, Ordering::Relaxed);
        self.stream.clone_dtoh(dev).map_err(cuda)
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.counters.host_waits.fetch_add(1, Ordering::Relaxed);
        self.stream.synchronize().map_err(cuda)
    }

    /// Counts one buffer allocation (for buffers not made by [`Kernels::zeros`]).
    fn count_allocation(&self) {
        self.counters.allocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one kernel launch (the wrappers call it; cuBLAS GEMMs too).
    pub fn count_launch(&self) {
        self.counters.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes of device memory the engine's buffers hold: now and the highest
    /// since the last [`Kernels::reset_peak_memory`]. Every buffer comes from
    /// the stream-ordered allocator, so the device's memory pool counts them
    /// (cuBLAS's own workspace is not included). `None` where the device has
    /// no memory pools (cudarc then allocates synchronously, uncounted).
    pub fn memory_usage(&self) -> Result<Option<MemoryUsage>> {
        if !self.ctx.has_async_alloc() {
            return Ok(None);
        }
        self.stream.synchronize().map_err(cuda)?;
        let pool = self.memory_pool()?;
        let attr = |a| -> Result<u64> {
            let mut v = 0u64;
            // SAFETY: `pool` is the device's current pool; both attributes are u64.
            unsafe {
                cudarc::driver::sys::cuMemPoolGetAttribute(pool, a, (&mut v as *mut u64).cast())
                    .result()
                    .map_err(cuda)?
            };
            Ok(v)
        };
        use cudarc::driver::sys::CUmemPool_attribute::*;
        Ok(Some(MemoryUsage {
            in_use: attr(CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            peak: attr(CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        }))
    }

    /// Starts a new peak: the high-water mark becomes what is in use now.
    pub fn reset_peak_memory(&self) -> Result<()> {
        if !self.ctx.has_async_alloc() {
            return Ok(());
        }
        self.stream.synchronize().map_err(cuda)?;
        let pool = self.memory_pool()?;
        let mut zero = 0u64;
        // SAFETY: resetting USED_MEM_HIGH takes a u64 that must be 0.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            )
            .result()
            .map_err(cuda)
        }
    }

    fn memory_pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool> {
        self.ctx.bind_to_thread().map_err(cuda)?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes the current pool of our device into `pool`.
        unsafe {
            cudarc::driver::sys::cuDeviceGetMemPool(&mut pool, self.ctx.cu_device())
                .result()
                .map_err(cuda)?
        };
        Ok(pool)
    }
}
