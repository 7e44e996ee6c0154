"""Structured output (engine/guided.py) on the tiny random checkpoint.

The random model never writes JSON or tool calls by itself, so a valid output proves the constraint.
Schemas here bound every string and number, so greedy decoding must finish inside max_tokens.
"""

from __future__ import annotations

import json
import re

import pytest

from qwen35.engine import LLM, SamplingParams
from qwen35.engine.guided import GuidedDecoder
from qwen35.engine.structured import GuidedDecoding
from qwen35.output_format import tool_call_grammar

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "ok", "color", "tags"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "ok": {"type": "boolean"},
                         "color": {"enum": ["red", "green", "blue"]},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}}}

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city", "days", "unit", "detailed", "opts"],
    "properties": {"city": {"type": "string", "maxLength": 8},
                   "days": {"type": "integer", "minimum": 1, "maximum": 14},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "detailed": {"type": "boolean"},
                   "opts": {"type": "object", "additionalProperties": False, "required": ["lang"],
                            "properties": {"lang": {"type": "string", "maxLength": 3},
                                           "hours": {"type": "integer", "minimum": 0, "maximum": 9}}},
                   "note": {"type": "string", "maxLength": 5}}}}}
ALARM = {"type": "function", "function": {"name": "set_alarm", "parameters": {
    "type": "object", "required": ["hour"],
    "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                   "label": {"type": "string", "maxLength": 6}}}}}
TOOLS = [WEATHER, ALARM]


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    return LLM(str(tiny_ckpt), dtype="float32", max_model_len=512, kv_cache_memory=64 << 20)


def _prompt(llm, text, think=False):
    tail = "<think>\n" if think else "<think>\n\n</think>\n\n"
    return llm.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n{tail}")


def _greedy(guided=None, max_tokens=64, **kw):
    return SamplingParams(temperature=0, max_tokens=max_tokens, guided=guided, **kw)


# ---- a tiny JSON-schema validator (the subset the schemas above use) -------------------------------

def _check(value, schema, path="$"):
    if "enum" in schema:
        assert value in schema["enum"], path
        return
    t = schema["type"]
    if t == "object":
        assert isinstance(value, dict), path
        props = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), path
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), path
        for k, v in value.items():
            if k in props:
                _check(v, props[k], f"{path}.{k}")
    elif t == "array":
        assert isinstance(value, list) and len(value) <= schema.get("maxItems", len(value)), path
        for i, v in enumerate(value):
            _check(v, schema["items"], f"{path}[{i}]")
    elif t == "string":
        assert isinstance(value, str) and schema.get("minLength", 0) <= len(value), path
        assert len(value) <= schema.get("maxLength", len(value)), path
    elif t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), path
    elif t == "boolean":
        assert isinstance(value, bool), path
    else:
        raise AssertionError(f"{path}: type {t} not handled by the test validator")


# ---- Qwen3.5 XML tool calls: parse and type-check -------------------------------------------------

CALL = re.compile(r"<tool_call>\n<function=([^>\n]+)>\n(.*?)</function>\n</tool_call>", re.S)
PARAM = re.compile(r"<parameter=([^>\n]+)>\n(.*?)\n</parameter>\n", re.S)


def _parse_calls(text: str) -> list[tuple[str, dict[str, str]]]:
    calls = []
    for m in CALL.finditer(text):
        body = m.group(2)
        params = dict(PARAM.findall(body))
        assert PARAM.sub("", body) == "", f"stray text in {body!r}"
        calls.append((m.group(1), params))
    return calls


def _typed(raw: str, schema: dict):
    """The value the tool parser would produce: raw text for strings, JSON for everything else."""
    if schema.get("type") == "string":
        return raw
    return json.loads(raw)


def _check_call(name: str, params: dict[str, str]) -> None:
    fn = next(t["function"] for t in TOOLS if t["function"]["name"] == name)
    schema = fn["parameters"]
    assert list(params) == [p for p in schema["properties"] if p in params], "parameters in schema order"
    args = {k: _typed(v, schema["properties"][k]) for k, v in params.items()}
    _check(args, {**schema, "additionalProperties": False})


