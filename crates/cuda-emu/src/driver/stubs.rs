//! The entry points that are not emulated: the `not_emulated!` macro and [`NOT_EMULATED`], each
//! a `#[no_mangle]` export that says so on stderr and returns `CUDA_ERROR_NOT_SUPPORTED`.

use super::{say, CUresult, CUDA_ERROR_NOT_SUPPORTED};

macro_rules! not_emulated {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not emulated (`CUDA_ERROR_NOT_SUPPORTED`).")]
            #[no_mangle]
            pub unsafe extern "C" fn $name() -> CUresult {
                say(concat!(stringify!($name), " is not emulated"));
                CUDA_ERROR_NOT_SUPPORTED
            }
        )*
        /// The entry points that exist only to report that they are not emulated.
        pub const NOT_EMULATED: &[&str] = &[$(stringify!($name)),*];
    };
}

not_emulated!(
    cuCtxCreate_v2,
    cuCtxCreate_v3,
    cuCtxCreate_v4,
    cuCtxDestroy_v2,
    cuCtxGetCacheConfig,
    cuCtxSetCacheConfig,
    cuCtxGetLimit,
    cuCtxSetLimit,
    cuCtxGetFlags,
    cuCtxSetFlags,
    cuDeviceGetUuid,
    cuDeviceGetUuid_v2,
    cuDeviceGetPCIBusId,
    cuDeviceGetByPCIBusId,
    cuDeviceGetDefaultMemPool,
    cuDeviceGetMemPool,
    cuDeviceSetMemPool,
    cuCtxDisablePeerAccess,
    cuImportExternalMemory,
    cuDestroyExternalMemory,
    cuExternalMemoryGetMappedBuffer,
    cuGraphClone,
    cuGraphUpload,
    cuGraphGetNodes,
    cuGraphCreate,
    cuGraphAddKernelNode_v2,
    cuGraphExecKernelNodeSetParams_v2,
    cuGraphExecUpdate_v2,
    cuGraphInstantiate_v2,
    cuGraphInstantiateWithParams,
    cuStreamGetCaptureInfo_v2,
    cuStreamGetCaptureInfo_v3,
    cuStreamAddCallback,
    cuStreamAttachMemAsync,
    cuStreamGetPriority,
    cuStreamGetFlags,
    cuStreamGetCtx,
    cuLaunchHostFunc,
    cuLaunchCooperativeKernel,
    cuLaunchKernelEx,
    cuMemAllocManaged,
    cuMemAllocPitch_v2,
    cuMemAllocAsync,
    cuMemAllocFromPoolAsync,
    cuMemFreeAsync,
    cuMemPoolCreate,
    cuMemPoolDestroy,
    cuMemPoolGetAttribute,
    cuMemPoolSetAttribute,
    cuMemPoolTrimTo,
    cuMemAdvise,
    cuMemAdvise_v2,
    cuMemPrefetchAsync,
    cuMemPrefetchAsync_v2,
    cuMemHostRegister_v2,
    cuMemHostUnregister,
    cuMemHostGetDevicePointer_v2,
    cuMemHostGetFlags,
    cuMemcpy2D_v2,
    cuMemcpy2DAsync_v2,
    cuMemcpy2DUnaligned_v2,
    cuMemcpy3D_v2,
    cuMemcpy3DAsync_v2,
    cuMemsetD2D8_v2,
    cuMemsetD2D32_v2,
    cuModuleLoad,
    cuModuleLoadDataEx,
    cuModuleLoadFatBinary,
    cuModuleGetGlobal_v2,
    cuLinkCreate_v2,
    cuLinkAddData_v2,
    cuLinkComplete,
    cuLinkDestroy,
    cuOccupancyMaxActiveBlocksPerMultiprocessor,
    cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags,
    cuOccupancyMaxPotentialBlockSize,
    cuOccupancyMaxPotentialBlockSizeWithFlags,
    cuOccupancyAvailableDynamicSMemPerBlock,
    cuOccupancyMaxPotentialClusterSize,
    cuOccupancyMaxActiveClusters,
    cuPointerGetAttribute,
    cuPointerGetAttributes,
    cuPointerSetAttribute,
    cuFuncGetModule,
    cuFuncGetName,
    cuGetProcAddress_v2,
);
