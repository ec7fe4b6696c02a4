//! One GPU ready to run our kernels: a cudarc context and stream, the NVRTC picked for its
//! architecture, and every kernel module built (or read from the disk cache) and loaded.
//!
//! Opening never panics: no driver, no GPU, no NVRTC that can target the GPU, a failed
//! compile or load are all `Err` with a reason.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::nvrtc::Nvrtc;
use super::{device, kernels, pick_nvrtc};

/// An opened GPU: its driver context and stream, with every kernel loaded (what the probe
/// only describes, [`device::GpuInfo`], this can run work on).
pub struct GpuContext {
    /// The driver context (the device's primary context).
    pub ctx: Arc<CudaContext>,
    /// The stream every kernel is launched on.
    pub stream: Arc<CudaStream>,
    /// The GPU as probed.
    pub info: device::GpuInfo,
    /// The NVRTC that built the kernels.
    pub nvrtc: Nvrtc,
    functions: HashMap<&'static str, (CudaFunction, &'static kernels::Kernel)>,
    _modules: Vec<Arc<CudaModule>>,
}

/// Free and total memory of GPU `ordinal` in bytes, read through a context of its own (no
/// kernels loaded): what a planner needs of a GPU it will not use itself.
pub fn memory_info(ordinal: usize) -> Result<(usize, usize), String> {
    device::probe()?;
    let ctx = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: {e}"))?;
    ctx.mem_get_info()
        .map_err(|e| format!("GPU {ordinal}: reading its free memory: {e}"))
}

impl GpuContext {
    /// Opens GPU `ordinal` and loads every kernel (compiled for its exact architecture, or
    /// read from the kernel cache).
    pub fn open(ordinal: usize) -> Result<GpuContext, String> {
        let info = device::probe()?;
        let gpu = info
            .gpus
            .get(ordinal)
            .cloned()
            .ok_or_else(|| format!("no GPU {ordinal} ({} found)", info.gpus.len()))?;
        let (all, errs) = Nvrtc::load_all();
        let idx = pick_nvrtc(&all, gpu.sm, Some(info.cuda_version.0))
            .and_then(|p| all.iter().position(|n| std::ptr::eq(n, p)))
            .ok_or_else(|| {
                format!(
                    "no NVRTC found can target sm_{} ({} found; {errs:?}); for sm_50..sm_70 \
                     `pip install nvidia-cuda-nvrtc-cu12`",
                    gpu.sm,
                    all.len()
                )
            })?;
        let nvrtc = all.into_iter().nth(idx).ok_or("NVRTC vanished")?;
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("GPU {ordinal}: {e}"))?;
        // A stream of our own, not the legacy default stream: only such a stream can be
        // captured into a CUDA graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("GPU {ordinal}: creating a stream: {e}"))?;
        let mut functions = HashMap::new();
        let mut modules = Vec::new();
        for m in kernels::MODULES {
            let built = kernels::build(m, gpu.sm, &nvrtc, true)?;
            let module = ctx
                .load_module(Ptx::from_binary(built.cubin))
                .map_err(|e| format!("loading {} for sm_{}: {e}", m.name, gpu.sm))?;
            for k in m.kernels {
                let f = module
                    .load_function(k.name)
                    .map_err(|e| format!("kernel {} of {}: {e}", k.name, m.name))?;
                functions.insert(k.name, (f, k));
            }
            modules.push(module);
        }
        Ok(GpuContext {
            ctx,
            stream,
            info: gpu,
            nvrtc,
            functions,
            _modules: modules,
        })
    }

    /// The kernel named `name` (one of [`kernels::MODULES`]' entry points).
    pub fn function(&self, name: &str) -> Result<&CudaFunction, String> {
        self.kernel(name).map(|(f, _)| f)
    }

    /// The kernel named `name` and its declaration (its parameter list).
    pub fn kernel(&self, name: &str) -> Result<(&CudaFunction, &'static kernels::Kernel), String> {
        self.functions
            .get(name)
            .map(|(f, k)| (f, *k))
            .ok_or_else(|| format!("no kernel named {name}"))
    }
}

impl GpuContext {
    /// Device-to-device copy bandwidth in bytes/s (bytes read plus bytes written, as
    /// copy benchmarks count): `reps` copies of a `bytes` buffer, timed after a warm-up.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, String> {
        use cudarc::driver::result;
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let bytes = bytes.max(1 << 20);
        // SAFETY: two fresh allocations of `bytes`, freed below; every copy stays inside them
        // and is ordered on our stream, which is synchronized before the memory is freed.
        unsafe {
            let a = result::malloc_sync(bytes).map_err(|e| format!("allocating: {e}"))?;
            let b = match result::malloc_sync(bytes) {
                Ok(b) => b,
                Err(e) => {
                    let _ = result::free_sync(a);
                    return Err(format!("allocating: {e}"));
                }
            };
            let st = self.stream.cu_stream();
            let run = |n: usize| -> Result<f64, String> {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    result::memcpy_dtod_async(b, a, bytes, st).map_err(|e| e.to_string())?;
                }
                self.stream.synchronize().map_err(|e| e.to_string())?;
                Ok(t.elapsed().as_secs_f64())
            };
            let out = run(2).and_then(|_| run(reps.max(1)));
            let _ = self.stream.synchronize();
            let _ = result::free_sync(a);
            let _ = result::free_sync(b);
            out.map(|s| 2.0 * bytes as f64 * reps.max(1) as f64 / s)
        }
    }
}
