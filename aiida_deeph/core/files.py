"""Writing files so that a reader never sees half of one: a temporary sibling, then an atomic rename."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, mode: int | None = None):
    """Yield a temporary path beside ``path`` (same folder, made if missing); on success it is renamed onto
    ``path`` (``mode``: its permissions; default the usual 0666 & ~umask), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path, payload, **dumps) -> Path:
    """Write ``payload`` as JSON (``json.dumps`` keyword arguments) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(payload, **dumps))
