#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no Rust tool chain. It builds nothing.
# Build elsewhere first (scripts/gpu_bundle.sh writes gpu-bundle.tar.gz: the binaries and
# the qwen35 fixture), copy the repository with that file over, then:
#   scripts/gpu_check.sh
# Steps (about 5 minutes on an H100; each has a timeout):
#   1. doctor, and the kernels compiled for this GPU;
#   2. the CUDA tests of the runtime (each kernel and each op against the CPU reference);
#   3. the engine on the GPU: GPU-vs-CPU logits and greedy tokens (tests/cuda.rs), and the
#      golden tests with SURPLUS_TEST_GPU=1 (qwen35 fixture always; the test models when on
#      disk under $SURPLUS_HOME/models or ~/.cache/surplus/models);
#   4. surplus bench (pp512, tg128) on the models present and on a synthetic Llama-3-8B-shaped
#      model written here (surplus synth), plus that model with a q8_0 KV cache and tg128
#      without CUDA graphs; with GPU_CHECK_QWEN36=1 also a Qwen3.6-27B-shaped qwen35 model
#      (about 16 GB, 2-3 more minutes): bench, and 128 tokens with MTP on and off;
#   5. the copy bandwidth, and a table: tokens/s and % of the bandwidth roofline
#      (weight bytes read per token × tokens/s ÷ copy bandwidth).
# From a session with the device tool: scripts/gpu_bundle.sh here, then run
#   scripts/gpu_check.sh 2>&1 | tail -150     (carry: gpu-bundle.tar.gz; about 5 minutes)
# Logs and bench JSON land in $OUT (or $GPU_CHECK_OUT, else /tmp/surplus-gpu-check).
# Debugging: SURPLUS_CUDA_SYNC=1 names a faulting kernel; SURPLUS_NO_CUDA_GRAPH=1 turns
# graphs off; SURPLUS_TEST_GPU=1 runs the engine's tests on the GPU.
# NVRTC/cuBLAS: CUDA 12 or 13 libraries on LD_LIBRARY_PATH, in a toolkit, in pip wheels, or
# in SURPLUS_CUDA_LIB_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUNDLE=${GPU_BUNDLE:-gpu-bundle}
if [ -z "${GPU_BUNDLE:-}" ] && [ -f gpu-bundle.tar.gz ]; then
  # Always the tarball's binaries: a machine kept warm still has the last run's gpu-bundle/.
  rm -rf gpu-bundle && tar xzf gpu-bundle.tar.gz  # gpu-bundle/, tests/data/synthetic/*q8_0.gguf
fi
# The test binaries read tests/data under the checkout they were built in: make that path
# lead here when the checkout sits elsewhere on this machine.
BUILT=$(cat "$BUNDLE/built-in" 2>/dev/null || true)
if [ -n "$BUILT" ] && [ ! -e "$BUILT" ]; then
  mkdir -p "$(dirname "$BUILT")" && ln -s "$PWD" "$BUILT" && echo "linked $BUILT -> $PWD"
fi
TARGET=${CARGO_TARGET_DIR:-target}
if [ -x "$BUNDLE/surplus" ]; then
  BIN=${SURPLUS_BIN:-$BUNDLE/surplus}
else
  BIN=${SURPLUS_BIN:-$TARGET/release/surplus}
fi
# Test binaries as gpu_bundle.sh names them (runtime-lib, engine-cuda, engine-golden, ...).
TESTDIR=${GPU_TESTS:-$BUNDLE/tests}
[ -x "$BIN" ] || { echo "no $BIN: run scripts/gpu_bundle.sh where Rust is"; exit 1; }
OUT=${GPU_CHECK_OUT:-${OUT:-/tmp/surplus-gpu-check}}
mkdir -p "$OUT"
MODELS=${SURPLUS_HOME:+$SURPLUS_HOME/models}
MODELS=${MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/surplus/models}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
elapsed() { echo "[$(( $(date +%s) - START ))s]"; }

echo "=== 1. surplus doctor $(elapsed)"
"$BIN" doctor
"$BIN" doctor --json > "$OUT/doctor.json"
read -r AVAIL SM NVRTC <<<"$(python3 - "$OUT/doctor.json" <<'PY' 2>/dev/null || echo "false - -"
import json, sys
d = json.load(open(sys.argv[1]))["cuda"]
g = (d.get("gpus") or [{}])[0]
print(str(d["available"]).lower(), g.get("sm", "-"), g.get("nvrtc") or "-")
PY
)"
KERNELS=skipped
if [ "$SM" != "-" ]; then
  if timeout 300 "$BIN" doctor --compile-kernels "$SM"; then KERNELS=ok; else KERNELS=FAIL; fi
