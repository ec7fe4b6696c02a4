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
