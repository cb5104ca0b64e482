//! Loading the kernels into a CUDA context (filled in below).
