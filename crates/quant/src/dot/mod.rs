//! CPU dot products of a quantized weight row with an activation row, the inner loop of
//! every matrix × vector: a scalar reference per type, AVX2 and AVX-512 kernels by CPU.

use std::fmt;
use std::sync::OnceLock;

use gguf::GgmlType;

use crate::{Operation, QuantError};

/// The [`DotFn`] of one tier for weights of type `$w`: the functions its module names after
/// the types (`f32_f32`, `q4_0`, ..., `iq4_xs`); `None` for a type it has no kernel for.
macro_rules! kernel_table {
    ($w:expr) => {{
        use gguf::GgmlType as T;
        Some(match $w {
            T::F32 => f32_f32,
            T::F16 => f16_f32,
            T::BF16 => bf16_f32,
            T::Q4_0 => q4_0,
            T::Q4_1 => q4_1,
            T::Q5_0 => q5_0,
            T::Q5_1 => q5_1,
            T::Q8_0 => q8_0,
            T::IQ4_NL => iq4_nl,
            T::Q2_K => q2_k,
            T::Q3_K => q3_k,
            T::Q4_K => q4_k,
            T::Q5_K => q5_k,
            T::Q6_K => q6_k,
            T::IQ4_XS => iq4_xs,
            _ => return None,
        })
    }};
}

/// Defines the safe `DotFn` `$name` of a SIMD tier, which checks the row and calls the
/// tier's target-feature function `$imp` on the blocks (weight blocks of `$wb` bytes,
/// activation blocks of `$ab`, `$block` elements each).
#[cfg(target_arch = "x86_64")]
macro_rules! blocks_fn {
    ($name:ident, $imp:ident, $block:expr, $wb:expr, $ab:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            row_blocks(n, w, a, $block, $wb, $ab);
            let (w, _) = w.as_chunks::<$wb>();
            let (a, _) = a.as_chunks::<$ab>();
            // SAFETY: the tier's `kernel` hands this function out only to callers that
            // checked the CPU has the tier's features, all that `$imp` needs; its reads go
            // through the block slices.
            unsafe { $imp(w, a) }
        }
    };
}

/// As `blocks_fn`, for float weights of `$wb` bytes and f32 activations.
#[cfg(target_arch = "x86_64")]
macro_rules! float_fn {
    ($name:ident, $imp:ident, $wb:expr) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            row_blocks(n, w, a, 1, $wb, 4);
            // SAFETY: as in `blocks_fn`: handed out only after the tier's features were
            // detected; `$imp` reads through the slices.
            unsafe { $imp(w, a) }
        }
    };
}

/// The safe `DotFn`s of a SIMD tier, the names [`kernel_table`] dispatches to: each checks
/// the row and calls the tier's target-feature kernel `<name>_k` on whole blocks (the tier
/// imports the `formats::*_BYTES` sizes).
#[cfg(target_arch = "x86_64")]
macro_rules! tier_fns {
    () => {
        blocks_fn!(q4_0, q4_0_k, 32, Q4_0_BYTES, Q8_0_BYTES);
        blocks_fn!(q4_1, q4_1_k, 32, Q4_1_BYTES, Q8_1_BYTES);
        blocks_fn!(q5_0, q5_0_k, 32, Q5_0_BYTES, Q8_0_BYTES);
        blocks_fn!(q5_1, q5_1_k, 32, Q5_1_BYTES, Q8_1_BYTES);
        blocks_fn!(q8_0, q8_0_k, 32, Q8_0_BYTES, Q8_0_BYTES);
        blocks_fn!(iq4_nl, iq4_nl_k, 32, IQ4_NL_BYTES, Q8_0_BYTES);
        blocks_fn!(q2_k, q2_k_k, 256, Q2_K_BYTES, Q8_K_BYTES);
        blocks_fn!(q3_k, q3_k_k, 256, Q3_K_BYTES, Q8_K_BYTES);
        blocks_fn!(q4_k, q4_k_k, 256, Q4_K_BYTES, Q8_K_BYTES);
        blocks_fn!(q5_k, q5_k_k, 256, Q5_K_BYTES, Q8_K_BYTES);
        blocks_fn!(q6_k, q6_k_k, 256, Q6_K_BYTES, Q8_K_BYTES);
        blocks_fn!(iq4_xs, iq4_xs_k, 256, IQ4_XS_BYTES, Q8_K_BYTES);
        float_fn!(f32_f32, f32_k, 4);
        float_fn!(f16_f32, f16_k, 2);
        float_fn!(bf16_f32, bf16_k, 2);
    };
}

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// `dot(weight row, activation row)` over `n` elements. `w` holds exactly one row of `n`
/// weights in the weight type, `a` exactly one row of `n` activations in
/// [`activation_type`] of it; `n` is a multiple of the block size. Panics otherwise.
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// `dot(weight row, activation row t)` for 1 to 4 activation rows `a[t]` at once, into
/// `out[t]`: the weight row is unpacked once. Each result is the same bits as the
/// [`DotFn`] of the type gives for that row alone, so a token's result never depends on
/// how many share its batch. Panics on a length mismatch, as [`DotFn`].
pub type DotMultiFn = fn(n: usize, w: &[u8], a: &[&[u8]], out: &mut [f32]);

