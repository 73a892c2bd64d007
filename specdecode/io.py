"""Writing result files safely: atomically, and checked before an hour of measuring.

`atomic_write_text` / `atomic_write_bytes` write to a temporary file in the destination's
directory, flush and fsync it, then `os.replace` it over the destination: a reader (or a
crash, Ctrl-C or a full disk) sees the old file or the new one, never a truncated JSON.
`check_writable_file` / `check_writable_dir` answer, before any model is loaded, whether
`--output PATH` or `--results-dir DIR` can be written, with one line naming the option.

`json_line` writes one JSON Lines record that stays one line for every reader.

What it does not: the per-sample JSON Lines stream of bench (appended and flushed line by
line; a crash loses at most the line being written), or choose file names (bench/runner.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable_dir", "check_writable_file", "json_line"]

# JSON leaves these raw inside strings (with ensure_ascii=False), but str.splitlines() and some
# editors break lines on them: a prompt holding one would split its record in two
_LINE_BREAKS_IN_JSON = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_line(obj: Any) -> str:
    """One JSON Lines record, newline-terminated, that every line splitter reads as one line."""
    return json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS_IN_JSON) + "\n"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (same-directory temp file + os.replace)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:  # mkstemp creates 0600; give the file the mode a plain open() would have
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        except OSError:
            pass
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically (same-directory temp file + os.replace)."""
    return atomic_write_bytes(path, text.encode(encoding))


def check_writable_dir(path: str | Path, option: str) -> str | None:
    """None when `path` is a directory a file can be created in (it is created if missing);
    otherwise one line naming `option`. Probes with a real temporary file: permission bits
    say nothing for root, a read-only mount or /proc."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        return f"{option}: {p} is a file, not a directory"
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        return f"{option}: cannot write in {p}: {e.strerror or e}"
    return None


def check_writable_file(path: str | Path, option: str) -> str | None:
    """None when a file can be written at `path`; otherwise one line naming `option`."""
    p = Path(path).expanduser()
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        return f"{option}: {p} is a directory; give a file name (e.g. {p / 'report.json'})"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{option}: {p} is not writable"
    return check_writable_dir(p.parent, option)
