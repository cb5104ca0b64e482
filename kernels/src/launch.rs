//! Typed launch wrappers: every kernel of `src/cu` behind a Rust function that
//! checks buffer lengths against the dimensions before launching (a kernel
//! never reads or writes out of bounds because of a wrong length), picks the
//! grid, and passes arguments in the order the kernel declares them.
//!
//! Nothing here runs without an NVIDIA GPU: [`Kernels::new`] checks for the
//! driver and NVRTC first and returns [`Error::NoDriver`] / [`Error::NoNvrtc`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use half::bf16;

use crate::compile::{load_nvrtc, CompileOptions, PtxCache};
use crate::host::{to_i32, EmbeddingGroups, MaskArgs};
use crate::{Error, Family, Result};

/// A null device pointer for the kernels' optional arguments.
static NULL: u64 = 0;

/// Threads of the row kernels (one block per row) and of elementwise kernels.
const ROW_THREADS: u32 = 256;
const ELEM_THREADS: u32 = 256;
/// Rows summed by one block of the deterministic column sums.
const COLSUM_ROWS: usize = 256;
/// attention.cu: 8 threads per row x 16 rows.
const ATT_ROWS: usize = 16;
const ATT_THREADS: u32 = 128;
/// attention_tc.cu: 4 warps; query rows per forward / dq block, keys per
/// tile and per dkdv block, query rows per dkdv tile.
const TC_THREADS: u32 = 128;
const TC_BQ: usize = 64;
const TC_BK: usize = 64;
const TC_BQB: usize = 32;

/// Which attention kernels the wrappers launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernels {
    /// attention_tc.cu: bf16 `mma.sync` (FlashAttention-2 style), the default.
    TensorCore,
    /// attention.cu: scalar f32 FMA, the reference on the GPU and fallback.
    Scalar,
}

impl AttnKernels {
    /// `IGPO_ATTENTION`: `scalar` or `tensor-core` (unset or empty: tensor-core).
    pub fn from_env() -> Result<AttnKernels> {
        match std::env::var("IGPO_ATTENTION").as_deref() {
            Err(_) | Ok("") | Ok("tensor-core") => Ok(AttnKernels::TensorCore),
            Ok("scalar") => Ok(AttnKernels::Scalar),
            Ok(other) => Err(Error::Invalid(format!(
                "IGPO_ATTENTION={other}: expected `tensor-core` or `scalar`"
            ))),
        }
    }
}

/// The three tensor-core kernel shapes and their dynamic shared memory.
#[derive(Clone, Copy)]
enum TcKernel {
    Fwd,
    Dq,
    Dkdv,
}

impl TcKernel {
    /// Bytes of dynamic shared memory (attention_tc.cu: swizzled bf16 tiles;
    /// the K / V or Q / dO tiles that stream in are double-buffered).
    fn smem(self, d: usize) -> u32 {
        let bytes = match self {
            TcKernel::Fwd => (TC_BQ + 4 * TC_BK) * d * 2,
            TcKernel::Dq => (2 * TC_BQ + 4 * TC_BK) * d * 2,
            TcKernel::Dkdv => (2 * TC_BK + 4 * TC_BQB) * d * 2 + 4 * TC_BQB * 4,
        };
        bytes as u32
    }

    fn config(self, blocks: usize, heads: usize, batch: usize, d: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks.max(1) as u32, heads as u32, batch as u32),
            block_dim: (TC_THREADS, 1, 1),
            shared_mem_bytes: self.smem(d),
        }
    }
}
const SAMPLE_THREADS: u32 = 1024;

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

pub(crate) fn cuda<E: std::fmt::Debug>(e: E) -> Error {
    Error::Cuda(format!("{e:?}"))
}

pub(crate) fn check_len<T>(what: &str, s: &CudaSlice<T>, want: usize) -> Result<()> {
    if s.len() < want {
        return Err(Error::Invalid(format!(
            "{what}: buffer holds {} elements, the launch needs {want}",
            s.len()
        )));
    }
    Ok(())
}

