//! Tensors over device buffers, the `Backend` trait and its CPU and CUDA implementations.
//! Empty for now: the CPU engine issue fills it (see docs/ARCHITECTURE.md).
