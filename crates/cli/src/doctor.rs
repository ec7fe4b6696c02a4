//! `surplus doctor`: what this machine offers (CPU features, GPUs, driver, NVRTC, cuBLAS),
//! with plain-words hints when something is missing; `--compile-kernels` checks the kernels.

use anyhow::{bail, Context, Result};
use runtime::cuda::{self, cublas::Cublas, device, libs, nvrtc::Nvrtc};
use serde_json::{json, Value as Json};

/// Arguments of `surplus doctor`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Compile every CUDA kernel for these architectures (e.g. sm_61,sm_70,sm_90) with the
    /// NVRTC found (no GPU needed), report each, and exit non-zero if any fails.
    #[arg(long, value_name = "ARCHS")]
    compile_kernels: Option<String>,
    /// Measure each GPU's device-to-device copy bandwidth (bytes read + written per
    /// second), the denominator of the decode roofline, and keep it in the cache directory
    /// (`bandwidth.json`), where the placement planner takes it before the driver's peak.
    #[arg(long)]
    bandwidth: bool,
}

/// Where `doctor --bandwidth` keeps what it measured: `bandwidth.json` beside the models
/// directory (`$SURPLUS_HOME`, else `~/.cache/surplus`).
pub fn bandwidth_file() -> std::path::PathBuf {
    let models = registry::models_dir();
    models
        .parent()
        .map_or_else(|| models.clone(), |p| p.to_path_buf())
        .join("bandwidth.json")
}

/// The bandwidths `doctor --bandwidth` measured (bytes/s by GPU name); none when it has not
/// run or its file does not read.
pub fn measured_bandwidths() -> Vec<(String, f64)> {
    let Ok(text) = std::fs::read_to_string(bandwidth_file()) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    m.into_iter()
        .filter_map(|(k, v)| Some((k, v.as_f64().filter(|b| *b > 0.0)?)))
        .collect()
}

/// Runs `surplus doctor`.
pub fn run(args: Args) -> Result<()> {
    if let Some(list) = &args.compile_kernels {
        return compile_kernels(list, args.json);
    }
    if args.bandwidth {
        let n = cuda::device::probe()
            .map_err(anyhow::Error::msg)?
            .gpus
            .len();
        let mut kept = measured_bandwidths();
        let mut out = Vec::new();
        for ordinal in 0..n {
            let dev = cuda::gpu::GpuContext::open(ordinal).map_err(anyhow::Error::msg)?;
            // 1 GiB each way, or an eighth of a small card.
            let bytes = (1usize << 30).min(dev.info.memory_bytes as usize / 8);
            let bw = dev.copy_bandwidth(bytes, 20).map_err(anyhow::Error::msg)?;
            // The emulator's bandwidth is its configured figure; its copies measure the host.
            if !dev.info.name.ends_with("(emulated)") {
                kept.retain(|(name, _)| *name != dev.info.name);
                kept.push((dev.info.name.clone(), bw));
            }
            if args.json {
                out.push(json!({"gpu": dev.info.name, "ordinal": ordinal, "copy_bandwidth_bytes_per_s": bw}));
            } else {
                println!(
                    "GPU {ordinal} ({}): copy bandwidth {:.0} GB/s",
                    dev.info.name,
                    bw / 1e9
                );
            }
        }
        let path = bandwidth_file();
        let saved = serde_json::Map::from_iter(kept.into_iter().map(|(k, v)| (k, json!(v))));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&saved)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        if args.json {
            println!(
                "{}",
                json!({"gpus": out, "saved": path.display().to_string()})
            );
        } else {
            println!("saved for the placement planner: {}", path.display());
        }
        return Ok(());
    }
    let report = report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// `--compile-kernels`.