fi

# Runs test binary $1 with filter/args $2..; prints the interesting lines; sets RES.
run_tests() {
  local t=$1; shift
  local log="$OUT/$(basename "$t").log"
  timeout 300 "$t" "$@" --test-threads=1 --nocapture > "$log" 2>&1; local rc=$?
  grep -E "^test |skipped|panicked|gpu .* cpu|rel diff|agree|graphs|placement|GPU" "$log" | head -80
  local p f
  p=$(sed -n 's/.*test result: .* \([0-9]*\) passed.*/\1/p' "$log" | tail -1)
  f=$(sed -n 's/.*passed; \([0-9]*\) failed.*/\1/p' "$log" | tail -1)
  if grep -q "skipped: no usable GPU\|skipped: --gpu-layers" "$log"; then RES="skipped"
  elif [ $rc -eq 0 ]; then
    RES="ok (${p:-0} passed)"
    # A test without its fixture file passes after saying so: count those.
    local miss; miss=$(grep -c "skipped: .* is missing" "$log")
    [ "$miss" -gt 0 ] && RES="$RES, $miss without their fixture file"
  else
    RES="FAIL (rc $rc, ${p:-0} passed, ${f:-?} failed; $log)"
    if [ -z "${SURPLUS_CUDA_SYNC:-}" ]; then
      # Again, synchronizing after every launch: a kernel fault then names its kernel.
      echo "--- rerun with SURPLUS_CUDA_SYNC=1 ($log.sync)"
      SURPLUS_CUDA_SYNC=1 timeout 300 "$t" "$@" --test-threads=1 --nocapture > "$log.sync" 2>&1
      grep -E "panicked|kernel failed|launch failed|CUDA" "$log.sync" | head -20
    fi
  fi
}

echo "=== 2. CUDA tests of the runtime (kernels and ops against the CPU) $(elapsed)"
TESTS=missing
for t in "$TESTDIR"/runtime-lib; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  run_tests "$t" cuda::; TESTS=$RES
done

if [ "$AVAIL" != true ]; then
  echo "CUDA is not available here (see doctor above): the engine and bench steps need a GPU."
  exit 1
fi

echo "=== 3. the engine on the GPU $(elapsed)"
ENGINE=missing
for t in "$TESTDIR"/engine-cuda; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  run_tests "$t"; ENGINE=$RES
done
GOLDEN=""
for t in "$TESTDIR"/engine-qwen35_golden "$TESTDIR"/engine-golden; do
  [ -x "$t" ] && [ -f "$t" ] || continue
  name=$(basename "$t")
  if [ "$name" = engine-golden ] && ! ls "$MODELS"/smollm2-135m*.gguf >/dev/null 2>&1; then
    GOLDEN="$GOLDEN golden:skipped(no test models in $MODELS)"; continue
  fi
  SURPLUS_TEST_GPU=1 run_tests "$t"; GOLDEN="$GOLDEN $name:$RES"
done

echo "=== 4. bench $(elapsed)"
BENCH="$OUT/bench.jsonl"; : > "$BENCH"
bench() { # name path n-prompt [extra flags...]
  local name=$1 path=$2 np=${3:-512}
  shift; shift; [ $# -gt 0 ] && shift
  echo "--- $name"
  if timeout 240 "$BIN" bench -m "$path" -p "$np" -n 128 -r 2 -c 1024 --gpu-layers all --json \
      "$@" > "$OUT/bench-$name.json" 2> "$OUT/bench-$name.err"; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["name"]=sys.argv[2]; print(json.dumps(d))' \
      "$OUT/bench-$name.json" "$name" >> "$BENCH"
    cat "$OUT/bench-$name.json"
  else
    echo "bench $name failed:"; tail -5 "$OUT/bench-$name.err"
  fi
}
FIXTURE=tests/data/synthetic/qwen35-tiny-q8_0.gguf
[ -f "$FIXTURE" ] && bench qwen35-tiny-q8_0 "$FIXTURE"
VOCAB=""
for f in smollm2-135m-instruct-q4_1 gemma3-270m-q4_k_m qwen2.5-coder-0.5b-instruct-q4; do
  if [ -f "$MODELS/$f.gguf" ]; then
    bench "$f" "$MODELS/$f.gguf"
    case $f in smollm2*) VOCAB="$MODELS/$f.gguf";; esac
  else
    echo "--- $f: not in $MODELS, skipped"
  fi
