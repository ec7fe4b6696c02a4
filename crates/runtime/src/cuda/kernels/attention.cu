// Attention over an f16 KV cache (needs the prelude). The cache of one layer holds, for each
// of n_seq sequences, n_ctx positions of kv_dim = n_kv_heads * head_dim values (K and V in
// two buffers); `layer_off` is the layer's first element. head_dim is a multiple of 32, at
// most ATT_MAX_D. Query head h reads KV head h / (n_heads / n_kv_heads).
//
// kv_write:     a batch's K and V rows (f32) into the cache at (seq[t], pos[t]).
// attn_decode:  split-K flash decoding: block (head, token, split) attends to one slice of
//               the token's visible keys with an online softmax, warp per key; writes
//               unnormalized partials that attn_combine merges.
// attn_prefill: a prompt chunk (one sequence, consecutive positions from p0): blocks of
//               ATT_TQ queries of one head walk tiles of 32 keys staged in shared memory.
// Masking: key j is visible to a query at position p when j <= p (j <= the chunk's last
// position when non_causal) and p - j < window (when window > 0). Scores are q·k × scale,
// then cap × tanh(score / cap) when softcap > 0.

#define ATT_MAX_D 256
#define ATT_WARPS 4

// Grid (ceil(kv_dim / 256), tokens), block 256.
extern "C" __global__ void kv_write(const float* __restrict__ k, int k_stride,
                                    const float* __restrict__ v, int v_stride,
                                    u16* __restrict__ ck, u16* __restrict__ cv,
                                    const u32* __restrict__ pos, const u32* __restrict__ seq,
                                    int kv_dim, int n_ctx, i64 layer_off) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= kv_dim) return;
    const i64 t = blockIdx.y;
    const i64 at = layer_off + ((i64)seq[t] * n_ctx + pos[t]) * kv_dim + i;
    ck[at] = f32_to_f16(k[t * k_stride + i]);
    cv[at] = f32_to_f16(v[t * v_stride + i]);
}

static __device__ __forceinline__ float cap_score(float s, float softcap) {
    return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
}

// Partials: for each (token, head, split), head_dim values of sum(p * v), then the running
// max m and the sum l of p = e^(score - m). Grid (n_heads, tokens, n_split), block
// ATT_WARPS * 32. Each split covers split_len keys from the token's first visible key, up to
// kend[t] (exclusive: pos + 1, or past the batch's last position of the sequence in a
// non-causal batch). Splits past the end write m = -inf, l = 0 (a fixed grid for any
// position, which CUDA graphs need).
extern "C" __global__ void attn_decode(const float* __restrict__ q, int q_stride,
                                       const u16* __restrict__ ck, const u16* __restrict__ cv,
                                       const u32* __restrict__ pos, const u32* __restrict__ seq,
                                       const u32* __restrict__ kend, float* __restrict__ part,
                                       int n_heads, int n_kv_heads,
                                       int head_dim, int n_ctx, i64 layer_off, float scale,
                                       float softcap, int window, int split_len) {
    __shared__ float qs[ATT_MAX_D];
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][ATT_MAX_D];
    const int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z, n_split = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv_dim = n_kv_heads * head_dim, nd = head_dim / 32;
    const int p = (int)pos[t];
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int k0 = first + sp * split_len, k1 = min((int)kend[t], k0 + split_len);
    const int kvh = h / (n_heads / n_kv_heads);
    const i64 base = layer_off + (i64)seq[t] * n_ctx * kv_dim + (i64)kvh * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        qs[d] = q[(i64)t * q_stride + (i64)h * head_dim + d];
    __syncthreads();
    float m = NEG_INF, l = 0.0f, acc[ATT_MAX_D / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / 32; ++i) acc[i] = 0.0f;
    for (int j = k0 + warp; j < k1; j += ATT_WARPS) {
        const u16* kr = ck + base + (i64)j * kv_dim;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i)
            if (i < nd) s += qs[lane + 32 * i] * f16_to_f32(kr[lane + 32 * i]);
        s = cap_score(warp_sum(s) * scale, softcap);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn), e = expf(s - mn);
        l = l * corr + e;
        const u16* vr = cv + base + (i64)j * kv_dim;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i)
            if (i < nd) acc[i] = acc[i] * corr + e * f16_to_f32(vr[lane + 32 * i]);
        m = mn;
    }
    // Merge the warps: rescale each to the block's max.
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / 32; ++i)
        if (i < nd) wacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    float M = NEG_INF;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, wm[w]);
    float* out = part + (((i64)t * n_heads + h) * n_split + sp) * (head_dim + 2);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w)
            if (wm[w] != NEG_INF) o += wacc[w][d] * expf(wm[w] - M);
        out[d] = o;
    }
    if (threadIdx.x == 0) {
        float L = 0.0f;
        for (int w = 0; w < ATT_WARPS; ++w)
            if (wm[w] != NEG_INF) L += wl[w] * expf(wm[w] - M);
        out[head_dim] = M;
        out[head_dim + 1] = L;
    }
}

