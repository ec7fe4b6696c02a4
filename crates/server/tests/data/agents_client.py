"""Drives the server with the official `openai` package as an agent would: strict JSON
schema output (validated with `jsonschema`), tool calls (named, required, streamed, and a
follow-up turn with the tool's result), several choices, and bad requests.

Usage: python3 agents_client.py BASE_URL MODEL. Exits non-zero on any mismatch.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)

# 1. A strict json_schema answer, sampled 20 times: every one validates.
person = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["engineer", "artist", "doctor"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 4},
    },
    "required": ["name", "age", "role", "address", "skills"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}}


def one(seed):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Invent a person and describe them as JSON."}],
        response_format=fmt, temperature=0.9, seed=seed, max_tokens=200,
    )
    c = r.choices[0]
    assert c.finish_reason == "stop", (c.finish_reason, c.message.content)
    doc = json.loads(c.message.content)
    jsonschema.validate(doc, person)
    return doc


with ThreadPoolExecutor(4) as ex:
    docs = list(ex.map(one, range(20)))
assert len(docs) == 20
assert len({json.dumps(d, sort_keys=True) for d in docs}) > 1, "sampling gave 20 identical answers"
print("json_schema: 20 of 20 valid")

# 2. Tool calls.
weather = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
tools = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city", "parameters": weather}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}},
]
ask = [{"role": "user", "content": "What will the weather be in Paris over the next 3 days, in celsius?"}]
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}

for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
    r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=choice, temperature=0, max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.tool_calls, c.message
    for call in c.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_"), call
        if isinstance(choice, dict):
            assert call.function.name == "get_weather", call
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    print("tool_choice", json.dumps(choice), "->", [(t.function.name, t.function.arguments) for t in c.message.tool_calls])

# The same call streamed: the deltas reassemble to it.
named = {"type": "function", "function": {"name": "get_weather"}}
whole = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=named, temperature=0, max_tokens=200)
calls, finish = {}, None
for chunk in client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=named, temperature=0, max_tokens=200, stream=True):
    for c in chunk.choices:
        for t in c.delta.tool_calls or []:
            d = calls.setdefault(t.index, {"id": None, "name": None, "arguments": ""})
            if t.id:
                d["id"] = t.id
            if t.function and t.function.name:
                d["name"] = t.function.name
            if t.function and t.function.arguments:
                d["arguments"] += t.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
assert finish == "tool_calls", finish
want = [(t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls]
got = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
assert got == want, (got, want)
assert all(calls[i]["id"] and calls[i]["id"].startswith("call_") for i in calls), calls
print("streamed tool call reassembles:", got)

# A follow-up turn carrying the tool's result renders and answers.
call = whole.choices[0].message.tool_calls[0]
follow = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": ["sunny", "rain", "cloudy"], "unit": "celsius"})},
]
r = client.chat.completions.create(model=model, messages=follow, tools=tools, temperature=0, max_tokens=60)
c = r.choices[0]
assert c.finish_reason in ("stop", "length", "tool_calls"), c
assert (c.message.content or c.message.tool_calls), c.message
assert r.usage.prompt_tokens > whole.usage.prompt_tokens, (r.usage, whole.usage)
print("follow-up:", repr((c.message.content or "")[:80]))

# 3. Several choices share one request.
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a color."}], n=3, temperature=1.0, seed=7, max_tokens=6)
assert [c.index for c in r.choices] == [0, 1, 2], r
assert r.usage.completion_tokens >= 3 and all(c.message.content for c in r.choices), r

# 4. Bad requests: a 400 naming the field; the server stays up.
def bad(param, **kw):
    try:
        client.chat.completions.create(model=model, messages=ask, max_tokens=4, **kw)
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert e.body["param"] == param, (param, e.body)
        return e.body["message"]
    raise AssertionError(f"no 400 for {kw}")

print(bad("response_format", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}))
print(bad("tool_choice", tools=tools, tool_choice={"type": "function", "function": {"name": "launch_rocket"}}))
print(bad("tools[0].type", tools=[{"type": "retrieval"}]))
print(bad("tools[1].function.name", tools=[tools[0], {"type": "function", "function": {"name": "bad name!"}}]))
r = client.chat.completions.create(model=model, messages=ask, max_tokens=4, temperature=0)
assert r.choices[0].message.content, r
print("openai agents client OK")
