// Gated DeltaNet recurrences (needs the prelude): the causal convolution with SiLU and the
// gated delta rule, per sequence, over state that lives on the device.
//
// State layout (as the CPU backend's): for recurrent layer l and sequence s, two copies c of
//   conv: [l][s][c][channel][K - 1]               (the last K - 1 inputs, oldest first)
//   ssm:  [l][s][c][value head][head_v][head_k]   (the delta-rule matrix per value head)
// A pass reads copy `src` of each of its sequences and writes copy `src ^ 1` (the host flips
// which copy is current after the pass), so the state before a sequence's latest batch stays
// intact for a rollback. Kept inputs for a rollback, per (l, s, token i < ROLLBACK):
//   replay: [l][s][i][x (ch) | conv output (ch) | g (n_v) | beta (n_v)].
//
// Groups: the batch's tokens grouped by sequence, 6 ints each:
//   seq, start (into `order`), n (tokens), p0 (first position; 0 = start from zeros), src
//   (copy read), keep (1 = write the replay inputs).
// `order` lists the batch's token indices group after group.

#define REC_MAX_K1 7
#define REC_MAX_HK 256
#define REC_ROWS 4   // state rows per warp in gated_delta
#define REC_WARPS 4  // warps per block in gated_delta (REC_ROWS * REC_WARPS rows per block)

static __device__ __forceinline__ float silu_(float x) { return x / (1.0f + expf(-x)); }

// Causal depthwise convolution + SiLU of recurrent layer `layer`.
// Grid (ceil(ch / 128), n_groups), block 128: a thread per (channel, sequence).
// x, out: token rows (x_stride, out_stride); w: ch × K taps, oldest first.
// replay may be null (no inputs kept).
extern "C" __global__ void conv_silu(const float* __restrict__ x, int x_stride,
                                     const float* __restrict__ w, float* __restrict__ out,
                                     int out_stride, float* __restrict__ conv,
                                     float* __restrict__ replay, const int* __restrict__ groups,
                                     const u32* __restrict__ order, int layer, int n_seq,
                                     int ch, int K, int n_v, int rollback_tokens) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ch) return;
    const int* G = groups + 6 * blockIdx.y;
    const int seq = G[0], start = G[1], n = G[2], p0 = G[3], src = G[4], keep = G[5];
    const int k1 = K - 1;
    const i64 per = (i64)ch * k1;
    const i64 base = ((i64)layer * n_seq + seq) * 2;
    const float* hs = conv + (base + src) * per + (i64)c * k1;
    float* hd = conv + (base + (src ^ 1)) * per + (i64)c * k1;
    float hist[REC_MAX_K1];
#pragma unroll
    for (int j = 0; j < REC_MAX_K1; ++j) hist[j] = (j < k1 && p0 != 0) ? hs[j] : 0.0f;
    const float* taps = w + (i64)c * K;
    const int rw = 2 * ch + 2 * n_v;
    for (int i = 0; i < n; ++i) {
        const i64 t = order[start + i];
        const float xv = x[t * x_stride + c];
        float y = taps[k1] * xv;
#pragma unroll
        for (int j = 0; j < REC_MAX_K1; ++j)
            if (j < k1) y += taps[j] * hist[j];
#pragma unroll
        for (int j = 0; j < REC_MAX_K1 - 1; ++j)
            if (j + 1 < k1) hist[j] = hist[j + 1];
        if (k1 > 0) hist[k1 - 1] = xv;
        const float o = silu_(y);
        out[t * out_stride + c] = o;
        if (keep && replay) {
            float* r = replay + ((((i64)layer * n_seq + seq) * rollback_tokens) + i) * rw;
            r[c] = xv;
            r[ch + c] = o;
        }
    }
#pragma unroll
    for (int j = 0; j < REC_MAX_K1; ++j)
        if (j < k1) hd[j] = hist[j];
}