// out[t][h * head_dim + d] = merged partials of attn_decode. Grid (n_heads, tokens), block
// head_dim (at most ATT_MAX_D).
extern "C" __global__ void attn_combine(const float* __restrict__ part, float* __restrict__ out,
                                        int out_stride, int n_heads, int head_dim,
                                        int n_split) {
    const int h = blockIdx.x, t = blockIdx.y, d = threadIdx.x;
    if (d >= head_dim) return;
    const float* pp = part + ((i64)t * n_heads + h) * n_split * (head_dim + 2);
    float M = NEG_INF;
    for (int s = 0; s < n_split; ++s) M = fmaxf(M, pp[s * (head_dim + 2) + head_dim]);
    float o = 0.0f, L = 0.0f;
    for (int s = 0; s < n_split; ++s) {
        const float* ps = pp + s * (head_dim + 2);
        if (ps[head_dim] == NEG_INF) continue;
        const float f = expf(ps[head_dim] - M);
        o += ps[d] * f;
        L += ps[head_dim + 1] * f;
    }
    out[(i64)t * out_stride + (i64)h * head_dim + d] = L > 0.0f ? o / L : 0.0f;
}

#define ATT_TQ 8
#define ATT_TK 32

// Prompt chunk of n tokens of sequence `sq` at positions p0.. (rows 0..n of q and out).
// Grid (ceil(n / ATT_TQ), n_heads), block ATT_WARPS * 32; each warp owns ATT_TQ/ATT_WARPS
// queries. Per key tile, lane j scores key j for each of the warp's queries, then every lane
// accumulates its head_dim/32 output values over the tile's keys (weights by shuffle).
extern "C" __global__ void attn_prefill(const float* __restrict__ q, int q_stride,
                                        const u16* __restrict__ ck, const u16* __restrict__ cv,
                                        float* __restrict__ out, int out_stride, int n, int sq,
                                        int p0, int n_heads, int n_kv_heads, int head_dim,
                                        int n_ctx, i64 layer_off, float scale, float softcap,
                                        int window, int non_causal) {
    // K rows padded by 2 halves so that lanes reading different keys hit different banks.
    __shared__ float qsh[ATT_TQ][ATT_MAX_D];
    __shared__ u16 ksh[ATT_TK][ATT_MAX_D + 2];
    __shared__ u16 vsh[ATT_TK][ATT_MAX_D];
    const int h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv_dim = n_kv_heads * head_dim, nd = head_dim / 32;
    const int i0 = blockIdx.x * ATT_TQ, nq = min(ATT_TQ, n - i0);
    const int kvh = h / (n_heads / n_kv_heads);
    const i64 base = layer_off + (i64)sq * n_ctx * kv_dim + (i64)kvh * head_dim;
    for (int e = threadIdx.x; e < ATT_TQ * head_dim; e += blockDim.x) {
        const int qi = e / head_dim, d = e % head_dim;
        qsh[qi][d] = qi < nq ? q[(i64)(i0 + qi) * q_stride + (i64)h * head_dim + d] : 0.0f;
    }
    const int QW = ATT_TQ / ATT_WARPS;
    float m[QW], l[QW], acc[QW][ATT_MAX_D / 32];
#pragma unroll
    for (int a = 0; a < QW; ++a) {
        m[a] = NEG_INF;
        l[a] = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i) acc[a][i] = 0.0f;
    }
    // Keys from the first query's first visible one to the last query's position.
    const int last = non_causal ? p0 + n - 1 : p0 + i0 + nq - 1;
    const int lo = window > 0 ? max(0, p0 + i0 + 1 - window) : 0;
    for (int kt = lo - lo % ATT_TK; kt <= last; kt += ATT_TK) {
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_TK * head_dim; e += blockDim.x) {
            const int j = e / head_dim, d = e % head_dim;
            const bool ok = kt + j <= last;
            ksh[j][d] = ok ? ck[base + (i64)(kt + j) * kv_dim + d] : (u16)0;
            vsh[j][d] = ok ? cv[base + (i64)(kt + j) * kv_dim + d] : (u16)0;
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < QW; ++a) {
            const int qi = warp * QW + a;
            if (qi >= nq) break;
            const int p = p0 + i0 + qi, key = kt + lane;
            const bool vis =
                key <= (non_causal ? last : p) && (window <= 0 || p - key < window);
            float s = 0.0f;
            for (int d = 0; d < head_dim; ++d) s += qsh[qi][d] * f16_to_f32(ksh[lane][d]);
            s = vis ? cap_score(s * scale, softcap) : NEG_INF;
            const float mn = fmaxf(m[a], warp_max(s));
            if (mn == NEG_INF) continue;  // nothing visible yet in this or earlier tiles
            const float corr = expf(m[a] - mn);
            const float e = vis ? expf(s - mn) : 0.0f;
            l[a] = l[a] * corr + warp_sum(e);
#pragma unroll
            for (int i = 0; i < ATT_MAX_D / 32; ++i) acc[a][i] *= corr;
            for (int j = 0; j < ATT_TK; ++j) {
                const float ej = __shfl_sync(FULL_MASK, e, j);
                if (ej == 0.0f) continue;
#pragma unroll
                for (int i = 0; i < ATT_MAX_D / 32; ++i)
                    if (i < nd) acc[a][i] += ej * f16_to_f32(vsh[j][lane + 32 * i]);
            }
            m[a] = mn;
        }
    }
#pragma unroll
    for (int a = 0; a < QW; ++a) {
        const int qi = warp * QW + a;
        if (qi >= nq) break;
        float* o = out + (i64)(i0 + qi) * out_stride + (i64)h * head_dim;
        const float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i)
            if (i < nd) o[lane + 32 * i] = acc[a][i] * inv;
    }
}
