#!/usr/bin/env bash
# Copies the test fixtures' model files into tests/data (they are not kept in git): the
# random-weight qwen35 model (F32, Q8_0), the two vision projectors and llama.cpp's
# embedding dumps. Source: $SURPLUS_FIXTURES, else ../shared/golden beside the checkout.
# Without a source it says so and exits 0: the tests that need these files then skip.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${SURPLUS_FIXTURES:-../shared/golden}"
if [ ! -d "$src/synthetic" ] || [ ! -d "$src/vision" ]; then
  echo "fixtures: no source at $src (set SURPLUS_FIXTURES); tests needing them will skip"
  exit 0
fi
mkdir -p tests/data/synthetic tests/data/vision/embd
cp -f "$src"/synthetic/qwen35-tiny-f32.gguf "$src"/synthetic/qwen35-tiny-q8_0.gguf tests/data/synthetic/
cp -f "$src"/vision/*.gguf tests/data/vision/
cp -f "$src"/vision/embd/*.bin tests/data/vision/embd/
# The checksums the fixture's README gives.
sha256sum -c <<'SUMS'
d107db455db29e310fef7f08e77af87277b51995b8fde800c43401e15538b3bd  tests/data/synthetic/qwen35-tiny-f32.gguf
476ff26716fadb405d4cbf1118e3f80ffba19ec51206b4950d0ebd01d49142e8  tests/data/synthetic/qwen35-tiny-q8_0.gguf
SUMS
echo "fixtures: copied from $src"
