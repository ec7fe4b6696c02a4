// Attention over a KV cache stored as f32, f16, q8_0 or q4_0 (needs the prelude). The cache of
// one layer holds, for each of n_seq sequences, n_ctx positions of one row of kv_dim =
// n_kv_heads * head_dim values (K and V in two buffers, each in its own type); a row of a
// block type is kv_dim / 32 GGUF blocks, so each head starts on a block. `k_off` / `v_off` are
// the layer's first byte. head_dim is a multiple of 32, at most ATT_MAX_D (ATT_MAX_D / 2 for
// an f32 cache read by attn_prefill). Query head h reads KV head h / (n_heads / n_kv_heads).
//
// kv_write:     a batch's K and V rows (f32) into the cache at (seq[t], pos[t]), quantized as
//               ggml's reference quantize_row_q8_0 / quantize_row_q4_0 for the block types.
// attn_decode:  split-K flash decoding: block (head, token, split) attends to one slice of
//               the token's visible keys with an online softmax, warp per key; writes
//               unnormalized partials that attn_combine merges.
// attn_prefill: a prompt chunk (one sequence, consecutive positions from p0): blocks of
//               ATT_TQ queries of one head walk tiles of 32 keys staged in shared memory in
//               the cache's own bytes.
// Keys and values are dequantized as they are read; every sum is in f32.
// Masking: key j is visible to a query at position p when j <= p (j <= the chunk's last
// position when non_causal) and p - j < window (when window > 0). Scores are q·k × scale,
// then cap × tanh(score / cap) when softcap > 0.

#define ATT_MAX_D 256
#define ATT_WARPS 4

// Cache types, numbered as runtime::KvType.
#define KV_F32 0
#define KV_F16 1
#define KV_Q8_0 2
#define KV_Q4_0 3

// Bytes of n values of a type (n a multiple of 32 for the block types).
static __device__ __forceinline__ int kv_bytes(int type, int n) {
    switch (type) {
    case KV_F16: return 2 * n;
    case KV_Q8_0: return n / 32 * 34;
    case KV_Q4_0: return n / 32 * 18;
    default: return 4 * n;
    }
}

// Value i of a row of a type (the row starts on a block; 2-byte aligned, 4 for f32).
static __device__ __forceinline__ float kv_at(const u8* row, int type, int i) {
    switch (type) {
    case KV_F16: return f16_to_f32(((const u16*)row)[i]);
    case KV_Q8_0: {
        const u8* b = row + (i >> 5) * 34;
        return (float)(i8)b[2 + (i & 31)] * f16_to_f32(ld16(b));
    }
    case KV_Q4_0: {
        const u8* b = row + (i >> 5) * 18;
        const int l = i & 31;
        const int q = (b[2 + (l & 15)] >> (l & 16 ? 4 : 0)) & 15;
        return (float)(q - 8) * f16_to_f32(ld16(b));
    }
    default: return ((const float*)row)[i];
    }
}

// q (n f32 values) · a row of a type; block types scale each block's sum once.
static __device__ __forceinline__ float kv_dot(const float* q, const u8* row, int type, int n) {
    float s = 0.0f;
    if (type == KV_Q8_0 || type == KV_Q4_0) {
        const int bytes = type == KV_Q8_0 ? 34 : 18;
        for (int k = 0; k < n / 32; ++k) {
            const u8* b = row + k * bytes;
            const float* qk = q + 32 * k;
            float sb = 0.0f;
            if (type == KV_Q8_0) {
                for (int l = 0; l < 32; ++l) sb += qk[l] * (float)(i8)b[2 + l];
            } else {
                for (int l = 0; l < 16; ++l) {
                    sb += qk[l] * (float)((int)(b[2 + l] & 15) - 8);
                    sb += qk[l + 16] * (float)((int)(b[2 + l] >> 4) - 8);
                }
            }
            s += sb * f16_to_f32(ld16(b));
        }
    } else {
        for (int d = 0; d < n; ++d) s += q[d] * kv_at(row, type, d);
    }
    return s;
}

