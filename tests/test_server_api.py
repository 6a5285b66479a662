"""`hetero-qwen serve` end to end: the real server on a free loopback port, driven by the official
`openai` client, over the tiny model. Generation goes through the engine's generate path, wrapped by
`GenerateDouble`, which can also script the reply (real token ids of model-format text) or hold a
token until the test lets it go, so queueing and cancelling are tested with events, not sleeps."""

import json
import socket
import threading

import httpx
import openai
import pytest
import torch

from hetero_qwen.chat.prompt_cache import common_prefix
from hetero_qwen.sampling import PRESETS
from hetero_qwen.server.runner import Server, bind, build_state

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
WAIT = 30  # seconds any event may take under a loaded machine (a bound, not a delay)
MODEL = "tiny-test"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                    "zip": {"type": "string"}},
                   "required": ["city"]}}}
SCRIPTED_CALL = ("The user wants the weather, so I call the tool.\n</think>\n\n"
                 "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                 "<parameter=days>\n3\n</parameter>\n<parameter=zip>\n75001\n</parameter>\n</function>\n</tool_call>")


class GenerateDouble:
    """Engine.generate with hooks: records each call, can replace the sampled tokens by a script
    (fed into the real caches exactly as the engine feeds its own), can fail, can run a hook per token."""

    def __init__(self, engine):
        self.engine = engine
        self.script: list[int] | None = None
        self.on_token = None   # (index) -> None, called before each token is handed over
        self.fail = False
        self.calls: list[dict] = []
        self.yielded = 0

    def __call__(self, ids, *, max_new_tokens, params, session, stop_ids):
        self.calls.append({"ids": list(ids), "params": params, "max_new_tokens": max_new_tokens})
        self.yielded = 0
        if self.fail:
            raise RuntimeError("scripted failure")
        if self.script is None:
            tokens = self.engine.generate(ids, max_new_tokens=max_new_tokens, params=params, session=session,
                                          stop_ids=stop_ids)
        else:
            tokens = self._scripted(ids, session, max_new_tokens)
        return self._hooked(tokens)

    def _scripted(self, ids, session, limit):
        """The script's next tokens (a request may call generate twice: it goes on where it stopped)."""
        session.feed(list(ids))
        for n in range(limit):
            if not self.script:
                return
            token = self.script.pop(0)
            yield token
            if n + 1 < limit and self.script:
                session.feed([token])

    def _hooked(self, tokens):
        try:
            for i, token in enumerate(tokens):
                if self.on_token is not None:
                    self.on_token(i)
                self.yielded += 1
                yield token
        finally:
            tokens.close()


class FeedCounter:
    """Counts the tokens the live session runs through the model."""

    def __init__(self, session):
        self.session, self.inner, self.tokens = session, session.feed, 0
        session.feed = self

    def __call__(self, ids, *args, **kw):
        self.tokens += len(ids)
        return self.inner(ids, *args, **kw)


@pytest.fixture(scope="module")
def server(tiny_dir):
    from hetero_qwen.loader import load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = load(tiny_dir, quiet=True)
    double = GenerateDouble(engine)
    state = build_state(engine, MODEL, max_waiting=8, generate=double, prompt_cache_bytes=1 << 30)
    ready, urls = threading.Event(), []
    srv = Server(state, bind("127.0.0.1", 0), on_ready=lambda url: (urls.append(url), ready.set()))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    assert ready.wait(WAIT), "server did not start"
    srv.double, srv.state, srv.base_url, srv.engine = double, state, urls[0], engine
    srv.feeds = FeedCounter(state.runner.cache.live.session)
    yield srv
    srv.should_exit = True
    thread.join(WAIT)
    torch.set_num_threads(threads)


@pytest.fixture
def client(server):
    server.double.script, server.double.on_token, server.double.fail = None, None, False
    server.state.api_key = None
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=WAIT)


def ask(client, messages, **kw):
    kw.setdefault("max_tokens", 8)
    kw.setdefault("seed", 7)
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def reasoning_of(message):
    return (message.model_extra or {}).get("reasoning_content")


def assert_serving(client):
    reply = ask(client, [{"role": "user", "content": "still there?"}], max_tokens=2)
    assert reply.usage.completion_tokens == 2


