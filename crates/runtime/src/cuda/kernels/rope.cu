// Rotary position embedding in place (needs the prelude), for the first n_heads heads of
// each token's row. Pair i (i < n_rot/2) turns by pos × freq_scale × inv_freq[i]:
// elements (2i, 2i+1) in normal mode, (i, i + n_rot/2) in NeoX mode; the rest pass through.
// Multi-section RoPE (Qwen3.5 M-RoPE): when pos3 is not null it holds each token's (t, h, w)
// and pair i turns by component (sec[i / 16] >> 2(i % 16)) & 3 of it (3 counts as w,
// as on the CPU); all-zero words turn every pair by t.
// Grid (ceil(n_heads * n_rot/2 / 256), tokens), block 256.
extern "C" __global__ void rope(float* x, int x_stride, const u32* __restrict__ pos,
                                const float* __restrict__ inv_freq, int n_heads,
                                int head_dim, int n_rot, float freq_scale, int neox,
                                const u32* __restrict__ pos3, u32 sec0, u32 sec1, u32 sec2,
                                u32 sec3) {
    const int half = n_rot / 2;
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n_heads * half) return;
    const int h = j / half, i = j % half;
    const i64 t = blockIdx.y;
    float* head = x + t * x_stride + (i64)h * head_dim;
    u32 pt = pos[t];
    if (pos3 != 0) {
        const u32 w = i < 16 ? sec0 : i < 32 ? sec1 : i < 48 ? sec2 : sec3;
        u32 comp = (w >> (2 * (i % 16))) & 3u;
        if (comp > 2) comp = 2;
        pt = pos3[3 * t + comp];
    }
    const float p = (float)pt * freq_scale;
    float s, c;
    sincosf(p * inv_freq[i], &s, &c);
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * s;
    head[b] = x0 * s + x1 * c;
}
