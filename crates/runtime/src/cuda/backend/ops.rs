//! [`Ops`] on the GPU: each operation of a forward pass checks its shapes and launches its
//! kernels through [`CudaOps`].

use super::launch::{fnv, grid1, Arg, CudaOps, Mode, MAX_GRID_YZ};
use super::memory::{kv_code, kv_max_head_dim, ATT_TOKENS};
use super::weights::DevWeight;
use crate::ops::GEMM_MIN_TOKENS;
use crate::ops::{Act, Attention, Batch, DeltaNet, Ops, Rope, RopeMode};
use crate::rollback::ROLLBACK_TOKENS;
use crate::tensor::Weight;

impl CudaOps<'_> {
    /// The batch's activations quantized to bq8 blocks (cached while `x` is unchanged).
    pub(super) fn quantize(&self, n: usize, x: Act, cols: usize) -> u64 {
        let key = Some((x.id, n, cols));
        if self.quantized.get() != key {
            let nb = (cols / 32) as i32;
            self.launch(
                "quantize_q8_1",
                (grid1(cols / 32, 8), n as u32, 1),
                256,
                &[
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.be.q8.ptr),
                    Arg::I(nb),
                    Arg::I(cols as i32),
                ],
                || format!("{n} rows of {cols} (buffer width {})", x.width),
            );
            self.quantized.set(key);
        }
        self.be.q8.ptr
    }

    pub(super) fn matmul_gemm(&self, n: usize, w: &Weight, dw: DevWeight, x: Act, out: Act) {
        let (rows, cols) = (w.rows, w.cols);
        let key = Some((x.id, n, cols));
        if self.halved.get() != key {
            self.launch(
                "f32_to_f16",
                (grid1(cols, 256), n as u32, 1),
                256,
                &[
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.be.xh.ptr),
                    Arg::I(cols as i32),
                ],
                || format!("{n} rows of {cols}"),
            );
            self.halved.set(key);
        }
        let deq = &self.be.names.deq[&dw.ty];
        // Tiles of a multiple of 64 rows keep the output columns 256-byte aligned for cuBLAS;
        // a tile's rows are the dequantizing launch's grid y, which stops at 65535.
        let fit = (self.be.tile_elems / cols).min(MAX_GRID_YZ as usize);
        let tile_rows = if fit >= 64 { fit / 64 * 64 } else { fit }.clamp(1, rows);
        let o = self.act(out);
        self.used_blas.set(true);
        let mut r0 = 0;
        while r0 < rows && !self.failed() {
            let rb = tile_rows.min(rows - r0);
            self.launch(
                deq,
                (grid1(cols / 32, 128), rb as u32, 1),
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.be.tile.ptr),
                    Arg::I(cols as i32),
                    Arg::I(r0 as i32),
                ],
                || format!("rows {r0}..{} of a {:?} {rows} × {cols}", r0 + rb, w.ty),
            );
            if self.mode == Mode::Launch && !self.failed() {
                let Some(g) = &self.be.gemm else { return };
                // SAFETY: the tile holds rb × cols f16 (rb ≤ tile_elems / cols), xh holds
                // n × cols f16, out holds n rows of out.width ≥ rows floats, from column r0;
                // all were written by earlier work on the handle's stream.
                let r = unsafe {
                    g.f16_f32(
                        rb,
                        n,
                        cols,
                        self.be.tile.ptr,
                        cols,
                        self.be.xh.ptr,
                        cols,
                        o + (r0 * 4) as u64,
                        out.width,
                    )
                };
                if let Err(e) = r {
                    self.fail("matmul (cuBLAS)", e);
                }
            } else {
                self.hash
                    .set(fnv(self.hash.get(), (rb as u64) << 32 | r0 as u64));
            }
            r0 += rb;
        }
    }
}

