#!/usr/bin/env bash
# Runs a command with the emulated GPU (crates/cuda-emu) standing in for the NVIDIA driver
# and cuBLAS:
#   scripts/emu.sh target/release/surplus run -m smollm2-135m -ngl all -p "Hi" -n 8 --temp 0
#   SURPLUS_EMU_GPUS=P40:61:24:347 scripts/emu.sh target/release/surplus doctor --json
#   SURPLUS_EMU_STATS=stats.json scripts/emu.sh cargo test -p surplus-runtime cuda::
# Builds the emulator (release) when needed, lays it out in target/emu/ as libcuda.so.1,
# libcuda.so and libcublas.so.12 (one file: one memory table), points SURPLUS_CUDA_LIB_DIR
# there and adds the pip wheel's NVRTC (nvidia-cuda-nvrtc-cu12) when it is installed.
# Only this script sets that variable: nothing else picks the emulator up.
# Environment:
#   SURPLUS_EMU_GPUS   devices, comma-separated name:sm:memory_GiB:bandwidth_GBps
#                      (default surplus-emu:70:16:900; memory may be fractional)
#   SURPLUS_EMU_STATS  write per-kernel counters as JSON to this file at exit
#   SURPLUS_TEST_GPU   set to 1 here: the engine's and server's tests run on the GPU, and
#                      CUDA tests fail instead of skipping when the GPU does not open
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -eq 0 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LIB=$TARGET/release/libcuda_emu.so
EMU=$TARGET/emu
# cargo decides whether anything changed (quick when nothing did).
(cd "$ROOT" && cargo build --release --quiet -p surplus-cuda-emu --lib) >&2 \
  || { echo "emu.sh: building the emulator failed" >&2; exit 1; }
mkdir -p "$EMU"
for name in libcuda.so.1 libcuda.so libcublas.so.12 libcublas.so; do
  ln -sf "$LIB" "$EMU/$name"
done
export SURPLUS_CUDA_LIB_DIR="$EMU${SURPLUS_CUDA_LIB_DIR:+:$SURPLUS_CUDA_LIB_DIR}"
NVRTC=$(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -n "$NVRTC" ] && [ -d "$NVRTC" ]; then
  export SURPLUS_CUDA_LIB_DIR="$SURPLUS_CUDA_LIB_DIR:$NVRTC"
fi
export SURPLUS_TEST_GPU=${SURPLUS_TEST_GPU:-1}
exec "$@"
