#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine without Rust, and puts it in
# gpu-bundle/ (ignored by git): the surplus binary and the test binaries with CUDA tests
# (runtime lib tests; engine tests cuda, golden, qwen35_golden), stripped to stay small.
# Carry gpu-bundle.tar.gz (the bundle and the qwen35 Q8_0 fixture) to the GPU machine;
# gpu_check.sh unpacks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -p surplus-cli
list() { # cargo test --no-run prints "Executable ... (path)"
  cargo test --release --no-run "$@" 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p'
}
rm -rf gpu-bundle && mkdir -p gpu-bundle/tests
cp "$TARGET/release/surplus" gpu-bundle/surplus
# Named by crate: several crates have a test called `golden`.
# A test binary that fails to build must stop the bundle, not leave it out quietly.
one() { # name, cargo test args: copies the one executable cargo names
  local name=$1 bins; shift
  bins=$(list "$@")
  [ -n "$bins" ] || { echo "gpu_bundle: no test binary for $*: see cargo test --no-run $*"; exit 1; }
  for t in $bins; do cp "$t" "gpu-bundle/tests/$name"; done
}
one runtime-lib -p surplus-runtime --lib
for name in cuda golden qwen35_golden; do
  one "engine-$name" -p surplus-engine --test "$name"
done
# Test binaries find tests/data through the source path they were built from
# (CARGO_MANIFEST_DIR); gpu_check.sh links that path to the checkout it runs in.
pwd -P > gpu-bundle/built-in
if command -v strip >/dev/null; then strip gpu-bundle/surplus gpu-bundle/tests/* || true; fi
# One compressed file to carry (the device tool moves at most 64 MiB): the bundle and the
# qwen35 fixture (ignored by git, so it would not travel otherwise).
fixtures=$(ls tests/data/synthetic/*q8_0.gguf 2>/dev/null || true)
# shellcheck disable=SC2086
tar czf gpu-bundle.tar.gz gpu-bundle $fixtures
du -sh gpu-bundle/* gpu-bundle/tests/* gpu-bundle.tar.gz
