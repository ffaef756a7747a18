"""Paths given by the user: "~" and "~user" expanded, or a clear error (never RuntimeError)."""

from __future__ import annotations

from pathlib import Path


class PathError(ValueError):
    """A path that cannot be expanded (an unknown ~user, no home directory); the CLI exits 2."""


def expand_user(path: str | Path) -> Path:
    """Path(path).expanduser(), with PathError naming the path when it cannot be expanded."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # "Could not determine home directory" (an unknown ~user)
        raise PathError(f"cannot expand {str(path)!r}: {exc}") from None