// The gated delta rule of recurrent layer `layer`, token by token. qkv rows hold the
// convolved [q (n_k heads); k (n_k heads); v (n_v heads)]; value head h reads q/k head
// h % n_k. Per token: q, k L2-normalized (q also × scale), then for each state row r:
//   d = beta (v_r - e^g S_r·k); S_r = e^g S_r + d k; out_r = S_r·q.
// Grid (ceil(head_v / (REC_ROWS * REC_WARPS)), n_v, n_groups), block REC_WARPS * 32: each
// warp keeps REC_ROWS rows of the head's state in registers (lane j holds columns j + 32 i).
// head_k is a multiple of 32, at most REC_MAX_HK.
extern "C" __global__ void gated_delta(const float* __restrict__ qkv, int x_stride,
                                       const float* __restrict__ g, int g_stride,
                                       const float* __restrict__ beta, int b_stride,
                                       float* __restrict__ out, int out_stride,
                                       float* __restrict__ ssm, float* __restrict__ replay,
                                       const int* __restrict__ groups,
                                       const u32* __restrict__ order, int layer, int n_seq,
                                       int n_k, int n_v, int hk, int hv, float eps, float scale,
                                       int rollback_tokens) {
    __shared__ float qs[REC_MAX_HK], ks[REC_MAX_HK], sh[32];
    const int h = blockIdx.y, kh = h % n_k;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int* G = groups + 6 * blockIdx.z;
    const int seq = G[0], start = G[1], n = G[2], p0 = G[3], src = G[4], keep = G[5];
    const int nd = hk / 32;
    const int r0 = blockIdx.x * (REC_ROWS * REC_WARPS) + warp * REC_ROWS;
    const i64 per = (i64)n_v * hv * hk;
    const i64 base = ((i64)layer * n_seq + seq) * 2;
    const float* S0 = ssm + (base + src) * per + (i64)h * hv * hk;
    float* S1 = ssm + (base + (src ^ 1)) * per + (i64)h * hv * hk;
    float S[REC_ROWS][REC_MAX_HK / 32];
#pragma unroll
    for (int a = 0; a < REC_ROWS; ++a)
#pragma unroll
        for (int i = 0; i < REC_MAX_HK / 32; ++i)
            S[a][i] = (r0 + a < hv && i < nd && p0 != 0) ? S0[(i64)(r0 + a) * hk + lane + 32 * i]
                                                         : 0.0f;
    const int ch = 2 * n_k * hk + n_v * hv, rw = 2 * ch + 2 * n_v;
    for (int it = 0; it < n; ++it) {
        const i64 t = order[start + it];
        const float* row = qkv + t * x_stride;
        __syncthreads();  // the previous token is done with qs and ks
        float sq = 0.0f, sk = 0.0f;
        for (int d = threadIdx.x; d < hk; d += blockDim.x) {
            const float qv = row[kh * hk + d], kv = row[(n_k + kh) * hk + d];
            qs[d] = qv;
            ks[d] = kv;
            sq += qv * qv;
            sk += kv * kv;
        }
        sq = block_sum(sq, sh);  // also makes qs and ks visible to the block
        sk = block_sum(sk, sh);
        const float fq = scale / sqrtf(sq + eps), fk = 1.0f / sqrtf(sk + eps);
        const float gv = g[t * g_stride + h], bv = beta[t * b_stride + h];
        const float decay = expf(gv);
        float kk[REC_MAX_HK / 32], qq[REC_MAX_HK / 32];
#pragma unroll
        for (int i = 0; i < REC_MAX_HK / 32; ++i) {
            kk[i] = i < nd ? ks[lane + 32 * i] * fk : 0.0f;
            qq[i] = i < nd ? qs[lane + 32 * i] * fq : 0.0f;
        }
#pragma unroll
        for (int a = 0; a < REC_ROWS; ++a) {
            const int r = r0 + a;
            if (r >= hv) break;  // uniform across the warp
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < REC_MAX_HK / 32; ++i) dot += S[a][i] * kk[i];
            dot = warp_sum(dot);
            const float vr = row[2 * n_k * hk + h * hv + r];
            const float d = bv * (vr - decay * dot);
            float o = 0.0f;
#pragma unroll
            for (int i = 0; i < REC_MAX_HK / 32; ++i) {
                S[a][i] = decay * S[a][i] + d * kk[i];
                o += S[a][i] * qq[i];
            }
            o = warp_sum(o);
            if (lane == 0) out[t * out_stride + (i64)h * hv + r] = o;
        }
        if (keep && replay && blockIdx.x == 0 && threadIdx.x == 0) {
            float* rp = replay + ((((i64)layer * n_seq + seq) * rollback_tokens) + it) * rw;
            rp[2 * ch + h] = gv;
            rp[2 * ch + n_v + h] = bv;
        }
    }
#pragma unroll
    for (int a = 0; a < REC_ROWS; ++a)
#pragma unroll
        for (int i = 0; i < REC_MAX_HK / 32; ++i)
            if (r0 + a < hv && i < nd) S1[(i64)(r0 + a) * hk + lane + 32 * i] = S[a][i];
}

// Rollback of the convolution state: the history of group 0's sequence in copy `src`
// (zeros when p0 == 0) followed by the kept inputs of its first n tokens (x rows of
// x_stride values, token i at row i), written to copy src ^ 1. Grid (ceil(ch / 128)),
// block 128.
extern "C" __global__ void conv_shift(const float* __restrict__ x, int x_stride,
                                      float* __restrict__ conv, const int* __restrict__ group,
                                      int layer, int n_seq, int ch, int K) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= ch) return;
    const int seq = group[0], n = group[2], p0 = group[3], src = group[4];
    const int k1 = K - 1;
    const i64 per = (i64)ch * k1;
    const i64 base = ((i64)layer * n_seq + seq) * 2;
    const float* hs = conv + (base + src) * per + (i64)c * k1;
    float* hd = conv + (base + (src ^ 1)) * per + (i64)c * k1;
    float hist[REC_MAX_K1];
#pragma unroll
    for (int j = 0; j < REC_MAX_K1; ++j) hist[j] = (j < k1 && p0 != 0) ? hs[j] : 0.0f;
    for (int i = 0; i < n; ++i) {
#pragma unroll
        for (int j = 0; j < REC_MAX_K1 - 1; ++j)
            if (j + 1 < k1) hist[j] = hist[j + 1];
        if (k1 > 0) hist[k1 - 1] = x[(i64)i * x_stride + c];
    }
#pragma unroll
    for (int j = 0; j < REC_MAX_K1; ++j)
        if (j < k1) hd[j] = hist[j];
}
