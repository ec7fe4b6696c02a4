//! The CUDA kernels: `.cu` sources embedded in the binary, compiled by NVRTC for the exact
//! GPU at first use, and cached on disk keyed by source, architecture and NVRTC version.
//!
//! Every source is our prelude (f16/bf16 by inline PTX, dp4a, warp reductions) followed by
//! the headers it needs and its own text; no toolkit header is ever included, so the only
//! run-time needs are the driver and libnvrtc.

use std::path::PathBuf;

use super::nvrtc::Nvrtc;

const PRELUDE: &str = include_str!("kernels/prelude.cuh");
const QUANT: &str = include_str!("kernels/quant.cuh");

/// One compilation unit.
#[derive(Clone, Copy, Debug)]
pub struct Module {
    /// Short name (`matvec`), also the file name without `.cu`.
    pub name: &'static str,
    /// The file's own text.
    body: &'static str,
    /// Whether it needs the block formats (`quant.cuh`).
    quant: bool,
    /// Kernel entry points it defines (`extern "C" __global__`), with their parameters: for
    /// loading, and for checking every launch's arguments.
    pub kernels: &'static [Kernel],
}

/// The kind of a kernel parameter, as its `.cu` signature declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A device pointer (`T*` of any `T`).
    Ptr,
    /// `int`.
    I32,
    /// `u32`.
    U32,
    /// `i64`.
    I64,
    /// `float`.
    F32,
}

/// A kernel entry point and its parameter list: declared once here, checked against the
/// `.cu` signature by a test and against the arguments of every launch.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Its name (`extern "C"`, so unmangled).
    pub name: &'static str,
    /// Its parameters, in order.
    pub params: &'static [Param],
}

const P: Param = Param::Ptr;
const I: Param = Param::I32;
const U: Param = Param::U32;
const L: Param = Param::I64;
const F: Param = Param::F32;

const fn k(name: &'static str, params: &'static [Param]) -> Kernel {
    Kernel { name, params }
}

/// Matrix × vector (`mmvq_*` on 8-bit activations, `mmv_*` on floats): weights, row bytes,
/// input, its stride, output, its stride, columns, rows, tokens.
const MATVEC: &[Param] = &[P, L, P, I, P, I, I, I, I];
/// Dequantize rows to f16: weights, row bytes, output, columns, first row.
const DEQ: &[Param] = &[P, L, P, I, I];
/// Gather rows by id: weights, row bytes, ids, output, its stride, columns.
const GET_ROWS: &[Param] = &[P, L, P, P, I, I];
/// `out = f(a, b)` row by row: a, stride, b, stride, out, stride, width.
const ZIP: &[Param] = &[P, I, P, I, P, I, I];

/// The most parameters a kernel takes (the launch passes them from a fixed array).
pub const MAX_PARAMS: usize = 24;

/// The kernel `name` of any module.
pub fn kernel(name: &str) -> Option<&'static Kernel> {
    MODULES
        .iter()
        .flat_map(|m| m.kernels)
        .find(|k| k.name == name)
}

impl Module {
    /// The full source NVRTC compiles.
    pub fn source(&self) -> String {
        let mut s = String::with_capacity(PRELUDE.len() + QUANT.len() + self.body.len() + 64);
        s.push_str(PRELUDE);
        if self.quant {
            s.push_str("\n// ---- quant.cuh\n");
            s.push_str(QUANT);
        }
        s.push_str(&format!("\n// ---- {}.cu\n", self.name));
        s.push_str(self.body);
        s
    }
}

