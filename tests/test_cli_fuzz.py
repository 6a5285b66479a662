"""Property: whatever argument list a user types, `hetero-qwen` ends with a SystemExit (never an
uncaught exception), never a traceback and never the internal-error status; a failure is one
`error:` line. Runs in-process on the embedded tiny model; the cache, HOME and the working
directory are a temporary directory, stdin is empty (chat ends at once) and the machine
measurement is a fixed fake (no probe runs)."""

from __future__ import annotations

import io
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hetero_qwen.cli import INTERNAL_ERROR_EXIT, main

COMMANDS = ["generate", "chat", "plan", "probe", "make-tiny", "quantize", "info", "frobnicate", ""]
FLAGS = ["--model", "-m", "--profile", "-p", "--prompt", "--prompt-ids", "--chat", "--think", "--no-think",
         "-n", "--max-new-tokens", "--preset", "--temperature", "-t", "--top-p", "--top-k", "--min-p",
         "--presence-penalty", "--repetition-penalty", "--seed", "--dtype", "--json", "--stats", "--context",
         "--policy", "--out", "--force", "--system", "--ignore-eos", "--help", "--bogus", "--", "-"]
VALUES = ["0", "1", "-1", "2", "8", "0.5", "1e309", "nan", "inf", "-inf", "", " ", "1,2", "1 2", "1,,2", "1_000",
          str(2**64), str(2**70), "greedy", "instruct", "nope", "bf16", "fp32", "int3", "auto", "layers",
          "qwen3.6-27b", "TINY", "prof.yaml", "out.yaml", "newdir", "existing.txt", ".", "..", "/", "x" * 300,
          "caf\u00e9", "\x00", "-n", "--json"]
FAKE_MEASURE = {"threads": 2, "ram_available": 8 * 2**30, "bw_cpu": 20e9, "cpu_flops": 1e11}


@pytest.fixture
def sandbox(tmp_path, monkeypatch, tiny_dir):
    import hetero_qwen.probe as probe
    home = tmp_path / "home"
    home.mkdir()
    import shutil
    shutil.copytree(tiny_dir, home / "tiny-random")
    work = tmp_path / "work"
    work.mkdir()
    (work / "existing.txt").write_text("keep\n")
    (work / "prof.yaml").write_text("cpu: {ram: 4GiB, threads: 2, reserve: 256MiB}\ncontext: 64\n")
    for var, value in (("HETERO_QWEN_HOME", home), ("HOME", tmp_path), ("XDG_CACHE_HOME", tmp_path / "cache")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.chdir(work)
    monkeypatch.setattr(probe, "measure", lambda: dict(FAKE_MEASURE))
    return {"TINY": str(home / "tiny-random")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS),
       args=st.lists(st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=6)), max_size=7))
def test_random_arguments_never_crash(sandbox, capsys, monkeypatch, command, args):
    argv = ([command] if command else []) + [sandbox.get(a, a) for a in args]
    if command in ("generate", "chat") and "-n" not in argv and "--max-new-tokens" not in argv:
        argv += ["-n", "2"]  # keep replies short: the property is about handling, not generating
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit) as exc:  # any other exception fails the test: it would be a traceback
        main(argv)
    out, err = capsys.readouterr()
    code = exc.value.code
    assert code != INTERNAL_ERROR_EXIT, (argv, err)
    assert "Traceback" not in out + err, argv
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert sum(line.startswith("error:") for line in err.splitlines()) == 1, (argv, err)