pub(crate) fn elem_cfg(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEM_THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (ELEM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Heads per block of the one-warp-per-head kernels (`head_rmsnorm_*`).
const HEADS_PER_BLOCK: usize = 4;

fn heads_cfg(heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (heads.div_ceil(HEADS_PER_BLOCK).max(1) as u32, 1, 1),
        block_dim: (32 * HEADS_PER_BLOCK as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `n / head_dim`, or an error when `n` is not whole heads.
fn whole_heads(op: &str, n: usize, head_dim: usize) -> Result<usize> {
    if head_dim == 0 || !n.is_multiple_of(head_dim) {
        return Err(Error::Invalid(format!(
            "{op}: {n} values are not whole heads of {head_dim}"
        )));
    }
    Ok(n / head_dim)
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// AdamW hyper-parameters of one step (the engine's `AdamWStep`).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_correction1: f32,
    pub bias_correction2: f32,
    pub grad_scale: f32,
}

/// Attention geometry (the engine's `AttnShape`).
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Query rows.
    pub m: usize,
    /// Key rows.
    pub n: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn check(&self) -> Result<()> {
        if !(self.head_dim == 64 || self.head_dim == 128) {
            return Err(Error::Invalid(format!(
                "attention: head_dim {} has no kernel (64 or 128)",
                self.head_dim
            )));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::Invalid(format!(
                "attention: {} query heads do not group over {} KV heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        to_i32(self.m * self.n_heads * self.head_dim)?;
        to_i32(self.n * self.n_kv_heads * self.head_dim)?;
        Ok(())
    }
}

/// An attention mask on the device.
pub enum DeviceMask {
    Causal {
        offset: i32,
    },
    Spans {
        span_ptr: CudaSlice<i32>,
        spans: CudaSlice<i32>,
        rows: usize,
    },
}

/// Running statistics of the chunked log-prob forward (one entry per row).
pub struct LogprobState {
    pub run_max: CudaSlice<f32>,
    pub run_sum: CudaSlice<f64>,
    pub run_zsum: CudaSlice<f64>,
    pub target_logit: CudaSlice<f32>,
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
    /// The int32 description of a paged attention call (`paged.rs`): the
    /// same for every layer of a step.
    pub(crate) paged_meta: Reused<i32>,
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
        // Past 48 KiB a kernel must opt in to its dynamic shared memory.
        for d in [64, 128] {
            for (kernel, names) in [
                (TcKernel::Fwd, vec!["attn_tc_fwd", "attn_tc_fwd_varlen"]),
                (TcKernel::Dq, vec!["attn_tc_bwd_dq"]),
                (TcKernel::Dkdv, vec!["attn_tc_bwd_dkdv"]),
            ] {
                for name in names {
                    let f = &funcs[&format!("{name}_d{d}")];
                    f.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        kernel.smem(d) as i32,
                    )
                    .map_err(cuda)?;
                }
            }
        }
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

    /// The attention kernels the wrappers launch (`IGPO_ATTENTION` at start).
    pub fn attention_kernels(&self) -> AttnKernels {
        self.attn
    }

    /// Switches the attention kernels (tests compare the two sets).
    pub fn set_attention_kernels(&mut self, attn: AttnKernels) {
        self.attn = attn;
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

    pub(crate) fn f(&self, name: &str) -> Result<&CudaFunction> {
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
    pub(crate) fn count_allocation(&self) {
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

    // ------------------------------------------------------------- norm.cu

    /// `out = rmsnorm(x) * w` per row; `rstd` (1/rms per row) when given.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        out: &mut CudaSlice<bf16>,
        rstd: Option<&mut CudaSlice<f32>>,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("rms_norm out", out, rows * d)?;
        check_len("rms_norm x", x, rows * d)?;
        check_len("rms_norm w", w, d)?;
        let (rows_i, d_i) = (to_i32(rows)?, to_i32(d)?);
        let f = self.f("rmsnorm_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out);
        match rstd {
            Some(r) => {
                check_len("rms_norm rstd", r, rows)?;
                b.arg(r)
            }
            None => b.arg(&NULL),
        };
        b.arg(x).arg(w).arg(&rows_i).arg(&d_i).arg(&eps);
        // SAFETY: lengths checked above; argument order as in norm.cu.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward of [`Kernels::rms_norm`]: writes `dx`, adds into `dw` (f32),
    /// deterministic (row chunks summed in order).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_backward(
        &self,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        dy: &CudaSlice<bf16>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        for (what, s) in [("x", x), ("dy", dy)] {
            check_len(&format!("rms_norm_backward {what}"), s, rows * d)?;
        }
        check_len("rms_norm_backward dx", dx, rows * d)?;
        check_len("rms_norm_backward w", w, d)?;
        check_len("rms_norm_backward dw", dw, d)?;
        let (rows_i, d_i) = (to_i32(rows)?, to_i32(d)?);
        let mut rstd = self.zeros::<f32>(rows)?;
        let f = self.f("rmsnorm_bwd_dx")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dx).arg(&mut rstd).arg(x).arg(w).arg(dy);
        b.arg(&rows_i).arg(&d_i).arg(&eps);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        self.rms_norm_dw(dw, x, dy, &rstd, rows, d)
    }

    /// `dw[d] += sum over rows of dy * x * rstd[row]` (rows `[rows, d]`),
    /// row chunks summed in order: deterministic.
    fn rms_norm_dw(
        &self,
        dw: &mut CudaSlice<f32>,
        x: &CudaSlice<bf16>,
        dy: &CudaSlice<bf16>,
        rstd: &CudaSlice<f32>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        let chunks = rows.div_ceil(COLSUM_ROWS).max(1);
        let mut partial = self.zeros::<f32>(chunks * d)?;
        let (rows_i, d_i, per) = (to_i32(rows)?, to_i32(d)?, to_i32(COLSUM_ROWS)?);
        let f = self.f("rmsnorm_bwd_dw_partial")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut partial).arg(x).arg(dy).arg(rstd);
        b.arg(&rows_i).arg(&d_i).arg(&per);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(ELEM_THREADS as usize) as u32, chunks as u32, 1),
            block_dim: (ELEM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: partial holds chunks * d; x, dy are rows * d (checked by
        // the callers), rstd rows.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        self.colsum(dw, &partial, chunks, d)
    }

    /// Qwen3's q_norm / k_norm: RMSNorm of each `head_dim`-wide head of `x`
    /// (`n` values, whole heads) with the shared weight `w[head_dim]`.
    pub fn head_rms_norm(
        &self,
        out: &mut CudaSlice<bf16>,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        n: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let heads = whole_heads("head_rms_norm", n, head_dim)?;
        check_len("head_rms_norm out", out, n)?;
        check_len("head_rms_norm x", x, n)?;
        check_len("head_rms_norm w", w, head_dim)?;
        let (g, d) = (to_i32(heads)?, to_i32(head_dim)?);
        let f = self.f("head_rmsnorm_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(x).arg(w).arg(&g).arg(&d).arg(&eps);
        // SAFETY: lengths checked above; argument order as in norm.cu.
        self.count_launch();
        unsafe { b.launch(heads_cfg(heads)) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward of [`Kernels::head_rms_norm`]: writes `dx`, adds into `dw`
    /// (f32, heads summed in order as chunks: deterministic).
    #[allow(clippy::too_many_arguments)]
    pub fn head_rms_norm_backward(
        &self,
        dx: &mut CudaSlice<bf16>,
        dw: &mut CudaSlice<f32>,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        dy: &CudaSlice<bf16>,
        n: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let heads = whole_heads("head_rms_norm_backward", n, head_dim)?;
        for (what, s) in [("x", x), ("dy", dy)] {
            check_len(&format!("head_rms_norm_backward {what}"), s, n)?;
        }
        check_len("head_rms_norm_backward dx", dx, n)?;
        check_len("head_rms_norm_backward w", w, head_dim)?;
        check_len("head_rms_norm_backward dw", dw, head_dim)?;
        let (g, d) = (to_i32(heads)?, to_i32(head_dim)?);
        let mut rstd = self.zeros::<f32>(heads)?;
        let f = self.f("head_rmsnorm_bwd_dx")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dx).arg(&mut rstd).arg(x).arg(w).arg(dy);
        b.arg(&g).arg(&d).arg(&eps);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(heads_cfg(heads)) }.map_err(cuda)?;
        // dw: one "row" per head.
        self.rms_norm_dw(dw, x, dy, &rstd, heads, head_dim)
    }

    /// `dst[c] += sum_k partial[k, c]`, chunks in order.
    fn colsum(
        &self,
        dst: &mut CudaSlice<f32>,
        partial: &CudaSlice<f32>,
        chunks: usize,
        d: usize,
    ) -> Result<()> {
        let (chunks_i, d_i) = (to_i32(chunks)?, to_i32(d)?);
        let f = self.f("colsum_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dst).arg(partial).arg(&chunks_i).arg(&d_i);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(ELEM_THREADS as usize) as u32, 1, 1),
            block_dim: (ELEM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: callers check dst (d) and partial (chunks * d).
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Bias gradient: `db[c] += sum_r dy[r, c]` (deterministic).
    pub fn bias_backward(
        &self,
        db: &mut CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        check_len("bias_backward dy", dy, rows * d)?;
        check_len("bias_backward db", db, d)?;
        let chunks = rows.div_ceil(COLSUM_ROWS).max(1);
        let mut partial = self.zeros::<f32>(chunks * d)?;
        let (rows_i, d_i, per) = (to_i32(rows)?, to_i32(d)?, to_i32(COLSUM_ROWS)?);
        let f = self.f("colsum_partial_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut partial).arg(dy).arg(&rows_i).arg(&d_i).arg(&per);
        let cfg = LaunchConfig {
            grid_dim: (d.div_ceil(ELEM_THREADS as usize) as u32, chunks as u32, 1),
            block_dim: (ELEM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        self.colsum(db, &partial, chunks, d)
    }

    /// `x += y` (bf16, f32 arithmetic).
    pub fn add_assign(&self, x: &mut CudaSlice<bf16>, y: &CudaSlice<bf16>, n: usize) -> Result<()> {
        check_len("add_assign x", x, n)?;
        check_len("add_assign y", y, n)?;
        let n_i = n as i64;
        let f = self.f("add_assign_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(y).arg(&n_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// `x *= s` on an f32 buffer (gradients).
    pub fn scale_f32(&self, x: &mut CudaSlice<f32>, s: f32, n: usize) -> Result<()> {
        check_len("scale x", x, n)?;
        let n_i = n as i64;
        let f = self.f("scale_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(&s).arg(&n_i);
        // SAFETY: length checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// Sum of squares of an f32 buffer, f64 accumulation, deterministic; the
    /// result stays on the device (`out[0]`).
    pub fn sum_squares(
        &self,
        out: &mut CudaSlice<f64>,
        x: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        check_len("sum_squares x", x, n)?;
        check_len("sum_squares out", out, 1)?;
        let cfg = elem_cfg(n);
        let blocks = cfg.grid_dim.0 as usize;
        let mut partial = self.zeros::<f64>(blocks)?;
        let n_i = n as i64;
        let f = self.f("sum_squares_partial")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut partial).arg(x).arg(&n_i);
        // SAFETY: partial has one slot per block.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        let count = to_i32(blocks)?;
        let f = self.f("sum_f64")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(&partial).arg(&count);
        // SAFETY: one block reads `blocks` partials.
        self.count_launch();
        unsafe { b.launch(rows_cfg(1, 1024)) }.map_err(cuda)?;
        Ok(())
    }

    /// `x += y` on f32 buffers.
    pub fn add_assign_f32(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        check_len("add_assign_f32 x", x, n)?;
        check_len("add_assign_f32 y", y, n)?;
        let n_i = n as i64;
        let f = self.f("add_assign_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(y).arg(&n_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// `x *= s` on a bf16 buffer.
    pub fn scale_bf16(&self, x: &mut CudaSlice<bf16>, s: f32, n: usize) -> Result<()> {
        check_len("scale_bf16 x", x, n)?;
        let n_i = n as i64;
        let f = self.f("scale_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(&s).arg(&n_i);
        // SAFETY: length checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// `out[r, c] += bias[c]` on a `[rows, cols]` bf16 matrix.
    pub fn add_bias(
        &self,
        out: &mut CudaSlice<bf16>,
        bias: &CudaSlice<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_len("add_bias out", out, rows * cols)?;
        check_len("add_bias bias", bias, cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("add_bias_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(bias).arg(&r).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }

    /// A new bf16 copy of the first `n` values of `x`.
    pub fn to_bf16(&self, x: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<bf16>> {
        check_len("to_bf16 x", x, n)?;
        let mut out = self.zeros::<bf16>(n)?;
        let n_i = n as i64;
        let f = self.f("cast_f32_to_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut out).arg(x).arg(&n_i);
        // SAFETY: both hold n values.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(out)
    }

    /// A new f32 copy of the first `n` values of `x`.
    pub fn to_f32(&self, x: &CudaSlice<bf16>, n: usize) -> Result<CudaSlice<f32>> {
        check_len("to_f32 x", x, n)?;
        let mut out = self.zeros::<f32>(n)?;
        let n_i = n as i64;
        let f = self.f("cast_bf16_to_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut out).arg(x).arg(&n_i);
        // SAFETY: both hold n values.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(out)
    }

    /// Rows `rows` of the `[_, cols]` matrix `x` (bf16 or f32: `kernel` is
    /// `gather_rows_bf16` or `gather_rows_f32`).
    fn gather<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        kernel: &str,
        x: &CudaSlice<T>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<T>> {
        let have = x.len() / cols.max(1);
        if let Some(r) = rows.iter().find(|&&r| r >= have) {
            return Err(Error::Invalid(format!(
                "gather_rows: row {r} of a {have}-row matrix"
            )));
        }
        let idx: Vec<i32> = rows.iter().map(|&r| to_i32(r)).collect::<Result<_>>()?;
        let idx_d = self.upload(if idx.is_empty() { &[0] } else { &idx })?;
        let mut out = self.zeros::<T>(rows.len() * cols)?;
        let (n, c) = (to_i32(rows.len())?, to_i32(cols)?);
        let f = self.f(kernel)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut out).arg(x).arg(&idx_d).arg(&n).arg(&c);
        // SAFETY: every row index checked against x.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows.len() * cols)) }.map_err(cuda)?;
        Ok(out)
    }

    pub fn gather_rows_bf16(
        &self,
        x: &CudaSlice<bf16>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<bf16>> {
        self.gather("gather_rows_bf16", x, rows, cols)
    }

    pub fn gather_rows_f32(
        &self,
        x: &CudaSlice<f32>,
        rows: &[usize],
        cols: usize,
    ) -> Result<CudaSlice<f32>> {
        self.gather("gather_rows_f32", x, rows, cols)
    }

    // ------------------------------------------------------------- rope.cu

    /// RoPE in place on `x[rows, cols]` (rotate-half), cos and sin times
    /// `scale` (yarn's attention factor, else 1); `backward` rotates back.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<bf16>,
        positions: &CudaSlice<i32>,
        inv_freq: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        head_dim: usize,
        scale: f32,
        backward: bool,
    ) -> Result<()> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) || !cols.is_multiple_of(head_dim) {
            return Err(Error::Invalid(format!(
                "rope: row of {cols} is not whole heads of even size {head_dim}"
            )));
        }
        check_len("rope x", x, rows * cols)?;
        check_len("rope positions", positions, rows)?;
        check_len("rope inv_freq", inv_freq, head_dim / 2)?;
        let (r, c, h) = (to_i32(rows)?, to_i32(cols)?, to_i32(head_dim)?);
        let sign: f32 = if backward { -1.0 } else { 1.0 };
        let f = self.f("rope_bf16")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(positions).arg(inv_freq);
        b.arg(&r).arg(&c).arg(&h).arg(&sign).arg(&scale);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols / 2)) }.map_err(cuda)?;
        Ok(())
    }

    // -------------------------------------------------------------- mlp.cu

    /// `out = silu(gate) * up` on `[rows, cols]` matrices.
    pub fn swiglu(
        &self,
        out: &mut CudaSlice<bf16>,
        gate: &CudaSlice<bf16>,
        up: &CudaSlice<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        for (what, s) in [("gate", gate), ("up", up)] {
            check_len(&format!("swiglu {what}"), s, rows * cols)?;
        }
        check_len("swiglu out", out, rows * cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("swiglu_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(gate).arg(up).arg(&r).arg(&c).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_backward(
        &self,
        dgate: &mut CudaSlice<bf16>,
        dup: &mut CudaSlice<bf16>,
        gate: &CudaSlice<bf16>,
        up: &CudaSlice<bf16>,
        dy: &CudaSlice<bf16>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        for (what, s) in [("gate", gate), ("up", up), ("dy", dy)] {
            check_len(&format!("swiglu_backward {what}"), s, rows * cols)?;
        }
        check_len("swiglu_backward dgate", dgate, rows * cols)?;
        check_len("swiglu_backward dup", dup, rows * cols)?;
        let (r, c) = (to_i32(rows)?, to_i32(cols)?);
        let f = self.f("swiglu_bwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dgate).arg(dup).arg(gate).arg(up).arg(dy);
        b.arg(&r).arg(&c).arg(&c);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows * cols)) }.map_err(cuda)?;
        Ok(())
    }

    // -------------------------------------------------------- embedding.cu

    pub fn embedding(
        &self,
        out: &mut CudaSlice<bf16>,
        table: &CudaSlice<bf16>,
        ids: &CudaSlice<i32>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        check_len("embedding out", out, n * d)?;
        check_len("embedding ids", ids, n)?;
        let (n_i, d_i) = (to_i32(n)?, to_i32(d)?);
        let f = self.f("embedding_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(table).arg(ids).arg(&n_i).arg(&d_i);
        // SAFETY: out/ids checked; ids < vocab is the caller's contract
        // (checked on the host when the ids are made).
        self.count_launch();
        unsafe { b.launch(elem_cfg(n * d)) }.map_err(cuda)?;
        Ok(())
    }

    /// `dtable[ids[r]] += dy[r]` in row order per id (deterministic).
    pub fn embedding_backward(
        &self,
        dtable: &mut CudaSlice<f32>,
        dy: &CudaSlice<bf16>,
        ids: &[u32],
        vocab: usize,
        d: usize,
    ) -> Result<()> {
        let groups = EmbeddingGroups::new(ids, vocab)?;
        check_len("embedding_backward dtable", dtable, vocab * d)?;
        check_len("embedding_backward dy", dy, ids.len() * d)?;
        if groups.ids.is_empty() {
            return Ok(());
        }
        let uniq = self.upload(&groups.ids)?;
        let starts = self.upload(&groups.starts)?;
        let rows = self.upload(&groups.rows)?;
        let (g, d_i) = (to_i32(groups.ids.len())?, to_i32(d)?);
        let f = self.f("embedding_bwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dtable).arg(dy).arg(&uniq).arg(&starts).arg(&rows);
        b.arg(&g).arg(&d_i);
        // SAFETY: ids checked against vocab by EmbeddingGroups.
        self.count_launch();
        unsafe { b.launch(rows_cfg(groups.ids.len(), ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    // -------------------------------------------------------- optimizer.cu

    /// One fused AdamW step on f32 master weights; refreshes the bf16 copy
    /// when given. `scale_dev` (one f32 on the device, e.g. from
    /// `clip_factor`) multiplies `grad_scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        master: &mut CudaSlice<f32>,
        param_bf16: Option<&mut CudaSlice<bf16>>,
        grad: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        scale_dev: Option<&CudaSlice<f32>>,
        n: usize,
        st: &AdamW,
    ) -> Result<()> {
        check_len("adamw master", master, n)?;
        check_len("adamw grad", grad, n)?;
        check_len("adamw m", m, n)?;
        check_len("adamw v", v, n)?;
        let n_i = n as i64;
        let f = self.f("adamw_step")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(master);
        match param_bf16 {
            Some(p) => {
                check_len("adamw param_bf16", p, n)?;
                b.arg(p)
            }
            None => b.arg(&NULL),
        };
        b.arg(grad).arg(m).arg(v);
        match scale_dev {
            Some(s) => {
                check_len("adamw scale_dev", s, 1)?;
                b.arg(s)
            }
            None => b.arg(&NULL),
        };
        b.arg(&n_i)
            .arg(&st.lr)
            .arg(&st.beta1)
            .arg(&st.beta2)
            .arg(&st.eps)
            .arg(&st.weight_decay)
            .arg(&st.bias_correction1)
            .arg(&st.bias_correction2)
            .arg(&st.grad_scale);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(n)) }.map_err(cuda)?;
        Ok(())
    }

    /// Global-norm clipping with nothing read back: the squared norm of each
    /// of `grads` (`(buffer, length)`) into its own slot, their sum in slot
    /// order, then [`Kernels::clip_factor`]: `scale` = avg x clip factor (what
    /// `adamw`'s `scale_dev` takes), `norm` = the pre-clip norm. 2 launches
    /// per gradient + 2; one scratch buffer for the per-block partials, reused
    /// in stream order.
    pub fn clip_scale(
        &self,
        grads: &[(&CudaSlice<f32>, usize)],
        avg: f64,
        max_norm: f64,
        scale: &mut CudaSlice<f32>,
        norm: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let mut slots = self.zeros::<f64>(grads.len())?;
        let most_blocks = grads
            .iter()
            .map(|&(_, n)| elem_cfg(n).grid_dim.0 as usize)
            .max()
            .unwrap_or(1);
        let mut partial = self.zeros::<f64>(most_blocks)?;
        for (i, &(g, n)) in grads.iter().enumerate() {
            check_len("clip_scale grad", g, n)?;
            if n == 0 {
                continue; // its slot stays 0
            }
            let cfg = elem_cfg(n);
            let n_i = n as i64;
            let f = self.f("sum_squares_partial")?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut partial).arg(g).arg(&n_i);
            // SAFETY: `partial` has a slot for every block of the largest gradient.
            self.count_launch();
            unsafe { b.launch(cfg) }.map_err(cuda)?;
            let count = to_i32(cfg.grid_dim.0 as usize)?;
            let mut slot = slots.slice_mut(i..i + 1);
            let f = self.f("sum_f64")?;
            let mut b = self.stream.launch_builder(f);
            b.arg(&mut slot).arg(&partial).arg(&count);
            // SAFETY: one block reads `count` partials, writes one slot.
            self.count_launch();
            unsafe { b.launch(rows_cfg(1, 1024)) }.map_err(cuda)?;
        }
        let mut total = self.zeros::<f64>(1)?;
        let count = to_i32(grads.len())?;
        let f = self.f("sum_f64")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut total).arg(&slots).arg(&count);
        // SAFETY: one block reads the `grads.len()` slots.
        self.count_launch();
        unsafe { b.launch(rows_cfg(1, 1024)) }.map_err(cuda)?;
        self.clip_factor(scale, Some(norm), &total, avg, max_norm)
    }

    /// Gradient scale on the device from the summed squares (see optimizer.cu).
    pub fn clip_factor(
        &self,
        out: &mut CudaSlice<f32>,
        norm_out: Option<&mut CudaSlice<f64>>,
        sumsq: &CudaSlice<f64>,
        avg: f64,
        max_norm: f64,
    ) -> Result<()> {
        check_len("clip_factor out", out, 1)?;
        check_len("clip_factor sumsq", sumsq, 1)?;
        let f = self.f("clip_factor")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out);
        match norm_out {
            Some(n) => b.arg(n),
            None => b.arg(&NULL),
        };
        b.arg(sumsq).arg(&avg).arg(&max_norm);
        // SAFETY: one thread, lengths checked.
        self.count_launch();
        unsafe { b.launch(rows_cfg(1, 32)) }.map_err(cuda)?;
        Ok(())
    }

    // ---------------------------------------------------------- logprob.cu

    pub fn logprob_state(&self, rows: usize) -> Result<LogprobState> {
        let mut st = LogprobState {
            run_max: self.zeros(rows)?,
            run_sum: self.zeros(rows)?,
            run_zsum: self.zeros(rows)?,
            target_logit: self.zeros(rows)?,
        };
        let r = to_i32(rows)?;
        let f = self.f("logprob_init")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut st.run_max)
            .arg(&mut st.run_sum)
            .arg(&mut st.run_zsum)
            .arg(&mut st.target_logit)
            .arg(&r);
        // SAFETY: every buffer has `rows` entries.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows)) }.map_err(cuda)?;
        Ok(st)
    }

    /// Folds the logits `z[rows, c]` of vocabulary ids `lo..lo + c` into `st`.
    pub fn logprob_chunk(
        &self,
        st: &mut LogprobState,
        z: &CudaSlice<f32>,
        targets: &CudaSlice<i32>,
        rows: usize,
        c: usize,
        lo: usize,
    ) -> Result<()> {
        check_len("logprob z", z, rows * c)?;
        check_len("logprob targets", targets, rows)?;
        check_len("logprob state", &st.run_max, rows)?;
        let (r, c_i, lo_i) = (to_i32(rows)?, to_i32(c)?, to_i32(lo)?);
        let f = self.f("logprob_chunk_fwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut st.run_max)
            .arg(&mut st.run_sum)
            .arg(&mut st.run_zsum)
            .arg(&mut st.target_logit)
            .arg(z)
            .arg(targets)
            .arg(&r)
            .arg(&c_i)
            .arg(&c_i)
            .arg(&lo_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    /// `logp`, `lse` and optionally the entropy from the final state; counts
    /// rows whose log-prob was positive or non-finite into `violations[0]`.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_finalize(
        &self,
        logp: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        entropy: Option<&mut CudaSlice<f32>>,
        violations: &mut CudaSlice<i32>,
        st: &LogprobState,
        rows: usize,
    ) -> Result<()> {
        check_len("logprob logp", logp, rows)?;
        check_len("logprob lse", lse, rows)?;
        check_len("logprob violations", violations, 1)?;
        check_len("logprob state", &st.run_max, rows)?;
        let r = to_i32(rows)?;
        let f = self.f("logprob_finalize")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(logp).arg(lse);
        match entropy {
            Some(e) => {
                check_len("logprob entropy", e, rows)?;
                b.arg(e)
            }
            None => b.arg(&NULL),
        };
        b.arg(violations)
            .arg(&st.run_max)
            .arg(&st.run_sum)
            .arg(&st.run_zsum)
            .arg(&st.target_logit)
            .arg(&r);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(elem_cfg(rows)) }.map_err(cuda)?;
        Ok(())
    }

    /// `dz[rows, c]` (bf16) of chunk `lo` from its recomputed logits `z`.
    #[allow(clippy::too_many_arguments)]
    pub fn logprob_chunk_backward(
        &self,
        dz: &mut CudaSlice<bf16>,
        z: &CudaSlice<f32>,
        targets: &CudaSlice<i32>,
        lse: &CudaSlice<f32>,
        dlogp: &CudaSlice<f32>,
        entropy: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        rows: usize,
        c: usize,
        lo: usize,
    ) -> Result<()> {
        check_len("logprob_backward dz", dz, rows * c)?;
        check_len("logprob_backward z", z, rows * c)?;
        for (what, s) in [("lse", lse), ("dlogp", dlogp)] {
            check_len(&format!("logprob_backward {what}"), s, rows)?;
        }
        check_len("logprob_backward targets", targets, rows)?;
        let (r, c_i, lo_i) = (to_i32(rows)?, to_i32(c)?, to_i32(lo)?);
        let f = self.f("logprob_chunk_bwd")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dz).arg(z).arg(targets).arg(lse).arg(dlogp);
        match entropy {
            Some((e, de)) => {
                check_len("logprob_backward entropy", e, rows)?;
                check_len("logprob_backward dentropy", de, rows)?;
                b.arg(e).arg(de)
            }
            None => b.arg(&NULL).arg(&NULL),
        };
        b.arg(&r).arg(&c_i).arg(&c_i).arg(&c_i).arg(&lo_i);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    // --------------------------------------------------------- sampling.cu

    /// One token per row of `logits[rows, vocab]`; `uniforms[r]` in [0, 1)
    /// from the host's seeded Rng. `out[r]` = the id sampled from row `r`,
    /// `out_logprob[r]` its log-probability under softmax(logits /
    /// temperature) over the whole row.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        out: &mut CudaSlice<i32>,
        out_logprob: &mut CudaSlice<f32>,
        logits: &CudaSlice<f32>,
        uniforms: &CudaSlice<f64>,
        rows: usize,
        vocab: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
    ) -> Result<()> {
        check_len("sample out", out, rows)?;
        check_len("sample out_logprob", out_logprob, rows)?;
        check_len("sample logits", logits, rows * vocab)?;
        check_len("sample uniforms", uniforms, rows)?;
        let (r, v) = (to_i32(rows)?, to_i32(vocab)?);
        let k = to_i32(top_k.min(vocab))?;
        let f = self.f("sample_rows")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(out_logprob).arg(logits).arg(uniforms);
        b.arg(&r)
            .arg(&v)
            .arg(&v)
            .arg(&temperature)
            .arg(&k)
            .arg(&top_p);
        // SAFETY: lengths checked above.
        self.count_launch();
        unsafe { b.launch(rows_cfg(rows, SAMPLE_THREADS)) }.map_err(cuda)?;
        Ok(())
    }

    // -------------------------------------------------------- attention.cu

    /// A mask on the device for `m` query rows over `n` keys.
    pub fn mask(&self, mask: &MaskArgs) -> Result<DeviceMask> {
        Ok(match mask {
            MaskArgs::Causal { offset } => DeviceMask::Causal { offset: *offset },
            MaskArgs::Spans { span_ptr, spans } => DeviceMask::Spans {
                span_ptr: self.upload(span_ptr)?,
                spans: self.upload(if spans.is_empty() { &[0, 0] } else { spans })?,
                rows: span_ptr.len() - 1,
            },
        })
    }

    fn mask_args(mask: &DeviceMask, m: usize, n: usize) -> Result<(i32, i32)> {
        match mask {
            DeviceMask::Causal { offset } if *offset < 0 || *offset as usize + m > n => {
                Err(Error::Invalid(format!(
                    "attention: causal mask after {offset} cached keys needs {} keys, got {n}",
                    *offset as i64 + m as i64
                )))
            }
            DeviceMask::Causal { offset } => Ok((1, *offset)),
            DeviceMask::Spans { rows, .. } if *rows != m => Err(Error::Invalid(format!(
                "attention: mask has {rows} rows, the query {m}"
            ))),
            DeviceMask::Spans { .. } => Ok((0, 0)),
        }
    }

    fn attn_grid(rows: usize, heads: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.div_ceil(ATT_ROWS).max(1) as u32, heads as u32, 1),
            block_dim: (ATT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Forward attention: `out[m, H*D]` and `lse[m, H]`. Causal masks go
    /// through the varlen kernel (see [`Kernels::attention_varlen`]), span
    /// masks through `attn_tc_fwd_*` (`attn_fwd_*` with [`AttnKernels::Scalar`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        dims: AttnDims,
        mask: &DeviceMask,
    ) -> Result<()> {
        dims.check()?;
        let (qn, kn) = (
            dims.m * dims.n_heads * dims.head_dim,
            dims.n * dims.n_kv_heads * dims.head_dim,
        );
        check_len("attention q", q, qn)?;
        check_len("attention out", out, qn)?;
        check_len("attention k", k, kn)?;
        check_len("attention v", v, kn)?;
        check_len("attention lse", lse, dims.m * dims.n_heads)?;
        let (causal, offset) = Self::mask_args(mask, dims.m, dims.n)?;
        if causal == 1 {
            // Every causal forward (prefill, training, decode) runs the one
            // varlen kernel, so a row gets the same bits in all of them.
            let (kp, _k_read) = k.device_ptr(&self.stream);
            let (vp, _v_read) = v.device_ptr(&self.stream);
            let (kd, vd) = (self.upload(&[kp])?, self.upload(&[vp])?);
            return self.attention_varlen(
                out,
                lse,
                q,
                &kd,
                &vd,
                &[dims.m],
                &[offset as usize + dims.m],
                dims.n_heads,
                dims.n_kv_heads,
                dims.head_dim,
            );
        }
        let tc = self.attn == AttnKernels::TensorCore;
        let name = if tc {
            format!("attn_tc_fwd_d{}", dims.head_dim)
        } else {
            format!("attn_fwd_d{}", dims.head_dim)
        };
        let f = self.f(&name)?;
        let ints = [
            to_i32(dims.m)?,
            to_i32(dims.n)?,
            to_i32(dims.n_heads)?,
            to_i32(dims.n_kv_heads)?,
        ];
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(lse).arg(q).arg(k).arg(v);
        for i in &ints {
            b.arg(i);
        }
        b.arg(&causal).arg(&offset);
        push_spans(&mut b, mask);
        let cfg = if tc {
            TcKernel::Fwd.config(dims.m.div_ceil(TC_BQ), dims.n_heads, 1, dims.head_dim)
        } else {
            Self::attn_grid(dims.m, dims.n_heads)
        };
        // SAFETY: lengths and head size checked above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Backward attention: `dq`, `dk`, `dv` (overwritten, bf16).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &self,
        dq: &mut CudaSlice<bf16>,
        dk: &mut CudaSlice<bf16>,
        dv: &mut CudaSlice<bf16>,
        q: &CudaSlice<bf16>,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        out: &CudaSlice<bf16>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<bf16>,
        dims: AttnDims,
        mask: &DeviceMask,
    ) -> Result<()> {
        dims.check()?;
        let (qn, kn) = (
            dims.m * dims.n_heads * dims.head_dim,
            dims.n * dims.n_kv_heads * dims.head_dim,
        );
        for (what, s) in [("q", q), ("out", out), ("dout", dout)] {
            check_len(&format!("attention_backward {what}"), s, qn)?;
        }
        for (what, s) in [("k", k), ("v", v)] {
            check_len(&format!("attention_backward {what}"), s, kn)?;
        }
        check_len("attention_backward dq", dq, qn)?;
        check_len("attention_backward dk", dk, kn)?;
        check_len("attention_backward dv", dv, kn)?;
        check_len("attention_backward lse", lse, dims.m * dims.n_heads)?;
        let (causal, offset) = Self::mask_args(mask, dims.m, dims.n)?;
        let ints = [
            to_i32(dims.m)?,
            to_i32(dims.n)?,
            to_i32(dims.n_heads)?,
            to_i32(dims.n_kv_heads)?,
        ];
        let rows_heads = dims.m * dims.n_heads;
        let mut delta = self.zeros::<f32>(rows_heads)?;
        let (m_i, h_i, d_i) = (ints[0], ints[2], to_i32(dims.head_dim)?);
        let f = self.f("attn_bwd_delta")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut delta)
            .arg(out)
            .arg(dout)
            .arg(&m_i)
            .arg(&h_i)
            .arg(&d_i);
        let warps_per_block = 8usize;
        let cfg = LaunchConfig {
            grid_dim: (rows_heads.div_ceil(warps_per_block).max(1) as u32, 1, 1),
            block_dim: (32 * warps_per_block as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one warp per (row, head); lengths checked above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;

        let (tc, d) = (self.attn == AttnKernels::TensorCore, dims.head_dim);
        let prefix = if tc { "attn_tc" } else { "attn" };
        let f = self.f(&format!("{prefix}_bwd_dkdv_d{d}"))?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut *dk)
            .arg(&mut *dv)
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(dout)
            .arg(lse)
            .arg(&delta);
        for i in &ints {
            b.arg(i);
        }
        b.arg(&causal).arg(&offset);
        push_spans(&mut b, mask);
        let cfg = if tc {
            TcKernel::Dkdv.config(dims.n.div_ceil(TC_BK), dims.n_kv_heads, 1, d)
        } else {
            Self::attn_grid(dims.n, dims.n_kv_heads)
        };
        // SAFETY: as above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;

        let f = self.f(&format!("{prefix}_bwd_dq_d{d}"))?;
        let mut b = self.stream.launch_builder(f);
        b.arg(dq)
            .arg(q)
            .arg(k)
            .arg(v)
            .arg(dout)
            .arg(lse)
            .arg(&delta);
        for i in &ints {
            b.arg(i);
        }
        b.arg(&causal).arg(&offset);
        push_spans(&mut b, mask);
        let cfg = if tc {
            TcKernel::Dq.config(dims.m.div_ceil(TC_BQ), dims.n_heads, 1, d)
        } else {
            Self::attn_grid(dims.m, dims.n_heads)
        };
        // SAFETY: as above.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Forward over several sequences at once, each with its own KV cache
    /// (`k_ptrs`, `v_ptrs`: device addresses of `[keys[b], KV*D]` bf16) and
    /// its `rows[b]` query rows packed in `q` (the last positions of the
    /// sequence: decode when 1, a prefill chunk otherwise). Each row's numbers
    /// are bit for bit those of [`Kernels::attention`] on that sequence alone.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_varlen(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        k_ptrs: &CudaSlice<u64>,
        v_ptrs: &CudaSlice<u64>,
        rows: &[usize],
        keys: &[usize],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let batch = VarlenBatch::new(self, rows, keys, n_heads, n_kv_heads, head_dim)?;
        check_len("attention_varlen q", q, batch.total * n_heads * head_dim)?;
        check_len("attention_varlen k_ptrs", k_ptrs, rows.len())?;
        check_len("attention_varlen v_ptrs", v_ptrs, rows.len())?;
        self.launch_varlen(out, lse, q, k_ptrs, v_ptrs, &batch)
    }

    /// Decode and batched prefill of many sequences in two launches: appends
    /// sequence `b`'s `rows[b]` new key and value rows (packed in `k_new`,
    /// `v_new` `[sum rows, KV*D]`) to its cache at device addresses
    /// `k_ptrs[b]`, `v_ptrs[b]`, which hold `keys[b] - rows[b]` rows and
    /// capacity for `keys[b]`, then runs [`Kernels::attention_varlen`] over
    /// every sequence. A per-sequence loop costs ~6 launches per sequence
    /// and layer (slices, two appends, attention, concat); this costs two
    /// plus four small uploads whatever the batch.
    ///
    /// # Safety
    /// `k_ptrs[b]` and `v_ptrs[b]` must be live bf16 device buffers of this
    /// context with room for `keys[b] * KV*D` elements, holding the
    /// sequence's cached rows, and nothing else may use them until the
    /// launches are done: the kernel writes through these raw addresses.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn cached_attention(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        k_new: &CudaSlice<bf16>,
        v_new: &CudaSlice<bf16>,
        k_ptrs: &[u64],
        v_ptrs: &[u64],
        rows: &[usize],
        keys: &[usize],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let batch = VarlenBatch::new(self, rows, keys, n_heads, n_kv_heads, head_dim)?;
        if k_ptrs.len() != rows.len() || v_ptrs.len() != rows.len() {
            return Err(Error::Invalid(format!(
                "cached_attention: {} sequences but {} key and {} value caches",
                rows.len(),
                k_ptrs.len(),
                v_ptrs.len()
            )));
        }
        let kc = n_kv_heads * head_dim;
        check_len("cached_attention q", q, batch.total * n_heads * head_dim)?;
        // Every check before the first launch: a failed call leaves the
        // caches untouched.
        check_len(
            "cached_attention out",
            out,
            batch.total * n_heads * head_dim,
        )?;
        check_len("cached_attention lse", lse, batch.total * n_heads)?;
        check_len("cached_attention k_new", k_new, batch.total * kc)?;
        check_len("cached_attention v_new", v_new, batch.total * kc)?;
        let (kd, vd) = (self.upload(k_ptrs)?, self.upload(v_ptrs)?);
        let (b_count, cols) = (to_i32(rows.len())?, to_i32(kc)?);
        let f = self.f("kv_append")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&kd).arg(&vd).arg(&*batch.starts).arg(&*batch.n_keys);
        b.arg(k_new).arg(v_new).arg(&b_count).arg(&cols);
        // SAFETY: lengths checked; the caller promised `keys[b]` rows behind
        // each pointer (the kernel writes rows keys[b] - rows[b] .. keys[b]).
        self.count_launch();
        unsafe { b.launch(elem_cfg(batch.total * kc)) }.map_err(cuda)?;
        self.launch_varlen(out, lse, q, &kd, &vd, &batch)
    }

    fn launch_varlen(
        &self,
        out: &mut CudaSlice<bf16>,
        lse: &mut CudaSlice<f32>,
        q: &CudaSlice<bf16>,
        k_ptrs: &CudaSlice<u64>,
        v_ptrs: &CudaSlice<u64>,
        batch: &VarlenBatch,
    ) -> Result<()> {
        let d = batch.dims;
        check_len(
            "attention_varlen out",
            out,
            batch.total * d.n_heads * d.head_dim,
        )?;
        check_len("attention_varlen lse", lse, batch.total * d.n_heads)?;
        let (h, kv) = (to_i32(d.n_heads)?, to_i32(d.n_kv_heads)?);
        let tc = self.attn == AttnKernels::TensorCore;
        let name = if tc {
            format!("attn_tc_fwd_varlen_d{}", d.head_dim)
        } else {
            format!("attn_fwd_varlen_d{}", d.head_dim)
        };
        let f = self.f(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out).arg(lse).arg(q).arg(k_ptrs).arg(v_ptrs);
        b.arg(&*batch.starts).arg(&*batch.n_keys).arg(&h).arg(&kv);
        let cfg = if tc {
            let blocks = batch.max_rows.div_ceil(TC_BQ);
            TcKernel::Fwd.config(blocks, d.n_heads, batch.count, d.head_dim)
        } else {
            LaunchConfig {
                grid_dim: (
                    batch.max_rows.div_ceil(ATT_ROWS).max(1) as u32,
                    d.n_heads as u32,
                    batch.count as u32,
                ),
                block_dim: (ATT_THREADS, 1, 1),
                shared_mem_bytes: 0,
            }
        };
        // SAFETY: lengths checked; the caller's pointers describe live caches.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }

    /// Decode: one query per sequence over its own KV cache. `k_ptrs`,
    /// `v_ptrs` hold the device addresses of each sequence's cache
    /// (`[lens[b], KV*D]` bf16), `lens` their lengths.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        out: &mut CudaSlice<bf16>,
        q: &CudaSlice<bf16>,
        k_ptrs: &CudaSlice<u64>,
        v_ptrs: &CudaSlice<u64>,
        lens: &CudaSlice<i32>,
        batch: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        AttnDims {
            m: batch,
            n: 0,
            n_heads,
            n_kv_heads,
            head_dim,
        }
        .check()?;
        check_len("decode q", q, batch * n_heads * head_dim)?;
        check_len("decode out", out, batch * n_heads * head_dim)?;
        for (what, s) in [("k_ptrs", k_ptrs), ("v_ptrs", v_ptrs)] {
            check_len(&format!("decode {what}"), s, batch)?;
        }
        check_len("decode lens", lens, batch)?;
        let (h, kv) = (to_i32(n_heads)?, to_i32(n_kv_heads)?);
        let name = format!("attn_decode_d{head_dim}");
        let f = self.f(&name)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out)
            .arg(q)
            .arg(k_ptrs)
            .arg(v_ptrs)
            .arg(lens)
            .arg(&h)
            .arg(&kv);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the caller's pointers and lengths describe live caches.
        self.count_launch();
        unsafe { b.launch(cfg) }.map_err(cuda)?;
        Ok(())
    }
}

/// The per-sequence geometry of a varlen launch, checked and on the device.
struct VarlenBatch {
    count: usize,
    total: usize,
    max_rows: usize,
    dims: AttnDims,
    /// q_start: `count + 1` prefix sums of the row counts.
    starts: Arc<CudaSlice<i32>>,
    n_keys: Arc<CudaSlice<i32>>,
}

impl VarlenBatch {
    fn new(
        k: &Kernels,
        rows: &[usize],
        keys: &[usize],
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Result<VarlenBatch> {
        if rows.len() != keys.len() || rows.is_empty() {
            return Err(Error::Invalid(format!(
                "attention_varlen: {} row counts for {} key counts",
                rows.len(),
                keys.len()
            )));
        }
        if let Some(b) = (0..rows.len()).find(|&b| rows[b] > keys[b]) {
            return Err(Error::Invalid(format!(
                "attention_varlen: sequence {b} has {} query rows but {} keys",
                rows[b], keys[b]
            )));
        }
        let total: usize = rows.iter().sum();
        let dims = AttnDims {
            m: total,
            n: keys.iter().copied().max().unwrap_or(0),
            n_heads,
            n_kv_heads,
            head_dim,
        };
        dims.check()?;
        let mut starts = vec![0i32];
        for &r in rows {
            starts.push(starts.last().copied().unwrap_or(0) + to_i32(r)?);
        }
        let n_keys: Vec<i32> = keys.iter().map(|&n| to_i32(n)).collect::<Result<_>>()?;
        Ok(VarlenBatch {
            count: rows.len(),
            total,
            max_rows: rows.iter().copied().max().unwrap_or(1),
            dims,
            starts: k.varlen_starts.get(k, &starts)?,
            n_keys: k.varlen_keys.get(k, &n_keys)?,
        })
    }
}

fn push_spans<'a>(b: &mut cudarc::driver::LaunchArgs<'a>, mask: &'a DeviceMask) {
    match mask {
        DeviceMask::Causal { .. } => {
            b.arg(&NULL).arg(&NULL);
        }
        DeviceMask::Spans {
            span_ptr, spans, ..
        } => {
            b.arg(span_ptr).arg(spans);
        }
    }
}
