#!/usr/bin/env python3
"""Float64 oracle for the synthetic qwen35 fixture (tests/data/synthetic/README.md).

Reads a qwen35 GGUF (F32 or Q8_0 weights, dequantized exactly), runs the trunk in float64
(no activation rounding, exact softmax, float64 K/V) and writes, for every greedy prompt of
the llama.cpp reference, the oracle's teacher-forced steps along llama.cpp's tokens and its
own greedy decode, in the layout of tests/data/golden/f64/README.md. Written from the
fixture README alone (not from our Rust code), so the two implementations check each other.

    python3 scripts/qwen35_f64.py tests/data/synthetic/qwen35-tiny-q8_0.gguf \
        tests/data/synthetic/qwen35-tiny.json q8_0 > tests/data/synthetic/f64/qwen35-tiny-q8_0.json
"""

import hashlib
import json
import struct
import sys

import numpy as np

# --- GGUF reading (only what the fixture uses) -------------------------------------------

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class Reader:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.at)[0]
        self.at += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.buf[self.at : self.at + n].decode("utf-8", "replace")
        self.at += n
        return s

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            return [self.value(et) for _ in range(n)]
        return self.take(SCALARS[t])


def read_gguf(path):
    buf = open(path, "rb").read()
    r = Reader(buf)
    assert buf[:4] == b"GGUF", "not a GGUF file"
    r.at = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    assert version == 3
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    align = meta.get("general.alignment", 32)
    base = (r.at + align - 1) // align * align
    tensors = {}
    for name, dims, ty, off in infos:
        n = int(np.prod(dims))
        start = base + off
        if ty == 0:  # F32
            x = np.frombuffer(buf, dtype="<f4", count=n, offset=start).astype(np.float64)
        elif ty == 8:  # Q8_0: blocks of an f16 scale and 32 int8 values
            blocks = np.frombuffer(buf, dtype=np.uint8, count=n // 32 * 34, offset=start).reshape(-1, 34)
            d = blocks[:, :2].copy().view("<f2").astype(np.float64)
            q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
            x = (d * q).reshape(-1)
        else:
            raise SystemExit(f"{name}: tensor type {ty} not handled")
        # GGUF dims list the contiguous dimension first; numpy wants it last.
        tensors[name] = x.reshape(list(reversed(dims))) if len(dims) > 1 else x
    return meta, tensors


# --- the forward pass ---------------------------------------------------------------------

EPS = 1e-6


def rms(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(x))


class Model:
    def __init__(self, path):
        self.meta, self.t = read_gguf(path)
        a = self.meta["general.architecture"]
        assert a == "qwen35", a
        m = lambda k: self.meta[f"qwen35.{k}"]
        self.n_layer = m("block_count") - m("nextn_predict_layers")
        interval = m("full_attention_interval")
        self.recurrent = [(i + 1) % interval != 0 for i in range(self.n_layer)]
        self.n_head, self.n_kv = m("attention.head_count"), m("attention.head_count_kv")
        self.hd = m("attention.key_length")
        self.n_rot = m("rope.dimension_count")
        self.base = m("rope.freq_base")
        self.kh = m("ssm.group_count")  # DeltaNet key heads
        self.vh = m("ssm.time_step_rank")  # DeltaNet value heads
        self.dk = m("ssm.state_size")
        self.kconv = m("ssm.conv_kernel")
        self.embd = self.t["token_embd.weight"]  # (vocab, n_embd)
        # What this oracle takes as given: refuse a file that differs from the fixture's layout.
        assert m("attention.layer_norm_rms_epsilon") == np.float32(EPS), "epsilon"
        assert m("ssm.inner_size") == self.vh * self.dk, "value heads of state_size dims"
        assert "output.weight" not in self.t, "tied LM head"
        sections = m("rope.dimension_sections")
        assert sum(sections[:3]) == self.n_rot // 2, "sections cover every rotary pair (text: plain RoPE)"

    def w(self, i, name):
        return self.t[f"blk.{i}.{name}"]

    def fresh(self):
        """Per-sequence state: conv history and delta-rule state per recurrent layer, K/V per
        attention layer."""
        st = {}
        for i in range(self.n_layer):
            if self.recurrent[i]:
                ch = self.w(i, "ssm_conv1d.weight").shape[0]
                st[i] = [np.zeros((self.kconv - 1, ch)), np.zeros((self.vh, self.dk, self.dk))]
            else:
                st[i] = [[], []]
        return st

    def deltanet(self, i, u, st):
        qkv = self.w(i, "attn_qkv.weight") @ u
        hist, S = st
        window = np.vstack([hist, qkv[None, :]])  # oldest first
        conv = np.sum(self.w(i, "ssm_conv1d.weight").T * window, axis=0)
        hist[:] = window[1:]
        conv = silu(conv)
        nk = self.kh * self.dk
        q = conv[:nk].reshape(self.kh, self.dk)
        k = conv[nk : 2 * nk].reshape(self.kh, self.dk)
        v = conv[2 * nk :].reshape(self.vh, self.dk)
        q = q / np.sqrt(np.sum(q * q, axis=1, keepdims=True) + EPS) / np.sqrt(self.dk)
        k = k / np.sqrt(np.sum(k * k, axis=1, keepdims=True) + EPS)
        beta = sigmoid(self.w(i, "ssm_beta.weight") @ u)
        g = softplus(self.w(i, "ssm_alpha.weight") @ u + self.w(i, "ssm_dt.bias")) * self.w(i, "ssm_a")
        z = (self.w(i, "attn_gate.weight") @ u).reshape(self.vh, self.dk)
        o = np.zeros((self.vh, self.dk))
        for j in range(self.vh):
            kj, qj = k[j % self.kh], q[j % self.kh]
            S[j] *= np.exp(g[j])
            S[j] += beta[j] * np.outer(v[j] - S[j] @ kj, kj)
            o[j] = S[j] @ qj
        o = rms(o, self.w(i, "ssm_norm.weight")) * silu(z)
        return self.w(i, "ssm_out.weight") @ o.reshape(-1)

    def rope(self, x, pos):
        half = self.n_rot // 2
        theta = pos * self.base ** (-2.0 * np.arange(half) / self.n_rot)
        c, s = np.cos(theta), np.sin(theta)
        a, b = x[:, :half].copy(), x[:, half : self.n_rot].copy()
        x[:, :half] = a * c - b * s
        x[:, half : self.n_rot] = a * s + b * c
        return x

    def attention(self, i, u, pos, st):
        hd = self.hd
        qg = (self.w(i, "attn_q.weight") @ u).reshape(self.n_head, 2 * hd)
        q, gate = qg[:, :hd], qg[:, hd:]
        k = (self.w(i, "attn_k.weight") @ u).reshape(self.n_kv, hd)
        v = (self.w(i, "attn_v.weight") @ u).reshape(self.n_kv, hd)
        q = self.rope(rms(q, self.w(i, "attn_q_norm.weight")), pos)
        k = self.rope(rms(k, self.w(i, "attn_k_norm.weight")), pos)
        st[0].append(k)
        st[1].append(v)
        K, V = np.stack(st[0]), np.stack(st[1])  # (T, n_kv, hd)
        out = np.zeros((self.n_head, hd))
        group = self.n_head // self.n_kv
        for h in range(self.n_head):
            s = K[:, h // group, :] @ q[h] / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[h] = (p / p.sum()) @ V[:, h // group, :]
        out = out * sigmoid(gate)
        return self.w(i, "attn_output.weight") @ out.reshape(-1)

    def step(self, token, pos, st):
        """One token through the trunk; returns the log-softmax over the vocabulary."""
        x = self.embd[token].copy()
        for i in range(self.n_layer):
            u = rms(x, self.w(i, "attn_norm.weight"))
            if self.recurrent[i]:
                x = x + self.deltanet(i, u, st[i])
            else:
                x = x + self.attention(i, u, pos, st[i])
            u = rms(x, self.w(i, "post_attention_norm.weight"))
            f = silu(self.w(i, "ffn_gate.weight") @ u) * (self.w(i, "ffn_up.weight") @ u)
            x = x + self.w(i, "ffn_down.weight") @ f
        h = rms(x, self.t["output_norm.weight"])
        logits = self.embd @ h
        m = logits.max()
        return logits - (m + np.log(np.sum(np.exp(logits - m))))


def top5(lp):
    ids = np.argsort(-lp, kind="stable")[:5]
    return [[int(t), round(float(lp[t]), 6)] for t in ids]


def run_prompt(model, prompt_ids, llama_tokens, eog, n):
    # Teacher forcing along llama.cpp's tokens.
    st = model.fresh()
    seq = list(prompt_ids) + list(llama_tokens)
    forced = []
    for pos, tok in enumerate(seq[:-1]):
        lp = model.step(tok, pos, st)
        if pos >= len(prompt_ids) - 1:
            pick = seq[pos + 1]
            forced.append({"top5": top5(lp), "llama_cpp_token": [int(pick), round(float(lp[pick]), 6)]})
    # The oracle's own greedy decode (end-of-generation ids skipped, as with --ignore-eos).
    st = model.fresh()
    for pos, tok in enumerate(prompt_ids[:-1]):
        model.step(tok, pos, st)
    tok, pos = prompt_ids[-1], len(prompt_ids) - 1
    tokens, steps = [], []
    for _ in range(n):
        lp = model.step(tok, pos, st)
        masked = lp.copy()
        masked[eog] = -np.inf
        tok = int(np.argmax(masked))
        tokens.append(tok)
        steps.append({"top5": top5(lp)})
        pos += 1
    return forced, tokens, steps


def main():
    gguf, reference, variant = sys.argv[1], sys.argv[2], sys.argv[3]
    ref = json.load(open(reference))
    cases = ref["greedy"] if variant == "f32" else ref["variants"][variant]["greedy"]
    model = Model(gguf)
    # Qwen2.5's end-of-generation tokens as llama.cpp marks them for this vocabulary (its f64
    # oracle one folder up lists the same ids: </s> counts by name).
    tokens = model.meta["tokenizer.ggml.tokens"]
    eog_names = {"</s>", "<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}
    eog = sorted(i for i, t in enumerate(tokens) if t in eog_names)
    out = {
        "model": gguf.split("/")[-1].removesuffix(".gguf"),
        "model_sha256": hashlib.sha256(open(gguf, "rb").read()).hexdigest(),
        "kv_f16": False,
        "eog_ids": eog,
        "greedy": [],
    }
    for case in cases:
        forced, toks, steps = run_prompt(model, case["prompt_ids"], case["tokens"], eog, len(case["tokens"]))
        out["greedy"].append(
            {
                "prompt": case["prompt"],
                "prompt_ids": case["prompt_ids"],
                "llama_cpp_tokens": case["tokens"],
                "f64_steps_on_llama_path": forced,
                "f64_greedy_tokens": toks,
                "f64_greedy_steps": steps,
            }
        )
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
