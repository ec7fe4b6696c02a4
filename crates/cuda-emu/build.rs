//! Build script: gives the shared library the soname `libcuda.so`.
//!
//! The stand-in driver must carry the soname cudarc asks for: glibc's dlopen("libcuda.so")
//! returns an object already loaded by full path when its SONAME matches the name.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so");
}
