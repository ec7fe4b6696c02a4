#!/usr/bin/env python3
"""Load test and throughput benchmark for `surplus serve` (standard library only).

  load:  N concurrent clients send a mix of chat/completion, streamed/plain greedy requests
         (time-bounded); every answer is checked (status, JSON shape, SSE framing, and the
         text of a prompt must be identical every time, streamed or not). Reports failures,
         garbled answers and the server's RSS before/after (--pid).
  bench: aggregate generation tokens/s at several concurrency levels (completions,
         max_tokens fixed, ignore_eos so every request generates exactly that many).

  python3 scripts/loadtest.py load --url http://127.0.0.1:8080 --clients 64 --requests 400 --pid PID
  python3 scripts/loadtest.py bench --url http://127.0.0.1:8080 --concurrency 1,4,16 --tokens 64 --repeat 3
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "The three primary colours are",
    "In the beginning",
    "Water boils at",
    "A haiku about the sea:",
]


def request(url, path, body, timeout=300):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read().decode("utf-8")
        return r.status, r.getheader("content-type", ""), data
    finally:
        c.close()


def text_of(kind, stream, ctype, data):
    """The generated text, or raises ValueError when the answer is malformed."""
    if not stream:
        if "application/json" not in ctype:
            raise ValueError("content type " + ctype)
        v = json.loads(data)
        ch = v["choices"][0]
        if v["usage"]["total_tokens"] != v["usage"]["prompt_tokens"] + v["usage"]["completion_tokens"]:
            raise ValueError("usage does not add up")
        return ch["message"]["content"] if kind == "chat" else ch["text"]
    if "text/event-stream" not in ctype:
        raise ValueError("content type " + ctype)
    events = [l[6:] for l in data.split("\n") if l.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        raise ValueError("stream does not end with [DONE]")
    out, finish = [], None
    for e in events[:-1]:
        v = json.loads(e)
        if "error" in v:
            raise ValueError("error event: " + e)
        for ch in v["choices"]:
            out.append((ch.get("delta", {}).get("content") if kind == "chat" else ch.get("text")) or "")
            finish = ch.get("finish_reason") or finish
    if finish not in ("stop", "length"):
        raise ValueError("no finish_reason")
    return "".join(out)


def rss_kb(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def load(args):
    lock = threading.Lock()
    expected, stats = {}, {"ok": 0, "failed": 0, "garbled": 0, "tokens": 0}
    errors = []
    todo = list(range(args.requests))
    deadline = time.time() + args.time_limit
    rng = random.Random(1)
    plan = [(rng.choice(["chat", "completion"]), rng.random() < 0.5, rng.choice(PROMPTS)) for _ in todo]

    def worker():
        while time.time() < deadline:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            kind, stream, prompt = plan[i]
            if kind == "chat":
                path = "/v1/chat/completions"
                body = {"messages": [{"role": "user", "content": prompt}]}
            else:
                path = "/v1/completions"
                body = {"prompt": prompt}
            body.update({"max_tokens": args.tokens, "temperature": 0, "stream": stream})
            try:
                status, ctype, data = request(args.url, path, body)
            except Exception as e:  # noqa: BLE001 - every transport failure counts
                with lock:
                    stats["failed"] += 1
                    errors.append(f"{kind} {prompt!r}: {e!r}")
                continue
            with lock:
                if status != 200:
                    stats["failed"] += 1
                    errors.append(f"{kind} {prompt!r}: HTTP {status} {data[:200]}")
                    continue
                try:
                    text = text_of(kind, stream, ctype, data)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    stats["garbled"] += 1
                    errors.append(f"{kind} {prompt!r}: malformed: {e}")
                    continue
                want = expected.setdefault((kind, prompt), text)
                if text != want:
                    stats["garbled"] += 1
                    errors.append(f"{kind} {prompt!r}: {text!r} != {want!r}")
                else:
                    stats["ok"] += 1

    before = rss_kb(args.pid)
    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    after = rss_kb(args.pid)
    done = stats["ok"] + stats["failed"] + stats["garbled"]
    print(f"clients {args.clients}, requests {done}/{args.requests} in {wall:.1f} s "
          f"(limit {args.time_limit} s): ok {stats['ok']}, failed {stats['failed']}, garbled {stats['garbled']}")
    if before is not None:
        print(f"server RSS before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB")
    for e in errors[:10]:
        print("  ", e)
    return 1 if stats["failed"] or stats["garbled"] or done < args.requests else 0


def bench(args):
    levels = [int(x) for x in args.concurrency.split(",")]
    best = {}

    def run_level(c):
        counts = [0] * c

        def worker(k):
            for j in range(max(1, args.rounds)):
                body = {"prompt": PROMPTS[(k + j) % len(PROMPTS)], "max_tokens": args.tokens,
                        "temperature": 0, "ignore_eos": True}
                status, _, data = request(args.url, "/v1/completions", body)
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {data}")
                counts[k] += json.loads(data)["usage"]["completion_tokens"]

        t0 = time.time()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        return sum(counts), wall, sum(counts) / wall

    # Levels interleaved, best run of each kept: on a shared machine the best run is the
    # one least disturbed by other load.
    for r in range(max(1, args.repeat)):
        for c in levels:
            n, wall, tps = run_level(c)
            print(f"run {r + 1}, concurrency {c:3}: {n} tokens in {wall:.1f} s = {tps:.1f} tokens/s", flush=True)
            if c not in best or tps > best[c][2]:
                best[c] = (n, wall, tps)
    base = best[levels[0]][2]
    print(f"\nbest of {args.repeat} run(s) per level (levels interleaved)")
    print("| streams | tokens | wall (s) | aggregate tokens/s | vs 1 stream |")
    print("|---:|---:|---:|---:|---:|")
    for c in levels:
        n, w, t = best[c]
        print(f"| {c} | {n} | {w:.1f} | {t:.1f} | {t / base:.2f}x |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("load", help="concurrent clients, checked answers, RSS")
    lp.add_argument("--url", default="http://127.0.0.1:8080")
    lp.add_argument("--clients", type=int, default=64)
    lp.add_argument("--requests", type=int, default=400)
    lp.add_argument("--tokens", type=int, default=16, help="max_tokens per request")
    lp.add_argument("--time-limit", type=float, default=900, help="seconds")
    lp.add_argument("--pid", type=int, help="server process id (for RSS)")
    bp = sub.add_parser("bench", help="aggregate generation tokens/s by concurrency")
    bp.add_argument("--url", default="http://127.0.0.1:8080")
    bp.add_argument("--concurrency", default="1,4,16")
    bp.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    bp.add_argument("--rounds", type=int, default=2, help="requests per client")
    bp.add_argument("--repeat", type=int, default=1, help="runs per level; the best is reported (noisy machines)")
    args = p.parse_args()
    raise SystemExit(load(args) if args.mode == "load" else bench(args))


if __name__ == "__main__":
    main()
