"""Directory names made from user input (scenario, experiment and arm names), safe by construction.

A name becomes a *slug*: ASCII letters, digits, ``_``, ``-`` and inner ``.`` only, never empty, never
``.``/``..``, at most :data:`MAX_SLUG` characters. So ``../../etc`` becomes ``etc``, ``a/b`` becomes
``a_b``, and a directory made as ``base / slug(name)`` is always a direct child of ``base``.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

MAX_SLUG = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def slug(name: str, fallback: str = "run") -> str:
    """The directory-safe form of ``name`` (see the module docstring)."""
    ascii_ = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    s = _UNSAFE.sub("_", ascii_)
    s = re.sub(r"\.{2,}", "_", s)  # no '..' anywhere, so no part of it can climb
    s = s.strip("._-")[:MAX_SLUG].strip("._-")
    return s or fallback


def child_dir(base: str | Path, name: str) -> Path:
    """``base / name`` where ``name`` must already be one safe path component (e.g. ``slug(...)`` + a stamp)."""
    if not _COMPONENT.match(name) or ".." in name:
        raise ValueError(f"not a safe directory name: {name!r}")
    return Path(base) / name
