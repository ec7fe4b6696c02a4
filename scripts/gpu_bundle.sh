#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine without Rust, and puts it in
# gpu-bundle/ (ignored by git): the surplus binary and the test binaries with CUDA tests
# (runtime lib tests; engine tests cuda, golden, qwen35_golden), stripped to stay small.
# Carry gpu-bundle/ and tests/data/synthetic/*.gguf (the fixture) to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -p surplus-cli
list() { # cargo test --no-run prints "Executable ... (path)"
  cargo test --release --no-run "$@" 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p'
}
rm -rf gpu-bundle && mkdir -p gpu-bundle/tests
cp "$TARGET/release/surplus" gpu-bundle/surplus
for t in $(list -p surplus-runtime --lib) \
         $(list -p surplus-engine --test cuda --test golden --test qwen35_golden); do
  cp "$t" gpu-bundle/tests/
done
if command -v strip >/dev/null; then strip gpu-bundle/surplus gpu-bundle/tests/* || true; fi
du -sh gpu-bundle gpu-bundle/* gpu-bundle/tests/*
