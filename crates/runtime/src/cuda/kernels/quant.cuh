// Weight formats in their GGUF block layouts, one struct per type with:
//   EPI     elements per work item of the quantized matrix-vector product,
//   vdot()  item `it` of a weight row dotted with 8-bit activations (bq8 blocks, dp4a),
//   deq()   the 32 values of chunk `k` of a row, as f32 (dequantization, embeddings).
// Offsets follow crates/quant/src/formats; multi-byte fields are little-endian.

// Activations quantized per 32 values: q = round(x / d) in [-127, 127], d = max|x| / 127,
// s = d * sum(q) (for formats with an offset or a minimum). 40 bytes, 4-byte aligned.
struct bq8 {
    float d;
    float s;
    int qs[8];
};

// Spreads the 4 low bits of v to bit 4 of each byte (the fifth bit of 5-bit levels).
static __device__ __forceinline__ u32 spread4(u32 v) {
    return ((v & 1u) << 4) | ((v & 2u) << 11) | ((v & 4u) << 18) | ((v & 8u) << 25);
}

// Q4_0: f16 d; 16 bytes: element l in the low nibble of byte l, element l+16 in the high.
// w = d * (q - 8).
struct Q4_0 {
    static const int EPI = 32, BYTES = 18;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const u8* b = row + it * BYTES;
        const bq8& a = x[it];
        int s = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 q = ld32_a2(b + 2 + 4 * j);
            s = dot4(q & 0x0F0F0F0F, a.qs[j], s);
            s = dot4((q >> 4) & 0x0F0F0F0F, a.qs[4 + j], s);
        }
        return f16_to_f32(ld16(b)) * (a.d * (float)s - 8.0f * a.s);
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + k * BYTES;
        const float d = f16_to_f32(ld16(b));
        for (int l = 0; l < 16; ++l) {
            y[l] = (float)((int)(b[2 + l] & 15) - 8) * d;
            y[l + 16] = (float)((int)(b[2 + l] >> 4) - 8) * d;
        }
    }
};

// Q4_1: f16 d, f16 m; nibbles as Q4_0. w = d * q + m.
struct Q4_1 {
    static const int EPI = 32, BYTES = 20;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const u8* b = row + it * BYTES;
        const bq8& a = x[it];
        int s = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 q = ld32_a4(b + 4 + 4 * j);
            s = dot4(q & 0x0F0F0F0F, a.qs[j], s);
            s = dot4((q >> 4) & 0x0F0F0F0F, a.qs[4 + j], s);
        }
        return f16_to_f32(ld16(b)) * a.d * (float)s + f16_to_f32(ld16(b + 2)) * a.s;
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + k * BYTES;
        const float d = f16_to_f32(ld16(b)), m = f16_to_f32(ld16(b + 2));
        for (int l = 0; l < 16; ++l) {
            y[l] = (float)(b[4 + l] & 15) * d + m;
            y[l + 16] = (float)(b[4 + l] >> 4) * d + m;
        }
    }
};

// Q5_0: f16 d; u32 qh (bit i = fifth bit of element i); nibbles as Q4_0. w = d * (q - 16).
struct Q5_0 {
    static const int EPI = 32, BYTES = 22;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const u8* b = row + it * BYTES;
        const bq8& a = x[it];
        const u32 h = ld32_a2(b + 2);
        int s = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 q = ld32_a2(b + 6 + 4 * j);
            s = dot4((q & 0x0F0F0F0F) | spread4(h >> (4 * j)), a.qs[j], s);
            s = dot4(((q >> 4) & 0x0F0F0F0F) | spread4(h >> (16 + 4 * j)), a.qs[4 + j], s);
        }
        return f16_to_f32(ld16(b)) * (a.d * (float)s - 16.0f * a.s);
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + k * BYTES;
        const float d = f16_to_f32(ld16(b));
        const u32 h = ld32_a2(b + 2);
        for (int l = 0; l < 16; ++l) {
            const int lo = (b[6 + l] & 15) | (((h >> l) & 1) << 4);
            const int hi = (b[6 + l] >> 4) | (((h >> (l + 16)) & 1) << 4);
            y[l] = (float)(lo - 16) * d;
            y[l + 16] = (float)(hi - 16) * d;
        }
    }
};

