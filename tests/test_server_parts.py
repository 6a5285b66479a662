"""The server's pieces without HTTP: the streaming reply parser against the whole-text parsers in
replies.py, stop strings, request validation, and which cached conversation a prompt reuses."""

import itertools

import pytest

from hetero_qwen.replies import parse_tool_calls, split_reasoning
from hetero_qwen.server.conversation_cache import reusable
from hetero_qwen.server.errors import ApiError
from hetero_qwen.server.reply_parser import ReplyParser, StopMatcher
from hetero_qwen.server.schema import parse_chat, parse_completion

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
    "s": {"type": "string"}, "n": {"type": "integer"}, "x": {"type": "number"}, "b": {"type": "boolean"},
    "l": {"type": "array"}}}}}]

REPLIES = [
    (True, "Let me think.\nStill thinking.\n</think>\n\nThe answer is 4."),
    (True, "short</think>answer with  double  spaces\n\nand paragraphs"),
    (True, "never closes the think block"),
    (False, "Plain answer, no reasoning at all.\n"),
    (False, "<think>\nI opened it myself\n</think>\n\nthen answered"),
    (True, "Need a tool.\n</think>\n\nCalling now.\n\n<tool_call>\n<function=f>\n<parameter=s>\n042\n</parameter>\n"
           "<parameter=n>\n7\n</parameter>\n<parameter=x>\n2.5\n</parameter>\n<parameter=b>\ntrue\n</parameter>\n"
           "<parameter=l>\n[1, 2]\n</parameter>\n</function>\n</tool_call>"),
    (True, "two calls</think>\n\n<tool_call>\n<function=f>\n<parameter=n>\n1\n</parameter>\n</function>\n</tool_call>\n"
           "<tool_call>\n<function=f>\n<parameter=n>\n2\n</parameter>\n</function>\n</tool_call>"),
    (False, "text then an unfinished call <tool_call>\n<function=f>\n<parameter=n>\n1"),
    (True, "a < b and c <tool but no call </thin no close"),
]


def pieces_by(text, started, cuts):
    parser = ReplyParser(started, TOOLS)
    out = []
    for a, b in zip([0] + cuts, cuts + [len(text)]):
        out += parser.feed(text[a:b])
    return out + parser.finish()


def summary(pieces):
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    content = "".join(p.text for p in pieces if p.kind == "content")
    return reasoning, content, [p.call for p in pieces if p.kind == "tool_call"]


@pytest.mark.parametrize("started,text", REPLIES)
def test_parser_matches_the_whole_text_parsers_however_the_text_is_cut(started, text):
    reasoning, content = split_reasoning(text, started_in_think=started)
    content, calls = parse_tool_calls(content, TOOLS)
    expected = (reasoning, content.strip(), calls)
    assert summary(pieces_by(text, started, [])) == expected
    assert summary(pieces_by(text, started, list(range(1, len(text))))) == expected  # one character at a time
    for step in (2, 3, 7):
        assert summary(pieces_by(text, started, list(range(step, len(text), step)))) == expected


def test_values_are_typed_by_the_schema_and_order_is_kept():
    pieces = pieces_by(REPLIES[5][1], True, list(range(1, len(REPLIES[5][1]), 5)))
    assert [kind for kind, _ in itertools.groupby(p.kind for p in pieces)] == ["reasoning", "content", "tool_call"]
    assert pieces[-1].call == {"name": "f", "arguments": {"s": "042", "n": 7, "x": 2.5, "b": True, "l": [1, 2]}}


def test_a_tool_call_inside_an_unclosed_think_ends_the_reasoning():
    text = "I will look it up\n<tool_call>\n<function=f>\n<parameter=n>\n3\n</parameter>\n</function>\n</tool_call>"
    pieces = pieces_by(text, True, list(range(1, len(text))))
    assert [kind for kind, _ in itertools.groupby(p.kind for p in pieces)] == ["reasoning", "tool_call"]
    assert summary(pieces) == ("I will look it up", "", [{"name": "f", "arguments": {"n": 3}}])


def test_without_tools_a_tool_call_is_just_content():
    parser = ReplyParser(False, None, parse_tools=False)
    text = "<tool_call>\n<function=f>\n</function>\n</tool_call>"
    assert summary(parser.feed(text) + parser.finish()) == ("", text, [])


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_stop_strings_cut_the_text_before_them_across_deltas(cut):
    text = "Hello wor" + "ld. END here"
    matcher, out = StopMatcher(["END", "zzz"]), ""
    for i in range(0, len(text), cut):
        piece, hit = matcher.feed(text[i:i + cut])
        out += piece
        if hit:
            break
    assert hit and out == "Hello world. "
    none = StopMatcher(["zzz"])
    assert none.feed("abz")[0] + none.feed("zq")[0] + none.finish() == "abzzq"


def test_request_fields_are_used_or_refused():
    req = parse_chat({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "sys"}, {"type": "text", "text": "tem"}]},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "reasoning": "r",
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"n\": 1}"}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "1"}],
        "max_tokens": 5, "max_completion_tokens": 9, "top_k": -1, "n": 1, "logprobs": False, "user": "u",
        "stop": "x", "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}},
        "chat_template_kwargs": {"enable_thinking": False}, "preserve_thinking": True, "seed": -1})
    assert req.messages[0] == {"role": "system", "content": "system"}
    assert req.messages[2]["reasoning_content"] == "r" and req.messages[2]["content"] == ""
    assert (req.max_tokens, req.sampling, req.stop, req.think, req.preserve) == (9, {"top_k": 0}, ["x"], False, True)
    assert (req.tool_choice, req.tool_name, req.seed) == ("function", "f", 2**63 - 1)
    assert parse_completion({"prompt": ["one"]}).max_tokens == 16


@pytest.mark.parametrize("body, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "tool_choice": {"type": "function",
                                                                                       "function": {"name": "g"}}},
     "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": []}, "functions"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(ApiError) as err:
        parse_chat(body)
    assert err.value.status == 400 and err.value.param == param


def test_reusable_prefix_rules():
    held = [1, 2, 3, 4, 5, 6]
    assert reusable(held, [2, 6], held + [7, 8]) == 6          # extends it: everything held
    assert reusable(held, [2, 6], [1, 2, 3, 9, 9]) == 2        # differs at 3: back to the snapshot at 2
    assert reusable(held, [4], [1, 2, 3, 9]) == 0              # no snapshot early enough
    assert reusable(held, [2, 6], held) == 2                   # the same prompt: its last token is fed again
