//! Launch wrappers of `cu/embedding.cu`: the embedding lookup and its
//! deterministic backward.

use cudarc::driver::{CudaSlice, PushKernelArg};
use half::bf16;

use super::{check_len, cuda, elem_cfg, rows_cfg, Kernels, ROW_THREADS};
use crate::host::{to_i32, EmbeddingGroups};
use crate::Result;

impl Kernels {
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
}
