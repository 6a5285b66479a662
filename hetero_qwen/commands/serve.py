"""`hetero-qwen serve`: an OpenAI-compatible HTTP server (see hetero_qwen/server/)."""

from __future__ import annotations


from typing import Optional

import typer

from ..errors import HeteroQwenError, InputError
from ..sampling import PRESETS
from .common import (ModePresetOpt, DtypeOpt, MinPOpt, ModelOpt, PresencePenaltyOpt, ProfileOpt, RepetitionPenaltyOpt, TemperatureOpt,
                     TopKOpt, TopPOpt, resolve_model, say)

SERVE_EXTRA = "pip install 'hetero-qwen[serve]'  (fastapi, uvicorn, sse-starlette)"


def serve(
    model: Optional[str] = ModelOpt,
    profile: Optional[str] = ProfileOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HETERO_QWEN_API_KEY", show_envvar=True,
                                          help="Require `Authorization: Bearer KEY` on /v1/*"),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="The model id clients send (default: the checkpoint folder's name)"),
    think: bool = typer.Option(True, "--think/--no-think",
                               help="Thinking for requests that do not set enable_thinking"),
    preset: Optional[str] = ModePresetOpt,
    temperature: Optional[float] = TemperatureOpt,
    top_p: Optional[float] = TopPOpt,
    top_k: Optional[int] = TopKOpt,
    min_p: Optional[float] = MinPOpt,
    presence_penalty: Optional[float] = PresencePenaltyOpt,
    repetition_penalty: Optional[float] = RepetitionPenaltyOpt,
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", min=1,
                                                 help="Longest reply when a request sets no max_tokens "
                                                      "(default: until the model ends it)"),
    context: Optional[int] = typer.Option(None, "--context", min=16, help="Context length in tokens"),
    dtype: Optional[str] = DtypeOpt,
    max_queue: int = typer.Option(32, "--max-queue", min=0, help="Requests that may wait; more get 503"),
    max_body: int = typer.Option(16 * 2**20, "--max-body", min=1024, help="Largest request body in bytes"),
) -> None:
    """Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    _require_web_libraries()
    from ..loader import load, resolve_profile
    from ..server.prompts import ServeDefaults
    from ..server.runner import Server, bind, build_state

    overrides = dict(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                     presence_penalty=presence_penalty, repetition_penalty=repetition_penalty)
    defaults = ServeDefaults(think=think, preset=preset, overrides={k: v for k, v in overrides.items() if v is not None},
                             max_tokens=max_new_tokens)
    _check_sampling(defaults)
    sock = bind(host, port)  # a taken port fails before the model loads
    path = resolve_model(model)
    prof = resolve_profile(profile)
    say(f"loading {path} ...")
    engine = load(path, profile=prof, dtype=dtype, context=context)
    state = build_state(engine, served_model_name or path.name, defaults, api_key=api_key,
                        max_waiting=max_queue, max_body=max_body, prompt_cache_bytes=prof.server_prompt_cache)
    if engine.plan_summary:
        say(engine.plan_summary)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        say(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    server = Server(state, sock, on_ready=lambda url: print(f"hetero-qwen serve: ready at {url} "
                                                            f"(model {state.model_name!r})", flush=True))
    server.serve_forever()


def _require_web_libraries() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "sse_starlette") if not _importable(name)]
    if missing:
        raise HeteroQwenError(f"`serve` needs {', '.join(missing)}: {SERVE_EXTRA}")


def _importable(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _check_sampling(defaults) -> None:
    for name in [defaults.preset] if defaults.preset else ["thinking-general", "instruct"]:
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        try:
            PRESETS[name].with_overrides(**defaults.overrides)
        except ValueError as e:
            raise InputError(str(e)) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)