# ---- tests ----------------------------------------------------------------------------------------

def test_json_schema_output_parses_and_validates(llm):
    spec = GuidedDecoding(json_schema=PERSON)
    outs = llm.generate([_prompt(llm, "Who are you?"), _prompt(llm, "Describe a cat")],
                        [_greedy(spec), SamplingParams(temperature=0.8, seed=7, max_tokens=64, guided=spec)])
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        _check(json.loads(c.text), PERSON)
    assert llm.engine.guided.mask_rows > 0


def test_json_object_regex_and_choice(llm, monkeypatch):
    # Bias the model towards '"' and '}' so that JSON can close; unconstrained, it would then write '""}}""...'
    tok = llm.tokenizer
    boost = [tok.token_to_id('"'), tok.token_to_id("}")]
    runner, forward = llm.engine.runner, llm.engine.runner.forward

    def biased(seqs):
        logits = forward(seqs)
        logits[:, boost] += 1000.0
        return logits

    monkeypatch.setattr(runner, "forward", biased)
    free = llm.generate(_prompt(llm, "x"), _greedy(max_tokens=6))[0].outputs[0].text
    assert set(free) <= set('"}')
    outs = llm.generate([_prompt(llm, "Give me JSON")] * 3,
                        [_greedy(GuidedDecoding(json_object=True)),
                         _greedy(GuidedDecoding(regex=r"[a-z]{2,6}@example\.(com|org)")),
                         _greedy(GuidedDecoding(choice=["yes", "no", "maybe"]))])
    obj, mail, choice = (o.outputs[0] for o in outs)
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict), obj.text
    assert mail.finish_reason == "stop" and re.fullmatch(r"[a-z]{2,6}@example\.(com|org)", mail.text)
    assert choice.finish_reason == "stop" and choice.text in ("yes", "no", "maybe")


def test_a_matcher_that_fails_mid_output_fails_the_request(llm, monkeypatch):
    """llguidance can reject a token mid-generation (its "too complex" limits on a huge schema): the request
    then ends in an error, not as a "stop" with broken JSON (the matcher counted as finished)."""
    from qwen35.engine.guided import GuidedMatcher

    accept = GuidedMatcher.accept

    def failing(self, token_id):
        if self.active and self.matcher is not None and getattr(self, "seen", 0) >= 2:
            self.error = "Parser Error: Current row has 7999 items; max is 2000"
            return False
        self.seen = getattr(self, "seen", 0) + 1
        return accept(self, token_id)

    monkeypatch.setattr(GuidedMatcher, "accept", failing)
    out = llm.generate(_prompt(llm, "Who are you?"), _greedy(GuidedDecoding(json_schema=PERSON)))[0]
    c = out.outputs[0]
    assert c.finish_reason == "error" and out.error_is_request and "constraint failed after" in out.error
    monkeypatch.undo()
    again = llm.generate(_prompt(llm, "Who are you?"), _greedy(GuidedDecoding(json_schema=PERSON)))[0]
    assert again.outputs[0].finish_reason == "stop"  # the engine goes on


def test_forced_tool_calls_required_and_named(llm):
    required = GuidedDecoding(grammar=tool_call_grammar(TOOLS, None, allow_multiple=True))
    named = GuidedDecoding(grammar=tool_call_grammar(TOOLS, ["set_alarm"], allow_multiple=False))
    outs = llm.generate([_prompt(llm, "Weather in Paris?")] * 2,
                        [_greedy(required, max_tokens=120, skip_special_tokens=False),
                         _greedy(named, max_tokens=120, skip_special_tokens=False)])
    req, one = (o.outputs[0] for o in outs)
    tok = llm.tokenizer
    for c in (req, one):  # <tool_call> and </tool_call> are the special tokens, not spelled out
        assert c.token_ids[0] == tok.tool_call_start_id or c.token_ids[1] == tok.tool_call_start_id
        assert tok.tool_call_end_id in c.token_ids
    calls = _parse_calls(req.text)
    assert calls and req.text.lstrip("\n").startswith("<tool_call>\n<function=")
    for name, params in calls:
        _check_call(name, params)
    if req.finish_reason == "stop":
        assert req.text.endswith("</tool_call>")
    assert one.finish_reason == "stop"
    [(name, params)] = _parse_calls(one.text)
    assert name == "set_alarm" and one.text.lstrip("\n") == CALL.search(one.text).group(0)
    _check_call(name, params)
    assert one.token_ids[-1] == tok.tool_call_end_id  # the request ends right after </tool_call>


