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
    /// Kernel entry points it defines (`extern "C" __global__`), for loading and checks.
    pub kernels: &'static [&'static str],
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
            "quantize_q8_1",
            "mmvq_q4_0",
            "mmvq_q4_1",
            "mmvq_q5_0",
            "mmvq_q5_1",
            "mmvq_q8_0",
            "mmvq_q4_k",
            "mmvq_q5_k",
            "mmvq_q6_k",
            "mmv_q4_0",
            "mmv_q4_1",
            "mmv_q5_0",
            "mmv_q5_1",
            "mmv_q8_0",
            "mmv_q4_k",
            "mmv_q5_k",
            "mmv_q6_k",
            "mmv_f32",
            "mmv_f16",
            "mmv_bf16",
        ],
    },
    Module {
        name: "dequant",
        body: include_str!("kernels/dequant.cu"),
        quant: true,
        kernels: &[
            "deq_f16_q4_0",
            "deq_f16_q4_1",
            "deq_f16_q5_0",
            "deq_f16_q5_1",
            "deq_f16_q8_0",
            "deq_f16_q4_k",
            "deq_f16_q5_k",
            "deq_f16_q6_k",
            "deq_f16_f32",
            "deq_f16_f16",
            "deq_f16_bf16",
            "get_rows_q4_0",
            "get_rows_q4_1",
            "get_rows_q5_0",
            "get_rows_q5_1",
            "get_rows_q8_0",
            "get_rows_q4_k",
            "get_rows_q5_k",
            "get_rows_q6_k",
            "get_rows_f32",
            "get_rows_f16",
            "get_rows_bf16",
            "f32_to_f16",
        ],
    },
    Module {
        name: "norm",
        body: include_str!("kernels/norm.cu"),
        quant: false,
        kernels: &["rms_norm", "softmax", "gated_rms_norm"],
    },
    Module {
        name: "elementwise",
        body: include_str!("kernels/elementwise.cu"),
        quant: false,
        kernels: &[
            "swiglu",
            "geglu",
            "add",
            "add_bias",
            "scale",
            "softcap",
            "copy_rows",
            "sigmoid_mul",
            "embd_rows",
            "unzip",
            "concat",
            "delta_gates",
        ],
    },
    Module {
        name: "rope",
        body: include_str!("kernels/rope.cu"),
        quant: false,
        kernels: &["rope"],
    },
    Module {
        name: "attention",
        body: include_str!("kernels/attention.cu"),
        quant: false,
        kernels: &["kv_write", "attn_decode", "attn_combine", "attn_prefill"],
    },
    Module {
        name: "recurrent",
        body: include_str!("kernels/recurrent.cu"),
        quant: false,
        kernels: &["conv_silu", "gated_delta", "conv_shift"],
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
