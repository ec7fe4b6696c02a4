"""Drives the server with the official `openai` package: a plain and a streaming chat.

Usage: python3 openai_client.py BASE_URL MODEL. Exits non-zero on any mismatch.
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)

msgs = [{"role": "user", "content": "Say hello in one word."}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=8, temperature=0)
text = r.choices[0].message.content
assert r.object == "chat.completion", r
assert r.choices[0].message.role == "assistant", r
assert isinstance(text, str) and text, r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 0, r.usage

parts, finish, usage = [], None, None
stream = client.chat.completions.create(
    model=model, messages=msgs, max_tokens=8, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
streamed = "".join(parts)
assert streamed == text, (streamed, text)
assert finish == r.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage

try:
    client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "x"}])
    raise SystemExit("an unknown role was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and "wizard" in str(e), e

models = client.models.list()
assert models.data[0].id == model, models
print("openai client OK:", repr(text))