def test_tool_call_grammar_shapes(llm):
    dec: GuidedDecoder = llm.engine.guided
    tok = llm.tokenizer

    def accepts(grammar, text):
        m = dec.matcher(GuidedDecoding(grammar=grammar)).matcher
        ids = tok.encode(text)
        return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()

    free = tool_call_grammar([{"name": "echo", "parameters": {"type": "object", "required": ["text"], "properties": {
        "text": {"type": "string"}, "n": {"type": ["integer", "null"]}, "any": {}}}}], None, True)
    call = ("<tool_call>\n<function=echo>\n<parameter=text>\nline 1\nline 2 </parameter>\n</parameter>\n"
            "</function>\n</tool_call>")
    assert accepts(free, call)  # raw string values span lines and end at the first "\n</parameter>"
    assert not accepts(free, call.replace("line 2 </parameter>", "line 2\n</parameter> more"))
    assert accepts(free, "\n\n" + call + "\n" + call)
    assert not accepts(free, call + "\ntrailing text")
    assert not accepts(free, call.replace("<parameter=text>\nline 1\nline 2 </parameter>\n</parameter>\n", ""))
    with_n = call.replace("</function>", "<parameter=n>\n12\n</parameter>\n</function>")
    assert accepts(free, with_n) and accepts(free, with_n.replace("12", "null"))
    assert not accepts(free, with_n.replace("12", "twelve"))
    single = tool_call_grammar([WEATHER, ALARM], ["set_alarm"], False)
    alarm = "<tool_call>\n<function=set_alarm>\n<parameter=hour>\n7\n</parameter>\n</function>\n</tool_call>"
    assert accepts(single, alarm) and not accepts(single, alarm + "\n" + alarm)
    assert not accepts(single, alarm.replace("\n7\n", "\n24\n"))
    # thinking on: free until </think>, or until a <tool_call> opened inside the reasoning
    spec = GuidedDecoding(grammar=single, start_after=tok.think_end_id)
    for opener in (tok.think_end_id, tok.tool_call_start_id):
        m = dec.matcher(spec)
        assert m.accept(tok.encode("Let me think")[0]) and not m.active
        assert m.accept(opener) and m.active
        rest = tok.encode(alarm if opener == tok.think_end_id else alarm.removeprefix("<tool_call>"))
        assert all(m.accept(t) for t in rest) and m.is_finished()
    with pytest.raises(ValueError, match="tool_choice: function 'nope'"):
        tool_call_grammar(TOOLS, ["nope"], False)


def test_start_after_leaves_reasoning_free(llm, monkeypatch):
    tok = llm.tokenizer
    think_end = tok.think_end_id
    runner, forward = llm.engine.runner, llm.engine.runner.forward

    def close_think_at_5(seqs):  # the random model never closes its thoughts: make it do so at token 5
        logits = forward(seqs)
        for i, s in enumerate([s for s in seqs if s.sample]):
            if len(s.request.output_ids) == 4:
                logits[i, think_end] = 1e4
        return logits

    monkeypatch.setattr(runner, "forward", close_think_at_5)
    prompt = _prompt(llm, "Think, then answer", think=True)
    spec = GuidedDecoding(choice=["alpha", "beta"], start_after=think_end)
    free, guided = llm.generate([prompt, prompt], [_greedy(max_tokens=8, ignore_eos=True),
                                                   _greedy(spec, max_tokens=30, skip_special_tokens=False)])
    f, g = free.outputs[0], guided.outputs[0]
    assert g.token_ids[:5] == f.token_ids[:5] and g.token_ids[4] == think_end  # free until </think>
    assert g.finish_reason == "stop" and g.text.split("</think>", 1)[1] in ("alpha", "beta")