# ---- basics --------------------------------------------------------------------------------------
def test_ready_line_and_models_and_health(server, client):
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    assert [m.id for m in client.models.list().data] == [MODEL]
    health = httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=WAIT)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_plain_chat_thinking_on_is_all_reasoning_until_think_closes(server, client):
    tok = server.engine.tokenizer
    messages = [{"role": "user", "content": "Hello"}]
    reply = ask(client, messages, max_tokens=6)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 6
    assert tok.render(messages).endswith("<think>\n")  # the template opens the reasoning block
    # the caches hold the prompt and the reply but its last token; the random reply never closed </think>
    live = server.state.runner.cache.live.tokens
    assert live[:reply.usage.prompt_tokens] == tok.encode(tok.render(messages))
    assert tok.end_think_id not in live[reply.usage.prompt_tokens:]
    assert reasoning_of(choice.message) and choice.message.model_extra["reasoning"] == reasoning_of(choice.message)
    assert choice.message.content == ""
    assert server.double.calls[-1]["params"] == PRESETS["thinking-general"].with_overrides(seed=7)


def test_thinking_off_uses_instruct_preset_and_no_reasoning(server, client):
    reply = ask(client, [{"role": "user", "content": "Hello"}], max_tokens=5,
                extra_body={"top_k": 5, "chat_template_kwargs": {"enable_thinking": False}})
    assert reasoning_of(reply.choices[0].message) is None
    assert reply.choices[0].message.content  # the random reply is all content
    assert server.double.calls[-1]["params"] == PRESETS["instruct"].with_overrides(seed=7, top_k=5)
    # the same switch at top level, as some clients send it
    ask(client, [{"role": "user", "content": "Hello"}], max_tokens=2, extra_body={"enable_thinking": False})
    assert server.double.calls[-1]["params"] == PRESETS["instruct"].with_overrides(seed=7)


def test_stream_concatenates_to_the_plain_reply_for_the_same_seed(server, client):
    messages = [{"role": "user", "content": "Count to three"}]
    for think in (True, False):
        body = {"chat_template_kwargs": {"enable_thinking": think}}
        plain = ask(client, messages, max_tokens=12, seed=11, extra_body=body)
        chunks = list(ask(client, messages, max_tokens=12, seed=11, extra_body=body, stream=True,
                          stream_options={"include_usage": True}))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        content = "".join(d.content or "" for d in deltas)
        reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        assert content == plain.choices[0].message.content
        assert reasoning == (reasoning_of(plain.choices[0].message) or "")
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 12
        assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


# ---- the prompt cache across requests --------------------------------------------------------------
def test_second_turn_reports_cached_tokens_and_feeds_only_the_new_ones(server, client):
    first = [{"role": "user", "content": "Tell me a story about a fox"}]
    one = ask(client, first, max_tokens=6)
    turn2 = first + [one.choices[0].message.model_dump(exclude_none=True),
                     {"role": "user", "content": "And then?"}]
    before = server.feeds.tokens
    two = ask(client, turn2, max_tokens=6)
    fed = server.feeds.tokens - before
    cached = two.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached >= one.usage.prompt_tokens - 3  # up to the divergence before the reply
    # every token but the last generated one is fed once: the rest is prompt, and only the new part
    assert fed - (two.usage.completion_tokens - 1) == two.usage.prompt_tokens - cached
    assert server.state.runner.last_usage.fed_tokens == two.usage.prompt_tokens - cached
    # the engine's own count: the prompt tail handed to Engine.generate
    assert server.engine.stats.prompt_tokens == len(server.double.calls[-1]["ids"])
    assert server.engine.stats.prompt_tokens <= two.usage.prompt_tokens - cached


