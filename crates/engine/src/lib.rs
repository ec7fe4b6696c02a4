//! Sequences, the sampling chain, speculative decoding and the batching scheduler.
//! Empty for now: the CPU engine and server issues fill it.
