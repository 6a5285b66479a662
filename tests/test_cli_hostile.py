"""The CLI's promise under hostile input (issue 16): every bad input is exit 2 with exactly one
`error:` line on stderr, an interrupt is exit 130 (SIGTERM 143) with one line, never a traceback, and
the file system is as it was (nothing of the user's deleted or overwritten, no temporaries left).

Cheap cases run through `hetero_qwen.cli.main` in-process (the same code path as the console
script); interrupts, the FIFO and the bare entry point run as real subprocesses. Interrupts are
deterministic: HETERO_QWEN_SIGNAL_AT makes the process signal itself at a named point.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
PROFILE_27B = str(ROOT / "placement_policies" / "profiles" / "gpu24-ram64.yaml")
CPU_PROFILE = "cpu: {ram: 4GiB, threads: 2, reserve: 256MiB}\n"


# ---- the world every case runs in: fixtures, and a snapshot to compare before/after ----------------
def snapshot(root: Path) -> dict:
    """Every path under `root` -> (kind, mode, size, mtime_ns, sha256 of the content)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", st.st_mode)
            elif p.is_file():
                out[str(p)] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                               hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[str(p)] = ("other", st.st_mode)
    return out


def _relabel_dtype(path: Path, old: bytes, new: bytes) -> None:
    """Change the first `"dtype":"OLD"` label in a safetensors header (same length: same layout)."""
    data = bytearray(path.read_bytes())
    hlen = int.from_bytes(data[:8], "little")
    header = bytes(data[8:8 + hlen])
    i = header.index(b'"dtype":"' + old + b'"')
    header = header[:i] + b'"dtype":"' + new + b'"' + header[i + len(old) + 10:]
    data[8:8 + hlen] = header
    path.write_bytes(bytes(data))


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_dir):
    """A directory of hostile inputs built once: broken checkpoints, files, profiles, a FIFO."""
    from hetero_qwen.quantized_checkpoint import quantize_checkpoint
    w = tmp_path_factory.mktemp("world")
    (w / "home").mkdir()
    shutil.copytree(tiny_dir, w / "home" / "tiny-random")  # HETERO_QWEN_HOME: the embedded model is there
    tiny = w / "tiny"
    shutil.copytree(tiny_dir, tiny)

    def variant(name):
        d = w / name
        shutil.copytree(tiny, d)
        return d

    _relabel_dtype(variant("dtype-size") / "model.safetensors", b"F32", b"F16")
    _relabel_dtype(variant("int-weights") / "model.safetensors", b"F32", b"I32")
    (variant("index-list") / "model.safetensors.index.json").write_text("[]")
    (variant("config-list") / "config.json").write_text("[1, 2]")
    (variant("config-latin1") / "config.json").write_bytes(b'{"model_type": "qwen3_5_text", "x": "\xe9"}')
    _edit_config(variant("hidden-big"), hidden_size="big")
    _edit_config(variant("heads-neg"), num_attention_heads=-4)
    nan = variant("nan-weights")
    weights = load_file(nan / "model.safetensors")
    weights["model.layers.2.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(nan / "model.safetensors"), metadata={"format": "pt"})
    quantize_checkpoint(tiny, w / "q8", "int8")
    shutil.copytree(w / "q8", w / "q-int3")
    _edit_config(w / "q-int3", hetero_qwen_format="int3")
    shutil.copytree(w / "q8", w / "q-nokey")
    _edit_config(w / "q-nokey", hetero_qwen_format=None)

    (w / "a-file").write_text("precious\n")
    (w / "full-dir").mkdir()
    (w / "full-dir" / "notes.txt").write_text("precious\n")
    (w / "empty-dir").mkdir()
    os.symlink(w / "empty-dir", w / "link-to-dir")
    os.symlink(w / "nowhere", w / "dangling-link")
    (w / "mine.yaml").write_text("# hand-edited\n" + CPU_PROFILE)
    (w / "chat.json").write_text('[{"role": "user", "content": "keep me"}]\n')
    (w / "latin1.yaml").write_bytes(b"cpu: {ram: 4GiB}  # caf\xe9\n")
    (w / "threads.yaml").write_text("cpu: {ram: 4GiB, threads: 10000, reserve: 256MiB}\n")
    (w / "huge-context.yaml").write_text(CPU_PROFILE + "context: 100000\n")
    (w / "ctx16.yaml").write_text(CPU_PROFILE + "context: 16\n")
    (w / "bad-override.yaml").write_text(CPU_PROFILE + "overrides:\n  - {match: 'layers\\.99\\.mlp', home: cpu}\n")
    os.mkfifo(w / "fifo")
    return w


@pytest.fixture
def cli(world, monkeypatch, capsys):
    """Run `hetero-qwen ARGS` in-process inside the world; returns (code, stdout, stderr)."""
    monkeypatch.chdir(world)
    monkeypatch.setenv("HETERO_QWEN_HOME", str(world / "home"))

    def run(args, stdin="", **env):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        for k, v in env.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v.format(w=world))
        return run_cli([a.format(w=world) for a in args], capsys)
    return run


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_error(code, out, err, needle=""):
    assert code == 2, (code, err)
    assert len(error_lines(err)) == 1, err
    assert "Traceback" not in out + err
    assert needle.lower() in error_lines(err)[0].lower(), err