def test_preserve_thinking_keeps_reasoning_and_still_hits_the_cache(server, client):
    first = [{"role": "user", "content": "Think about numbers"}]
    kw = {"extra_body": {"chat_template_kwargs": {"preserve_thinking": True}}}
    one = ask(client, first, max_tokens=6, **kw)
    message = one.choices[0].message.model_dump(exclude_none=True)
    assert message["reasoning_content"]
    turn2 = first + [message, {"role": "user", "content": "more"}]
    kept = ask(client, turn2, max_tokens=3, **kw)
    assert kept.usage.prompt_tokens_details.cached_tokens >= one.usage.prompt_tokens
    # a third turn in the same mode reuses everything up to its divergence, as the chat does
    turn3 = turn2 + [kept.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "again"}]
    third = ask(client, turn3, max_tokens=3, **kw)
    assert third.usage.prompt_tokens_details.cached_tokens >= kept.usage.prompt_tokens
    # preserve off: the old reasoning leaves the prompt (the history changed: a fresh prefill, as in the chat)
    dropped = ask(client, turn3, max_tokens=3)
    assert dropped.usage.prompt_tokens < third.usage.prompt_tokens


def test_a_new_conversation_with_the_same_system_prompt_skips_it_and_the_old_one_resumes(server, client):
    system = {"role": "system", "content": "You are a terse assistant who answers in one line. " * 4}
    a1 = [system, {"role": "user", "content": "First conversation"}]
    ra = ask(client, a1, max_tokens=4)
    tok = server.engine.tokenizer
    system_turn = tok.encode(tok.render([system, {"role": "user", "content": ""}], add_generation_prompt=False))
    b1 = [system, {"role": "user", "content": "A different one"}]
    rb = ask(client, b1, max_tokens=4)
    shared = common_prefix(tok.encode(tok.render(b1)), system_turn)  # up to "<|im_start|>user\n"
    assert shared > 60 and rb.usage.prompt_tokens_details.cached_tokens == shared
    a2 = a1 + [ra.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "more"}]
    resumed = ask(client, a2, max_tokens=4)  # A was parked when B rewound the session
    assert resumed.usage.prompt_tokens_details.cached_tokens >= ra.usage.prompt_tokens - 3


def test_switching_conversations_parks_and_restores_exactly(server, client):
    a1 = [{"role": "user", "content": "Conversation A begins here"}]
    b1 = [{"role": "user", "content": "Something else entirely, B"}]
    ra = ask(client, a1, max_tokens=5)
    ask(client, b1, max_tokens=5)
    a2 = a1 + [ra.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "go on"}]
    resumed = ask(client, a2, max_tokens=8, seed=3)
    assert resumed.usage.prompt_tokens_details.cached_tokens >= ra.usage.prompt_tokens - 3
    server.state.runner.cache.clear()  # oracle: the same request from an empty cache
    fresh = ask(client, a2, max_tokens=8, seed=3)
    assert fresh.usage.prompt_tokens_details.cached_tokens == 0
    assert fresh.choices[0].message == resumed.choices[0].message


def test_parked_conversations_stay_within_the_byte_budget_dropping_the_oldest(server, client):
    cache, tok = server.state.runner.cache, server.engine.tokenizer
    cache.clear()
    convs = [[{"role": "user", "content": f"Conversation number {i} is about topic {i}"}] for i in range(3)]
    for messages in convs:
        ask(client, messages, max_tokens=3)
    assert len(cache.parked) == 2 and cache.parked_bytes <= cache.budget
    budget = cache.budget
    cache.budget = max(p.nbytes for p in cache.parked) * 3 // 2  # room for one
    try:
        ask(client, [{"role": "user", "content": "a fourth, unrelated"}], max_tokens=3)
        (kept,) = cache.parked  # the newest parked one (conversation 2); 0 and 1 were dropped
        assert kept.tokens[:len(tok.encode(tok.render(convs[2])))] == tok.encode(tok.render(convs[2]))
        assert cache.parked_bytes <= cache.budget
    finally:
        cache.budget = budget