// Q5_1: f16 d, f16 m, u32 qh, nibbles. w = d * q + m.
struct Q5_1 {
    static const int EPI = 32, BYTES = 24;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const u8* b = row + it * BYTES;
        const bq8& a = x[it];
        const u32 h = ld32_a4(b + 4);
        int s = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 q = ld32_a4(b + 8 + 4 * j);
            s = dot4((q & 0x0F0F0F0F) | spread4(h >> (4 * j)), a.qs[j], s);
            s = dot4(((q >> 4) & 0x0F0F0F0F) | spread4(h >> (16 + 4 * j)), a.qs[4 + j], s);
        }
        return f16_to_f32(ld16(b)) * a.d * (float)s + f16_to_f32(ld16(b + 2)) * a.s;
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + k * BYTES;
        const float d = f16_to_f32(ld16(b)), m = f16_to_f32(ld16(b + 2));
        const u32 h = ld32_a4(b + 4);
        for (int l = 0; l < 16; ++l) {
            y[l] = (float)((b[8 + l] & 15) | (((h >> l) & 1) << 4)) * d + m;
            y[l + 16] = (float)((b[8 + l] >> 4) | (((h >> (l + 16)) & 1) << 4)) * d + m;
        }
    }
};

// Q8_0: f16 d; 32 signed bytes. w = d * q.
struct Q8_0 {
    static const int EPI = 32, BYTES = 34;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const u8* b = row + it * BYTES;
        const bq8& a = x[it];
        int s = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) s = dot4(ld32_a2(b + 2 + 4 * j), a.qs[j], s);
        return f16_to_f32(ld16(b)) * a.d * (float)s;
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + k * BYTES;
        const float d = f16_to_f32(ld16(b));
        for (int l = 0; l < 32; ++l) y[l] = (float)(i8)b[2 + l] * d;
    }
};

// The 6-bit scale and minimum of sub-block j (0..8) of a Q4_K/Q5_K super-block.
static __device__ __forceinline__ void k_scale_min(const u8* s, int j, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K: super-blocks of 256: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles.
// Chunk c (0..4) of 32 bytes holds sub-block 2c in low nibbles, 2c+1 in high ones.
// w = d * sc * q - dmin * m. A work item is one chunk: 64 values, two activation blocks.
struct Q4_K {
    static const int EPI = 64, BYTES = 144;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const int ib = it >> 2, c = it & 3;
        const u8* b = row + ib * BYTES;
        const bq8& a1 = x[ib * 8 + 2 * c];
        const bq8& a2 = x[ib * 8 + 2 * c + 1];
        int s1 = 0, s2 = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const u32 q = ld32_a4(b + 16 + 32 * c + 4 * j);
            s1 = dot4(q & 0x0F0F0F0F, a1.qs[j], s1);
            s2 = dot4((q >> 4) & 0x0F0F0F0F, a2.qs[j], s2);
        }
        int sc1, m1, sc2, m2;
        k_scale_min(b + 4, 2 * c, &sc1, &m1);
        k_scale_min(b + 4, 2 * c + 1, &sc2, &m2);
        const float d = f16_to_f32(ld16(b)), dmin = f16_to_f32(ld16(b + 2));
        return d * ((float)sc1 * a1.d * (float)s1 + (float)sc2 * a2.d * (float)s2)
             - dmin * ((float)m1 * a1.s + (float)m2 * a2.s);
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + (k >> 3) * BYTES;
        const int j = k & 7, c = j >> 1, sh = 4 * (j & 1);
        int sc, m;
        k_scale_min(b + 4, j, &sc, &m);
        const float d = f16_to_f32(ld16(b)) * (float)sc, dm = f16_to_f32(ld16(b + 2)) * (float)m;
        for (int l = 0; l < 32; ++l) y[l] = d * (float)((b[16 + 32 * c + l] >> sh) & 15) - dm;
    }
};

