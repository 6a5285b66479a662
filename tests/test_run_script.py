"""`./run`'s set-up on a copy of the repo's build files: one-line errors, resuming, the fast path.

The full install (torch, dependencies, C++ build) is what `.ci/run` itself exercises; here the
steps that can fail are made to fail cheaply, and the stamp is checked to skip all install work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("bash", "dirname", "cat", "sed", "date", "rm", "touch", "grep", "tee", "tr", "tail", "ls")


def mini_repo(tmp_path: Path) -> Path:
    """The files `./run` reads, without the package: enough for every step before pip succeeds."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("run", "pyproject.toml", "setup.py", "constraints.txt"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "csrc", root / "csrc")
    return root


def tool_dir(tmp_path: Path, with_python: bool) -> Path:
    """A PATH with the shell tools `./run` uses and, optionally, this Python; no compiler."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for t in TOOLS:
        (bin_dir / t).symlink_to(shutil.which(t))
    if with_python:
        (bin_dir / "python3").symlink_to(sys.executable)
    return bin_dir


def run(root: Path, bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": str(bin_dir), "HOME": str(root), "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([str(root / "run"), *args], capture_output=True, text=True,
                          env={**base, **env}, timeout=600)


def stamp_key(root: Path, cxx: bool) -> str:
    """The key `./run` writes after a finished set-up (same inputs, same order)."""
    h = hashlib.sha256(f"root={root.resolve()} cxx={'yes' if cxx else ''}".encode())
    for name in ("pyproject.toml", "setup.py", "constraints.txt"):
        h.update((root / name).read_bytes())
    for p in sorted((root / "csrc").iterdir()):
        h.update(p.read_bytes())
    return h.hexdigest()


def finished_setup(tmp_path: Path, cxx: bool) -> tuple[Path, Path]:
    """A mini repo whose .venv is this Python (no pip) with a matching stamp; PATH has a `c++`."""
    root = mini_repo(tmp_path)
    bin_dir = tool_dir(tmp_path, with_python=True)
    if cxx:
        (bin_dir / "c++").write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / "c++").chmod(0o755)
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && {{ echo "pip was called" >&2; exit 1; }}\n'
        f'exec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    (root / ".venv" / ".hetero-qwen-venv-ok").touch()
    (root / ".venv" / ".hetero-qwen-setup").write_text(stamp_key(root, cxx=cxx) + "\n")
    return root, bin_dir


def test_no_python_is_one_line(tmp_path):
    root = mini_repo(tmp_path)
    r = run(root, tool_dir(tmp_path, with_python=False), "chat")
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: step 'python' failed: no Python >= 3.10 found (tried $PYTHON, python3, "
                      "python3.13 ... python3.10, python); install Python 3.10 or newer, or set "
                      "PYTHON=/path/to/python3.X"]
    assert not (root / ".venv").exists()


def test_never_removes_a_directory_that_is_not_a_virtualenv(tmp_path):
    root = mini_repo(tmp_path)
    not_a_venv = tmp_path / "mine"
    not_a_venv.mkdir()
    (not_a_venv / "notes.txt").write_text("keep me")
    r = run(root, tool_dir(tmp_path, with_python=True), "chat", HQ_VENV=str(not_a_venv))
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"error: step 'environment' failed: {not_a_venv} exists and is "
                                         "not a virtualenv; move it away or set HQ_VENV to another directory")
    assert (not_a_venv / "notes.txt").read_text() == "keep me"


def test_unreachable_index_is_one_line_and_the_next_run_resumes(tmp_path):
    root = mini_repo(tmp_path)
    bin_dir = tool_dir(tmp_path, with_python=True)
    offline = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": str(tmp_path)}
    first = run(root, bin_dir, "chat", **offline)
    assert first.returncode == 2, first.stderr
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: step 'torch' failed: cannot reach the package index"), first.stderr
    assert "[2/5] environment: creating" in first.stderr
    assert (root / ".venv" / ".hetero-qwen-venv-ok").exists()
    assert not (root / ".venv" / ".hetero-qwen-setup").exists()  # no stamp: the set-up is not done

    second = run(root, bin_dir, "chat", **offline)
    assert second.returncode == 2
    assert "[2/5] environment: " + str(root / ".venv") + " (exists)" in second.stderr
    assert "creating" not in second.stderr


@pytest.mark.parametrize("changed", [None, "csrc/hq_api.h"])
def test_stamp_skips_all_install_work_until_a_source_changes(tmp_path, changed):
    root, bin_dir = finished_setup(tmp_path, cxx=False)
    if changed:
        with open(root / changed, "a") as f:
            f.write("// changed\n")
    r = run(root, bin_dir, "info", "--json", PYTHONPATH=str(REPO),
            PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS=str(tmp_path))
    if changed is None:
        assert r.returncode == 0, r.stderr
        assert r.stderr == "" and '"backend"' in r.stdout  # straight to the command
    else:
        # The set-up runs again and resumes: the venv and torch are kept, pip reinstalls the project.
        assert "[1/5] python" in r.stderr and "(exists)" in r.stderr, r.stderr
        assert "[3/5] torch: keeping the installed torch" in r.stderr
        assert "pip install -c constraints.txt -e .[test]" in r.stderr
        assert r.returncode == 2 and "pip was called" in r.stderr


@pytest.mark.parametrize("forced", ["numba", None])
def test_tests_require_the_cpp_backend_where_a_compiler_is_present(tmp_path, forced):
    from hetero_qwen.kernels import cpp

    root, bin_dir = finished_setup(tmp_path, cxx=True)
    env = {"PYTHONPATH": str(REPO)}
    if forced:
        env["HETERO_QWEN_KERNELS"] = forced
    r = run(root, bin_dir, "test", "--version", **env)  # pytest --version: runs no tests
    if forced is None and cpp.available():
        assert r.returncode == 0, r.stderr
        assert f"kernels: C++ ({cpp.isa()} copy)" in r.stderr and "pytest" in r.stdout + r.stderr
    else:
        assert r.returncode == 2
        assert r.stderr.splitlines()[-1].startswith(
            f"error: step 'C++ kernels' failed: {bin_dir / 'c++'} is installed but the tests would run "
            f"on the numba kernels"), r.stderr
    assert "pip was called" not in r.stderr and "[1/5]" not in r.stderr


def test_opting_out_of_cpp_is_a_runtime_choice_not_a_reinstall(tmp_path):
    root, bin_dir = finished_setup(tmp_path, cxx=True)
    r = run(root, bin_dir, "test", "--version", PYTHONPATH=str(REPO), HETERO_QWEN_NO_CPP="1")
    assert r.returncode == 0, r.stderr
    assert "[1/5]" not in r.stderr and "kernels: C++" not in r.stderr and "error" not in r.stderr