impl Ops for CudaOps<'_> {
    fn batch(&self) -> &Batch {
        self.batch
    }

    fn embed(&self, w: &Weight, out: Act) {
        let n = self.batch.len();
        let o = self.act(out);
        if !self.batch.embd.is_empty() {
            let gw = self.batch.embd.len() / n.max(1);
            self.rows_kernel(
                "embd_rows",
                n,
                out.width,
                &[
                    Arg::P(self.be.embd.ptr),
                    Arg::I(gw as i32),
                    Arg::P(o),
                    Arg::I(out.width as i32),
                    Arg::I(out.width as i32),
                ],
            );
        } else if let Some(dw) = self.weight("embed", w) {
            if w.cols > out.width {
                self.fail(
                    "embed",
                    format!("rows of {} into a buffer of {}", w.cols, out.width),
                );
                return;
            }
            self.launch(
                &self.be.names.rows[&dw.ty],
                (grid1(w.cols / 32, 128), n as u32, 1),
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.info(self.be.layout.tokens)),
                    Arg::P(o),
                    Arg::I(out.width as i32),
                    Arg::I(w.cols as i32),
                ],
                || format!("{n} rows of a {:?} {} × {}", w.ty, w.rows, w.cols),
            );
        }
        self.wrote(out);
    }

    fn rms_norm(&self, n: usize, x: Act, w: Option<&[f32]>, eps: f32, row_len: usize, out: Act) {
        let per_token = x.width / row_len.max(1);
        if n * per_token == 0 {
            return;
        }
        let wp = w.map_or(0, |w| self.vector("rms_norm", w));
        if w.is_some() && wp == 0 {
            return;
        }
        self.launch(
            "rms_norm",
            ((n * per_token).max(1) as u32, 1, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(row_len as i32),
                Arg::I(per_token as i32),
                Arg::F(eps),
            ],
            || format!("{n} tokens × {per_token} rows of {row_len}"),
        );
        self.wrote(out);
    }

    fn matmul(&self, n: usize, w: &Weight, x: Act, out: Act) {
        self.wrote(out);
        let Some(dw) = self.weight("matmul", w) else {
            return;
        };
        if n == 0 {
            return;
        }
        if w.cols > x.width || w.rows > out.width || w.cols > self.be.limits.max_width {
            self.fail(
                "matmul",
                format!(
                    "a {} × {} weight with inputs of {} and outputs of {} values",
                    w.rows, w.cols, x.width, out.width
                ),
            );
            return;
        }
        if self.chunk.is_some() && n >= GEMM_MIN_TOKENS && self.be.gemm.is_some() {
            self.matmul_gemm(n, w, dw, x, out);
            self.wrote(out);
            return;
        }
        let (rows, cols) = (w.rows, w.cols);
        let shapes = || format!("{n} tokens × a {:?} {rows} × {cols}", w.ty);
        let grid = (grid1(rows, 4), grid1(n, 8), 1);
        if let Some(k) = self.be.names.mmvq.get(&dw.ty) {
            let q = self.quantize(n, x, cols);
            self.launch(
                k,
                grid,
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(q),
                    Arg::I((cols / 32) as i32),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(cols as i32),
                    Arg::I(rows as i32),
                    Arg::I(n as i32),
                ],
                shapes,
            );
        } else {
            self.launch(
                &self.be.names.mmv[&dw.ty],
                grid,
                128,
                &[
                    Arg::P(dw.ptr),
                    Arg::L(dw.row_bytes as i64),
                    Arg::P(self.act(x)),
                    Arg::I(x.width as i32),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(cols as i32),
                    Arg::I(rows as i32),
                    Arg::I(n as i32),
                ],
                shapes,
            );
        }
        self.wrote(out);
    }

    fn add_bias(&self, n: usize, x: Act, b: &[f32]) {
        let bp = self.vector("add_bias", b);
        self.rows_kernel(
            "add_bias",
            n,
            b.len().min(x.width),
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(bp),
                Arg::I(b.len().min(x.width) as i32),
            ],
        );
        self.wrote(x);
    }

    fn rope(&self, x: Act, n_heads: usize, head_dim: usize, rope: &Rope) {
        let n = self.batch.len();
        let fp = self.vector("rope", &rope.inv_freq);
        let half = rope.n_rot / 2;
        // M-RoPE: each pair's position component, 2 bits a pair in four words.
        let mut sec = [0u32; 4];
        // Positions given per token: the pairs without a section turn by t (as on the CPU).
        let multi = !self.batch.rope_pos.is_empty();
        if multi && !rope.section.is_empty() {
            if half > 64 {
                self.fail(
                    "rope",
                    format!("{half} rotary pairs with sections (64 at most)"),
                );
                return;
            }
            for (i, &c) in rope.section.iter().take(half).enumerate() {
                sec[i / 16] |= (c.min(3) as u32) << (2 * (i % 16));
            }
        }
        let pos3 = if multi {
            self.info(self.be.layout.rope3)
        } else {
            0
        };
        if rope.n_rot > head_dim || n_heads * head_dim > x.width || rope.inv_freq.len() < half {
            self.fail(
                "rope",
                format!(
                    "{n_heads} heads of {head_dim} (rotating {}) in rows of {}",
                    rope.n_rot, x.width
                ),
            );
            return;
        }
        self.launch(
            "rope",
            (grid1(n_heads * half, 256), n as u32, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.info(self.be.layout.pos)),
                Arg::P(fp),
                Arg::I(n_heads as i32),
                Arg::I(head_dim as i32),
                Arg::I(rope.n_rot as i32),
                Arg::F(rope.freq_scale),
                Arg::I((rope.mode == RopeMode::Neox) as i32),
                Arg::P(pos3),
                Arg::U(sec[0]),
                Arg::U(sec[1]),
                Arg::U(sec[2]),
                Arg::U(sec[3]),
            ],
            || format!("{n} tokens × {n_heads} heads of {head_dim}"),
        );
        self.wrote(x);
    }

    fn attention(&self, layer: usize, q: Act, k: Act, v: Act, spec: &Attention, out: Act) {
        let be = self.be;
        // Past the cache's layers when it is another device's: refused below.
        let layer = layer.checked_sub(be.first.0).unwrap_or(usize::MAX);
        let c = &be.kv;
        let n = self.batch.len();
        let hd = spec.head_dim;
        let kv_dim = spec.n_kv_heads * hd;
        let shapes = || {
            format!(
                "layer {layer}, {n} tokens, {} heads / {} kv heads of {hd}, n_ctx {}",
                spec.n_heads, spec.n_kv_heads, c.n_ctx
            )
        };
        if layer >= c.n_layers
            || kv_dim != c.kv_dim
            || !hd.is_multiple_of(32)
            || hd > kv_max_head_dim(c)
            || spec.n_kv_heads == 0
            || !spec.n_heads.is_multiple_of(spec.n_kv_heads)
            || spec.n_heads * hd > q.width.min(out.width)
            || kv_dim > k.width.min(v.width)
            || spec.n_heads > 65535
        {
            self.fail(
                "attention",
                format!(
                    "unsupported shape: {} (KV cache of {} layers × {}, {}/{}; head sizes \
                     must be multiples of 32 up to {})",
                    shapes(),
                    c.n_layers,
                    c.kv_dim,
                    c.k_type,
                    c.v_type,
                    kv_max_head_dim(c)
                ),
            );
            return;
        }
        // Each layer's keys (values) are n_seq × n_ctx rows in the cache's type.
        let k_off = (layer * c.n_seq * c.n_ctx * c.k_type.row_bytes(c.kv_dim)) as i64;
        let v_off = (layer * c.n_seq * c.n_ctx * c.v_type.row_bytes(c.kv_dim)) as i64;
        let (k_type, v_type) = (kv_code(c.k_type), kv_code(c.v_type));
        let l = be.layout;
        self.launch(
            "kv_write",
            (grid1(kv_dim, 256), n as u32, 1),
            256,
            &[
                Arg::P(self.act(k)),
                Arg::I(k.width as i32),
                Arg::P(self.act(v)),
                Arg::I(v.width as i32),
                Arg::P(be.kc.ptr),
                Arg::P(be.vc.ptr),
                Arg::P(self.info(l.pos)),
                Arg::P(self.info(l.seq)),
                Arg::I(kv_dim as i32),
                Arg::I(c.n_ctx as i32),
                Arg::L(k_off),
                Arg::L(v_off),
                Arg::I(k_type),
                Arg::I(v_type),
            ],
            shapes,
        );
        let softcap = spec.softcap.unwrap_or(0.0);
        let window = spec.window.map_or(0, |w| w.min(i32::MAX as u32) as i32);
        if let Some((seq, p0)) = self.chunk {
            self.launch(
                "attn_prefill",
                (grid1(n, 8), spec.n_heads as u32, 1),
                128,
                &[
                    Arg::P(self.act(q)),
                    Arg::I(q.width as i32),
                    Arg::P(be.kc.ptr),
                    Arg::P(be.vc.ptr),
                    Arg::P(self.act(out)),
                    Arg::I(out.width as i32),
                    Arg::I(n as i32),
                    Arg::I(seq as i32),
                    Arg::I(p0 as i32),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(spec.n_kv_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(c.n_ctx as i32),
                    Arg::L(k_off),
                    Arg::L(v_off),
                    Arg::I(k_type),
                    Arg::I(v_type),
                    Arg::F(spec.scale),
                    Arg::F(softcap),
                    Arg::I(window),
                    Arg::I(self.batch.non_causal as i32),
                ],
                shapes,
            );
            self.wrote(out);
            return;
        }
        // Decode: slices of ATT_TOKENS tokens, a fixed number of splits over the context.
        if ATT_TOKENS * spec.n_heads * be.n_split * (hd + 2) * 4 > be.part.bytes {
            self.fail(
                "attention",
                format!("{} exceeds the partials planned at load", shapes()),
            );
            return;
        }
        let (qp, op) = (self.act(q), self.act(out));
        for t0 in (0..n).step_by(ATT_TOKENS) {
            let nt = ATT_TOKENS.min(n - t0);
            let off = |base: usize| self.info(base + t0);
            self.launch(
                "attn_decode",
                (spec.n_heads as u32, nt as u32, be.n_split as u32),
                128,
                &[
                    Arg::P(qp + (t0 * q.width * 4) as u64),
                    Arg::I(q.width as i32),
                    Arg::P(be.kc.ptr),
                    Arg::P(be.vc.ptr),
                    Arg::P(off(l.pos)),
                    Arg::P(off(l.seq)),
                    Arg::P(off(l.kend)),
                    Arg::P(be.part.ptr),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(spec.n_kv_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(c.n_ctx as i32),
                    Arg::L(k_off),
                    Arg::L(v_off),
                    Arg::I(k_type),
                    Arg::I(v_type),
                    Arg::F(spec.scale),
                    Arg::F(softcap),
                    Arg::I(window),
                    Arg::I(be.split_len as i32),
                ],
                shapes,
            );
            self.launch(
                "attn_combine",
                (spec.n_heads as u32, nt as u32, 1),
                hd as u32,
                &[
                    Arg::P(be.part.ptr),
                    Arg::P(op + (t0 * out.width * 4) as u64),
                    Arg::I(out.width as i32),
                    Arg::I(spec.n_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(be.n_split as i32),
                ],
                shapes,
            );
        }
        self.wrote(out);
    }

    fn swiglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip("swiglu", n, gate, up, out);
    }

    fn geglu(&self, n: usize, gate: Act, up: Act, out: Act) {
        self.zip("geglu", n, gate, up, out);
    }

    fn add(&self, n: usize, a: Act, b: Act, out: Act) {
        self.zip("add", n, a, b, out);
    }

    fn scale(&self, n: usize, x: Act, s: f32) {
        self.rows_kernel(
            "scale",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::F(s),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(x);
    }

    fn gather_logit_rows(&self, x: Act, out: Act) {
        let n = self.batch.logits.len();
        if n == 0 {
            return;
        }
        if x.width > out.width {
            self.fail(
                "gather_logit_rows",
                format!("rows of {} into {}", x.width, out.width),
            );
            return;
        }
        self.rows_kernel(
            "copy_rows",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.info(self.be.layout.logits)),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(out);
    }

    fn softcap(&self, n: usize, x: Act, cap: f32) {
        self.rows_kernel(
            "softcap",
            n,
            x.width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::F(cap),
                Arg::I(x.width as i32),
            ],
        );
        self.wrote(x);
    }

    fn unzip(&self, n: usize, x: Act, half: usize, a: Act, b: Act) {
        let groups = x.width / (2 * half.max(1));
        let width = groups * half;
        if width > a.width.min(b.width) {
            self.fail(
                "unzip",
                format!(
                    "{groups} pairs of {half} into rows of {} and {}",
                    a.width, b.width
                ),
            );
            return;
        }
        self.rows_kernel(
            "unzip",
            n,
            width,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::I(half as i32),
                Arg::I(width as i32),
            ],
        );
        self.wrote(a);
        self.wrote(b);
    }

    fn sigmoid_mul(&self, n: usize, x: Act, gate: Act, out: Act) {
        self.zip("sigmoid_mul", n, x, gate, out);
    }

    fn concat(&self, n: usize, a: Act, b: Act, out: Act) {
        let width = a.width + b.width;
        if width > out.width {
            self.fail(
                "concat",
                format!("{} + {} values into {}", a.width, b.width, out.width),
            );
            return;
        }
        self.rows_kernel(
            "concat",
            n,
            width,
            &[
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(width as i32),
            ],
        );
        self.wrote(out);
    }

    fn gated_rms_norm(&self, n: usize, x: Act, z: Act, w: &[f32], eps: f32, out: Act) {
        let row_len = w.len().max(1);
        let per_token = out.width / row_len;
        if n * per_token == 0 {
            return;
        }
        let wp = self.vector("gated_rms_norm", w);
        self.launch(
            "gated_rms_norm",
            ((n * per_token).max(1) as u32, 1, 1),
            256,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(self.act(z)),
                Arg::I(z.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(row_len as i32),
                Arg::I(per_token as i32),
                Arg::F(eps),
            ],
            || format!("{n} tokens × {per_token} rows of {row_len}"),
        );
        self.wrote(out);
    }

    fn delta_gates(&self, n: usize, alpha: Act, beta: Act, dt_bias: &[f32], a: &[f32]) {
        let heads = a.len().min(dt_bias.len()).min(alpha.width).min(beta.width);
        let (bp, ap) = (
            self.vector("delta_gates", dt_bias),
            self.vector("delta_gates", a),
        );
        self.rows_kernel(
            "delta_gates",
            n,
            heads,
            &[
                Arg::P(self.act(alpha)),
                Arg::I(alpha.width as i32),
                Arg::P(self.act(beta)),
                Arg::I(beta.width as i32),
                Arg::P(bp),
                Arg::P(ap),
                Arg::I(heads as i32),
            ],
        );
        self.wrote(alpha);
        self.wrote(beta);
    }

    fn conv_silu(&self, layer: usize, x: Act, w: &[f32], net: &DeltaNet, out: Act) {
        self.wrote(out);
        let layer = layer.checked_sub(self.be.first.1).unwrap_or(usize::MAX);
        let Some(rec) = self.rec("conv_silu", layer, net) else {
            return;
        };
        let (ch, k) = (net.conv_channels(), net.conv_kernel.max(1));
        if w.len() < ch * k || ch > x.width.min(out.width) {
            self.fail(
                "conv_silu",
                format!(
                    "{ch} channels × {k} taps ({} given), rows of {}",
                    w.len(),
                    x.width
                ),
            );
            return;
        }
        let wp = self.vector("conv_silu", w);
        let l = self.be.layout;
        self.launch(
            "conv_silu",
            (grid1(ch, 128), rec.t.groups.len() as u32, 1),
            128,
            &[
                Arg::P(self.act(x)),
                Arg::I(x.width as i32),
                Arg::P(wp),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::P(rec.conv.ptr),
                Arg::P(rec.replay.ptr),
                Arg::P(self.info(l.groups)),
                Arg::P(self.info(l.order)),
                Arg::I(layer as i32),
                Arg::I(rec.t.n_seq() as i32),
                Arg::I(ch as i32),
                Arg::I(k as i32),
                Arg::I(net.n_v_heads as i32),
                Arg::I(ROLLBACK_TOKENS as i32),
            ],
            || {
                format!(
                    "recurrent layer {layer}, {ch} channels, {} sequences",
                    rec.t.groups.len()
                )
            },
        );
    }

    fn gated_delta(&self, layer: usize, qkv: Act, g: Act, beta: Act, net: &DeltaNet, out: Act) {
        self.wrote(out);
        let layer = layer.checked_sub(self.be.first.1).unwrap_or(usize::MAX);
        let Some(rec) = self.rec("gated_delta", layer, net) else {
            return;
        };
        let (nk, nv, hk, hv) = (net.n_k_heads, net.n_v_heads, net.head_k, net.head_v);
        if net.conv_channels() > qkv.width || nv > g.width.min(beta.width) || nv * hv > out.width {
            self.fail(
                "gated_delta",
                format!(
                    "shapes {net:?} with rows of {}, {}, {}",
                    qkv.width, g.width, out.width
                ),
            );
            return;
        }
        let l = self.be.layout;
        self.launch(
            "gated_delta",
            (grid1(hv, 16), nv as u32, rec.t.groups.len() as u32),
            128,
            &[
                Arg::P(self.act(qkv)),
                Arg::I(qkv.width as i32),
                Arg::P(self.act(g)),
                Arg::I(g.width as i32),
                Arg::P(self.act(beta)),
                Arg::I(beta.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::P(rec.ssm.ptr),
                Arg::P(rec.replay.ptr),
                Arg::P(self.info(l.groups)),
                Arg::P(self.info(l.order)),
                Arg::I(layer as i32),
                Arg::I(rec.t.n_seq() as i32),
                Arg::I(nk as i32),
                Arg::I(nv as i32),
                Arg::I(hk as i32),
                Arg::I(hv as i32),
                Arg::F(net.eps),
                Arg::F(1.0 / (hk as f32).sqrt()),
                Arg::I(ROLLBACK_TOKENS as i32),
            ],
            || format!("recurrent layer {layer}, {nv} value heads of {hv} × {hk}"),
        );
    }
}

impl CudaOps<'_> {
    /// `out = f(a, b)` element-wise, row by row.
    pub(super) fn zip(&self, name: &str, n: usize, a: Act, b: Act, out: Act) {
        let w = out.width.min(a.width).min(b.width);
        self.rows_kernel(
            name,
            n,
            w,
            &[
                Arg::P(self.act(a)),
                Arg::I(a.width as i32),
                Arg::P(self.act(b)),
                Arg::I(b.width as i32),
                Arg::P(self.act(out)),
                Arg::I(out.width as i32),
                Arg::I(w as i32),
            ],
        );
        self.wrote(out);
    }
}
