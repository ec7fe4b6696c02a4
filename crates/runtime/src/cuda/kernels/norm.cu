// Row normalizations (needs the prelude): RMSNorm and softmax, one block per row.

// RMSNorm of rows of `row_len` values: out = x / sqrt(mean(x²) + eps) * w (w may be null).
// A token's vector of x_stride values holds `per_token` rows (one per head for QK-norm).
// Grid (tokens * per_token), block 256 (a multiple of 32). `out` may be `x`.
extern "C" __global__ void rms_norm(const float* x, int x_stride, const float* __restrict__ w,
                                    float* out, int out_stride, int row_len, int per_token,
                                    float eps) {
    __shared__ float sh[32];
    const int t = blockIdx.x / per_token, k = blockIdx.x % per_token;
    const float* xr = x + (i64)t * x_stride + (i64)k * row_len;
    float* orow = out + (i64)t * out_stride + (i64)k * row_len;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, sh);
    const float scale = rsqrtf(ss / (float)row_len + eps);
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        const float v = xr[i] * scale;
        orow[i] = w ? v * w[i] : v;
    }
}

// Softmax of each row of n values in place (max subtracted). Grid (rows), block 256.
extern "C" __global__ void softmax(float* x, int stride, int n) {
    __shared__ float sh[32];
    float* r = x + (i64)blockIdx.x * stride;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m, sh);
    if (m == NEG_INF) return;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(r[i] - m);
        r[i] = e;
        s += e;
    }
    s = block_sum(s, sh);
    const float inv = 1.0f / s;
    for (int i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}

// Gated RMSNorm: each piece of row_len values (one head) of a token's row,
// out = rms_norm(x) * w * silu(z). Grid (tokens * per_token), block 256. `out` may be x or z
// (each element is read and written by the same thread, after the block's reduction).
extern "C" __global__ void gated_rms_norm(const float* x, int x_stride, const float* z,
                                          int z_stride, const float* __restrict__ w, float* out,
                                          int out_stride, int row_len, int per_token,
                                          float eps) {
    __shared__ float sh[32];
    const int t = blockIdx.x / per_token, k = blockIdx.x % per_token;
    const float* xr = x + (i64)t * x_stride + (i64)k * row_len;
    const float* zr = z + (i64)t * z_stride + (i64)k * row_len;
    float* orow = out + (i64)t * out_stride + (i64)k * row_len;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, sh);
    const float scale = rsqrtf(ss / (float)row_len + eps);
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        const float zv = zr[i];
        orow[i] = xr[i] * scale * w[i] * (zv / (1.0f + expf(-zv)));
    }
}
