// Element-wise kernels over activation rows (needs the prelude). Every buffer is rows of a
// stride apart; grid (ceil(width / 256), tokens), block 256; outputs may alias inputs.

static __device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// GELU, tanh approximation, written as x / (1 + e^(-2y)) like the CPU reference.
static __device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608f;
    return x / (1.0f + expf(-2.0f * k * x * (1.0f + 0.044715f * x * x)));
}

#define ROW_INDEX                                                                           \
    const int i = blockIdx.x * blockDim.x + threadIdx.x;                                    \
    const i64 t = blockIdx.y;                                                               \
    if (i >= width) return;

// out = silu(gate) * up.
extern "C" __global__ void swiglu(const float* g, int gs, const float* u, int us, float* o,
                                  int os, int width) {
    ROW_INDEX
    o[t * os + i] = silu(g[t * gs + i]) * u[t * us + i];
}

// out = gelu_tanh(gate) * up.
extern "C" __global__ void geglu(const float* g, int gs, const float* u, int us, float* o,
                                 int os, int width) {
    ROW_INDEX
    o[t * os + i] = gelu_tanh(g[t * gs + i]) * u[t * us + i];
}

// out = a + b.
extern "C" __global__ void add(const float* a, int as, const float* b, int bs, float* o,
                               int os, int width) {
    ROW_INDEX
    o[t * os + i] = a[t * as + i] + b[t * bs + i];
}

// x += bias (the same vector for every row).
extern "C" __global__ void add_bias(float* x, int xs, const float* __restrict__ bias,
                                    int width) {
    ROW_INDEX
    x[t * xs + i] += bias[i];
}

// x *= s.
extern "C" __global__ void scale(float* x, int xs, float s, int width) {
    ROW_INDEX
    x[t * xs + i] *= s;
}

// x = cap * tanh(x / cap).
extern "C" __global__ void softcap(float* x, int xs, float cap, int width) {
    ROW_INDEX
    x[t * xs + i] = cap * tanhf(x[t * xs + i] / cap);
}

// Row t of out = row ids[t] of x (the logit rows of a batch).
extern "C" __global__ void copy_rows(const float* __restrict__ x, int xs,
                                     const u32* __restrict__ ids, float* __restrict__ o,
                                     int os, int width) {
    ROW_INDEX
    o[t * os + i] = x[(i64)ids[t] * xs + i];
}

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// out = x * sigmoid(gate).
extern "C" __global__ void sigmoid_mul(const float* x, int xs, const float* g, int gs, float* o,
                                       int os, int width) {
    ROW_INDEX
    o[t * os + i] = x[t * xs + i] * sigmoidf_(g[t * gs + i]);
}

// Input rows given by the caller (an image's embeddings, `src_width` values each): row t of
// out = row t of src, zero past src_width.
extern "C" __global__ void embd_rows(const float* __restrict__ src, int src_width,
                                     float* __restrict__ o, int os, int width) {
    ROW_INDEX
    o[t * os + i] = i < src_width ? src[t * src_width + i] : 0.0f;
}

// Each group of 2 * half values of a row of x: the first half to a, the second to b. Grid
// (ceil(groups * half / 256), tokens), block 256; width = groups * half.
extern "C" __global__ void unzip(const float* __restrict__ x, int xs, float* __restrict__ a,
                                 int as, float* __restrict__ b, int bs, int half, int width) {
    ROW_INDEX
    const int g = i / half, j = i % half;
    const float* src = x + t * xs + (i64)g * 2 * half;
    a[t * as + i] = src[j];
    b[t * bs + i] = src[half + j];
}

// Row t of out = row t of a (aw values) followed by row t of b (width - aw values).
extern "C" __global__ void concat(const float* __restrict__ a, int as, int aw,
                                  const float* __restrict__ b, int bs, float* __restrict__ o,
                                  int os, int width) {
    ROW_INDEX
    o[t * os + i] = i < aw ? a[t * as + i] : b[t * bs + (i - aw)];
}

// The delta rule's gates, in place, `width` value heads per token:
// alpha = softplus(alpha + dt_bias) * a (softplus(x) = x above 20), beta = sigmoid(beta).
extern "C" __global__ void delta_gates(float* alpha, int als, float* beta, int bes,
                                       const float* __restrict__ dt_bias,
                                       const float* __restrict__ a, int width) {
    ROW_INDEX
    const float x = alpha[t * als + i] + dt_bias[i];
    const float sp = x > 20.0f ? x : log1pf(expf(x));
    alpha[t * als + i] = sp * a[i];
    beta[t * bes + i] = sigmoidf_(beta[t * bes + i]);
}