fn compile_kernels(list: &str, json: bool) -> Result<()> {
    let archs = cuda::kernels::parse_archs(list).map_err(anyhow::Error::msg)?;
    if archs.is_empty() {
        bail!("--compile-kernels needs at least one architecture, e.g. sm_61,sm_70,sm_90");
    }
    let (all, errs) = Nvrtc::load_all();
    if all.is_empty() {
        let mut msg = format!(
            "no NVRTC library found (searched {} directories). Install one with \
             `pip install nvidia-cuda-nvrtc-cu12` (sm_50..sm_90) or point {} at the \
             directory holding libnvrtc.so.*",
            libs::search_dirs().len(),
            libs::LIB_DIR_ENV
        );
        for e in errs {
            msg.push_str(&format!("\n  {e}"));
        }
        bail!(msg);
    }
    let checks = cuda::compile_check(&all, &archs);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if json {
        let kernels: Vec<Json> = checks
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "arch": format!("sm_{}", c.arch),
                    "ok": c.ok,
                    "log": c.log,
                    "nvrtc": c.nvrtc.map(|(a, b)| format!("{a}.{b}")),
                    "entry_points": c.entry_points,
                    "cubin_bytes": c.cubin_bytes,
                    "seconds": (c.seconds * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let out = json!({
            "nvrtc": all.iter().map(nvrtc_json).collect::<Vec<_>>(),
            "kernels": kernels,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for n in &all {
            println!(
                "NVRTC {}.{}: {} ({})",
                n.version.0,
                n.version.1,
                n.path.display(),
                n.origin.name()
            );
        }
        for c in &checks {
            let nv = c.nvrtc.map_or("-".into(), |(a, b)| format!("{a}.{b}"));
            println!(
                "{:<12} sm_{:<4} nvrtc {:<5} {:<4} {:>3} kernels {:>8} bytes {:>6.2}s",
                c.name,
                c.arch,
                nv,
                if c.ok { "ok" } else { "FAIL" },
                c.entry_points,
                c.cubin_bytes,
                c.seconds
            );
            if !c.log.trim().is_empty() {
                for l in c.log.trim().lines() {
                    println!("    {l}");
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} kernel builds failed", checks.len());
    }
    Ok(())
}

fn nvrtc_json(n: &Nvrtc) -> Json {
    json!({
        "version": format!("{}.{}", n.version.0, n.version.1),
        "path": n.path.display().to_string(),
        "origin": n.origin.name(),
        "archs": n.supported_archs().iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>(),
    })
}

/// Everything `doctor` reports, as JSON (the text output is printed from it).
fn report() -> Json {
    let mut hints: Vec<String> = Vec::new();
    let (nvrtcs, nvrtc_errors) = Nvrtc::load_all();
    let probe = device::probe();
    let driver_major = probe.as_ref().ok().map(|d| d.cuda_version.0);
    let cublas = Cublas::load_best(driver_major.or(nvrtcs.first().map(|n| n.version.0 as u32)));

    let mut gpus = Vec::new();
    let mut usable = 0;
    if let Ok(d) = &probe {
        for g in &d.gpus {
            let pick = cuda::pick_nvrtc(&nvrtcs, g.sm, driver_major);
            if pick.is_some() {
                usable += 1;
            }
            if pick.is_none() && !nvrtcs.is_empty() {
                let have: Vec<String> = nvrtcs
                    .iter()
                    .map(|n| format!("{}.{}", n.version.0, n.version.1))
                    .collect();
                hints.push(format!(
                    "GPU {} ({}, sm_{}) cannot be targeted by the NVRTC found ({}). NVRTC 13 \
                     dropped GPUs older than sm_75: run `pip install nvidia-cuda-nvrtc-cu12` \
                     and, if it is not found automatically, set {}=<site-packages>/nvidia/\
                     cuda_nvrtc/lib.",
                    g.ordinal,
                    g.name,
                    g.sm,
                    have.join(", "),
                    libs::LIB_DIR_ENV
                ));
            }
            if let Some(n) = pick {
                if n.version.0 as u32 > d.cuda_version.0 {
                    hints.push(format!(
                        "NVRTC {}.{} is newer than the driver (CUDA {}.{}): its kernels may \
                         not load. Update the driver, or install the NVRTC of the driver's \
                         version (`pip install nvidia-cuda-nvrtc-cu{}`).",
                        n.version.0,
                        n.version.1,
                        d.cuda_version.0,
                        d.cuda_version.1,
                        d.cuda_version.0
                    ));
                }
            }
            gpus.push(json!({
                "ordinal": g.ordinal,
                "name": g.name,
                "sm": format!("sm_{}", g.sm),
                "memory_bytes": g.memory_bytes,
                "memory_gib": (g.memory_bytes as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0,
                "sm_count": g.sm_count,
                "peak_bandwidth_gbs": g.peak_bandwidth.map(|b| (b / 1e9).round()),
                "nvrtc": pick.map(|n| format!("{}.{}", n.version.0, n.version.1)),
            }));
        }
    }
    if nvrtcs.is_empty() {
        hints.push(format!(
            "No NVRTC library found: CUDA kernels cannot be compiled. `pip install \
             nvidia-cuda-nvrtc-cu12` (reaches sm_50..sm_90: Pascal to Hopper) or -cu13 \
             (sm_75 and newer); if it is not found automatically, set {} to its \
             nvidia/cuda_nvrtc/lib directory.",
            libs::LIB_DIR_ENV
        ));
    }
    if probe.is_ok() && cublas.is_err() {
        hints.push(
            "No cuBLAS found: prompt processing on the GPU needs it. `pip install \
             nvidia-cublas-cu12` (or -cu13 to match the driver)."
                .into(),
        );
    }
    let reason = match &probe {
        Err(r) => Some(r.clone()),
        Ok(_) if nvrtcs.is_empty() => Some("no NVRTC library found".to_string()),
        Ok(_) if usable == 0 => Some("no GPU can be targeted by the NVRTC found".to_string()),
        Ok(_) => None,
    };
    if let Err(r) = &probe {
        hints.push(format!("CUDA is off ({r}); surplus runs on the CPU."));
    }
    let driver = probe.as_ref().ok().map(|d| {
        json!({
            "cuda_version": format!("{}.{}", d.cuda_version.0, d.cuda_version.1),
            "path": d.library.as_ref().map(|f| f.path.display().to_string()),
        })
    });
    let cublas_json = match &cublas {
        Ok(c) => json!({
            "version": format!("{}.{}.{}", c.version.0, c.version.1, c.version.2),
            "path": c.path.display().to_string(),
            "origin": c.origin.name(),
        }),
        Err(_) => Json::Null,
    };
    json!({
        "cpu": cpu_json(),
        "cuda": {
            "available": reason.is_none(),
            "reason": reason,
            "driver": driver,
            "gpus": gpus,
            "nvrtc": nvrtcs.first().map(nvrtc_json),
            "nvrtc_found": nvrtcs.iter().map(nvrtc_json).collect::<Vec<_>>(),
            "nvrtc_errors": nvrtc_errors,
            "cublas": cublas_json,
            "cublas_errors": cublas.err().unwrap_or_default(),
            "lib_dir_override": std::env::var(libs::LIB_DIR_ENV).ok(),
            "kernel_cache": cuda::kernels::cache_dir().map(|p| p.display().to_string()),
        },
        "hints": hints,
    })
}

/// CPU model, threads, memory and the SIMD features the kernels use.
fn cpu_json() -> Json {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_kib: Option<u64> = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    });
    json!({
        "model": model,
        "arch": std::env::consts::ARCH,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_bytes": mem_kib.map(|k| k * 1024),
        "features": cpu_features(),
        "dot_kernels": format!("{:?}", quant::dot::Isa::detected()).to_lowercase(),
        "int8_repacked_kernel": quant::rows16::isa().is_some(),
    })
}

fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        check!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    v.push($f);
                }
            )*};
        }
        check!("neon", "dotprod", "i8mm", "fp16", "sve");
    }
    v
}

