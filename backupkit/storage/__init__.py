"""Storage targets: open_store(url) gives an ObjectStore for file:// or s3:// URLs."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from backupkit.errors import UsageError
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.storage.local import LocalStore
from backupkit.storage.s3 import S3Options, S3Store

DEFAULT_URL = "file://./backupkit-repo"

__all__ = ["DEFAULT_URL", "LocalStore", "ObjectInfo", "ObjectStore", "S3Options", "S3Store",
           "open_store", "s3_options"]

_S3_QUERY = {"endpoint": "endpoint_url", "endpoint_url": "endpoint_url", "region": "region",
             "addressing": "addressing_style", "addressing_style": "addressing_style",
             "profile": "profile", "storage_class": "storage_class", "sse": "sse"}


def s3_options(settings: dict | None = None, query: dict[str, str] | None = None) -> S3Options:
    """S3 options from (lowest first) the environment, policy settings and URL query."""
    opts = S3Options()
    env = {
        "endpoint_url": os.environ.get("BACKUPKIT_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL"),
        "region": os.environ.get("BACKUPKIT_S3_REGION") or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION"),
        "addressing_style": os.environ.get("BACKUPKIT_S3_ADDRESSING"),
    }
    names = {f.name for f in fields(S3Options)}
    for source in (env, settings or {}, query or {}):
        for k, v in source.items():
            k = _S3_QUERY.get(k, k)
            if v in (None, ""):
                continue
            if k not in names:
                raise UsageError(f"unknown S3 option {k!r}",
                                 f"known options: {', '.join(sorted(names))}")
            setattr(opts, k, type(getattr(opts, k))(v) if getattr(opts, k) is not None
                    and not isinstance(getattr(opts, k), str) else v)
    if opts.addressing_style not in ("auto", "path", "virtual"):
        raise UsageError(f"bad S3 addressing style {opts.addressing_style!r}",
                         "use path, virtual or auto")
    return opts


def open_store(url: str | None = None, settings: dict | None = None, create: bool = True) -> ObjectStore:
    """Open a storage target from a URL: file:///path (default ./backupkit-repo) or s3://bucket/prefix."""
    url = (url or os.environ.get("BACKUPKIT_STORAGE") or DEFAULT_URL).strip()
    if "://" not in url:
        if url.startswith(("/", ".", "~")):
            return LocalStore(Path(url).expanduser(), create=create)
        raise UsageError(f"bad storage URL {url!r}",
                         "use file:///path/to/repo or s3://bucket/prefix")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = unquote((parsed.netloc or "") + parsed.path)
        if not path:
            raise UsageError(f"bad storage URL {url!r}", "use file:///absolute/path")
        return LocalStore(Path(path).expanduser(), create=create)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"bad storage URL {url!r}: no bucket", "use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        return S3Store(parsed.netloc, parsed.path.lstrip("/"), s3_options(settings, query))
    raise UsageError(f"bad storage URL {url!r}: unknown scheme {parsed.scheme!r}",
                     "use file:///path/to/repo or s3://bucket/prefix")