# ---- tool calls --------------------------------------------------------------------------------------
def test_tool_call_round_trip_with_a_scripted_model_reply(server, client):
    tok = server.engine.tokenizer
    server.double.script = tok.encode(SCRIPTED_CALL) + [tok.im_end_id]
    messages = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    reply = ask(client, messages, tools=[WEATHER_TOOL], max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert reasoning_of(choice.message) == "The user wants the weather, so I call the tool."
    assert not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3, "zip": "75001"}  # typed by schema

    server.double.script = tok.encode(SCRIPTED_CALL) + [tok.im_end_id]
    streamed = list(ask(client, messages, tools=[WEATHER_TOOL], max_tokens=200, stream=True))
    calls = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
        [(0, "get_weather", {"city": "Paris", "days": 3, "zip": "75001"})]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"

    server.double.script = None  # the tool result turn: the real model answers, from the cache
    turn2 = messages + [choice.message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'}]
    answer = ask(client, turn2, tools=[WEATHER_TOOL], max_tokens=4)
    assert answer.usage.prompt_tokens_details.cached_tokens >= reply.usage.prompt_tokens
    assert "<tool_response>\n{\"temp_c\": 18}\n</tool_response>" in tok.decode(server.state.runner.cache.live.tokens)


def test_tool_call_inside_unclosed_think_ends_the_reasoning(server, client):
    tok = server.engine.tokenizer
    text = "hmm, weather\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>"
    server.double.script = tok.encode(text) + [tok.im_end_id]
    reply = ask(client, [{"role": "user", "content": "Oslo?"}], tools=[WEATHER_TOOL], max_tokens=100)
    choice = reply.choices[0]
    assert reasoning_of(choice.message) == "hmm, weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}


def test_named_tool_choice_writes_the_call_start_after_the_reasoning(server, client):
    tok = server.engine.tokenizer
    server.double.script = tok.encode("I must use the tool.\n</think>") + \
        tok.encode("<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>") + [tok.im_end_id]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = ask(client, [{"role": "user", "content": "Rome"}], tools=[WEATHER_TOOL], tool_choice=choice,
                max_tokens=100)
    # phase 1 stopped at </think>; phase 2 fed </think> + the forced call start, then went on
    assert tok.decode(server.double.calls[-1]["ids"]) == "</think>\n\n<tool_call>\n<function=get_weather>\n"
    assert reply.choices[0].finish_reason == "tool_calls"
    assert json.loads(reply.choices[0].message.tool_calls[0].function.arguments) == {"city": "Rome"}


# ---- completions and stop strings ----------------------------------------------------------------------
def test_completions_plain_streamed_and_stop_string(server, client):
    plain = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, seed=5)
    text = plain.choices[0].text
    assert plain.usage.completion_tokens == 10 and plain.choices[0].finish_reason == "length"
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, seed=5,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, seed=5, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[:text.index(stop)]


# ---- cancelling ----------------------------------------------------------------------------------------
def _hold_second_token(server):
    """A hook that, at the second token, says so and waits until the running job is cancelled."""
    seen = {"reached": threading.Event()}

    def hook(i):
        if i == 1:
            seen["reached"].set()
            seen["cancelled"] = server.state.worker.running.cancelled.wait(WAIT)
    server.double.on_token = hook
    return seen


def _wait_idle(server, served):
    worker = server.state.worker
    with worker.changed:
        assert worker.changed.wait_for(lambda: worker.served >= served and worker.running is None, WAIT)
    server.double.on_token = None


def test_a_stream_client_that_disconnects_cancels_within_one_token(server, client):
    seen = _hold_second_token(server)
    served = server.state.worker.served
    stream = ask(client, [{"role": "user", "content": "A long story please"}], max_tokens=200, stream=True)
    next(iter(stream))  # the role chunk
    assert seen["reached"].wait(WAIT)  # one token generated, the second in hand
    stream.close()      # the client goes away
    _wait_idle(server, served + 1)
    assert seen["cancelled"] is True
    assert server.double.yielded == 2  # the token in hand when the cancel came, and no more
    assert server.state.runner.last_usage.completion_tokens == 2
    assert_serving(client)


def test_a_plain_client_that_disconnects_cancels_too(server, client):
    seen = _hold_second_token(server)
    served = server.state.worker.served
    host, port = server.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    body = json.dumps({"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": "story"}]})
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        assert seen["reached"].wait(WAIT)
    _wait_idle(server, served + 1)
    assert seen["cancelled"] is True and server.double.yielded == 2
    assert_serving(client)


