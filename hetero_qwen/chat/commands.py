"""Slash commands: /think, /preserve, /system, /reset, /save, /load, /stats, /help, /exit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import InputError
from .conversation import Conversation
from .transcript import load_messages, save_messages

HELP = """\
commands:
  /think on|off      thinking before answering (enable_thinking); also picks that mode's sampling
  /preserve on|off   keep earlier replies' reasoning in the prompt (preserve_thinking)
  /image PATH        attach an image to the next message (repeat for several; /image off drops them)
  /system TEXT       set the system prompt (/system alone shows it, /system off removes it)
  /reset             start a new conversation (the system prompt stays)
  /save FILE         write the conversation as OpenAI-style messages JSON (a new file)
  /save! FILE        the same, replacing FILE if it exists
  /load FILE         continue a conversation saved with /save
  /stats             tokens, cache, speed and sampling settings
  /help              this text
  /exit              leave (or Ctrl-D)
input: end a line with \\ to continue it, or put \"\"\" on its own line to start and end a block;
Ctrl-C stops a reply and keeps what was written; start a message with // to send text beginning with /"""


class Output(Protocol):
    def info(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


class SlashCommands:
    def __init__(self, conversation: Conversation, out: Output):
        self.conversation = conversation
        self.out = out
        self.table: dict[str, Callable[[str], bool | None]] = {
            "think": self.think, "image": self.image, "preserve": self.preserve, "system": self.system,
            "reset": self.reset, "save": self.save, "save!": self.save_over, "load": self.load, "stats": self.stats,
            "help": self.help,
            "exit": self.exit, "quit": self.exit,
        }

    def run(self, line: str) -> bool:
        """Run one command line (starting with /). Returns True when the chat should end."""
        name, _, arg = line[1:].strip().partition(" ")
        handler = self.table.get(name.lower())
        if handler is None:
            self.out.error(f"unknown command /{name}; /help lists the commands")
            return False
        try:
            return bool(handler(arg.strip()))
        except InputError as e:
            self.out.error(str(e))
            return False

    # ---- commands --------------------------------------------------------------------------
    def think(self, arg: str) -> None:
        settings = self.conversation.settings
        settings.think = _on_off("/think", arg, settings.think)
        self.out.info(f"thinking {'on' if settings.think else 'off'} · sampling {describe_sampling(settings)}")

    def image(self, arg: str) -> None:
        images = self.conversation.images
        if not arg:
            n = len(images.pending)
            self.out.info(f"{n} image{'s' if n != 1 else ''} attached to the next message" if n else
                          "no image attached (/image PATH attaches one to the next message)")
            return
        if arg == "off":
            images.pending = []
            self.out.info("attached images dropped")
            return
        prep = images.attach(arg)
        for note in prep.notes:
            self.out.info(note)
        _, h, w = prep.grid_thw[0].tolist()
        patch = self.conversation.engine.mm.vision.patch_size
        self.out.info(f"image {prep.paths[0].name} attached to the next message "
                      f"({w * patch}x{h * patch} pixels, {prep.token_counts[0]} tokens)")

    def preserve(self, arg: str) -> None:
        settings = self.conversation.settings
        settings.preserve = _on_off("/preserve", arg, settings.preserve)
        self.out.info(f"preserve thinking {'on' if settings.preserve else 'off'}")

    def system(self, arg: str) -> None:
        settings = self.conversation.settings
        if not arg:
            current = repr(settings.system) if settings.system else "none"
            self.out.info(f"system prompt: {current} (/system TEXT sets it, /system off removes it)")
            return
        settings.system = None if arg == "off" else arg
        note = " (the next reply re-reads the conversation)" if self.conversation.messages else ""
        self.out.info(("system prompt removed" if arg == "off" else "system prompt set") + note)

    def reset(self, arg: str) -> None:
        self.conversation.reset()
        self.out.info("new conversation" + (" (system prompt kept)" if self.conversation.settings.system else ""))

    def save(self, arg: str, overwrite: bool = False) -> None:
        if not arg:
            raise InputError("usage: /save FILE (or /save! FILE to replace an existing file)")
        path = save_messages(arg, self.conversation.history(), overwrite=overwrite)
        self.out.info(f"saved {len(self.conversation.history())} messages to {path}")

    def save_over(self, arg: str) -> None:
        self.save(arg, overwrite=True)

    def load(self, arg: str) -> None:
        if not arg:
            raise InputError("usage: /load FILE")
        messages = load_messages(arg)
        images = self.conversation.images.images_in(messages)  # every image readable, before anything changes
        self.conversation.replace(messages)
        for note in (n for p in images for n in p.notes if "changed since" in n):
            self.out.info(note)
        extra = f" with {len(images)} image{'s' if len(images) != 1 else ''}" if images else ""
        self.out.info(f"loaded {len(self.conversation.history())} messages{extra} from {arg}")

    def stats(self, arg: str) -> None:
        c = self.conversation
        cache = c.cache
        turns = sum(1 for m in c.messages if m.get("role") == "assistant")
        lines = [
            f"messages: {len(c.history())} ({turns} replies) · cache: {len(cache.tokens)} of "
            f"{c.engine.context} tokens · snapshots: {len(cache.snapshots)} "
            f"({cache.snapshot_bytes() / 2**20:.1f} MiB)",
            f"this chat: {cache.prefilled_total} tokens prefilled, {c.decoded_total} generated",
        ]
        if c.last_turn is not None:
            lines.append("last reply: " + reply_stats(c.last_turn))
        lines.append(f"thinking {'on' if c.settings.think else 'off'} · preserve "
                     f"{'on' if c.settings.preserve else 'off'} · sampling {describe_sampling(c.settings)}")
        self.out.info("\n".join(lines))

    def help(self, arg: str) -> None:
        self.out.info(HELP)

    def exit(self, arg: str) -> bool:
        return True


def reply_stats(turn) -> str:
    s = turn.sync
    images = getattr(turn, "image_tokens", [])
    shown = (f" · {len(images)} image{'s' if len(images) != 1 else ''}: {sum(images)} tokens" if images else "")
    line = (f"{s.prefilled} prompt tokens at {s.tokens_per_s:.0f} tok/s ({s.reused} cached){shown} · "
            f"{len(turn.tokens)} generated at {turn.decode_tokens_per_s:.1f} tok/s")
    gen = turn.generation
    if hasattr(gen, "drafts_proposed"):  # speculative decoding with the MTP layer
        line += (f" · MTP draft_tokens_proposed {gen.drafts_proposed}, draft_tokens_accepted "
                 f"{gen.drafts_accepted}, mean accepted length {gen.mean_accepted_length:.2f}")
    return line


def describe_sampling(settings) -> str:
    p = settings.sampling()
    parts = [f"temperature {p.temperature:g}", f"top_p {p.top_p:g}", f"top_k {p.top_k}"]
    if p.min_p:
        parts.append(f"min_p {p.min_p:g}")
    if p.presence_penalty:
        parts.append(f"presence_penalty {p.presence_penalty:g}")
    if p.repetition_penalty != 1.0:
        parts.append(f"repetition_penalty {p.repetition_penalty:g}")
    return f"{settings.preset_name()} ({', '.join(parts)})"


def _on_off(command: str, arg: str, current: bool) -> bool:
    value = arg.lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    if not value:
        return not current  # a bare /think toggles
    raise InputError(f"usage: {command} on|off")