// Stores value i (= this lane's value x) of a row of a type. For the block types the whole
// warp stores one block (lane l holds value l of it), as ggml's reference quantizers:
// q8_0: d = amax / 127, q = round(x / d); q4_0: d = (the value of largest magnitude) / -8,
// q = min(15, trunc(x / d + 8.5)); the f16 scale is d rounded, the levels use d in f32.
static __device__ __forceinline__ void kv_store(u8* row, int type, int i, int n, float x) {
    const int lane = threadIdx.x & 31;
    switch (type) {
    case KV_F16:
        if (i < n) ((u16*)row)[i] = f32_to_f16(x);
        return;
    case KV_Q8_0: {
        const float amax = warp_max(fabsf(x));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        u8* b = row + (i >> 5) * 34;
        if (lane == 0) *(u16*)b = f32_to_f16(d);
        b[2 + lane] = (u8)(i8)(int)roundf(__fmul_rn(x, id));
        return;
    }
    case KV_Q4_0: {
        // The first value of the largest magnitude, as the reference's strict comparison.
        float a = fabsf(x);
        int at = lane;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float oa = __shfl_xor_sync(FULL_MASK, a, o);
            const int ot = __shfl_xor_sync(FULL_MASK, at, o);
            if (oa > a || (oa == a && ot < at)) {
                a = oa;
                at = ot;
            }
        }
        const float mx = __shfl_sync(FULL_MASK, x, at);
        const float d = (a > 0.0f ? mx : 0.0f) / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int q = min(15, (int)__fadd_rn(__fmul_rn(x, id), 8.5f));
        const int hi = __shfl_down_sync(FULL_MASK, q, 16);
        u8* b = row + (i >> 5) * 18;
        if (lane == 0) *(u16*)b = f32_to_f16(d);
        if (lane < 16) b[2 + lane] = (u8)(q | (hi << 4));
        return;
    }
    default:
        if (i < n) ((float*)row)[i] = x;
    }
}

// Grid (ceil(kv_dim / 256), tokens), block 256; kv_dim is a multiple of 32 for block types.
extern "C" __global__ void kv_write(const float* __restrict__ k, int k_stride,
                                    const float* __restrict__ v, int v_stride,
                                    u8* __restrict__ ck, u8* __restrict__ cv,
                                    const u32* __restrict__ pos, const u32* __restrict__ seq,
                                    int kv_dim, int n_ctx, i64 k_off, i64 v_off, int k_type,
                                    int v_type) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i - (int)(threadIdx.x & 31) >= kv_dim) return;  // whole warps past the row
    const i64 t = blockIdx.y;
    const i64 slot = (i64)seq[t] * n_ctx + pos[t];
    const float kx = i < kv_dim ? k[t * k_stride + i] : 0.0f;
    const float vx = i < kv_dim ? v[t * v_stride + i] : 0.0f;
    kv_store(ck + k_off + slot * kv_bytes(k_type, kv_dim), k_type, i, kv_dim, kx);
    kv_store(cv + v_off + slot * kv_bytes(v_type, kv_dim), v_type, i, kv_dim, vx);
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
                                       const u8* __restrict__ ck, const u8* __restrict__ cv,
                                       const u32* __restrict__ pos, const u32* __restrict__ seq,
                                       const u32* __restrict__ kend, float* __restrict__ part,
                                       int n_heads, int n_kv_heads, int head_dim, int n_ctx,
                                       i64 k_off, i64 v_off, int k_type, int v_type,
                                       float scale, float softcap, int window, int split_len) {
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
    const i64 k_row = kv_bytes(k_type, kv_dim), v_row = kv_bytes(v_type, kv_dim);
    const u8* kb = ck + k_off + (i64)seq[t] * n_ctx * k_row + kvh * kv_bytes(k_type, head_dim);
    const u8* vb = cv + v_off + (i64)seq[t] * n_ctx * v_row + kvh * kv_bytes(v_type, head_dim);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        qs[d] = q[(i64)t * q_stride + (i64)h * head_dim + d];
    __syncthreads();
    float m = NEG_INF, l = 0.0f, acc[ATT_MAX_D / 32];
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / 32; ++i) acc[i] = 0.0f;
    for (int j = k0 + warp; j < k1; j += ATT_WARPS) {
        const u8* kr = kb + j * k_row;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i)
            if (i < nd) s += qs[lane + 32 * i] * kv_at(kr, k_type, lane + 32 * i);
        s = cap_score(warp_sum(s) * scale, softcap);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn), e = expf(s - mn);
        l = l * corr + e;
        const u8* vr = vb + j * v_row;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / 32; ++i)
            if (i < nd) acc[i] = acc[i] * corr + e * kv_at(vr, v_type, lane + 32 * i);
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