/// Rearranges one quantized activation row of `n` elements (in [`activation_type`] of the
/// weights) into the layout of a [`Prepared`] kernel.
pub type PrepareFn = fn(n: usize, a: &[u8], out: &mut [u8]);

/// Kernels that read activation rows prepared once per matmul ([`PrepareFn`]) instead of
/// rearranging them for every weight row: `multi` is a [`DotMultiFn`] over prepared rows,
/// each result the same bits as the plain [`DotFn`] on the raw row.
#[derive(Clone, Copy, Debug)]
pub struct Prepared {
    /// Bytes of a prepared row of `n` elements.
    pub len: fn(n: usize) -> usize,
    /// Prepares one row.
    pub prepare: PrepareFn,
    /// Dots a weight row with 1 to 4 prepared rows.
    pub multi: DotMultiFn,
}

/// Name of the environment variable that caps the instruction set [`dot_fn`] and
/// [`quantize_activations`] use: `scalar`, `avx2` or `avx512` (read once per process;
/// other values are ignored).
pub const ISA_ENV: &str = "SURPLUS_CPU_ISA";

/// An instruction-set tier of the kernels, in increasing order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU: the reference.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen 1 and later).
    Avx2,
    /// x86-64 with AVX-512 F, BW, VL and VNNI besides the AVX2 tier's features (Ice Lake,
    /// Cascade Lake, Zen 4 and later).
    Avx512,
}

impl Isa {
    /// Every tier, best last.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    /// `"scalar"`, `"avx2"` or `"avx512"`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The tier called `name` (as [`Isa::name`] spells it, any case).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the tier's kernels (whatever [`ISA_ENV`] says).
    pub fn is_available(self) -> bool {
        self <= Isa::detected()
    }