// Q5_K: as Q4_K with 32 bytes qh after the scales: bit j of qh[l] is the fifth bit of
// element l of sub-block j.
struct Q5_K {
    static const int EPI = 64, BYTES = 176;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const int ib = it >> 2, c = it & 3;
        const u8* b = row + ib * BYTES;
        const bq8& a1 = x[ib * 8 + 2 * c];
        const bq8& a2 = x[ib * 8 + 2 * c + 1];
        int s1 = 0, s2 = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const u32 q = ld32_a4(b + 48 + 32 * c + 4 * j);
            const u32 h = ld32_a4(b + 16 + 4 * j);
            const u32 lo = (q & 0x0F0F0F0F) | (((h >> (2 * c)) & 0x01010101) << 4);
            const u32 hi = ((q >> 4) & 0x0F0F0F0F) | (((h >> (2 * c + 1)) & 0x01010101) << 4);
            s1 = dot4(lo, a1.qs[j], s1);
            s2 = dot4(hi, a2.qs[j], s2);
        }
        int sc1, m1, sc2, m2;
        k_scale_min(b + 4, 2 * c, &sc1, &m1);
        k_scale_min(b + 4, 2 * c + 1, &sc2, &m2);
        const float d = f16_to_f32(ld16(b)), dmin = f16_to_f32(ld16(b + 2));
        return d * ((float)sc1 * a1.d * (float)s1 + (float)sc2 * a2.d * (float)s2)
             - dmin * ((float)m1 * a1.s + (float)m2 * a2.s);
    }
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u8* b = row + (k >> 3) * BYTES;
        const int j = k & 7, c = j >> 1, sh = 4 * (j & 1);
        int sc, m;
        k_scale_min(b + 4, j, &sc, &m);
        const float d = f16_to_f32(ld16(b)) * (float)sc, dm = f16_to_f32(ld16(b + 2)) * (float)m;
        for (int l = 0; l < 32; ++l) {
            const int q = ((b[48 + 32 * c + l] >> sh) & 15) | (((b[16 + l] >> j) & 1) << 4);
            y[l] = d * (float)q - dm;
        }
    }
};

// Q6_K: super-blocks of 256: 128 bytes ql (low 4 bits), 64 bytes qh (high 2 bits), 16
// signed 8-bit scales (one per 16 values), f16 d. Value i = 32k + l (k = 0..8) sits in
// ql[64*(k/4) + 32*(k%2) + l] >> 4*((k%4)/2) and qh[32*(k/4) + l] >> 2*(k%4).
// w = d * sc * (q - 32). A work item is 32 values (one activation block).
struct Q6_K {
    static const int EPI = 32, BYTES = 210;
    static __device__ __forceinline__ float vdot(const u8* row, int it, const bq8* x) {
        const int ib = it >> 3, k = it & 7, half = k >> 2, run = k & 3;
        const u8* b = row + ib * BYTES;
        const u8* ql = b + 64 * half + 32 * (run & 1);
        const u8* qh = b + 128 + 32 * half;
        const int lsh = 4 * (run >> 1), hsh = 2 * run;
        const bq8& a = x[it];
        int s[2] = {0, 0}, sx[2] = {0, 0};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const u32 q = ((ld32_a2(ql + 4 * j) >> lsh) & 0x0F0F0F0F)
                        | (((ld32_a2(qh + 4 * j) >> hsh) & 0x03030303) << 4);
            s[j >> 2] = dot4(q, a.qs[j], s[j >> 2]);
            sx[j >> 2] = dot4(0x01010101, a.qs[j], sx[j >> 2]);
        }
        const i8* sc = (const i8*)(b + 192) + 2 * k;
        const float d = f16_to_f32(ld16(b + 208));
        return d * a.d * ((float)sc[0] * (float)(s[0] - 32 * sx[0])
                        + (float)sc[1] * (float)(s[1] - 32 * sx[1]));
    }
    static __device__ __forceinline__ void deq(const u8* row, int kk, float* y) {
        const u8* b = row + (kk >> 3) * BYTES;
        const int k = kk & 7, half = k >> 2, run = k & 3;
        const u8* ql = b + 64 * half + 32 * (run & 1);
        const u8* qh = b + 128 + 32 * half;
        const int lsh = 4 * (run >> 1), hsh = 2 * run;
        const i8* sc = (const i8*)(b + 192) + 2 * k;
        const float d = f16_to_f32(ld16(b + 208));
        for (int l = 0; l < 32; ++l) {
            const int q = ((ql[l] >> lsh) & 15) | (((qh[l] >> hsh) & 3) << 4);
            // (d * scale) * level, in ggml's order.
            y[l] = d * (float)sc[l >> 4] * (float)(q - 32);
        }
    }
};

// Plain float formats (norms, some embeddings and output matrices).
struct F32 {
    static const int BYTES = 128;
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const float* p = (const float*)row + 32 * k;
        for (int l = 0; l < 32; ++l) y[l] = p[l];
    }
};
struct F16 {
    static const int BYTES = 64;
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u16* p = (const u16*)row + 32 * k;
        for (int l = 0; l < 32; ++l) y[l] = f16_to_f32(p[l]);
    }
};
struct BF16 {
    static const int BYTES = 64;
    static __device__ __forceinline__ void deq(const u8* row, int k, float* y) {
        const u16* p = (const u16*)row + 32 * k;
        for (int l = 0; l < 32; ++l) y[l] = bf16_to_f32(p[l]);
    }
};