// Halves of shared memory per staged key: at most ATT_MAX_D f16 values and a pad.
#define ATT_KS (ATT_MAX_D + 2)

// Prompt chunk of n tokens of sequence `sq` at positions p0.. (rows 0..n of q and out).
// Grid (ceil(n / ATT_TQ), n_heads), block ATT_WARPS * 32; each warp owns ATT_TQ/ATT_WARPS
// queries. Per key tile, the head's K and V bytes (in the cache's type) are staged in shared
// memory; lane j scores key j for each of the warp's queries, then every lane accumulates
// its head_dim/32 output values over the tile's keys (weights by shuffle).
extern "C" __global__ void attn_prefill(const float* __restrict__ q, int q_stride,
                                        const u8* __restrict__ ck, const u8* __restrict__ cv,
                                        float* __restrict__ out, int out_stride, int n, int sq,
                                        int p0, int n_heads, int n_kv_heads, int head_dim,
                                        int n_ctx, i64 k_off, i64 v_off, int k_type,
                                        int v_type, float scale, float softcap, int window,
                                        int non_causal) {
    // A head's row of K or V takes kh / vh halves (at most ATT_MAX_D: f32 rows only for
    // head_dim <= ATT_MAX_D / 2, which the host checks). Staged K rows are kst halves apart,
    // an odd number of 4-byte words, so that lanes reading different keys hit different
    // banks.
    __shared__ float qsh[ATT_TQ][ATT_MAX_D];
    __shared__ u16 ksh[ATT_TK * ATT_KS];
    __shared__ u16 vsh[ATT_TK * ATT_MAX_D];
    const int h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kv_dim = n_kv_heads * head_dim, nd = head_dim / 32;
    const int i0 = blockIdx.x * ATT_TQ, nq = min(ATT_TQ, n - i0);
    const int kvh = h / (n_heads / n_kv_heads);
    const int kh = kv_bytes(k_type, head_dim) / 2, vh = kv_bytes(v_type, head_dim) / 2;
    const int kst = 2 * (((kh + 1) / 2) | 1);
    const i64 k_row = kv_bytes(k_type, kv_dim), v_row = kv_bytes(v_type, kv_dim);
    const u8* kb = ck + k_off + (i64)sq * n_ctx * k_row + kvh * kv_bytes(k_type, head_dim);
    const u8* vb = cv + v_off + (i64)sq * n_ctx * v_row + kvh * kv_bytes(v_type, head_dim);
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
        // Keys past `last` are zero bytes (value 0 in every type); they are masked anyway.
        for (int e = threadIdx.x; e < ATT_TK * kh; e += blockDim.x) {
            const int j = e / kh, w = e % kh;
            ksh[j * kst + w] = kt + j <= last ? ((const u16*)(kb + (kt + j) * k_row))[w] : 0;
        }
        for (int e = threadIdx.x; e < ATT_TK * vh; e += blockDim.x) {
            const int j = e / vh, w = e % vh;
            vsh[j * vh + w] = kt + j <= last ? ((const u16*)(vb + (kt + j) * v_row))[w] : 0;
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < QW; ++a) {
            const int qi = warp * QW + a;
            if (qi >= nq) break;
            const int p = p0 + i0 + qi, key = kt + lane;
            const bool vis =
                key <= (non_causal ? last : p) && (window <= 0 || p - key < window);
            float s = kv_dot(qsh[qi], (const u8*)(ksh + lane * kst), k_type, head_dim);
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
                const u8* vrow = (const u8*)(vsh + j * vh);
#pragma unroll
                for (int i = 0; i < ATT_MAX_D / 32; ++i)
                    if (i < nd) acc[a][i] += ej * kv_at(vrow, v_type, lane + 32 * i);
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
