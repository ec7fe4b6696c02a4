#!/usr/bin/env bash
# Speculative decoding benchmark: generation tokens/s without and with speculation, greedy,
# on a code-editing prompt (the output repeats the input) and an open-ended one.
# Usage: scripts/bench_spec.sh [TARGET] [DRAFT] [N] [THREADS]
set -euo pipefail
S=${SURPLUS:-target/release/surplus}
TARGET=${1:-qwen2.5-coder-1.5b}
DRAFT=${2:-qwen2.5-coder-0.5b}
N=${3:-128}
T=${4:-2}
EDIT=$'Rename the function `area` to `rect_area` and change nothing else.\n\n```python\ndef area(w, h):\n    """Area of a w x h rectangle."""\n    if w < 0 or h < 0:\n        raise ValueError("negative size")\n    return w * h\n\n\ndef perimeter(w, h):\n    """Perimeter of a w x h rectangle."""\n    if w < 0 or h < 0:\n        raise ValueError("negative size")\n    return 2 * (w + h)\n```\n\nThe updated code:\n\n```python\n'
OPEN='Write a short story about a lighthouse keeper who finds a message in a bottle.'
printf '| prompt | mode | tokens/s | drafted | accepted | rate |\n|---|---|---|---|---|---|\n'
for name in edit open; do
  if [ $name = edit ]; then P=$EDIT; else P=$OPEN; fi
  for mode in "none" "ngram" "draft"; do
    args=(--spec "$mode")
    [ "$mode" = draft ] && args+=(--draft-model "$DRAFT")
    "$S" run -m "$TARGET" -p "$P" -n "$N" --temp 0 --ignore-eos -t "$T" --json "${args[@]}" 2>/dev/null |
      python3 -c "
import json, sys
d = json.load(sys.stdin); s = d.get('speculative') or {}
dr, ac = s.get('drafted', 0), s.get('accepted', 0)
rate = f'{100*ac/dr:.0f}%' if dr else '-'
print(f\"| $name | $mode | {d['timings']['generation_tokens_per_s']:.1f} | {dr} | {ac} | {rate} |\")"
  done
done