/// Every module.
pub const MODULES: &[Module] = &[
    Module {
        name: "matvec",
        body: include_str!("kernels/matvec.cu"),
        quant: true,
        kernels: &[
            k("quantize_q8_1", &[P, I, P, I, I]),
            k("mmvq_q4_0", MATVEC),
            k("mmvq_q4_1", MATVEC),
            k("mmvq_q5_0", MATVEC),
            k("mmvq_q5_1", MATVEC),
            k("mmvq_q8_0", MATVEC),
            k("mmvq_q4_k", MATVEC),
            k("mmvq_q5_k", MATVEC),
            k("mmvq_q6_k", MATVEC),
            k("mmv_q4_0", MATVEC),
            k("mmv_q4_1", MATVEC),
            k("mmv_q5_0", MATVEC),
            k("mmv_q5_1", MATVEC),
            k("mmv_q8_0", MATVEC),
            k("mmv_q4_k", MATVEC),
            k("mmv_q5_k", MATVEC),
            k("mmv_q6_k", MATVEC),
            k("mmv_f32", MATVEC),
            k("mmv_f16", MATVEC),
            k("mmv_bf16", MATVEC),
        ],
    },
    Module {
        name: "dequant",
        body: include_str!("kernels/dequant.cu"),
        quant: true,
        kernels: &[
            k("deq_f16_q4_0", DEQ),
            k("deq_f16_q4_1", DEQ),
            k("deq_f16_q5_0", DEQ),
            k("deq_f16_q5_1", DEQ),
            k("deq_f16_q8_0", DEQ),
            k("deq_f16_q4_k", DEQ),
            k("deq_f16_q5_k", DEQ),
            k("deq_f16_q6_k", DEQ),
            k("deq_f16_f32", DEQ),
            k("deq_f16_f16", DEQ),
            k("deq_f16_bf16", DEQ),
            k("get_rows_q4_0", GET_ROWS),
            k("get_rows_q4_1", GET_ROWS),
            k("get_rows_q5_0", GET_ROWS),
            k("get_rows_q5_1", GET_ROWS),
            k("get_rows_q8_0", GET_ROWS),
            k("get_rows_q4_k", GET_ROWS),
            k("get_rows_q5_k", GET_ROWS),
            k("get_rows_q6_k", GET_ROWS),
            k("get_rows_f32", GET_ROWS),
            k("get_rows_f16", GET_ROWS),
            k("get_rows_bf16", GET_ROWS),
            k("f32_to_f16", &[P, I, P, I]),
        ],
    },
    Module {
        name: "norm",
        body: include_str!("kernels/norm.cu"),
        quant: false,
        kernels: &[
            k("rms_norm", &[P, I, P, P, I, I, I, F]),
            k("softmax", &[P, I, I]),
            k("gated_rms_norm", &[P, I, P, I, P, P, I, I, I, F]),
        ],
    },
    Module {
        name: "elementwise",
        body: include_str!("kernels/elementwise.cu"),
        quant: false,
        kernels: &[
            k("swiglu", ZIP),
            k("geglu", ZIP),
            k("add", ZIP),
            k("add_bias", &[P, I, P, I]),
            k("scale", &[P, I, F, I]),
            k("softcap", &[P, I, F, I]),
            k("copy_rows", &[P, I, P, P, I, I]),
            k("sigmoid_mul", ZIP),
            k("embd_rows", &[P, I, P, I, I]),
            k("unzip", &[P, I, P, I, P, I, I, I]),
            k("concat", &[P, I, I, P, I, P, I, I]),
            k("delta_gates", &[P, I, P, I, P, P, I]),
        ],
    },
    Module {
        name: "rope",
        body: include_str!("kernels/rope.cu"),
        quant: false,
        kernels: &[k("rope", &[P, I, P, P, I, I, I, F, I, P, U, U, U, U])],
    },
    Module {
        name: "attention",
        body: include_str!("kernels/attention.cu"),
        quant: false,
        kernels: &[
            k("kv_write", &[P, I, P, I, P, P, P, P, I, I, L, L, I, I]),
            k(
                "attn_decode",
                &[P, I, P, P, P, P, P, P, I, I, I, I, L, L, I, I, F, F, I, I],
            ),
            k("attn_combine", &[P, P, I, I, I, I]),
            k(
                "attn_prefill",
                &[
                    P, I, P, P, P, I, I, I, I, I, I, I, I, L, L, I, I, F, F, I, I,
                ],
            ),
        ],
    },
    Module {
        name: "recurrent",
        body: include_str!("kernels/recurrent.cu"),
        quant: false,
        kernels: &[
            k("conv_silu", &[P, I, P, P, I, P, P, P, P, I, I, I, I, I, I]),
            k(
                "gated_delta",
                &[
                    P, I, P, I, P, I, P, I, P, P, P, P, I, I, I, I, I, I, F, F, I,
                ],
            ),
            k("conv_shift", &[P, I, P, P, I, I, I, I]),
        ],
    },
];

