"""No re-prefill between chat turns: each turn feeds only the tokens from where its rendered history
first differs from what the caches hold, and still ends in exactly the state of a fresh prefill."""

import pytest
import torch

from hetero_qwen.chat.conversation import ChatSettings, Conversation
from hetero_qwen.chat.prompt_cache import Interrupted
from helpers import first_difference

COMBOS = [(think, preserve) for think in (True, False) for preserve in (False, True)]
IDS = [f"think={'on' if t else 'off'},preserve={'on' if p else 'off'}" for t, p in COMBOS]
TURNS = 4
ATOL = 1e-4  # fp32; a wrong or missing state moves these logits by O(1)
GEN_PROMPT_MAX = 8  # tokens in a generation prompt, with room to spare


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from hetero_qwen.loader import load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is latency bound; threads only contend on a shared box
    yield load(tiny_dir, quiet=True)
    torch.set_num_threads(threads)



class ScriptedSampler:
    """Stands in for a turn's sampler: replies with fixed tokens (a model's well-formed output)."""

    def __init__(self, tokens):
        self.tokens = list(tokens)

    def __call__(self, logits):
        return self.tokens.pop(0)

    def accept(self, token):
        pass


def scripted_reply(tok, turn, think):
    text = f"Answer number {turn}."
    if think:
        text = f"Let me think about question {turn}.\n</think>\n\n" + text
    return tok.encode(text) + [tok.im_end_id]


@pytest.mark.parametrize("think,preserve", COMBOS, ids=IDS)
def test_turns_prefill_only_from_the_divergence_point(engine, think, preserve):
    conv = Conversation(engine, ChatSettings(think=think, preserve=preserve, seed=0))
    tok = conv.tokenizer
    prefilled_total = 0
    for n in range(TURNS):
        before = list(conv.cache.tokens)
        turn = conv.begin(f"What is question {n} about?")
        ids = turn.prompt_ids
        diverge = first_difference(before, ids)
        # (b) only the tokens from the first difference on are fed
        assert turn.sync.prefilled == len(ids) - diverge
        assert turn.sync.reused == diverge
        if n:
            assert diverge > 0
        prefilled_total += turn.sync.prefilled
        assert conv.cache.prefilled_total == prefilled_total
        # (a) the state equals a fresh prefill of the whole rendered history
        fresh = engine.logits(ids)[-1]
        torch.testing.assert_close(turn.logits, fresh, atol=ATOL, rtol=0)
        assert turn.logits.shape == fresh.shape

        reply = scripted_reply(tok, n, think)
        turn.sampler = ScriptedSampler(reply)
        assert list(turn) == reply and turn.finish_reason == "stop"
        message = conv.end(turn)
        assert message["content"] == f"Answer number {n}."
        assert ("reasoning_content" in message) == think
        assert conv.cache.tokens == ids + reply[:-1]  # the end token is fed by the next turn
        assert len(conv.cache.snapshots) <= 2


@pytest.mark.parametrize("think,preserve", COMBOS, ids=IDS)
def test_sampled_replies_restore_the_nearest_snapshot(engine, think, preserve):
    """A random model's replies need not re-tokenize the same way: the turn then restores the latest
    snapshot before the difference, and never re-reads history older than the last reply."""
    conv = Conversation(engine, ChatSettings(think=think, preserve=preserve, seed=1, max_new_tokens=10))
    previous_prompt = 0
    for n in range(3):
        before = list(conv.cache.tokens)
        snapshots = conv.cache.snapshot_positions
        turn = conv.begin(f"Tell me about {n}.")
        ids = turn.prompt_ids
        diverge = first_difference(before, ids)
        restored = diverge if diverge == len(before) else max([p for p in snapshots if p <= diverge], default=0)
        assert turn.sync.prefilled == len(ids) - restored
        if n:
            assert turn.sync.prefilled <= len(ids) - previous_prompt + GEN_PROMPT_MAX
        torch.testing.assert_close(turn.logits, engine.logits(ids)[-1], atol=ATOL, rtol=0)
        list(turn)
        conv.end(turn)
        previous_prompt = len(ids)