# ---- refusals ------------------------------------------------------------------------------------------
def test_api_key_is_required_when_set(server, client):
    server.state.api_key = "s3cret"
    with pytest.raises(openai.AuthenticationError) as err:
        ask(client, [{"role": "user", "content": "hi"}])
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    keyed = openai.OpenAI(base_url=server.base_url, api_key="s3cret", max_retries=0, timeout=WAIT)
    assert keyed.models.list().data[0].id == MODEL
    assert_serving(keyed)
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=WAIT).status_code == 200


@pytest.mark.parametrize("extra, field", [
    ({"n": 2}, "n"), ({"logit_bias": {"5": 1}}, "logit_bias"), ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"guided_json": {}}, "guided_json"),
    ({"chat_template_kwargs": {"add_vision_id": True}}, "chat_template_kwargs.add_vision_id"),
    ({"top_p": 0}, "top_p"), ({"tool_choice": "required"}, "tool_choice"),
])
def test_unsupported_or_bad_fields_are_a_400_naming_the_field(server, client, extra, field):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [{"role": "user", "content": "hi"}], extra_body=extra)
    assert err.value.status_code == 400 and err.value.body["param"] == field and field.split(".")[-1] in \
        err.value.body["message"]
    assert_serving(client)


def test_no_request_makes_the_server_read_a_file(server, client):
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [{"role": "user", "content": content}])
    assert err.value.body["param"] == "messages[0].content[1].type"
    assert_serving(client)


def test_too_long_prompt_names_both_numbers_and_wrong_model_is_404(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, [{"role": "user", "content": "word " * 3000}])
    context = server.engine.context
    n = int(err.value.body["message"].split("the prompt is ")[1].split(" ")[0])
    assert n > context and f"{n} tokens" in err.value.body["message"] and str(context) in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert_serving(client)


def test_body_limit_and_bad_json(server, client):
    url = server.base_url + "/chat/completions"
    server.state.max_body, limit = 256, server.state.max_body
    try:
        big = httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 1000}]},
                         timeout=WAIT)
        assert big.status_code == 413 and "256 bytes" in big.json()["error"]["message"]
    finally:
        server.state.max_body = limit
    bad = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=WAIT)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert_serving(client)


def test_a_full_queue_answers_503_at_once(server, client):
    worker, gate = server.state.worker, threading.Event()
    server.double.on_token = lambda i: gate.wait(WAIT)
    worker.max_waiting, results = 1, []

    def request(tag):
        results.append((tag, ask(client, [{"role": "user", "content": tag}], max_tokens=2).usage.completion_tokens))

    first = threading.Thread(target=request, args=("first",))
    first.start()
    try:
        with worker.changed:
            assert worker.changed.wait_for(lambda: worker.running is not None, WAIT)
        second = threading.Thread(target=request, args=("second",))
        second.start()
        with worker.changed:
            assert worker.changed.wait_for(lambda: len(worker.waiting) == 1, WAIT)
        with pytest.raises(openai.InternalServerError) as err:
            ask(client, [{"role": "user", "content": "third"}])
        assert err.value.status_code == 503 and err.value.body["code"] == "queue_full"
    finally:
        gate.set()
        first.join(WAIT)
        second.join(WAIT)
        worker.max_waiting = 8
    assert sorted(results) == [("first", 2), ("second", 2)]  # served in order, both whole
    assert_serving(client)


def test_a_failed_generation_leaves_the_server_serving(server, client):
    server.double.fail = True
    with pytest.raises(openai.InternalServerError) as err:
        ask(client, [{"role": "user", "content": "boom"}])
    assert err.value.status_code == 500 and "scripted failure" in err.value.body["message"]
    server.double.fail = False
    assert_serving(client)


# ---- the README's client example ---------------------------------------------------------------------
def test_the_readme_client_example_runs_against_the_server(server, client, monkeypatch, capsys):
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- serve-example -->")[1].split("<!-- /serve-example -->")[0]
    code = block.split("```python\n")[1].split("```")[0]
    # the card's reply budgets are for a real model; the tiny random one would fill its context
    code = code.replace("max_tokens=81920", "max_tokens=6").replace("max_tokens=32768", "max_tokens=6")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    monkeypatch.setattr(server.state, "model_name", "Qwen/Qwen3.6-27B")
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.count("Chat response:") == 3
    assert server.double.calls[-1]["params"].top_k == 20

