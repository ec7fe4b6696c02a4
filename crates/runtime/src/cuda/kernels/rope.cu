// Rotary position embedding in place (needs the prelude), for the first n_heads heads of
// each token's row. Pair i (i < n_rot/2) turns by pos × freq_scale × inv_freq[i]:
// elements (2i, 2i+1) in normal mode, (i, i + n_rot/2) in NeoX mode; the rest pass through.
// Grid (ceil(n_heads * n_rot/2 / 256), tokens), block 256.
extern "C" __global__ void rope(float* x, int x_stride, const u32* __restrict__ pos,
                                const float* __restrict__ inv_freq, int n_heads,
                                int head_dim, int n_rot, float freq_scale, int neox) {
    const int half = n_rot / 2;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n_heads * half) return;
    const int h = j / half, i = j % half;
    const i64 t = blockIdx.y;
    float* head = x + t * x_stride + (i64)h * head_dim;
    const float p = (float)pos[t] * freq_scale;
    float s, c;
    sincosf(p * inv_freq[i], &s, &c);
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * s;
    head[b] = x0 * s + x1 * c;
}