# ---- the table: argv, what the one error line must mention, extra environment ----------------------
GEN = ["generate", "--prompt-ids", "1,2", "-n", "2"]
BAD_INPUTS = {
    # typer/click usage errors (typer 0.29 raises its bundled click's classes)
    "no-command": ([], "no command given", {}),
    "unknown-command": (["frobnicate"], "no such command", {}),
    "unknown-option": (["generate", "--bogus"], "no such option", {}),
    "n-zero": (["generate", "-n", "0", "--prompt-ids", "1"], "--max-new-tokens", {}),
    "negative-temperature": (["generate", "--temperature", "-1", "--prompt-ids", "1"], "--temperature", {}),
    "quantize-no-args": (["quantize"], "missing argument", {}),
    "plan-context-zero": (["plan", "--context", "0"], "--context", {}),
    "chat-n-zero": (["chat", "-n", "0"], "--max-new-tokens", {}),
    # sampling and argument values
    "presence-nan": (GEN + ["--presence-penalty", "nan"], "presence_penalty", {}),
    "temperature-inf": (GEN + ["--temperature", "inf"], "temperature", {}),
    "top-p-nan": (GEN + ["--top-p", "nan"], "top_p", {}),
    "seed-65-bits": (GEN + ["--seed", str(2**65)], "--seed", {}),
    "seed-negative": (GEN + ["--seed", "-1"], "--seed", {}),
    "chat-seed-65-bits": (["chat", "--seed", str(2**65)], "--seed", {}),
    "prompt-ids-spaces": (["generate", "--prompt-ids", "1 2 3"], "--prompt-ids", {}),
    "prompt-ids-empty-item": (["generate", "--prompt-ids", "1,,2"], "--prompt-ids", {}),
    "prompt-ids-underscore": (["generate", "--prompt-ids", "1_000"], "--prompt-ids", {}),
    "prompt-ids-negative": (["generate", "--prompt-ids", "-5"], "--prompt-ids", {}),
    "model-empty": (GEN + ["--model", ""], "--model is empty", {}),
    "model-name-too-long": (GEN + ["--model", "x" * 300], "too long", {}),
    "make-tiny-name-too-long": (["make-tiny", "y" * 300], "too long", {}),
    # checkpoints
    "dtype-label-size": (GEN + ["--model", "{w}/dtype-size"], "needs", {}),
    "float-as-int": (GEN + ["--model", "{w}/int-weights"], "float dtype", {}),
    "index-is-list": (GEN + ["--model", "{w}/index-list"], "index", {}),
    "config-is-list": (GEN + ["--model", "{w}/config-list"], "JSON object", {}),
    "config-not-utf8": (GEN + ["--model", "{w}/config-latin1"], "UTF-8", {}),
    "model-is-safetensors-file": (GEN + ["--model", "{w}/tiny/model.safetensors"], "is a file", {}),
    "hidden-size-big": (GEN + ["--model", "{w}/hidden-big"], "hidden_size", {}),
    "heads-negative": (GEN + ["--model", "{w}/heads-neg"], "num_attention_heads", {}),
    "quantized-int3": (GEN + ["--model", "{w}/q-int3"], "int3", {}),
    "quantized-key-deleted": (GEN + ["--model", "{w}/q-nokey"], "hetero_qwen_format", {}),
    "plan-config-list": (["plan", "--model", "{w}/config-list", "--profile", PROFILE_27B], "JSON object", {}),
    # non-finite weights: stop with where it happened, at any temperature
    "nan-weights-greedy": (GEN + ["--model", "{w}/nan-weights"], "model.layers.2.mlp", {}),
    "nan-weights-sampled": (GEN + ["--model", "{w}/nan-weights", "--temperature", "1", "--seed", "1"],
                            "model.layers.2.mlp", {}),
    "nan-weights-chat": (["chat", "--model", "{w}/nan-weights", "-n", "2"], "model.layers.2.mlp", {"stdin": "hi\n"}),
    # outputs: never overwrite or delete what is there
    "make-tiny-non-empty-dir": (["make-tiny", "{w}/full-dir"], "not empty", {}),
    "make-tiny-cwd": (["make-tiny", "."], "new directory", {}),
    "make-tiny-file": (["make-tiny", "{w}/a-file"], "is a file", {}),
    "make-tiny-force-file": (["make-tiny", "--force", "{w}/a-file"], "is a file", {}),
    "quantize-into-file": (["quantize", "{w}/tiny", "{w}/a-file"], "is a file", {}),
    "quantize-into-symlink": (["quantize", "{w}/tiny", "{w}/link-to-dir"], "symbolic link", {}),
    "quantize-into-dangling-symlink": (["quantize", "{w}/tiny", "{w}/dangling-link"], "symbolic link", {}),
    "quantize-into-non-empty-dir": (["quantize", "{w}/tiny", "{w}/full-dir"], "not empty", {}),
    "quantize-int3": (["quantize", "{w}/tiny", "{w}/new-q", "--dtype", "int3"], "int8 or int4", {}),
    "quantize-quantized": (["quantize", "{w}/q8", "{w}/new-q"], "already quantized", {}),
    "probe-existing-file": (["probe", "--out", "{w}/mine.yaml"], "--force", {}),
    "probe-into-dir": (["probe", "--out", "{w}/full-dir"], "is a directory", {}),
    "probe-under-a-file": (["probe", "--out", "{w}/a-file/p.yaml"], "not a directory", {}),
    "probe-missing-dir": (["probe", "--out", "{w}/missing/p.yaml"], "does not exist", {}),
    # profiles and places
    "profile-not-utf8": (["plan", "--profile", "{w}/latin1.yaml"], "UTF-8", {}),
    "profile-is-fifo": (["plan", "--profile", "{w}/fifo"], "not a regular file", {}),
    "profile-is-dir": (["plan", "--profile", "{w}/full-dir"], "not a regular file", {}),
    "override-matches-nothing": (["plan", "--model", "{w}/tiny", "--profile", "{w}/bad-override.yaml"],
                                 "matches no weight group", {}),
    "home-var-is-file": (GEN, "HETERO_QWEN_HOME", {"HETERO_QWEN_HOME": "{w}/a-file"}),
    "xdg-cache-is-file": (GEN, "XDG_CACHE_HOME", {"HETERO_QWEN_HOME": None, "XDG_CACHE_HOME": "{w}/a-file"}),
    "home-is-file": (GEN, "HOME", {"HETERO_QWEN_HOME": None, "XDG_CACHE_HOME": None, "HOME": "{w}/a-file"}),
    "prompt-past-model-max": (["generate", "--model", "{w}/tiny", "--profile", "{w}/huge-context.yaml",
                               "--prompt-ids", ",".join(["1"] * 8193)], "max_position_embeddings 8192", {}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_touches_nothing(case, cli, world):
    argv, needle, env = BAD_INPUTS[case]
    before = snapshot(world)
    code, out, err = cli(argv, **env)
    assert_one_error(code, out, err, needle)
    assert snapshot(world) == before


def test_make_tiny_force_replaces_only_a_directory(cli, world, tmp_path):
    target = world / "scratch-dir"
    target.mkdir()
    (target / "old.txt").write_text("old")
    code, out, err = cli(["make-tiny", "--force", str(target)])
    assert code == 0, err
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "generation_config.json",
                                                         "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in world.iterdir() if p.name.startswith(".")]  # no temporaries beside it
    shutil.rmtree(target)


def test_probe_force_replaces_a_profile(cli, world, monkeypatch):
    import hetero_qwen.probe as probe
    monkeypatch.setattr(probe, "measure", lambda: FAKE_MEASURE)
    target = world / "replace-me.yaml"
    target.write_text("# old\n")
    code, out, err = cli(["probe", "--out", str(target), "--force"])
    assert code == 0 and "wrote" in err
    assert target.read_text().startswith("# Written by `hetero-qwen probe`")
    target.unlink()


FAKE_MEASURE = {"threads": 2, "ram_available": 8 * 2**30, "bw_cpu": 20e9, "cpu_flops": 1e11}


# ---- rules that are notes, not errors ----------------------------------------------------------------
def test_plan_caps_context_at_the_model_positions(cli):
    code, out, err = cli(["plan", "--profile", PROFILE_27B, "--context", "900000", "--json"])
    assert code == 0, err
    assert json.loads(out)["context"] == 262144
    assert "capped to 262144" in err and not error_lines(err)


def test_threads_are_clamped_to_usable_cpus(cli, world):
    before = snapshot(world)
    code, out, err = cli(["generate", "--model", "{w}/tiny", "--profile", "{w}/threads.yaml", "--prompt-ids", "1",
                          "-n", "1"])
    assert code == 0, err
    cpus = len(os.sched_getaffinity(0))
    assert f"cpu.threads 10000 is more than the {cpus} CPUs" in err
    assert snapshot(world) == before


def test_generate_json_at_the_context_limit_keeps_the_tokens(cli, world):
    code, out, err = cli(["generate", "--model", "{w}/tiny", "--profile", "{w}/ctx16.yaml", "--prompt-ids", "1,2",
                          "-n", "50", "--json"])
    assert code == 0, err
    d = json.loads(out)
    assert d["stop_reason"] == "context" and len(d["ids"]) == 16 - 2 + 1  # the last token never needs a slot
    assert "/reset" not in err and "context limit of 16" in err and not error_lines(err)


def test_generate_json_stop_reasons(cli, world):
    code, out, err = cli(["generate", "--model", "{w}/tiny", "--prompt-ids", "1,2", "-n", "3", "--json"])
    d = json.loads(out)
    assert code == 0 and d["stop_reason"] in ("max_tokens", "eos")
    assert d["stop_reason"] == ("eos" if len(d["ids"]) < 3 else "max_tokens")


def test_chat_save_never_overwrites_without_bang(cli, world, tmp_path, monkeypatch):
    """`/save FILE` refuses an existing file; `/save! FILE` replaces it (chat through a pipe)."""
    target = tmp_path / "chat.json"
    shutil.copy(world / "chat.json", target)
    lines = ["hello", f"/save {target}", f"/save {tmp_path / 'new.json'}", f"/save! {tmp_path / 'new.json'}"]
    code, out, err = cli(["chat", "--model", str(world / "tiny"), "--no-think", "-n", "2", "--seed", "1"],
                         stdin="\n".join(lines) + "\n")
    assert code == 0, err
    assert "Traceback" not in out + err
    assert target.read_text() == (world / "chat.json").read_text()
    assert len(error_lines(err)) == 1 and "/save!" in error_lines(err)[0]
    assert err.count("saved 2 messages") == 2
    assert len(json.loads((tmp_path / "new.json").read_text())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json", "new.json"]  # no temporaries


def test_interrupted_generate_in_process_exits_130(cli, world, monkeypatch):
    """Plain-text generate, Ctrl-C after the first token: what was written stays, one line, 130."""
    before = snapshot(world)
    code, out, err = cli(["generate", "--model", "{w}/tiny", "--prompt-ids", "1,2", "-n", "20"],
                         HETERO_QWEN_SIGNAL_AT="generate-token:INT")
    assert code == 130, err
    assert err.splitlines()[-1] == "interrupted" and not error_lines(err)
    assert len(out.strip()) > 0 and "Traceback" not in out + err
    assert snapshot(world) == before


# ---- subprocesses: the real entry point, FIFOs, signals ----------------------------------------------
def _subprocess(args, world, input="", **env):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "HETERO_QWEN_HOME": str(world / "home"), "TRANSFORMERS_VERBOSITY": "error", **env}
    # the timeout only guards the suite against a hang (the FIFO case); nothing asserts on time
    return subprocess.run([sys.executable, "-m", "hetero_qwen", *args], input=input, capture_output=True,
                          text=True, env=full_env, cwd=str(world), timeout=300)


def test_fifo_as_model_does_not_hang(world):
    """Through the console entry point (`python -m hetero_qwen`): a FIFO is refused, never opened."""
    before = snapshot(world)
    r = _subprocess(["generate", "--model", str(world / "fifo"), "--prompt-ids", "1"], world)
    assert_one_error(r.returncode, r.stdout, r.stderr, "not a directory")
    assert snapshot(world) == before


@pytest.mark.parametrize("sig,code,line", [("INT", 130, "interrupted"), ("TERM", 143, "terminated")])
def test_interrupted_quantize_leaves_nothing(world, tmp_path, sig, code, line):
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    r = _subprocess(["quantize", str(world / "tiny"), str(out_parent / "q")], world,
                    HETERO_QWEN_SIGNAL_AT=f"quantize-tensor:{sig}")
    assert r.returncode == code, r.stderr
    assert r.stderr.splitlines()[-1] == line and not error_lines(r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert list(out_parent.iterdir()) == []  # no destination, no hidden temporary


def test_interrupted_generate_json_exits_130(world):
    before = snapshot(world)
    r = _subprocess(["generate", "--model", str(world / "tiny"), "--prompt-ids", "1,2", "-n", "20", "--json"],
                    world, HETERO_QWEN_SIGNAL_AT="generate-token:INT")
    assert r.returncode == 130, r.stderr
    assert r.stderr.splitlines()[-1] == "interrupted" and not error_lines(r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["stop_reason"] == "interrupted" and len(d["ids"]) == 1  # the token before the signal
    assert snapshot(world) == before