/// The report for people.
fn print_text(r: &Json) {
    let cpu = &r["cpu"];
    println!("CPU");
    println!(
        "  {} ({}), {} threads, {:.1} GiB",
        cpu["model"].as_str().unwrap_or("unknown model"),
        cpu["arch"].as_str().unwrap_or("?"),
        cpu["threads"],
        cpu["memory_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    let feats: Vec<&str> = cpu["features"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    println!("  features: {}", feats.join(" "));
    println!(
        "  kernels: {} dot products, repacked int8 kernel {}",
        cpu["dot_kernels"].as_str().unwrap_or("?"),
        if cpu["int8_repacked_kernel"] == true {
            "yes"
        } else {
            "no"
        }
    );
    let c = &r["cuda"];
    println!("CUDA");
    if c["available"] == true {
        println!("  available");
    } else {
        println!("  off: {}", c["reason"].as_str().unwrap_or("?"));
    }
    if let Some(d) = c["driver"].as_object() {
        println!(
            "  driver: CUDA {} ({})",
            d["cuda_version"].as_str().unwrap_or("?"),
            d["path"].as_str().unwrap_or("found by the system loader")
        );
    }
    for g in c["gpus"].as_array().into_iter().flatten() {
        let bw = g["peak_bandwidth_gbs"]
            .as_f64()
            .map_or(String::new(), |b| format!(", {b:.0} GB/s peak"));
        println!(
            "  GPU {}: {} ({}), {} GiB, {} SMs{bw}, NVRTC {}",
            g["ordinal"],
            g["name"].as_str().unwrap_or("?"),
            g["sm"].as_str().unwrap_or("?"),
            g["memory_gib"],
            g["sm_count"],
            g["nvrtc"].as_str().unwrap_or("none that can target it")
        );
    }
    let found = c["nvrtc_found"].as_array().cloned().unwrap_or_default();
    if found.is_empty() {
        println!("  NVRTC: not found");
    }
    for n in found {
        let archs: Vec<&str> = n["archs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        println!(
            "  NVRTC {}: {} ({})",
            n["version"].as_str().unwrap_or("?"),
            n["path"].as_str().unwrap_or("?"),
            n["origin"].as_str().unwrap_or("?")
        );
        if let (Some(a), Some(b)) = (archs.first(), archs.last()) {
            println!("    targets {a} .. {b} ({} architectures)", archs.len());
        }
    }
    match c["cublas"].as_object() {
        Some(b) => println!(
            "  cuBLAS {}: {} ({})",
            b["version"].as_str().unwrap_or("?"),
            b["path"].as_str().unwrap_or("?"),
            b["origin"].as_str().unwrap_or("?")
        ),
        None => println!("  cuBLAS: not found"),
    }
    if let Some(dir) = c["kernel_cache"].as_str() {
        println!("  kernel cache: {dir}");
    }
    let hints = r["hints"].as_array().cloned().unwrap_or_default();
    if !hints.is_empty() {
        println!("Hints");
        for h in hints {
            println!("  - {}", h.as_str().unwrap_or(""));
        }
    }
}
