"""Reply pieces -> OpenAI response bodies and stream chunks.

Reasoning goes out under both `reasoning_content` (llama.cpp, LM Studio, most clients) and
`reasoning` (vLLM's newer name). A tool call is sent whole, in one delta, when its block closes.
Both the whole reply and the stream are built from the same pieces, so a stream's deltas
concatenate to the non-streamed message.
"""

from __future__ import annotations

import json
import secrets
import time

from .reply_parser import Piece


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def tool_call_json(piece: Piece, index: int) -> dict:
    return {"index": index, "id": f"call_{secrets.token_hex(12)}", "type": "function",
            "function": {"name": piece.call["name"],
                         "arguments": json.dumps(piece.call["arguments"], ensure_ascii=False)}}


class ChatReply:
    """Accumulates pieces into one assistant message."""

    def __init__(self):
        self.reasoning, self.content, self.tool_calls = [], [], []

    def add(self, piece: Piece) -> dict:
        """Add a piece; return its stream delta."""
        if piece.kind == "reasoning":
            self.reasoning.append(piece.text)
            return {"reasoning_content": piece.text, "reasoning": piece.text}
        if piece.kind == "content":
            self.content.append(piece.text)
            return {"content": piece.text}
        call = tool_call_json(piece, len(self.tool_calls))
        self.tool_calls.append(call)
        return {"tool_calls": [call]}

    def message(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.content) if self.content or not self.tool_calls else None}
        if self.reasoning:
            message["reasoning_content"] = message["reasoning"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in self.tool_calls]
        return message


def finish_reason(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason


def chat_body(rid: str, model: str, created: int, reply: ChatReply, finish: str, usage: dict) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": reply.message(), "logprobs": None,
                         "finish_reason": finish_reason(finish)}],
            "usage": usage}


def chat_chunk(rid: str, model: str, created: int, delta: dict | None, finish: str | None = None,
               usage: dict | None = None) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason(finish) if finish else None}]
    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion_body(rid: str, model: str, created: int, text: str | None, finish: str | None,
                    usage: dict | None) -> dict:
    choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                        "finish_reason": finish_reason(finish) if finish else None}]
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def now() -> int:
    return int(time.time())