    /// The best tier this CPU supports, detected once.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The tier [`dot_fn`] and [`quantize_activations`] use: [`Isa::detected`], capped by
    /// [`ISA_ENV`] when that names a tier. Decided once per process.
    pub fn selected() -> Isa {
        static SELECTED: OnceLock<Isa> = OnceLock::new();
        *SELECTED.get_or_init(|| {
            let cap = std::env::var(ISA_ENV)
                .ok()
                .and_then(|v| Isa::from_name(&v))
                .unwrap_or(Isa::Avx512);
            Isa::detected().min(cap)
        })
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 =
        avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
    if avx512 {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Scalar
}

/// The format activations are quantized to before a dot product with weights of type `w`
/// (as ggml's `vec_dot_type`): Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL; Q8_1 for Q4_1/Q5_1; Q8_K
/// for Q2_K..Q6_K and IQ4_XS; F32 for F32/F16/BF16 weights (activations stay f32 for
/// those), and F32 for every type that has no dot product here ([`dot_fn`] gives `None`).
///
/// A matrix × vector quantizes the activations once ([`quantize_activations`]) and calls
/// a [`DotFn`] per weight row. The quantized kernels sum integer products exactly per
/// block (per super-block for K-quants) and apply the scales in f32, so the SIMD kernels
/// and the scalar reference differ only in the order of f32 additions.
///
/// One difference from ggml: with Q4_1/Q5_1 weights the minimum's term uses the exact sum
/// of the Q8_1 levels, not the block's f16 `s` (rounded to 11 bits), which is written by
/// [`quantize_activations`] but not read here.
pub fn activation_type(w: GgmlType) -> GgmlType {
    use GgmlType as T;
    match w {
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL => T::Q8_0,
        T::Q4_1 | T::Q5_1 => T::Q8_1,
        T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K | T::IQ4_XS => T::Q8_K,
        _ => T::F32,
    }
}

/// Whether `w` can be the weight side of a dot product here.
pub fn is_weight_type(w: GgmlType) -> bool {
    scalar::kernel(w).is_some()
}

/// Quantizes one activation row for weights of type `w` into `out`, which must be
/// `activation_type(w).bytes_for(x.len())` bytes; `x.len()` must be a multiple of the
/// weight's block size. The bytes equal [`crate::quantize`]'s for the activation type
/// (SIMD where the CPU has it, see [`Isa::selected`]). Types that cannot be weights
/// ([`is_weight_type`]) give [`QuantError::Unsupported`].
pub fn quantize_activations(w: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    quantize_activations_for(w, Isa::selected(), x, out)
}

/// [`quantize_activations`] with the best implementation at or below `isa` that this CPU
/// runs (for tests and benchmarks of each tier).
pub fn quantize_activations_for(
    w: GgmlType,
    isa: Isa,
    x: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    if !is_weight_type(w) {
        return Err(QuantError::Unsupported {
            ty: w,
            op: Operation::Quantize,
        });
    }
    let wb = w.block_size() as usize;
    if !x.len().is_multiple_of(wb) {
        return Err(QuantError::PartialBlockElems {
            ty: w,
            len: x.len(),
            block_size: wb,
        });
    }
    let at = activation_type(w);
    let (ab, abytes) = (at.block_size() as usize, at.type_size() as usize);
    let expected = x.len() / ab * abytes;
    if out.len() != expected {
        return Err(QuantError::DstLength {
            ty: at,
            expected,
            actual: out.len(),
            unit: "bytes",
        });
    }
    act::quantize(at, isa, x, out);
    Ok(())
}

/// The fastest dot product for weights of type `w` on this CPU, from the tiers up to
/// [`Isa::selected`]; `None` for a type that cannot be a weight ([`is_weight_type`]).
pub fn dot_fn(w: GgmlType) -> Option<DotFn> {
    best(w).map(|(f, _)| f)
}

/// The kernel dotting a weight row of type `w` with up to four activation rows at once, on
/// the tier [`dot_fn`] picked, for the types that have one there (Q4_K, Q6_K with AVX-512;
/// Q4_0, Q4_1, Q5_0, Q5_1 have [`prepared_fn`] instead); `None` otherwise (call the
/// [`DotFn`] per row: same results).
pub fn dot_multi_fn(w: GgmlType) -> Option<DotMultiFn> {
    #[cfg(target_arch = "x86_64")]
    if best(w).is_some_and(|(_, isa)| isa == Isa::Avx512) {
        // SAFETY: `best` picked the AVX-512 tier, so this CPU has its features.
        return unsafe { avx512::multi_kernel(w) };
    }
    None
}

/// The prepared-activation kernels for weights of type `w` on the tier [`dot_fn`] picked:
/// Q4_0, Q5_0, Q4_1, Q5_1 with AVX-512; `None` otherwise.
pub fn prepared_fn(w: GgmlType) -> Option<Prepared> {
    #[cfg(target_arch = "x86_64")]
    if best(w).is_some_and(|(_, isa)| isa == Isa::Avx512) {
        // SAFETY: `best` picked the AVX-512 tier, so this CPU has its features.
        return unsafe { avx512::prepared_kernel(w) };
    }
    None
}

/// The plain scalar reference for weights of type `w` (what the SIMD kernels are tested
/// against, and the path on CPUs without them); `None` as for [`dot_fn`].
pub fn dot_scalar(w: GgmlType) -> Option<DotFn> {
    scalar::kernel(w)
}

/// Which tier [`dot_fn`] picked for `w`: `"avx512"`, `"avx2"` or `"scalar"` (`"scalar"`
/// also for types without a dot product).
pub fn dot_isa(w: GgmlType) -> &'static str {
    best(w).map_or(Isa::Scalar, |(_, isa)| isa).name()
}

/// The kernel of exactly tier `isa` for weights of type `w`: `None` when this CPU lacks
/// the tier or the tier has no kernel for `w` (every weight type has one in every tier on
/// x86-64). Ignores [`ISA_ENV`].
pub fn dot_fn_for(w: GgmlType, isa: Isa) -> Option<DotFn> {
    match isa {
        Isa::Scalar => scalar::kernel(w),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => {
            // SAFETY: `is_available` has just confirmed AVX2, FMA and F16C on this CPU,
            // which is what the kernels `avx2::kernel` hands out need.
            unsafe { avx2::kernel(w) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => {
            // SAFETY: `is_available` has just confirmed AVX-512 F/BW/VL/VNNI and the
            // AVX2 tier's features on this CPU, which `avx512::kernel`'s kernels need.
            unsafe { avx512::kernel(w) }
        }
        _ => None,
    }
}

/// The best kernel for `w` at or below [`Isa::selected`], with its tier.
fn best(w: GgmlType) -> Option<(DotFn, Isa)> {
    Isa::ALL
        .into_iter()
        .rev()
        .filter(|&isa| isa <= Isa::selected())
        .find_map(|isa| dot_fn_for(w, isa).map(|f| (f, isa)))
}

/// Checks that `w` and `a` are one row of `n` elements in blocks of `block` elements,
/// `w_bytes` and `a_bytes` per block, and returns the number of blocks. Every kernel calls
/// this first; the SIMD kernels rely on it for their reads.
#[inline(always)]
#[track_caller]
fn row_blocks(n: usize, w: &[u8], a: &[u8], block: usize, w_bytes: usize, a_bytes: usize) -> usize {
    let nb = n / block;
    if nb * block != n || w.len() != nb * w_bytes || a.len() != nb * a_bytes {
        bad_row(n, w.len(), a.len(), block, w_bytes, a_bytes);
    }
    nb
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_row(n: usize, w: usize, a: usize, block: usize, w_bytes: usize, a_bytes: usize) -> ! {
    if !n.is_multiple_of(block) {
        panic!("dot product of {n} elements: not a whole number of blocks of {block}");
    }
    let nb = n / block;
    panic!(
        "dot product of {n} elements: expected {} weight bytes and {} activation bytes, got {w} and {a}",
        nb * w_bytes,
        nb * a_bytes
    );
}