/// NVRTC options for every module: C++17, line info for profilers, and IEEE float
/// semantics (no fast math: results are compared with the CPU reference).
pub const OPTIONS: &[&str] = &[
    "--std=c++17",
    "--generate-line-info",
    "-default-device",
    // "declared but never referenced": prelude helpers a module does not use.
    "--diag-suppress=177",
];

/// A module compiled for one architecture.
pub struct Built {
    /// The CUBIN image.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings), empty when read from the cache.
    pub log: String,
    /// Whether it came from the disk cache.
    pub cached: bool,
}

/// 64-bit FNV-1a (a cache key, not a security measure).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&(p.len() as u64).to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The kernel cache directory: `$SURPLUS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/surplus/kernels`,
/// else `~/.cache/surplus/kernels`; `None` when there is no home.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SURPLUS_KERNEL_CACHE") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("surplus").join("kernels"))
}

/// The cache file of `module` for `sm` with `nvrtc`.
pub fn cache_path(module: &Module, sm: u32, nvrtc: &Nvrtc) -> Option<PathBuf> {
    let (ma, mi) = nvrtc.version;
    let src = module.source();
    let key = fnv1a(&[
        src.as_bytes(),
        &sm.to_le_bytes(),
        &ma.to_le_bytes(),
        &mi.to_le_bytes(),
        OPTIONS.join(" ").as_bytes(),
    ]);
    Some(cache_dir()?.join(format!(
        "{}-sm_{sm}-nvrtc{ma}.{mi}-{key:016x}.cubin",
        module.name
    )))
}

