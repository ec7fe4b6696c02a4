#!/usr/bin/env python3
"""Decode efficiency on the emulated GPU, per generated token, from the emulator's counters.

    scripts/emu_bench.py -m smollm2-135m [-n 4] [--gpus V100:70:32:900] [--launch-us 3]

Runs `surplus run -ngl all` twice under scripts/emu.sh (1 token, then 1 + N tokens) with
SURPLUS_EMU_STATS set; the difference is N decode steps. Prints, per token: kernel launches,
DRAM sectors (32 bytes, read and written, distinct per launch) and their ratio to the weight
bytes a decode step reads (`decode_weight_bytes` from `surplus bench --json` on the CPU), and
a predicted tokens/s on the first configured device:

    1 / (sector bytes / bandwidth + launches * launch cost)

The launch cost (default 3 microseconds: a kernel node of a CUDA graph on a V100, launch and
tail) is stated, not measured; the bandwidth is the configured one (name:sm:GiB:GB/s).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_stats(args, n, stats, env):
    cmd = [os.path.join(ROOT, "scripts", "emu.sh"), args.bin, "run", "-m", args.model,
           "-ngl", "all", "-p", args.prompt, "-n", str(n), "--temp", "0", "--ignore-eos",
           "--spec", "none", "--json"]
    e = dict(env, SURPLUS_EMU_STATS=stats)
    r = subprocess.run(cmd, env=e, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"emu_bench: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(stats) as f:
        return json.load(f)


def totals(s):
    k = s["kernels"].values()
    return {
        "launches": sum(v["launches"] for v in k),
        "sectors": sum(v["sectors_read"] + v["sectors_written"] for v in k),
        "sectors_read": sum(v["sectors_read"] for v in k),
        "warp_instructions": sum(v["warp_instructions"] for v in k),
        "graph_launches": s.get("graph_launches", 0),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default="smollm2-135m")
    p.add_argument("-n", type=int, default=4, help="decode steps measured (default 4)")
    p.add_argument("--gpus", default=os.environ.get("SURPLUS_EMU_GPUS", "V100:70:32:900"),
                   help="SURPLUS_EMU_GPUS for the runs (default V100:70:32:900)")
    p.add_argument("--launch-us", type=float, default=3.0,
                   help="stated cost of one kernel launch in microseconds (default 3)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "surplus"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"emu_bench: no {args.bin}: cargo build --release -p surplus-cli first")
    env = dict(os.environ, SURPLUS_EMU_GPUS=args.gpus)
    env.pop("SURPLUS_EMU_STATS", None)
    bw = float(args.gpus.split(",")[0].split(":")[3]) * 1e9

    w = subprocess.run([args.bin, "bench", "-m", args.model, "-ngl", "0", "-p", "1", "-n", "1",
                        "-r", "1", "--json"], capture_output=True, text=True)
    if w.returncode != 0:
        sys.exit(f"emu_bench: surplus bench failed:\n{w.stderr[-2000:]}")
    weight_bytes = json.loads(w.stdout)["decode_weight_bytes"]

    with tempfile.TemporaryDirectory() as d:
        a = totals(run_with_stats(args, 1, os.path.join(d, "a.json"), env))
        b = totals(run_with_stats(args, 1 + args.n, os.path.join(d, "b.json"), env))
    per = {k: (b[k] - a[k]) / args.n for k in a}
    seconds = per["sectors"] * 32 / bw + per["launches"] * args.launch_us * 1e-6
    out = {
        "model": args.model,
        "device": args.gpus.split(",")[0],
        "decode_steps": args.n,
        "launches_per_token": per["launches"],
        "graph_launches_per_token": per["graph_launches"],
        "warp_instructions_per_token": per["warp_instructions"],
        "sector_bytes_per_token": per["sectors"] * 32,
        "weight_bytes_per_token": weight_bytes,
        "sectors_read_over_weight_bytes": per["sectors_read"] * 32 / weight_bytes,
        "sectors_over_weight_bytes": per["sectors"] * 32 / weight_bytes,
        "launch_us": args.launch_us,
        "predicted_tokens_per_s": 1 / seconds,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.model} on {out['device']} (emulated), per decode token, over {args.n} steps:")
    print(f"  kernel launches        {per['launches']:.0f} ({per['graph_launches']:.0f} graph launches)")
    print(f"  DRAM sectors           {per['sectors'] * 32 / 1e6:.2f} MB "
          f"(read {per['sectors_read'] * 32 / 1e6:.2f} MB)")
    print(f"  weight bytes           {weight_bytes / 1e6:.2f} MB")
    print(f"  sectors / weights      {out['sectors_over_weight_bytes']:.3f} "
          f"(read only {out['sectors_read_over_weight_bytes']:.3f})")
    print(f"  predicted tokens/s     {out['predicted_tokens_per_s']:.1f} "
          f"(sector bytes / {bw / 1e9:.0f} GB/s + {args.launch_us} us per launch)")


if __name__ == "__main__":
    main()
