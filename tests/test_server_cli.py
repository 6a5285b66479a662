"""`hetero-qwen serve` from the command line: the ready line, and one-line errors before loading."""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import urllib.request

from helpers import run_cli

WAIT = 120  # seconds: loading the tiny model in a fresh interpreter on a busy machine


def test_serve_prints_one_ready_line_with_the_url_and_answers(tiny_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hetero_qwen", "serve", "--model", str(tiny_dir), "--port", "0",
                             "--served-model-name", "Qwen/Qwen3.6-27B"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(WAIT), "no ready line"
        line = proc.stdout.readline()
        assert line.startswith("hetero-qwen serve: ready at http://127.0.0.1:") and "'Qwen/Qwen3.6-27B'" in line
        url = line.split(" ready at ")[1].split()[0]
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=WAIT) as r:
            assert r.status == 200
        with urllib.request.urlopen(url + "/models", timeout=WAIT) as r:
            assert json.load(r)["data"][0]["id"] == "Qwen/Qwen3.6-27B"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    assert out == ""  # nothing but the one ready line on stdout
    assert "Traceback" not in err


def test_a_taken_port_is_one_error_line_before_loading(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(["serve", "--port", port], capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_bad_sampling_flags_and_missing_web_libraries_are_one_line(capsys, monkeypatch):
    code, _, err = run_cli(["serve", "--preset", "nope"], capsys)
    assert code == 2 and err.startswith("error: unknown preset 'nope'")
    code, _, err = run_cli(["serve", "--top-p", "0"], capsys)
    assert code == 2 and err.strip() == "error: top_p must be in (0, 1]"
    import hetero_qwen.commands.serve as serve
    monkeypatch.setattr(serve, "_importable", lambda name: name != "sse_starlette")
    code, _, err = run_cli(["serve"], capsys)
    assert code == 2 and err.strip() == ("error: `serve` needs sse_starlette: pip install 'hetero-qwen[serve]'  "
                                         "(fastapi, uvicorn, sse-starlette)")
