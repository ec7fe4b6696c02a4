//! Matrix multiplication on the CPU: the kernel each batch takes (repacked rows, the int8
//! GEMM, dequantized blocks and an f32 GEMM for prompt chunks, dot products otherwise).

use quant::dot::{activation_type, dot_fn, dot_multi_fn, prepared_fn, quantize_activations, DotFn};
use quant::{gemm as int8, rows16, GgmlType};

use super::{CpuOps, GEMM_ROWS};
use crate::ops::{Act, GEMM_MIN_TOKENS};
use crate::tensor::{Layout, Weight};

impl CpuOps<'_> {
    /// [`crate::Ops::matmul`]: picks the path for the batch and the weight's layout.
    pub(super) fn matmul_impl(&self, n: usize, w: &Weight, x: Act, out: Act) {
        if w.layout() == Layout::Rows16 {
            self.matmul_rows16(n, w, x, out);
            return;
        }
        // Decode steps dot each row with each token: repacking every weight row for the
        // int8 GEMM costs more than it saves below a prompt's worth of tokens.
        if self.chunk.is_some() && n >= GEMM_MIN_TOKENS {
            match int8::isa() {
                Some(isa) if int8::supported(w.ty) && int8::cols_ok(w.ty, w.cols) => {
                    self.matmul_int8(isa, n, w, x, out)
                }
                _ => self.matmul_gemm(n, w, x, out),
            }
            return;
        }
        let aty = activation_type(w.ty);
        let qrow = aty.bytes_for(w.cols as u64).unwrap_or(0) as usize;
        let xs = self.be.act(x);
        // Rows for the prepared kernels are made by the thread that quantizes them, in the
        // same phase (no extra barrier).
        // Only for several tokens: alone, a token is as fast with the plain kernel.
        let prep = prepared_fn(w.ty).filter(|p| n > 1 && (p.len)(w.cols) <= self.be.prow_cap);
        if self.quantized.get() != Some((x.id, aty, n)) {
            self.rows(n, |t| {
                // SAFETY: token t's activation row, its quantized row and its prepared row
                // belong to this thread in this phase.
                unsafe {
                    let src = xs.get(t * x.width, w.cols);
                    let dst = self.be.qbuf.get_mut(t * self.be.qrow_cap, qrow);
                    let _ = quantize_activations(w.ty, src, dst);
                    if let Some(p) = prep {
                        let pdst = self.be.pbuf.get_mut(t * self.be.prow_cap, (p.len)(w.cols));
                        (p.prepare)(w.cols, dst, pdst);
                    }
                }
            });
            self.w.barrier();
            self.quantized.set(Some((x.id, aty, n)));
            if prep.is_some() {
                self.prepared.set(Some((x.id, aty, n)));
            }
        }
        let os = self.be.act(out);
        let dot: Option<DotFn> = dot_fn(w.ty);
        // SAFETY: the quantized rows were written before the barrier above; all threads
        // only read them now.
        let q = unsafe { self.be.qbuf.get(0, self.be.qrow_cap * n) };
        let cap = self.be.qrow_cap;
        if let (Some(_), Some(prep)) = (dot, prep) {
            // Each token's row rearranged once for the kernels (the same values, so the same
            // bits as the plain dot), then every weight row dotted with up to four at once.
            let plen = (prep.len)(w.cols);
            let pcap = self.be.prow_cap;
            if self.prepared.get() != Some((x.id, aty, n)) {
                self.rows(n, |t| {
                    // SAFETY: token t's quantized row is only read; its prepared row belongs
                    // to this thread in this phase.
                    unsafe {
                        let dst = self.be.pbuf.get_mut(t * pcap, plen);
                        (prep.prepare)(w.cols, &q[t * cap..t * cap + qrow], dst);
                    }
                });
                self.w.barrier();
                self.prepared.set(Some((x.id, aty, n)));
            }
            {
                // SAFETY: the prepared rows were written before a barrier; all threads only
                // read them now.
                let pr = unsafe { self.be.pbuf.get(0, pcap * n) };
                self.rows(w.rows, |r| {
                    let wr = w.row(r);
                    for t0 in (0..n).step_by(4) {
                        let k = 4.min(n - t0);
                        let rows: [&[u8]; 4] = std::array::from_fn(|j| {
                            let t = t0 + j.min(k - 1);
                            &pr[t * pcap..t * pcap + plen]
                        });
                        let mut v = [0.0f32; 4];
                        (prep.multi)(w.cols, wr, &rows[..k], &mut v[..k]);
                        for (j, &v) in v[..k].iter().enumerate() {
                            // SAFETY: element (t, r) is written by the thread that owns row r.
                            unsafe { os.set((t0 + j) * out.width + r, v) };
                        }
                    }
                });
                self.done(out);
                return;
            }
        }
        match (dot, dot_multi_fn(w.ty).filter(|_| n > 1)) {
            (Some(_), Some(multi)) => {
                // Several tokens: each weight row unpacked once per four tokens, with the
                // same per-token results as the single dot.
                self.rows(w.rows, |r| {
                    let wr = w.row(r);
                    for t0 in (0..n).step_by(4) {
                        let k = 4.min(n - t0);
                        let acts: [&[u8]; 4] = std::array::from_fn(|j| {
                            let t = t0 + j.min(k - 1);
                            &q[t * cap..t * cap + qrow]
                        });
                        let mut v = [0.0f32; 4];
                        multi(w.cols, wr, &acts[..k], &mut v[..k]);
                        for (j, &v) in v[..k].iter().enumerate() {
                            // SAFETY: element (t, r) is written by the thread that owns row r.
                            unsafe { os.set((t0 + j) * out.width + r, v) };
                        }
                    }
                });
            }
            (Some(dot), None) => {
                self.rows(w.rows, |r| {
                    let wr = w.row(r);
                    for t in 0..n {
                        let v = dot(w.cols, wr, &q[t * cap..t * cap + qrow]);
                        // SAFETY: element (t, r) is written by the thread that owns row r.
                        unsafe { os.set(t * out.width + r, v) };
                    }
                });
            }
            (None, _) => {
                // A weight type without a dot kernel: dequantize each row, dot in f32.
                let row = &mut self.scratch()[..w.cols];
                self.rows(w.rows, |r| {
                    let _ = w.row_to_f32(r, row);
                    for t in 0..n {
                        // SAFETY: x is only read in this phase.
                        let xr = unsafe { xs.get(t * x.width, w.cols) };
                        let v: f32 = row.iter().zip(xr).map(|(a, b)| a * b).sum();
                        // SAFETY: element (t, r) is written by the thread that owns row r.
                        unsafe { os.set(t * out.width + r, v) };
                    }
                });
            }
        }
        self.done(out);
    }

    /// Prompt-sized matmul: this thread's rows of `w`, GEMM_ROWS at a time, dequantized to
    /// f32 and multiplied with all `n` activation rows by an f32 GEMM.
    fn matmul_gemm(&self, n: usize, w: &Weight, x: Act, out: Act) {
        let (xs, os) = (self.be.act(x), self.be.act(out));
        let cols = w.cols;
        let scratch = self.scratch();
        let deq = &mut scratch[..GEMM_ROWS * cols];
        let mine = self.w.split_aligned(w.rows, 16);
        let mut r0 = mine.start;
        while r0 < mine.end {
            let rb = GEMM_ROWS.min(mine.end - r0);
            for j in 0..rb {
                let _ = w.row_to_f32(r0 + j, &mut deq[j * cols..(j + 1) * cols]);
            }
            // SAFETY: x is only read in this phase; this thread alone writes columns
            // r0..r0+rb of the n output rows, which is all gemm writes (dst is n × rb with
            // row stride out.width). The strides describe buffers of at least that size:
            // x has n rows of x.width >= cols values, deq holds rb rows of cols values.
            unsafe {
                let xp = xs.get(0, n * x.width).as_ptr();
                let op = os.as_mut_ptr().add(r0);
                gemm::gemm(
                    n,
                    rb,
                    cols,
                    op,
                    1,
                    out.width as isize,
                    false,
                    xp,
                    1,
                    x.width as isize,
                    deq.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            r0 += rb;
        }
        self.done(out);
    }

    /// Matmul of a weight repacked sixteen rows at a time ([`rows16`]), for any number of
    /// tokens: each token's activations are quantized once (by all threads), then each
    /// thread takes its groups of 16 rows through the kernel with up to eight tokens at a
    /// time. The kernel's result for a token does not depend on the others, so neither does
    /// the output.
    fn matmul_rows16(&self, n: usize, w: &Weight, x: Act, out: Act) {
        let cols = w.cols;
        let ab = rows16::act_bytes(cols);
        let cap = self.be.qrow_cap;
        let (xs, os) = (self.be.act(x), self.be.act(out));
        // The quantized activations do not depend on the weight type: Q, K and V share them.
        let key = Some((x.id, GgmlType::I32, n));
        if self.quantized.get() != key {
            self.rows(n, |t| {
                // SAFETY: token t's activation row is only read; its quantized row belongs to
                // this thread in this phase (qbuf holds max_batch rows of qrow_cap >= ab).
                unsafe {
                    rows16::quantize_act(
                        xs.get(t * x.width, cols),
                        self.be.qbuf.get_mut(t * cap, ab),
                    )
                };
            });
            self.w.barrier();
            self.quantized.set(key);
        }
        // SAFETY: the quantized rows were written before a barrier; all threads only read
        // them now.
        let q = unsafe { self.be.qbuf.get(0, cap * n) };
        let isa = rows16::isa();
        let gb = rows16::group_bytes(w.ty, cols);
        let bytes = w.bytes();
        for g in self.w.split(w.rows.div_ceil(rows16::ROWS)) {
            let group = &bytes[g * gb..(g + 1) * gb];
            let r0 = g * rows16::ROWS;
            let nr = rows16::ROWS.min(w.rows - r0);
            for t0 in (0..n).step_by(rows16::MAX_TOKENS) {
                let k = rows16::MAX_TOKENS.min(n - t0);
                let acts: [&[u8]; rows16::MAX_TOKENS] = std::array::from_fn(|j| {
                    let t = t0 + j.min(k - 1);
                    &q[t * cap..t * cap + ab]
                });
                let mut o = [[0.0f32; rows16::ROWS]; rows16::MAX_TOKENS];
                rows16::kernel(isa, w.ty, cols, group, &acts[..k], &mut o[..k]);
                for (j, o) in o[..k].iter().enumerate() {
                    for (r, &v) in o[..nr].iter().enumerate() {
                        // SAFETY: element (t0 + j, r0 + r) belongs to this thread's groups.
                        unsafe { os.set((t0 + j) * out.width + r0 + r, v) };
                    }
                }
            }
        }
        self.done(out);
    }

    /// Prompt-sized matmul of a weight type the int8 GEMM handles: the activations are
    /// packed into panels of four tokens by all threads, then each thread unpacks its rows
    /// four at a time and multiplies them with every token panel ([`quant::gemm`]).
    fn matmul_int8(&self, isa: quant::Isa, n: usize, w: &Weight, x: Act, out: Act) {
        let cols = w.cols;
        let (chunks, nb) = (cols / int8::CHUNK, cols / 32);
        let a_bytes = int8::act_panel_bytes(cols);
        let groups = n.div_ceil(4);
        let (xs, os) = (self.be.act(x), self.be.act(out));
        // Panels do not depend on the weight type: Q, K and V share theirs.
        let key = Some((x.id, GgmlType::I8, n));
        if self.quantized.get() != key {
            for g in self.w.split(groups) {
                let t0 = 4 * g;
                // SAFETY: x is only read in this phase; panel g and its sums are written
                // by this thread alone (the buffers were sized for max_batch tokens in
                // groups of four, with 4 bytes per value).
                unsafe {
                    let nt = n.min(t0 + 4) - t0;
                    let rows: [&[f32]; 4] =
                        std::array::from_fn(|j| xs.get((t0 + j.min(nt - 1)) * x.width, cols));
                    let panel = self.be.qbuf.get_mut(g * a_bytes, a_bytes);
                    let sums = self.be.panel_sums.get_mut(g * 4 * nb, 4 * nb);
                    int8::pack_acts(&rows[..nt], cols, panel, sums);
                }
            }
            self.w.barrier();
            self.quantized.set(key);
        }
        // SAFETY: the panels were written before the barrier above; all threads only read
        // them now. This thread's scratch is its own.
        let (apanels, asums, wscratch) = unsafe {
            let per = self.be.panel_scratch_per_thread;
            (
                self.be.qbuf.get(0, groups * a_bytes),
                self.be.panel_sums.get(0, groups * 4 * nb),
                self.be.panel_scratch.get_mut(self.w.ith() * per, per),
            )
        };
        let (wpanel, qrow) = wscratch.split_at_mut(int8::weight_panel_bytes(cols));
        let qrow = &mut qrow[..cols];
        let scratch = self.scratch();
        let (s16, bias) = scratch.split_at_mut(cols / 16);
        let bias = &mut bias[..4 * nb];
        let with_bias = int8::has_bias(w.ty);
        let mine = self.w.split_aligned(w.rows, 4);
        let mut r0 = mine.start;
        while r0 < mine.end {
            let nr = 4.min(mine.end - r0);
            let rows: [&[u8]; 4] = std::array::from_fn(|j| w.row(r0 + j.min(nr - 1)));
            // The weight was checked at load; a failure here would be a bug upstream.
            let packed =
                int8::pack_weights(Some(isa), w.ty, &rows[..nr], cols, qrow, s16, wpanel, bias);
            debug_assert!(packed, "int8 GEMM refused a {:?} row of {cols}", w.ty);
            for g in 0..groups {
                let mut o = [[0.0f32; 4]; 4];
                let sums = &asums[g * 4 * nb..(g + 1) * 4 * nb];
                let b = with_bias.then_some((&bias[..], sums));
                let a = &apanels[g * a_bytes..];
                let nt = 4.min(n - 4 * g);
                int8::kernel(Some(isa), w.ty, nt, chunks, wpanel, a, b, &mut o);
                for (r, o) in o.iter().enumerate().take(nr) {
                    for (t, &v) in o.iter().enumerate().take(n - 4 * g) {
                        // SAFETY: element (token, row r0 + r) belongs to this thread's rows.
                        unsafe { os.set((4 * g + t) * out.width + r0 + r, v) };
                    }
                }
            }
            r0 += nr;
        }
        self.done(out);
    }
}
