//! Host tensors: a shape and row-major `f32` data.
//!
//! This is the CPU backend's storage and the exchange format between the model
//! loader and every backend (a device backend uploads from / downloads to it).
//! On-disk dtypes (bf16, f16) are converted at load time, see [`DType`].

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Element types found in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name `config.json`'s `torch_dtype` gives it.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    /// `bf16`, `f16` or `f32` (what `Display` writes).
    pub fn parse(name: &str) -> Option<DType> {
        match name {
            "bf16" => Some(DType::BF16),
            "f16" => Some(DType::F16),
            "f32" => Some(DType::F32),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// A dense row-major f32 tensor on the host.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
    /// A value computed from `data` and kept beside it (the CPU backend's
    /// packed weights: see [`Tensor::derived`]); reset by every method that
    /// can change `data` or `shape`.
    derived: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data == other.data
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::from_parts(shape.to_vec(), vec![0.0; shape.iter().product()])
    }

    /// Panics when `data.len()` does not match the shape: a programming error,
    /// never a user-input one (loaders check shapes before building tensors).
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Tensor {
        let n: usize = shape.iter().product();
        assert_eq!(n, data.len(), "tensor data does not match shape {shape:?}");
        Tensor::from_parts(shape.to_vec(), data)
    }

    fn from_parts(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data,
            derived: OnceLock::new(),
        }
    }

    /// `make(self)`, computed once and kept until the tensor changes: the
    /// CPU backend packs a weight matrix for its GEMM kernel this way, once
    /// per value of the weights (an optimizer step, which changes them
    /// through [`Tensor::data_mut`], drops the packed copy). One kind of
    /// value per tensor: asking for another type computes it afresh, uncached.
    pub fn derived<T: Any + Send + Sync>(&self, make: impl FnOnce(&Tensor) -> T) -> Arc<T> {
        let mut make = Some(make);
        let kept = self
            .derived
            .get_or_init(|| Arc::new((make.take().expect("called once"))(self)));
        match kept.clone().downcast::<T>() {
            Ok(value) => value,
            Err(_) => Arc::new((make.take().expect("not yet called"))(self)),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        self.derived = OnceLock::new();
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of rows when viewed as a matrix `[rows, last_dim]`.
    pub fn rows(&self) -> usize {
        if self.shape.is_empty() {
            1
        } else {
            self.numel() / self.cols().max(1)
        }
    }

    /// Size of the last dimension.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn row(&self, r: usize) -> &[f32] {
        let c = self.cols();
        &self.data[r * c..(r + 1) * c]
    }

    /// Appends the rows of `other` (same number of columns) to this matrix.
    pub fn append_rows(&mut self, other: &Tensor) {
        assert_eq!(self.cols(), other.cols(), "append_rows: column mismatch");
        self.derived = OnceLock::new();
        self.data.extend_from_slice(&other.data);
        let rows = self.data.len() / self.cols().max(1);
        self.shape = vec![rows, self.cols()];
    }

    /// Reinterprets the data with a new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape to {shape:?}"
        );
        self.shape = shape.to_vec();
        self.derived = OnceLock::new();
        self
    }
}

/// Converts raw little-endian bytes of `dtype` into f32 values.
pub fn decode_le(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// Encodes f32 values as little-endian bytes of `dtype` (round to nearest even).
pub fn encode_le(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size_of());
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_is_exact_for_representable_values() {
        let v = vec![1.0, -2.5, 0.15625, 2f32.powi(100), -0.0];
        let back = decode_le(&encode_le(&v, DType::BF16), DType::BF16);
        assert_eq!(back, v);
    }

    #[test]
    fn append_rows_grows_matrix() {
        let mut a = Tensor::from_vec(&[1, 2], vec![1.0, 2.0]);
        a.append_rows(&Tensor::from_vec(&[2, 2], vec![3.0, 4.0, 5.0, 6.0]));
        assert_eq!(a.shape(), &[3, 2]);
        assert_eq!(a.row(2), &[5.0, 6.0]);
    }

    /// A derived value is computed once per value of the tensor: kept across
    /// calls and clones, recomputed after any change.
    #[test]
    fn derived_values_follow_the_data() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let sum = |t: &Tensor| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.data().iter().sum::<f32>()
        };
        let mut a = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(*a.derived(sum), 10.0);
        assert_eq!(*a.derived(sum), 10.0);
        assert_eq!(*a.clone().derived(sum), 10.0);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        a.data_mut()[0] = 5.0;
        assert_eq!(*a.derived(sum), 14.0);
        a.append_rows(&Tensor::from_vec(&[1, 2], vec![1.0, 1.0]));
        assert_eq!(*a.derived(sum), 16.0);
        let a = a.reshape(&[6]);
        assert_eq!(*a.derived(sum), 16.0);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 4);
        // Another type is computed afresh, and the kept value stays.
        assert_eq!(*a.derived(|t| t.numel()), 6);
        assert_eq!(*a.derived(sum), 16.0);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 4);
    }
}
