"""The HTTP side: routes, API key, body limit, errors in the OpenAI shape, streams.

Requests are validated and tokenized here (a bad one is answered at once), then queued on the
Worker; its thread sends pieces back through an asyncio queue. A client that goes away cancels its
job: for streams sse-starlette notices the disconnect and closes our generator; for plain requests a
task waits for the `http.disconnect` message.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import HeteroQwenError
from . import responses as R
from .errors import ApiError, bad_request, error_body
from .generation import GenerationRunner, Job, Usage
from .prompts import PromptBuilder
from .schema import parse_chat, parse_completion
from .worker import Worker

DEFAULT_MAX_BODY = 16 * 2**20  # bytes


@dataclass
class ServerState:
    model_name: str
    context: int
    builder: PromptBuilder
    runner: GenerationRunner
    worker: Worker
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="hetero-qwen", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hq = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(error_body(str(error.detail), "invalid_request_error"), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception):
        return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        _check_key(state, request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "hetero-qwen", "max_model_len": state.context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req, job, events = await _start(state, request, parse_chat)
        rid, created = R.new_id("chatcmpl"), R.now()
        if req.stream:
            return EventSourceResponse(_chat_stream(state, job, events, rid, created), sep="\n")
        reply = R.ChatReply()
        finish, usage = await _collect(request, job, events, lambda piece: reply.add(piece))
        return R.chat_body(rid, state.model_name, created, reply, finish, usage.as_dict())

    @app.post("/v1/completions")
    async def completions(request: Request):
        req, job, events = await _start(state, request, parse_completion)
        rid, created = R.new_id("cmpl"), R.now()
        if req.stream:
            return EventSourceResponse(_completion_stream(state, job, events, rid, created), sep="\n")
        texts = []
        finish, usage = await _collect(request, job, events, lambda piece: texts.append(piece.text))
        return R.completion_body(rid, state.model_name, created, "".join(texts), finish, usage.as_dict())

    return app


# ---- request side ------------------------------------------------------------------------------
def _check_key(state: ServerState, request: Request) -> None:
    if not state.api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(401, "invalid or missing API key: send `Authorization: Bearer KEY`",
                       type="authentication_error", code="invalid_api_key")


async def _read_json(state: ServerState, request: Request):
    declared = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body is larger than the limit of {state.max_body} bytes",
                       code="body_too_large")
    if declared and declared.isdigit() and int(declared) > state.max_body:
        raise too_big
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > state.max_body:
            raise too_big
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad_request("the request body is not valid JSON") from None


async def _start(state: ServerState, request: Request, parse):
    _check_key(state, request)
    req = parse(await _read_json(state, request))
    if req.model is not None and req.model != state.model_name:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {state.model_name!r}",
                       "model", code="model_not_found")
    prompt = await asyncio.to_thread(state.builder.build, req)  # long prompts take a while to tokenize
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(event: tuple) -> None:  # called on the worker thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutting down): nobody is listening
            pass

    job = Job(prompt, emit)
    state.worker.submit(job)
    return req, job, events


async def _wait_disconnect(request: Request, job: Job) -> None:
    """After the body is read, the next ASGI message is the client going away."""
    while not job.cancelled.is_set():
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()


def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, HeteroQwenError):
        return ApiError(400, str(error))
    return ApiError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


async def _collect(request: Request, job: Job, events: asyncio.Queue, add):
    watcher = asyncio.create_task(_wait_disconnect(request, job))
    try:
        while True:
            event = await events.get()
            if event[0] == "piece":
                add(event[1])
            elif event[0] == "end":
                return event[1], event[2] or _no_usage(job)
            else:
                raise _as_api_error(event[1])
    finally:
        watcher.cancel()


def _no_usage(job: Job) -> Usage:
    return Usage(prompt_tokens=len(job.prompt.ids))


async def _events(job: Job, events: asyncio.Queue):
    """The job's events until its end; the job is cancelled if the stream is closed early."""
    try:
        while True:
            event = await events.get()
            yield event
            if event[0] != "piece":
                return
    finally:
        job.cancelled.set()  # no-op once the job has ended


def _data(obj) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False)}


async def _chat_stream(state: ServerState, job: Job, events, rid: str, created: int):
    name = state.model_name
    reply = R.ChatReply()
    yield _data(R.chat_chunk(rid, name, created, {"role": "assistant", "content": ""}))
    async for event in _events(job, events):
        if event[0] == "piece":
            yield _data(R.chat_chunk(rid, name, created, reply.add(event[1])))
        elif event[0] == "end":
            yield _data(R.chat_chunk(rid, name, created, {}, finish=event[1]))
            if job.prompt.request.include_usage:
                usage = (event[2] or _no_usage(job)).as_dict()
                yield _data(R.chat_chunk(rid, name, created, None, usage=usage))
        else:
            yield _data(_as_api_error(event[1]).body())
    yield {"data": "[DONE]"}


async def _completion_stream(state: ServerState, job: Job, events, rid: str, created: int):
    name = state.model_name
    async for event in _events(job, events):
        if event[0] == "piece":
            yield _data(R.completion_body(rid, name, created, event[1].text, None, None))
        elif event[0] == "end":
            yield _data(R.completion_body(rid, name, created, "", event[1], None))
            if job.prompt.request.include_usage:
                usage = (event[2] or _no_usage(job)).as_dict()
                yield _data(R.completion_body(rid, name, created, None, None, usage))
        else:
            yield _data(_as_api_error(event[1]).body())
    yield {"data": "[DONE]"}
