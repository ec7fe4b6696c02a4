//! Our own binding of the few NVRTC functions we use, loaded by full path from the file
//! [`super::libs`] found (any CUDA major version), never panicking: every failure is a string.
//!
//! cudarc's NVRTC module would load `libnvrtc` by its own soname list and panic when that
//! fails; this one also exposes `nvrtcGetSupportedArchs` and CUBIN output.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::sync::Mutex;

use super::libs::{self, Found, Lib};

type Prog = *mut std::ffi::c_void;
type Res = c_int;

/// The NVRTC entry points, resolved once when the library is loaded.
struct Fns {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Res,
    num_archs: Option<unsafe extern "C" fn(*mut c_int) -> Res>,
    archs: Option<unsafe extern "C" fn(*mut c_int) -> Res>,
    create: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Res,
    compile: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> Res,
    log_size: unsafe extern "C" fn(Prog, *mut usize) -> Res,
    log: unsafe extern "C" fn(Prog, *mut c_char) -> Res,
    cubin_size: unsafe extern "C" fn(Prog, *mut usize) -> Res,
    cubin: unsafe extern "C" fn(Prog, *mut c_char) -> Res,
    destroy: unsafe extern "C" fn(*mut Prog) -> Res,
    error_string: unsafe extern "C" fn(Res) -> *const c_char,
}

/// A loaded NVRTC.
pub struct Nvrtc {
    fns: Fns,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Where that file was found.
    pub origin: libs::Origin,
    /// (major, minor).
    pub version: (i32, i32),
    /// Serializes compilations (older NVRTC releases are not documented as thread-safe).
    lock: Mutex<()>,
}

/// The result of compiling one source for one architecture.
pub struct Compiled {
    /// The CUBIN image.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings), possibly empty.
    pub log: String,
}

