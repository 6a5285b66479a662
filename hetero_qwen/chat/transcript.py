"""Saving and loading a conversation as OpenAI-style messages JSON.

The file is a JSON array of `{"role", "content"}` objects (system first when there is one);
assistant messages carry `reasoning_content` when the reply had thinking. Loading also accepts an
object with a "messages" array (an OpenAI request body). Saving writes a temporary file beside the
target and renames it into place, so an interrupted save never leaves half a file; an existing
file is only replaced when asked (`/save! FILE`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..safe_write import atomic_write_text

ROLES = ("system", "user", "assistant", "tool")


def save_messages(path: str | os.PathLike, messages: list[dict], overwrite: bool = False) -> Path:
    """Write `messages` to a new file (an existing one only with `overwrite`: the chat's /save!)."""
    text = json.dumps(messages, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text, force=overwrite, force_hint="/save! to replace it")


def load_messages(path: str | os.PathLike) -> list[dict]:
    path = Path(path).expanduser()
    if path.exists() and not path.is_file():
        raise InputError(f"{path} is not a regular file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(raw, dict) and "messages" in raw:
        raw = raw["messages"]
    if not isinstance(raw, list):
        raise InputError(f"{path}: expected a JSON array of messages")
    return [_checked(m, i, path) for i, m in enumerate(raw)]


def _checked(message, index: int, path: Path) -> dict:
    where = f"{path}: message {index + 1}"
    if not isinstance(message, dict):
        raise InputError(f"{where} is not an object")
    role = message.get("role")
    if role not in ROLES:
        raise InputError(f"{where} has role {role!r}; expected one of {', '.join(ROLES)}")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise InputError(f"{where}: content must be a string or a list of parts")
    if role == "system" and index != 0:
        raise InputError(f"{where}: a system message may only come first")
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise InputError(f"{where}: reasoning_content must be a string")
    return dict(message)
