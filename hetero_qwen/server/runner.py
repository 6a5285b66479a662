"""Assembling the server around a loaded Engine, and running it under uvicorn.

`build_state` wires prompt builder, prompt cache, generation runner and worker; `Server` binds
the socket itself (so a taken port is one clear error line, and port 0 picks a free one) and calls
`on_ready(url)` once it accepts connections. Tests run the same `Server` in a thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import uvicorn

from ..errors import InputError
from .app import DEFAULT_MAX_BODY, ServerState, create_app
from .conversation_cache import ConversationCache
from .generation import GenerationRunner
from .prompts import PromptBuilder, ServeDefaults
from .worker import Worker

DEFAULT_MAX_WAITING = 32


def build_state(engine, model_name: str, defaults: ServeDefaults | None = None, api_key: str | None = None,
                max_waiting: int = DEFAULT_MAX_WAITING, max_body: int = DEFAULT_MAX_BODY,
                prompt_cache_bytes: int = 4 * 2**30, generate: Callable | None = None) -> ServerState:
    cache = ConversationCache(engine.session(), prompt_cache_bytes)
    tokenizer_lock = threading.Lock()  # requests tokenize on their threads while the worker decodes
    runner = GenerationRunner(engine, cache, generate=generate, tokenizer_lock=tokenizer_lock)
    worker = Worker(runner.run, max_waiting)
    builder = PromptBuilder(engine.tokenizer, engine.context, defaults or ServeDefaults(), tokenizer_lock)
    return ServerState(model_name, engine.context, builder, runner, worker, api_key or None, max_body)


def bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, telling `on_ready(url)` when it accepts connections."""

    def __init__(self, state: ServerState, sock: socket.socket, on_ready: Callable[[str], None],
                 log_level: str = "warning"):
        self.state, self.sock, self.on_ready = state, sock, on_ready
        config = uvicorn.Config(create_app(state), log_level=log_level, lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2)
        super().__init__(config)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/v1"

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_ready(self.url)

    def serve_forever(self) -> None:
        """Run until stopped (Ctrl-C, or `should_exit = True` from another thread)."""
        self.state.worker.start()
        try:
            self.run(sockets=[self.sock])
        finally:
            self.state.worker.stop()
            self.sock.close()
