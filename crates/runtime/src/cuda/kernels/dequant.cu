// Dequantization (needs prelude + quant.cuh): weight rows to f16 tiles for the cuBLAS GEMM
// of the prompt path, embedding rows (get rows) to f32, and f32 activations to f16.
//
// deq_f16_<type>:  rows [row0, row0 + nrows) of W to out (nrows × ncols f16, row-major).
//                  Grid (ceil(ncols / 32 / 128), nrows), block 128: a thread per 32 values.
// get_rows_<type>: row ids[t] of W to out[t] (f32, out_stride apart). Grid
//                  (ceil(ncols / 32 / 128), tokens), block 128.
// f32_to_f16:      n rows of ncols, strided, to a dense f16 matrix. Grid (ceil(ncols/256),
//                  rows), block 256.

template <class T>
static __device__ __forceinline__ void deq_f16(const u8* __restrict__ w, i64 row_bytes,
                                               u16* __restrict__ out, int ncols, int row0) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= ncols / 32) return;
    const int r = blockIdx.y;
    float y[32];
    T::deq(w + (i64)(row0 + r) * row_bytes, k, y);
    u16* o = out + (i64)r * ncols + 32 * k;
#pragma unroll
    for (int l = 0; l < 32; ++l) o[l] = f32_to_f16(y[l]);
}

template <class T>
static __device__ __forceinline__ void get_rows(const u8* __restrict__ w, i64 row_bytes,
                                                const u32* __restrict__ ids,
                                                float* __restrict__ out, int out_stride,
                                                int ncols) {
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= ncols / 32) return;
    const int t = blockIdx.y;
    float y[32];
    T::deq(w + (i64)ids[t] * row_bytes, k, y);
    float* o = out + (i64)t * out_stride + 32 * k;
#pragma unroll
    for (int l = 0; l < 32; ++l) o[l] = y[l];
}

#define DEQ(NAME, T)                                                                        \
    extern "C" __global__ void deq_f16_##NAME(const u8* w, i64 row_bytes, u16* out,        \
                                              int ncols, int row0) {                       \
        deq_f16<T>(w, row_bytes, out, ncols, row0);                                        \
    }                                                                                       \
    extern "C" __global__ void get_rows_##NAME(const u8* w, i64 row_bytes, const u32* ids, \
                                               float* out, int out_stride, int ncols) {    \
        get_rows<T>(w, row_bytes, ids, out, out_stride, ncols);                            \
    }

DEQ(q4_0, Q4_0)
DEQ(q4_1, Q4_1)
DEQ(q5_0, Q5_0)
DEQ(q5_1, Q5_1)
DEQ(q8_0, Q8_0)
DEQ(q4_k, Q4_K)
DEQ(q5_k, Q5_K)
DEQ(q6_k, Q6_K)
DEQ(f32, F32)
DEQ(f16, F16)
DEQ(bf16, BF16)

extern "C" __global__ void f32_to_f16(const float* __restrict__ x, int x_stride,
                                      u16* __restrict__ out, int ncols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ncols) return;
    out[(i64)blockIdx.y * ncols + c] = f32_to_f16(x[(i64)blockIdx.y * x_stride + c]);
}