def test_a_stopped_reply_is_kept_and_the_next_turn_is_exact(engine):
    conv = Conversation(engine, ChatSettings(seed=2))
    turn = conv.begin("Write a long story.")
    for i, _ in enumerate(turn):
        if i == 2:
            break  # what a Ctrl-C does
    assert turn.finish_reason == "interrupted"
    conv.end(turn)
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    turn = conv.begin("Go on.")
    torch.testing.assert_close(turn.logits, engine.logits(turn.prompt_ids)[-1], atol=ATOL, rtol=0)


def test_stopping_during_prefill_keeps_caches_usable(engine):
    conv = Conversation(engine, ChatSettings(seed=3, max_new_tokens=4))
    conv.cache.chunk = 4  # several chunks, so the stop lands between two of them
    calls = []

    def stop_after_two_chunks():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Interrupted):
        conv.begin("A question that takes a few chunks to read.", should_stop=stop_after_two_chunks)
    assert conv.messages == [] and len(conv.cache.tokens) == 8
    turn = conv.begin("Another question.")
    torch.testing.assert_close(turn.logits, engine.logits(turn.prompt_ids)[-1], atol=ATOL, rtol=0)


def test_a_failure_inside_a_forward_drops_the_caches(engine, monkeypatch):
    """A second Ctrl-C can land inside a forward pass, with some layers updated and others not."""
    conv = Conversation(engine, ChatSettings(seed=4, max_new_tokens=3))
    turn = conv.begin("First.")
    list(turn)
    conv.end(turn)
    real_feed = conv.cache.session.feed

    def interrupted_feed(ids, all_logits=False):
        real_feed(ids[:1])  # part of the work happened
        raise KeyboardInterrupt

    monkeypatch.setattr(conv.cache.session, "feed", interrupted_feed)
    with pytest.raises(KeyboardInterrupt):
        conv.begin("Second.")
    monkeypatch.undo()
    assert conv.cache.tokens == [] and conv.cache.snapshots == []
    turn = conv.begin("Second.")
    assert turn.sync.prefilled == len(turn.prompt_ids)
    torch.testing.assert_close(turn.logits, engine.logits(turn.prompt_ids)[-1], atol=ATOL, rtol=0)


def test_changing_the_system_prompt_rereads_from_the_start(engine):
    conv = Conversation(engine, ChatSettings(seed=5, max_new_tokens=3))
    for text in ("One.", "Two."):
        turn = conv.begin(text)
        list(turn)
        conv.end(turn)
    conv.settings.system = "You are terse."
    turn = conv.begin("Three.")
    assert turn.sync.reused == 0 and turn.sync.prefilled == len(turn.prompt_ids)
    torch.testing.assert_close(turn.logits, engine.logits(turn.prompt_ids)[-1], atol=ATOL, rtol=0)


def test_the_latest_snapshot_before_the_difference_is_restored(engine):
    """Reasoning kept (preserve turned on) but the reply re-renders differently from the end of its
    reasoning: both snapshots of the last prompt precede the difference; the later one is used."""
    conv = Conversation(engine, ChatSettings(think=True, preserve=False, seed=6))
    tok = conv.tokenizer
    turn = conv.begin("Hello?")
    first_prompt = turn.prompt_ids
    # Trailing spaces: generated, but trimmed by the template when the reply is rendered again.
    reply = tok.encode("Thinking it over.\n</think>\n\nHi.   ") + [tok.im_end_id]
    turn.sampler = ScriptedSampler(reply)
    list(turn)
    conv.end(turn)
    assert len(conv.cache.snapshots) == 2 and conv.cache.snapshot_positions[-1] == len(first_prompt)
    conv.settings.preserve = True
    before = list(conv.cache.tokens)
    turn = conv.begin("And then?")
    assert len(first_prompt) < first_difference(before, turn.prompt_ids) < len(before)
    assert turn.sync.reused == len(first_prompt)
    assert turn.sync.prefilled == len(turn.prompt_ids) - len(first_prompt)
    torch.testing.assert_close(turn.logits, engine.logits(turn.prompt_ids)[-1], atol=ATOL, rtol=0)
