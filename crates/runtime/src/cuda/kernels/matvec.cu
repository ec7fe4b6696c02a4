// Matrix × vector for decode (and small batches): out[t][r] = W[r] · x[t] for up to
// MV_TOKENS tokens per launch, weights in their GGUF blocks (needs prelude + quant.cuh).
//
// quantize_q8_1: activations to bq8 blocks (one warp per block of 32 values).
// mmvq_<type>:   quantized weights × bq8 activations with dp4a; one warp per weight row,
//                lanes over the row's work items, each item dotted with every token.
// mmv_<type>:    any weight type dequantized 32 values at a time × f32 activations
//                (float formats, and a reference for the quantized path).
// Launch: block MV_WARPS*32 threads, grid (ceil(rows / MV_WARPS), ceil(tokens / MV_TOKENS)).

#define MV_WARPS 4
#define MV_TOKENS 8

// x: tokens × x_stride floats; out: tokens × out_stride bq8 blocks (ncols / 32 used).
// Grid (ceil(ncols / 32 / 8), tokens), block 256: one warp per activation block.
extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, int x_stride,
                                         bq8* __restrict__ out, int out_stride, int ncols) {
    const int t = blockIdx.y, lane = threadIdx.x & 31;
    const int ib = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (ib * 32 >= ncols) return;
    const float v = x[(i64)t * x_stride + ib * 32 + lane];
    const float amax = warp_max(fabsf(v));
    // As the CPU (quant::rows16::quantize_act) and ggml quantize activations: the scale
    // max|x| / 127 rounded to f16, the levels x * (127 / max|x|) rounded to nearest even.
    const float d = f16_to_f32(f32_to_f16(amax / 127.0f));
    const float id = amax == 0.0f ? 0.0f : 127.0f / amax;
    const int q = __float2int_rn(fminf(fmaxf(v * id, -127.0f), 127.0f));
    const int sum = warp_sum_int(q);
    bq8* b = out + (i64)t * out_stride + ib;
    ((i8*)b->qs)[lane] = (i8)q;
    if (lane == 0) {
        b->d = d;
        b->s = d * (float)sum;
    }
}

template <class T>
static __device__ __forceinline__ void mmvq(const u8* __restrict__ w, i64 row_bytes,
                                            const bq8* __restrict__ x, int x_stride,
                                            float* __restrict__ out, int out_stride,
                                            int ncols, int nrows, int ntok) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= nrows) return;
    const int t0 = blockIdx.y * MV_TOKENS;
    const int nt = min(ntok - t0, MV_TOKENS);
    const u8* row = w + (i64)r * row_bytes;
    const int items = ncols / T::EPI;
    float acc[MV_TOKENS];
#pragma unroll
    for (int t = 0; t < MV_TOKENS; ++t) acc[t] = 0.0f;
    for (int it = lane; it < items; it += 32) {
#pragma unroll
        for (int t = 0; t < MV_TOKENS; ++t)
            if (t < nt) acc[t] += T::vdot(row, it, x + (i64)(t0 + t) * x_stride);
    }
#pragma unroll
    for (int t = 0; t < MV_TOKENS; ++t) {
        if (t < nt) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) out[(i64)(t0 + t) * out_stride + r] = v;
        }
    }
}

template <class T>
static __device__ __forceinline__ void mmv(const u8* __restrict__ w, i64 row_bytes,
                                           const float* __restrict__ x, int x_stride,
                                           float* __restrict__ out, int out_stride,
                                           int ncols, int nrows, int ntok) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * MV_WARPS + (threadIdx.x >> 5);
    if (r >= nrows) return;
    const int t0 = blockIdx.y * MV_TOKENS;
    const int nt = min(ntok - t0, MV_TOKENS);
    const u8* row = w + (i64)r * row_bytes;
    float acc[MV_TOKENS];
#pragma unroll
    for (int t = 0; t < MV_TOKENS; ++t) acc[t] = 0.0f;
    float y[32];
    for (int k = lane; k < ncols / 32; k += 32) {
        T::deq(row, k, y);
#pragma unroll
        for (int t = 0; t < MV_TOKENS; ++t) {
            if (t < nt) {
                const float* xt = x + (i64)(t0 + t) * x_stride + 32 * k;
                float s = 0.0f;
#pragma unroll
                for (int l = 0; l < 32; ++l) s += y[l] * xt[l];
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MV_TOKENS; ++t) {
        if (t < nt) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) out[(i64)(t0 + t) * out_stride + r] = v;
        }
    }
}

#define MMVQ(NAME, T)                                                                       \
    extern "C" __global__ void mmvq_##NAME(const u8* w, i64 row_bytes, const bq8* x,       \
                                           int x_stride, float* out, int out_stride,       \
                                           int ncols, int nrows, int ntok) {               \
        mmvq<T>(w, row_bytes, x, x_stride, out, out_stride, ncols, nrows, ntok);           \
    }
#define MMV(NAME, T)                                                                        \
    extern "C" __global__ void mmv_##NAME(const u8* w, i64 row_bytes, const float* x,      \
                                          int x_stride, float* out, int out_stride,        \
                                          int ncols, int nrows, int ntok) {                \
        mmv<T>(w, row_bytes, x, x_stride, out, out_stride, ncols, nrows, ntok);            \
    }

MMVQ(q4_0, Q4_0)
MMVQ(q4_1, Q4_1)
MMVQ(q5_0, Q5_0)
MMVQ(q5_1, Q5_1)
MMVQ(q8_0, Q8_0)
MMVQ(q4_k, Q4_K)
MMVQ(q5_k, Q5_K)
MMVQ(q6_k, Q6_K)

MMV(q4_0, Q4_0)
MMV(q4_1, Q4_1)
MMV(q5_0, Q5_0)
MMV(q5_1, Q5_1)
MMV(q8_0, Q8_0)
MMV(q4_k, Q4_K)
MMV(q5_k, Q5_K)
MMV(q6_k, Q6_K)
MMV(f32, F32)
MMV(f16, F16)
MMV(bf16, BF16)
