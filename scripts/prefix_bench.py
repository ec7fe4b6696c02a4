#!/usr/bin/env python3
"""Time to first token of a follow-up chat turn, cold and warm (prefix caching).

A long conversation (about --tokens prompt tokens) and a question, then the follow-up (the
conversation, the answer and a new question), on `surplus serve`:
  1. the follow-up right after the first answer (warm: the sequence holds its tokens);
  2. the same after other prompts took every sequence (warm from --cache-ram);
  3. the follow-up on a fresh server (cold).
Prints each time to first token (the server's own histogram sum, per request), the prompt
tokens evaluated and served from cache (/metrics), and checks the answers are identical.

    scripts/prefix_bench.py --bin target/release/surplus -m qwen2.5-coder-0.5b
"""

import argparse
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args):
    port = free_port()
    cmd = [args.bin, "serve", "-m", args.model, "--port", str(port), "--parallel",
           str(args.parallel), "-c", str(args.ctx)] + args.extra
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except Exception:
            if proc.poll() is not None:
                sys.exit("the server exited:\n" + proc.stderr.read())
            time.sleep(0.5)
    sys.exit("the server did not start")


def metrics(url):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(surplus_[a-z_]+) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def chat(url, messages, max_tokens):
    """One greedy answer; returns (text, ttft seconds, evaluated, cached)."""
    before = metrics(url)
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0})
    req = urllib.request.Request(url + "/v1/chat/completions", body.encode(),
                                 {"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req, timeout=3600).read())
    after = metrics(url)
    d = lambda k: after.get(k, 0) - before.get(k, 0)
    return (reply["choices"][0]["message"]["content"],
            d("surplus_time_to_first_token_seconds_sum"),
            int(d("surplus_prompt_tokens_total")),
            int(d("surplus_prompt_tokens_cached_total")))


def conversation(tokens):
    """A system prompt and turns of plain prose, about `tokens` tokens in all."""
    msgs = [{"role": "system", "content": "You are a careful assistant for a city's archive."}]
    i = 0
    while sum(len(m["content"]) for m in msgs) < tokens * 2.7:
        msgs.append({"role": "user", "content":
                     f"Record {i}: the bridge on street {i * 37 % 101} was repaired in "
                     f"{1900 + i * 7 % 120} after a flood; its {i % 5 + 2} arches are stone. "
                     "Summarise what we know about it in one sentence."})
        msgs.append({"role": "assistant", "content":
                     f"Bridge {i}: {i % 5 + 2} stone arches on street {i * 37 % 101}, "
                     f"repaired in {1900 + i * 7 % 120} after a flood."})
        i += 1
    msgs.append({"role": "user", "content": "Which bridge has the most arches?"})
    return msgs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/surplus")
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, default=2000, help="conversation length (about)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("-n", "--max-tokens", type=int, default=32)
    ap.add_argument("extra", nargs="*", help="more `serve` flags (after --)")
    args = ap.parse_args()

    msgs = conversation(args.tokens)
    follow_up = lambda a: msgs + [{"role": "assistant", "content": a},
                                  {"role": "user", "content": "And the oldest repair?"}]
    # 1. The conversation, then its follow-up in the same server: the sequence holds it.
    proc, url = start(args)
    try:
        a, t_a, e_a, c_a = chat(url, msgs, args.max_tokens)
        b, t_warm, e_warm, c_warm = chat(url, follow_up(a), args.max_tokens)
    finally:
        proc.terminate()
        proc.wait()
    # 2. The conversation, other prompts in every sequence (it moves to host memory), then
    # the follow-up.
    proc, url = start(args)
    try:
        chat(url, msgs, args.max_tokens)
        for k in range(args.parallel):
            chat(url, conversation(args.tokens // 2 + 100 * k)[1:], 4)
        b2, t_host, e_host, c_host = chat(url, follow_up(a), args.max_tokens)
    finally:
        proc.terminate()
        proc.wait()
    # 3. The follow-up on a fresh server.
    proc, url = start(args)
    try:
        b3, t_cold, e_cold, c_cold = chat(url, follow_up(a), args.max_tokens)
    finally:
        proc.terminate()
        proc.wait()

    rows = [("first request (cold)", t_a, e_a, c_a),
            ("follow-up, cold server", t_cold, e_cold, c_cold),
            ("follow-up, warm (sequence)", t_warm, e_warm, c_warm),
            ("follow-up, warm (--cache-ram)", t_host, e_host, c_host)]
    print(f"| request | TTFT (s) | prompt tokens evaluated | served from cache |")
    print(f"|---|---|---|---|")
    for name, t, e, c in rows:
        print(f"| {name} | {t:.3f} | {e} | {c} |")
    print(f"speed-up warm (sequence): {t_cold / max(t_warm, 1e-9):.1f}x, "
          f"warm (--cache-ram): {t_cold / max(t_host, 1e-9):.1f}x")
    same = b == b2 == b3
    print("answers identical:", same)
    if not same:
        print(json.dumps([b, b2, b3], indent=1))
        sys.exit(1)


if __name__ == "__main__":
    main()
