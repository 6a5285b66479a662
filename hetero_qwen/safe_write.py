"""Writing outputs without losing anything: every writer (make-tiny, quantize, probe --out, chat
/save) goes through here.

Rules: a target that already holds something is refused unless the caller passes `force`; the
output is built under a temporary name beside the target (same file system, so the final rename is
atomic) and renamed into place only when complete; an error, Ctrl-C or SIGTERM removes the
temporary (SIGTERM is turned into an exception by `hetero_qwen.interrupts`, so cleanup runs).
Checks happen before any work: `check_dir_target` / `check_file_target` are cheap and are called
first by the commands, then again by the writers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError


def _describe(path: Path) -> str | None:
    """Why `path` cannot simply be created (None when it does not exist)."""
    if path.is_symlink():
        return "is a symbolic link"
    if not path.exists():
        return None
    if path.is_dir():
        return "is a directory"
    if path.is_file():
        return "is a file"
    return "is not a regular file or directory"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_parent(path: Path, create: bool = True) -> Path:
    """The parent directory of `path` exists (or, with `create`, can be made) and is writable."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is not a directory")
    if not create and not parent.exists():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    probe = parent
    while not probe.exists():  # the first existing ancestor must be a writable directory
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot write {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: {probe} is not writable")
    return parent


def check_dir_target(dst: str | os.PathLike, force: bool = False, what: str = "output directory",
                     force_hint: str | None = "--force") -> Path:
    """`dst` may become a directory: it does not exist, or is an empty real directory, or `force`
    is given and it is a directory (never a file or a symlink, even with force)."""
    dst = Path(dst)
    if str(dst) in ("", "."):
        dst = Path.cwd()
    why = _describe(dst)
    if why is not None and why != "is a directory":
        raise InputError(f"{dst} {why}; the {what} must be a new directory")
    if why == "is a directory":
        real = dst.resolve()
        if any(real == p or real in p.parents for p in (Path.cwd().resolve(), Path.home().resolve())):
            raise InputError(f"{dst} is the current or home directory or one above them; "
                             f"the {what} must be a new directory")
        if any(dst.iterdir()) and not force:
            raise InputError(f"{dst} exists and is not empty; choose a new directory"
                             + (f" (or pass {force_hint} to replace it)" if force_hint else ""))
    _check_parent(dst)
    return dst


def check_file_target(path: str | os.PathLike, force: bool = False, force_hint: str = "--force") -> Path:
    """`path` may become a file: it does not exist, or `force` is given and it is a regular file."""
    path = Path(path).expanduser()
    if str(path) == "":
        raise InputError("the output file name is empty")
    why = _describe(path)
    if why == "is a file" and not force:
        raise InputError(f"{path} exists; not overwriting it without {force_hint}")
    if why not in (None, "is a file"):
        raise InputError(f"{path} {why}; give a file name")
    _check_parent(path, create=False)
    return path


@contextmanager
def atomic_dir(dst: str | os.PathLike, force: bool = False, what: str = "output directory",
               force_hint: str | None = "--force") -> Iterator[Path]:
    """Yield a temporary directory beside `dst`; on success it replaces `dst` (an existing directory
    only with `force`, and only once the new one is complete); on any failure it is removed."""
    dst = check_dir_target(dst, force, what, force_hint)
    parent = dst.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 -> what a plain mkdir would give
    except OSError as e:
        raise InputError(f"cannot write {dst}: {e.strerror}") from None
    try:
        yield tmp
        _swap_dir_into_place(tmp, dst, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_dir_into_place(tmp: Path, dst: Path, force: bool) -> None:
    if not dst.exists() and not dst.is_symlink():
        os.replace(tmp, dst)
        return
    if not dst.is_dir() or dst.is_symlink():
        raise InputError(f"{dst} appeared while writing and is not a directory; nothing was replaced")
    if not any(dst.iterdir()):
        dst.rmdir()
        os.replace(tmp, dst)
        return
    if not force:
        raise InputError(f"{dst} was filled while writing; not replacing it (choose a new directory)")
    # --force over a non-empty directory: move the old one aside, put the new one in, then delete
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    old.rmdir()
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str, force: bool = False, force_hint: str = "--force",
                      validate=None) -> Path:
    """Write `text` to `path` through a temporary file beside it; `validate(tmp_path)` may reject
    the content before it replaces anything."""
    path = check_file_target(path, force, force_hint)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        if validate is not None:
            validate(tmp)
        if not force and path.exists():  # appeared while we wrote: still never overwrite
            raise InputError(f"{path} exists; not overwriting it without {force_hint}")
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path