def test_invalid_specs_raise_value_error(llm):
    with pytest.raises(ValueError, match=r"response_format\.json_schema: .*bogus"):
        SamplingParams(guided=GuidedDecoding(json_schema={"type": "bogus"}))
    with pytest.raises(ValueError, match="exactly one"):
        GuidedDecoding(json_object=True, regex="a+")
    with pytest.raises(ValueError, match="structured_outputs.regex"):
        GuidedDecoding(regex="a(")
    with pytest.raises(ValueError, match="structured_outputs.grammar"):
        GuidedDecoding(grammar="start: undefined_rule")
    with pytest.raises(ValueError, match=r"response_format\.json_schema"):
        SamplingParams(guided={"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}})
    for cycle in ({"$ref": "#"}, {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                                 "$ref": "#/$defs/a"}):  # llguidance compiles these; the output was empty
        with pytest.raises(ValueError, match="leads back to itself through references alone"):
            GuidedDecoding(json_schema=cycle)
    GuidedDecoding(json_schema={"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
                                "$ref": "#/$defs/n"})  # recursion through a value is fine
    # valid without a tokenizer, but names a special token the vocabulary lacks: refused at add_request
    bad = SamplingParams(guided=GuidedDecoding(grammar="start: <|no_such_token|>"))
    with pytest.raises(ValueError, match="structured_outputs.grammar"):
        llm.generate([1, 2, 3], bad)
    assert not llm.engine.has_unfinished() and not llm.engine.parents
    assert llm.generate([1, 2, 3], _greedy(GuidedDecoding(choice=["ok"])))[0].outputs[0].text == "ok"


def test_unconstrained_outputs_unchanged(llm, monkeypatch):
    prompts = [_prompt(llm, "Hello"), _prompt(llm, "Bonjour, ça va ?")]
    params = _greedy(max_tokens=10, ignore_eos=True)
    calls = []
    apply = llm.engine.guided.apply
    monkeypatch.setattr(llm.engine.guided, "apply", lambda *a: calls.append(1) or apply(*a))
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert not calls  # no guided request, no masking work
    mixed = llm.generate(prompts + [_prompt(llm, "JSON")],
                         [params, params, _greedy(GuidedDecoding(json_schema=PERSON))])
    assert calls and [o.outputs[0].token_ids for o in mixed[:2]] == alone


def test_regex_classes_are_ascii(llm):
    """`\\d` and `\\w` in a regex are ASCII, as in a JSON schema's pattern and vLLM's default backend: a model held to
    `\\d{3}` cannot write full-width or Arabic-Indic digits (llguidance alone takes them as Unicode classes)."""
    dec: GuidedDecoder = llm.engine.guided

    def accepts(regex, text):
        m = dec.matcher(GuidedDecoding(regex=regex)).matcher
        ids = llm.tokenizer.encode(text)
        return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()

    for regex, yes, no in [(r"\d{3}", "123", "１２３"), (r"\d{2}", "42", "٤٢"), (r"\w+", "ab_9", "héllo"),
                           (r"[\d.]+", "1.5", "１.５"), (r"[^\W_]+", "abc", "aé"), (r"\D+", "ab", "a1"),
                           (r"[\]\d]+", "]1", "]１"), (r"a\\d", "a\\d", "a\\1"), (r"[[:alpha:]\w]+", "x_1", "é")]:
        assert accepts(regex, yes), (regex, yes)
        assert not accepts(regex, no), (regex, no)
    assert accepts(r"\p{L}+", "é") and accepts(r"\s+", " \t")  # other classes keep their meaning
    with pytest.raises(ValueError, match=r"\\d\(") as bad:  # an error quotes the regex as written
        GuidedDecoding(regex=r"\d(")
    assert "[0-9]" not in str(bad.value)
