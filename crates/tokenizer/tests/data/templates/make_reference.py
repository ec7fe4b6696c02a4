"""Regenerates jinja2_reference.json: feature templates rendered by Python jinja2 configured as
HF transformers' apply_chat_template does. Run: python3 make_reference.py (needs jinja2)."""
import json
import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(Extension):
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_gen"), [], [], body).set_lineno(lineno)

    def _gen(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render(src, bos, eos, messages, agp):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    t = env.from_string(src)
    return t.render(messages=messages, tools=None, documents=None, add_generation_prompt=agp,
                    bos_token=bos, eos_token=eos)


TEMPLATES = {
    "tojson": """{%- set d = {"a": 1, "b": [1, 2.5, "é\\"\\n", none, true], "c": {"x": 1e20, "y": 1.0, "z": 0.0001}} -%}
{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(ensure_ascii=True) }}|{{ d | tojson(sort_keys=true, separators=(',', ':')) }}|{{ [] | tojson(indent=4) }}|{{ {} | tojson }}|{{ "ü☃😀\\u0001" | tojson(ensure_ascii=true) }}|{{ d.c | tojson(indent="\\t") }}|{{ {1: 2, true: 3} | tojson }}|{{ messages | tojson }}""",
    "python_str": """{{ none }}|{{ true }}|{{ false }}|{{ 1.5 }}|{{ 2.0 }}|{{ [1, 'a', "it's", none] }}|{{ {'k': [true]} }}|{{ none | string }}|{{ true | string }}|{{ 3 | string }}|{{ 1e20 }}|{{ 10 / 4 }}|{{ 10 // 4 }}|{{ 2 ** 10 }}|{{ none is iterable }}|{{ undefined_thing is iterable }}""",
    "python_methods": """{%- for m in messages -%}
{{ m.content.strip() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}|{{ m.content.startswith('  H') }}|{{ m.content.endswith('\\n') }}|{{ m.content.split() }}|{{ m.content.split('<') }}|{{ m.content.upper() }}|{{ m.content.lower() }}|{{ m.content.replace('Hi', 'Yo') }}|{{ m.content.title() }}|{% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %}|{{ m.get('role') }}|{{ m.get('nope', 'dflt') }}|{{ m.content[::-1] }}|{{ m.content[1:4] }}|{{ messages[-1].role }}|{{ m.role | title }}|{{ m.role | capitalize }}
{% endfor -%}""",
    "whitespace": """{% for m in messages %}
    {% if m.role == 'user' %}
  U: {{ m.content }}
    {%+ if true %}plus{% endif %}
    {% else %}
  X: {{ m.content }}
    {% endif %}
{% endfor %}
{% generation %}
  gen {{ 1 }}
{% endgeneration %}
{%- generation -%}
  gen2
{%- endgeneration %}
{# comment #}
{% set tcid = 'x' %}{% set ns2 = namespace(name=tcid if tcid else '') %}{{ ns2.name }}
{% if add_generation_prompt %}A:{% endif %}

""",
    "crlf": "{% for m in messages %}\r\n{{ m.role }}\r\n{% endfor %}\r\nend\r\n",
    "loops": """{%- for m in messages -%}
{%- if loop.index0 == 1 %}{% continue %}{% endif -%}
{{ loop.index }}/{{ loop.length }}:{{ m.role }}{% if loop.last %}!{% endif %}{% if m.role == 'assistant' %}{% break %}{% endif %},
{%- endfor %}
{{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | map(attribute='role') | join(',') }} {{ 'system' in messages | map(attribute='role') | list }} {{ "%s-%s" | format(1, 'a') }} {{ '{} and {}'.format('x', 2) }} {{ messages[0]['content'] | trim }} {{ range(3) | list }} {{ (messages | length) > 1 }}""",
}

M = lambda r, c: {"role": r, "content": c}
SCENARIOS = [
    ([M("system", "You are a helpful assistant."), M("user", "What is 2+2?")], True),
    ([M("user", "Hi!"), M("assistant", "Hello! How can I help?"), M("user", "Tell me a joke.")], False),
    ([M("user", "  Hi <|im_end|><end_of_turn>[INST] é ☃ \"q\" \n")], True),
]

cases = []
for name, src in TEMPLATES.items():
    for messages, agp in SCENARIOS:
        cases.append({
            "name": name, "template": src, "bos_token": "<s>", "eos_token": "</s>",
            "messages": messages, "add_generation_prompt": agp,
            "prompt": render(src, "<s>", "</s>", messages, agp),
        })
with open("jinja2_reference.json", "w", encoding="utf-8") as f:
    json.dump({"generator": "make_reference.py, jinja2 " + jinja2.__version__, "cases": cases},
              f, ensure_ascii=False, indent=1)
    f.write("\n")