/// `module` for `sm`: from the disk cache when `use_cache` and present, otherwise compiled
/// (and written to the cache when `use_cache`; a cache that cannot be written is skipped).
pub fn build(module: &Module, sm: u32, nvrtc: &Nvrtc, use_cache: bool) -> Result<Built, String> {
    let path = use_cache.then(|| cache_path(module, sm, nvrtc)).flatten();
    if let Some(p) = &path {
        if let Ok(cubin) = std::fs::read(p) {
            if !cubin.is_empty() {
                return Ok(Built {
                    cubin,
                    log: String::new(),
                    cached: true,
                });
            }
        }
    }
    let c = nvrtc.compile(
        &module.source(),
        &format!("{}.cu", module.name),
        sm,
        OPTIONS,
    )?;
    if let Some(p) = &path {
        // Written whole under a temporary name, then renamed: a reader never sees half a file.
        if let Some(dir) = p.parent() {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, &c.cubin).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(Built {
        cubin: c.cubin,
        log: c.log,
        cached: false,
    })
}

/// Whether a CUBIN defines `kernel` (its name is in the symbol table, unmangled).
pub fn cubin_defines(cubin: &[u8], kernel: &str) -> bool {
    let mut pat = Vec::with_capacity(kernel.len() + 2);
    pat.push(0u8);
    pat.extend_from_slice(kernel.as_bytes());
    pat.push(0);
    cubin.windows(pat.len()).any(|w| w == pat)
}

/// Parses `sm_61,sm_70,90` into `[61, 70, 90]`.
pub fn parse_archs(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let n = s
                .strip_prefix("sm_")
                .or_else(|| s.strip_prefix("compute_"))
                .unwrap_or(s);
            n.parse::<u32>()
                .ok()
                .filter(|&v| (30..=200).contains(&v))
                .ok_or_else(|| format!("not a GPU architecture: {s:?} (expected e.g. sm_70)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `extern "C" __global__` signatures of a `.cu` text, macro instances expanded:
    /// (name, parameter kinds), or the parameter it could not read.
    fn signatures(text: &str) -> Vec<(String, Result<Vec<Param>, String>)> {
        const HEAD: &str = "extern \"C\" __global__ void ";
        let text = text.replace("\\\n", " ");
        let mut plain = String::new();
        let mut macros = Vec::new();
        for line in text.lines() {
            match line.trim_start().strip_prefix("#define ") {
                Some(def) if def.contains(HEAD) => {
                    let (head, body) = def.split_once(')').expect("a macro with parameters");
                    let (name, args) = head.split_once('(').expect("a macro with parameters");
                    let args: Vec<String> = args.split(',').map(|a| a.trim().into()).collect();
                    macros.push((name.trim().to_string(), args, body.to_string()));
                }
                _ => {
                    plain.push_str(line);
                    plain.push('\n');
                }
            }
        }
        let mut expanded = plain.clone();
        for (name, args, body) in &macros {
            for line in plain.lines() {
                let Some(call) = line.trim().strip_prefix(&format!("{name}(")) else {
                    continue;
                };
                let vals: Vec<&str> = call
                    .trim_end_matches(')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                let mut b = body.clone();
                for (a, v) in args.iter().zip(&vals) {
                    b = b.replace(&format!("##{a}"), v);
                }
                expanded.push_str(&b);
                expanded.push('\n');
            }
        }
        let mut out = Vec::new();
        for part in expanded.split(HEAD).skip(1) {
            let (name, rest) = part.split_once('(').expect("a parameter list");
            let (params, _) = rest.split_once(')').expect("a parameter list");
            let kinds = params
                .split(',')
                .map(|p| {
                    let p = p.replace("__restrict__", " ").replace("const ", " ");
                    let words: Vec<&str> = p.split_whitespace().collect();
                    match words.as_slice() {
                        _ if p.contains('*') => Ok(Param::Ptr),
                        ["int", _] => Ok(Param::I32),
                        ["u32", _] | ["unsigned", _] => Ok(Param::U32),
                        ["i64", _] => Ok(Param::I64),
                        ["float", _] => Ok(Param::F32),
                        _ => Err(p.trim().to_string()),
                    }
                })
                .collect();
            out.push((name.trim().to_string(), kinds));
        }
        out
    }

    /// Every `__global__` kernel of each `.cu` file is declared in its module with the same
    /// parameters (count and kinds), and every declared kernel is defined: a launch checked
    /// against the declarations matches what the GPU runs.
    #[test]
    fn declared_kernels_match_the_cu_signatures() {
        let mut errors = Vec::new();
        for m in MODULES {
            let found = signatures(m.body);
            for (name, params) in &found {
                match (m.kernels.iter().find(|k| k.name == *name), params) {
                    (_, Err(p)) => errors.push(format!("{}.cu: {name}: cannot read {p:?}", m.name)),
                    (None, _) => errors.push(format!("{}.cu: {name} is not declared", m.name)),
                    (Some(k), Ok(p)) if k.params != p.as_slice() => errors.push(format!(
                        "{}.cu: {name} takes {p:?}, declared {:?}",
                        m.name, k.params
                    )),
                    _ => {}
                }
            }
            for k in m.kernels {
                if !found.iter().any(|(n, _)| n == k.name) {
                    errors.push(format!(
                        "{}: {} is declared but not in {}.cu",
                        m.name, k.name, m.name
                    ));
                }
                assert!(
                    k.params.len() <= MAX_PARAMS,
                    "{} has too many parameters",
                    k.name
                );
            }
        }
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }

    /// The parser sees through a macro and reads each kind, and a wrong declaration would
    /// show.
    #[test]
    fn signatures_are_parsed() {
        let src = "#define K(NAME, T) \\\n extern \"C\" __global__ void k_##NAME(const T* x, \\\n i64 n) {}\nK(a, float)\nK(b, int)\nextern \"C\" __global__ void g(float* __restrict__ o, int n, u32 m, float s) {}\n";
        let got = signatures(src);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["g", "k_a", "k_b"]);
        assert_eq!(
            got[0].1,
            Ok(vec![Param::Ptr, Param::I32, Param::U32, Param::F32])
        );
        assert_eq!(got[1].1, Ok(vec![Param::Ptr, Param::I64]));
        let bad = signatures("extern \"C\" __global__ void h(double d) {}");
        assert!(bad[0].1.is_err());
    }

    #[test]
    fn sources_include_no_toolkit_header() {
        for m in MODULES {
            assert!(
                !m.source().contains("#include"),
                "{} includes a header",
                m.name
            );
        }
    }

    #[test]
    fn archs_parse() {
        assert_eq!(parse_archs("sm_61,sm_70, 90").unwrap(), [61, 70, 90]);
        assert!(parse_archs("sm_x").is_err());
        assert!(parse_archs("sm_7").is_err());
    }

    #[test]
    fn cache_key_changes_with_input() {
        let a = fnv1a(&[b"ab", b"c"]);
        assert_ne!(a, fnv1a(&[b"a", b"bc"]));
        assert_ne!(a, fnv1a(&[b"ab", b"d"]));
    }
}
