"""Storage targets: open_store(url) gives an ObjectStore for file:// or s3:// URLs."""

from __future__ import annotations

import os
from dataclasses import fields
from urllib.parse import parse_qs, unquote, urlparse

from backupkit.errors import UsageError
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.storage.local import LocalStore
from backupkit.storage.s3 import S3Options, S3Store
from backupkit.util.paths import expand_user
from backupkit.util.redact import has_control, redact_url

DEFAULT_URL = "file://./backupkit-repo"

__all__ = ["DEFAULT_URL", "LocalStore", "ObjectInfo", "ObjectStore", "S3Options", "S3Store",
           "open_store", "parse_storage_url", "s3_options"]

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
            current = getattr(opts, k)
            try:
                setattr(opts, k, type(current)(v) if current is not None
                        and not isinstance(current, str) else v)
            except (TypeError, ValueError):
                kind = {"int": "a whole number", "float": "a number"}.get(type(current).__name__,
                                                                         type(current).__name__)
                raise UsageError(f"bad S3 option {k}={redact_url(str(v))!r}", f"expected {kind}") from None
    if opts.endpoint_url:
        check_endpoint(opts.endpoint_url)
    if opts.addressing_style not in ("auto", "path", "virtual"):
        raise UsageError(f"bad S3 addressing style {opts.addressing_style!r}",
                         "use path, virtual or auto")
    return opts


def check_endpoint(url: str) -> None:
    """An S3 endpoint must be http(s)://host[:port]; refused with its password hidden."""
    shown = redact_url(url)
    try:
        parsed = urlparse(url)
        _ = parsed.port  # a port that is not a number raises here
        host = parsed.hostname
    except ValueError as exc:
        raise UsageError(f"bad S3 endpoint {shown!r}: {exc}", "use http(s)://host:port") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise UsageError(f"bad S3 endpoint {shown!r}", "use http(s)://host:port")


_URL_HINT = "use file:///path/to/repo or s3://bucket/prefix"


def parse_storage_url(url: str) -> tuple[str, str, str, dict[str, str]]:
    """(scheme, location, prefix, query) of a storage URL, or UsageError with the password hidden.

    file:///abs/path (or a plain /, ./, ~ path) gives ("file", path, "", {}); s3://bucket/prefix
    gives ("s3", bucket, prefix, query). A relative file:// path (file://dir/x: "dir" reads as a
    host) and credentials in the URL are refused."""
    if not url.strip():
        raise UsageError("empty storage URL", _URL_HINT)
    shown = redact_url(url)  # every message shows this: never a password
    if has_control(url):
        raise UsageError(f"bad storage URL {shown!r}: it holds a control character", _URL_HINT)
    if "://" not in url:
        if url.startswith(("/", ".", "~")):
            return "file", url, "", {}
        raise UsageError(f"bad storage URL {shown!r}", _URL_HINT)
    try:
        parsed = urlparse(url)
        has_userinfo = parsed.username is not None or parsed.password is not None
    except ValueError as exc:  # an unclosed [
        raise UsageError(f"bad storage URL {shown!r}: {exc}", _URL_HINT) from None
    if has_userinfo:
        raise UsageError(f"bad storage URL {shown!r}: storage URLs hold no credentials",
                         "use the standard AWS credential chain (environment, profile, role)")
    if parsed.scheme == "file":
        host = "" if parsed.netloc == "localhost" else parsed.netloc
        path = unquote(host + parsed.path)
        if not path:
            raise UsageError(f"bad storage URL {shown!r}: no path", "use file:///absolute/path")
        if url != DEFAULT_URL and not path.startswith(("/", "~")):
            raise UsageError(f"bad storage URL {shown!r}: the path is relative "
                             f"(the host part {parsed.netloc!r} would be its first folder)",
                             "use file:///absolute/path (three slashes)")
        return "file", path, "", {}
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"bad storage URL {shown!r}: no bucket", "use s3://bucket/prefix")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if query.get("endpoint") or query.get("endpoint_url"):
            check_endpoint(query.get("endpoint") or query.get("endpoint_url") or "")
        return "s3", parsed.netloc, parsed.path.lstrip("/"), query
    raise UsageError(f"bad storage URL {shown!r}: unknown scheme {parsed.scheme!r}", _URL_HINT)


def open_store(url: str | None = None, settings: dict | None = None, create: bool = True) -> ObjectStore:
    """Open a storage target from a URL: file:///path (default ./backupkit-repo) or s3://bucket/prefix."""
    if url is not None and not url.strip():
        raise UsageError("empty storage URL", _URL_HINT)
    url = (url or os.environ.get("BACKUPKIT_STORAGE") or DEFAULT_URL).strip()
    scheme, where, prefix, query = parse_storage_url(url)
    if scheme == "file":
        return LocalStore(expand_user(where), create=create)
    return S3Store(where, prefix, s3_options(settings, query))