impl Nvrtc {
    /// Loads NVRTC from `found` (and its builtins library beside it).
    pub fn load(found: &Found) -> Result<Nvrtc, String> {
        let lib = libs::load(found)?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is an NVRTC function whose C signature is the type of the
                // field it is stored in; the library stays loaded for the process.
                unsafe {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("{}: missing {}: {e}", found.path.display(), $name))?
                }
            };
        }
        macro_rules! opt_sym {
            ($name:literal) => {
                // SAFETY: as above; absent in NVRTC before 11.2.
                unsafe { lib.get(concat!($name, "\0").as_bytes()).ok().map(|s| *s) }
            };
        }
        let fns = Fns {
            version: sym!("nvrtcVersion"),
            num_archs: opt_sym!("nvrtcGetNumSupportedArchs"),
            archs: opt_sym!("nvrtcGetSupportedArchs"),
            create: sym!("nvrtcCreateProgram"),
            compile: sym!("nvrtcCompileProgram"),
            log_size: sym!("nvrtcGetProgramLogSize"),
            log: sym!("nvrtcGetProgramLog"),
            cubin_size: sym!("nvrtcGetCUBINSize"),
            cubin: sym!("nvrtcGetCUBIN"),
            destroy: sym!("nvrtcDestroyProgram"),
            error_string: sym!("nvrtcGetErrorString"),
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let r = unsafe { (fns.version)(&mut major, &mut minor) };
        if r != 0 {
            return Err(format!(
                "{}: nvrtcVersion failed ({r})",
                found.path.display()
            ));
        }
        Ok(Nvrtc {
            fns,
            path: found.path.clone(),
            origin: found.origin,
            version: (major, minor),
            lock: Mutex::new(()),
        })
    }

    /// Loads every NVRTC found, newest version first; the errors of those that failed.
    pub fn load_all() -> (Vec<Nvrtc>, Vec<String>) {
        let (mut ok, mut errs) = (Vec::new(), Vec::new());
        for f in libs::find(Lib::Nvrtc) {
            match Nvrtc::load(&f) {
                Ok(n) => {
                    if !ok.iter().any(|o: &Nvrtc| o.version == n.version) {
                        ok.push(n)
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        // The override directory wins; otherwise the newest version.
        ok.sort_by_key(|n| {
            (
                n.origin != libs::Origin::Override,
                std::cmp::Reverse(n.version),
            )
        });
        (ok, errs)
    }

    /// The real architectures this NVRTC can compile for (`[50, 52, ..., 90]`), or empty
    /// when it cannot say (before 11.2).
    pub fn supported_archs(&self) -> Vec<u32> {
        let (Some(num), Some(get)) = (self.fns.num_archs, self.fns.archs) else {
            return Vec::new();
        };
        let mut n = 0;
        // SAFETY: a valid out-pointer.
        if unsafe { num(&mut n) } != 0 || n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0 as c_int; n as usize];
        // SAFETY: `v` has room for the `n` values NVRTC said it would write.
        if unsafe { get(v.as_mut_ptr()) } != 0 {
            return Vec::new();
        }
        v.into_iter().map(|a| a as u32).collect()
    }

    /// Whether this NVRTC can compile for `sm` (true when it cannot say).
    pub fn supports(&self, sm: u32) -> bool {
        let a = self.supported_archs();
        a.is_empty() || a.contains(&sm)
    }

    fn error(&self, r: Res) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let s = unsafe { (self.fns.error_string)(r) };
        if s.is_null() {
            format!("NVRTC error {r}")
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles `src` (named `name` in messages) to a CUBIN for `sm_<sm>` with `options`
    /// (besides the architecture). The error carries NVRTC's log.
    pub fn compile(
        &self,
        src: &str,
        name: &str,
        sm: u32,
        options: &[&str],
    ) -> Result<Compiled, String> {
        let csrc = CString::new(src).map_err(|_| format!("{name}: NUL byte in source"))?;
        let cname = CString::new(name).map_err(|_| format!("{name}: NUL byte in name"))?;
        let mut opts = vec![format!("--gpu-architecture=sm_{sm}")];
        opts.extend(options.iter().map(|s| s.to_string()));
        let copts: Vec<CString> = opts
            .iter()
            .map(|o| CString::new(o.as_str()).map_err(|_| format!("NUL byte in option {o}")))
            .collect::<Result<_, _>>()?;
        let ptrs: Vec<*const c_char> = copts.iter().map(|c| c.as_ptr()).collect();
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated strings that outlive the call; no headers.
        let r = unsafe {
            (self.fns.create)(
                &mut prog,
                csrc.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(format!("{name}: nvrtcCreateProgram: {}", self.error(r)));
        }
        // SAFETY: `prog` was created above; the option pointers outlive the call.
        let r = unsafe { (self.fns.compile)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        let log = self.log(prog);
        let result = if r != 0 {
            Err(format!(
                "{name} for sm_{sm}: {}\n{}",
                self.error(r),
                log.trim_end()
            ))
        } else {
            self.cubin(prog).map(|cubin| Compiled { cubin, log })
        };
        // SAFETY: `prog` is a live program, destroyed once.
        unsafe { (self.fns.destroy)(&mut prog) };
        result
    }

    fn log(&self, prog: Prog) -> String {
        let mut n = 0usize;
        // SAFETY: live program, valid out-pointer.
        if unsafe { (self.fns.log_size)(prog, &mut n) } != 0 || n == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` has the `n` bytes NVRTC asked for.
        if unsafe { (self.fns.log)(prog, buf.as_mut_ptr().cast()) } != 0 {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(n);
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }

    fn cubin(&self, prog: Prog) -> Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: live, compiled program; valid out-pointer.
        let r = unsafe { (self.fns.cubin_size)(prog, &mut n) };
        if r != 0 || n == 0 {
            return Err(format!("nvrtcGetCUBINSize: {}", self.error(r)));
        }
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` has the `n` bytes NVRTC asked for.
        let r = unsafe { (self.fns.cubin)(prog, buf.as_mut_ptr().cast()) };
        if r != 0 {
            return Err(format!("nvrtcGetCUBIN: {}", self.error(r)));
        }
        Ok(buf)
    }
}
