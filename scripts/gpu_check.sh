#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no Rust tool chain. Build elsewhere first:
#   cargo build --release -p surplus-cli
#   cargo test --release -p surplus-runtime --no-run     # the CUDA kernel tests
# then copy the repository (with target/release) over and run: scripts/gpu_check.sh
# It prints what doctor finds, compiles the kernels for this GPU, runs the CUDA kernel
# tests (each kernel against the CPU reference), and ends with a short table.
# NVRTC: CUDA 12 or 13 libraries are found on LD_LIBRARY_PATH, in a toolkit, in pip wheels
# (pip install nvidia-cuda-nvrtc-cu12), or in SURPLUS_CUDA_LIB_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${SURPLUS_BIN:-$TARGET/release/surplus}
[ -x "$BIN" ] || { echo "no $BIN: build it with cargo build --release -p surplus-cli"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "=== surplus doctor"
"$BIN" doctor
"$BIN" doctor --json > /tmp/surplus-doctor.json
read -r AVAIL SM NVRTC <<<"$(python3 - <<'PY' 2>/dev/null || echo "false - -"
import json
d = json.load(open("/tmp/surplus-doctor.json"))["cuda"]
g = (d.get("gpus") or [{}])[0]
print(str(d["available"]).lower(), g.get("sm", "-"), g.get("nvrtc") or "-")
PY
)"

echo "=== compile the kernels for ${SM}"
KERNELS=skipped
if [ "$SM" != "-" ]; then
  if "$BIN" doctor --compile-kernels "$SM"; then KERNELS=ok; else KERNELS=FAIL; fi
fi

echo "=== CUDA kernel tests (each kernel against the CPU reference)"
TESTS=missing
PASSED=0; FAILED=0
for t in "$TARGET"/release/deps/runtime-* ${SURPLUS_TEST_BINS:-}; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  out=$("$t" cuda:: --test-threads=1 --nocapture 2>&1); rc=$?
  echo "$out" | grep -E "^test |skipped|panicked|gpu .* cpu" | head -60
  PASSED=$(echo "$out" | sed -n 's/.*test result: .* \([0-9]*\) passed.*/\1/p' | tail -1)
  FAILED=$(echo "$out" | sed -n 's/.*passed; \([0-9]*\) failed.*/\1/p' | tail -1)
  if echo "$out" | grep -q "skipped: no usable GPU"; then TESTS=skipped; elif [ $rc -eq 0 ]; then TESTS=ok; else TESTS=FAIL; fi
done

echo
echo "=== summary"
printf '%-22s %s\n' "cuda available" "$AVAIL" "gpu arch" "$SM" "nvrtc" "$NVRTC" \
  "kernels compile" "$KERNELS" "kernel tests" "$TESTS (${PASSED:-0} passed, ${FAILED:-0} failed)"
# Not yet: surplus bench on the GPU (needs CudaOps, the Ops implementation on CUDA).
[ "$KERNELS" != FAIL ] && [ "$TESTS" != FAIL ]
