"""Files written so that a crash or a concurrent writer never leaves half of one: a temporary
file beside the target, created with the permissions the process umask gives, then renamed."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Callable, IO


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write `path` atomically: ``write(f)`` fills a new file beside it, which then replaces
    `path` (a reader sees the old file or the new one, never a mix).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(p, lambda f: f.write("hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_orphans(path) -> int:
    """Delete the temporary files that writers of `path` killed mid-write left behind (those
    whose process is gone); returns how many."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    removed = 0
    if not path.parent.is_dir():
        return 0
    for f in path.parent.iterdir():
        m = pattern.match(f.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its writer is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        with contextlib.suppress(OSError):
            f.unlink()
            removed += 1
    return removed