done
SYN=${TMPDIR:-/tmp}/surplus-synth-llama3-8b.gguf
# SmolLM2's tokenizer when it is here, else a placeholder vocabulary of the same 49152 tokens.
echo "--- synthetic Llama-3-8B shape (vocabulary: ${VOCAB:-placeholder, 49152 tokens}) $(elapsed)"
# shellcheck disable=SC2086 # GPU_CHECK_SYNTH: extra flags (a smaller shape to try the script)
if timeout 240 "$BIN" synth "$SYN" ${VOCAB:+--vocab-from "$VOCAB"} ${GPU_CHECK_SYNTH:-}; then
  bench llama3-8b-shape "$SYN"
  echo "--- llama3-8b-shape with a q8_0 KV cache"
  bench llama3-8b-shape-kv-q8_0 "$SYN" 512 -ctk q8_0 -ctv q8_0
  echo "--- llama3-8b-shape tg128 without CUDA graphs"
  SURPLUS_NO_CUDA_GRAPH=1 bench llama3-8b-shape-nograph "$SYN" 0
fi
rm -f "$SYN"
if [ -n "${GPU_CHECK_QWEN36:-}" ]; then
  # Issue 8's "real Qwen3.6-27B shapes": 27B parameters, about 16 GB; MTP on and off.
  Q36=${TMPDIR:-/tmp}/surplus-synth-qwen36-27b.gguf
  echo "--- synthetic Qwen3.6-27B shape (placeholder vocabulary, 248320 tokens) $(elapsed)"
  # shellcheck disable=SC2086 # GPU_CHECK_QWEN36_ARGS: extra flags (a smaller shape)
  if timeout 300 "$BIN" synth "$Q36" --shape qwen3.6-27b ${GPU_CHECK_QWEN36_ARGS:-}; then
    bench qwen36-27b-shape "$Q36"
    for spec in none mtp; do
      echo "--- qwen36-27b-shape: generate 128 tokens, --spec $spec"
      timeout 240 "$BIN" run -m "$Q36" -p "t5 t6 t7 t8 t9" -n 128 --temp 0 --ignore-eos \
        --gpu-layers all -c 1024 --json --spec "$spec" \
        > "$OUT/run-qwen36-$spec.json" 2> "$OUT/run-qwen36-$spec.err" &&
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], "generation t/s:", round(d["timings"]["generation_tokens_per_s"], 1), "speculative:", d.get("speculative"))' \
          "$OUT/run-qwen36-$spec.json" "$spec" || tail -3 "$OUT/run-qwen36-$spec.err"
    done
  fi
  rm -f "$Q36"
fi

echo "=== 5. copy bandwidth $(elapsed)"
"$BIN" doctor --bandwidth --json > "$OUT/bandwidth.json" 2> "$OUT/bandwidth.err" && cat "$OUT/bandwidth.json"

echo
echo "=== summary $(elapsed)"
printf '%-22s %s\n' "cuda available" "$AVAIL" "gpu arch" "$SM" "nvrtc" "$NVRTC" \
  "kernels compile" "$KERNELS" "runtime CUDA tests" "$TESTS" "engine GPU vs CPU" "$ENGINE" \
  "goldens on the GPU" "${GOLDEN:- missing}"
python3 - "$BENCH" "$OUT/bandwidth.json" <<'PY' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
try:
    bw = json.load(open(sys.argv[2]))["gpus"][0]["copy_bandwidth_bytes_per_s"]
except Exception:
    bw = None
print()
print("| model | pp512 t/s | tg128 t/s | weight bytes/token | % of copy-bandwidth roofline |")
print("|---|---|---|---|---|")
for r in rows:
    pp = r.get("pp", {}).get("tokens_per_s", 0) if r.get("n_prompt") else 0
    tg = r.get("tg", {}).get("tokens_per_s", 0)
    wb = r.get("decode_weight_bytes", 0)
    roof = f"{100 * wb * tg / bw:.1f}%" if bw and wb and tg else "-"
    print(f"| {r['name']} | {pp:.1f} | {tg:.1f} | {wb / 1e9:.3f} GB | {roof} |")
if bw:
    print(f"\ncopy bandwidth: {bw / 1e9:.0f} GB/s (read + write)")
PY
[ "$KERNELS" != FAIL ] && [[ "$TESTS" != FAIL* ]] && [[ "$ENGINE" != FAIL* ]] &&
  [[ "${GOLDEN:-}" != *FAIL* ]]
