"""A storage target on any S3-compatible endpoint: s3://bucket/prefix."""

from __future__ import annotations

import datetime
import io
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlparse

from backupkit.errors import ObjectNotFound, StorageError, UsageError
from backupkit.storage.base import ObjectInfo, ObjectStore
from backupkit.util.memory import bound_heap
from backupkit.util.redact import redact_text, redact_url
from backupkit.util.streams import Chunks, iter_chunks

log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART = 5 * MIB
MAX_PARTS = 10_000


@dataclass
class S3Options:
    """How to reach an S3-compatible endpoint; credentials come from the standard AWS chain."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"  # path | virtual | auto
    profile: str | None = None
    access_key_env: str | None = None  # names of environment variables, never the secrets
    secret_key_env: str | None = None
    storage_class: str | None = None
    sse: str | None = None  # AES256 | aws:kms
    sse_kms_key_id: str | None = None
    part_size: int = 5 * MIB
    concurrency: int = 4
    max_attempts: int = 4
    connect_timeout: float = 3.0
    read_timeout: float = 60.0


_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_RETRYABLE_STREAM_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)


def _timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser, with the ISO 8601 form S3 lists (2026-12-01T08:40:54.000Z)
    read by datetime.fromisoformat; anything else (RFC 1123 headers, epochs) goes to botocore's."""
    if isinstance(value, str) and value.endswith("Z") and "T" in value:
        try:
            return datetime.datetime.fromisoformat(value[:-1]).replace(tzinfo=datetime.UTC)
        except ValueError:
            pass
    from botocore.utils import parse_timestamp  # lazy: start-up time (botocore)
    return parse_timestamp(value)


def _botocore_stream_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import (  # lazy: start-up time (botocore, urllib3)
        ConnectionClosedError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import ProtocolError  # lazy: start-up time

    return (*_RETRYABLE_STREAM_ERRORS, ConnectionClosedError, ReadTimeoutError,
            ResponseStreamingError, ProtocolError)


def _parts(chunks: Iterator[bytes], base: int) -> Iterator[bytes]:
    """Regroup a stream of chunks into upload parts (sizes from part_size_for), one copy each."""
    number = 1
    size = part_size_for(number, base)
    held: list[bytes] = []
    have = 0
    for block in chunks:
        while block:
            take = block[: size - have] if have + len(block) > size else block
            block = block[len(take):]
            held.append(take)
            have += len(take)
            if have == size:
                yield b"".join(held)
                held, have = [], 0
                number += 1
                size = part_size_for(number, base)
    if held or number == 1:
        yield b"".join(held)


def part_size_for(part_number: int, base: int) -> int:
    """Part size for the n-th part: grows so 10,000 parts reach well past 500 GB."""
    return base << min((part_number - 1) // 2000, 4)


class S3Store(ObjectStore):
    """Objects under s3://bucket/prefix, through boto3 with retries and streaming."""

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        import boto3  # lazy: boto3 takes ~250 ms to import, and most commands never open S3
        from botocore.config import Config  # lazy: as boto3

        bound_heap()
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options or S3Options()
        o = self.options
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        session_kw: dict[str, Any] = {}
        if o.profile:
            session_kw["profile_name"] = o.profile
        if o.access_key_env or o.secret_key_env:
            ak = os.environ.get(o.access_key_env or "")
            sk = os.environ.get(o.secret_key_env or "")
            if not ak or not sk:
                raise StorageError(
                    f"credentials for {self.url} not set",
                    f"export {o.access_key_env} and {o.secret_key_env}")
            session_kw["aws_access_key_id"] = ak
            session_kw["aws_secret_access_key"] = sk
        try:
            session = boto3.session.Session(**session_kw)
        except Exception as exc:  # profile not found and the like
            raise StorageError(f"cannot set up S3 session for {self.url}: {exc}") from exc
        cfg = Config(
            region_name=o.region,
            retries={"max_attempts": o.max_attempts, "mode": "standard"},
            connect_timeout=o.connect_timeout,
            read_timeout=o.read_timeout,
            s3={"addressing_style": o.addressing_style},
            max_pool_connections=max(10, o.concurrency * 2),
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # every listed key's LastModified went through dateutil: 0.19 ms each, a third of the CPU
        # of a LIST page of 1000 keys (per session: other boto3 users keep botocore's default)
        try:
            session._session.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_timestamp)
        except (AttributeError, ValueError) as exc:  # another botocore: its own parser, slower
            log.debug("botocore's timestamp parser kept: %s", exc)
        try:
            self.client = session.client("s3", endpoint_url=o.endpoint_url, config=cfg,
                                         region_name=o.region or "us-east-1")
        except ValueError as exc:  # an endpoint botocore cannot use
            raise UsageError(f"bad S3 endpoint for {self.describe()}: {redact_text(str(exc))}",
                               "use http(s)://host:port") from None
        self._stream_errors = _botocore_stream_errors()
        self._probed = False
        self._unreachable: tuple[StorageError, float] | None = None

    def describe(self) -> str:
        ep = f" at {redact_url(self.options.endpoint_url)}" if self.options.endpoint_url else ""
        return f"{self.url}{ep}"

    # -- helpers -----------------------------------------------------------
    def _k(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self.prefix + key

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.options.storage_class:
            extra["StorageClass"] = self.options.storage_class
        if self.options.sse:
            extra["ServerSideEncryption"] = self.options.sse
            if self.options.sse_kms_key_id:
                extra["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return extra

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> StorageError:
        from botocore.exceptions import (  # lazy: start-up time (botocore)
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        what = f"{action} {key!r}" if key else action
        where = self.describe()
        if isinstance(exc, EndpointConnectionError):
            return self._remember_unreachable(StorageError(
                f"cannot reach S3 endpoint for {where}", "check endpoint_url and that the server is up"))
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(f"no S3 credentials for {where}",
                                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {where}",
                                    "create it or fix the storage URL")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                        "ExpiredToken", "AuthorizationHeaderMalformed"):
                return StorageError(f"S3 credentials rejected by {where} ({code})",
                                    "check the access key and secret")
            if code in ("AccessDenied", "403") or status == 403:
                return StorageError(f"access denied: {what} on {where}",
                                    "check the credentials and the bucket policy")
            if status == 404 and action == "check":
                return StorageError(f"bucket {self.bucket!r} does not exist at {where}",
                                    "create it or fix the storage URL")
            return StorageError(f"S3 error {code or status} on {what} at {where}")
        if isinstance(exc, self._stream_errors):
            return StorageError(f"connection to {where} lost during {what}",
                                "the storage is unreachable; retry later")
        return StorageError(f"S3 failure on {what} at {where}: {exc}")

    #: After an endpoint was found unreachable, calls fail at once for this long (botocore would
    #: retry each for ~12 s): a command that makes several calls reports in seconds, not minutes.
    UNREACHABLE_MEMORY = 5.0

    def _reachable(self) -> None:
        """Fail fast when nothing listens at an explicit endpoint: one TCP connect (three tries
        over ~1 s) before the first call, instead of botocore's retries with back-off. Not done
        through a proxy (the endpoint may be reachable only through it)."""
        now = time.monotonic()
        if self._unreachable is not None and now < self._unreachable[1]:
            raise self._unreachable[0]
        ep = self.options.endpoint_url
        if self._probed or not ep or any(os.environ.get(v) for v in _PROXY_VARS):
            return
        u = urlparse(ep)
        host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
        last: OSError | None = None
        for attempt in range(3):
            try:
                socket.create_connection((host, port), timeout=self.options.connect_timeout).close()
                self._probed = True
                return
            except socket.gaierror as exc:  # the name does not resolve: no use in trying again now
                last = exc
                break
            except OSError as exc:
                last = exc
                if attempt < 2:
                    time.sleep(0.5)
        raise self._remember_unreachable(StorageError(
            f"cannot reach S3 endpoint for {self.describe()}: {getattr(last, 'strerror', None) or last}",
            "check endpoint_url and that the server is up"))

    def _remember_unreachable(self, err: StorageError) -> StorageError:
        self._unreachable = (err, time.monotonic() + self.UNREACHABLE_MEMORY)
        return err

    def _call(self, fn, action: str, key: str | None = None, **kw):
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: start-up time (botocore)

        self._reachable()
        try:
            return fn(**kw)
        except (ClientError, BotoCoreError, *self._stream_errors) as exc:
            raise self._error(exc, action, key) from exc

    @staticmethod
    def _code(exc: BaseException) -> str:
        resp = getattr(exc, "response", None) or {}
        return str(resp.get("Error", {}).get("Code", ""))

    # -- interface ---------------------------------------------------------
    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        full = self._k(key)
        parts = _parts(iter_chunks(data), self.options.part_size)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            resp = self._call(self.client.put_object, "upload", key, Bucket=self.bucket,
                              Key=full, Body=first, **self._extra())
            return ObjectInfo(key, len(first), resp.get("ETag", ""))
        return self._multipart(key, full, itertools.chain((first, second), parts))

    def _multipart(self, key: str, full: str, parts_iter: Iterator[bytes]) -> ObjectInfo:
        resp = self._call(self.client.create_multipart_upload, "start upload of", key,
                          Bucket=self.bucket, Key=full, **self._extra())
        upload_id = resp["UploadId"]
        etags: dict[int, str] = {}
        total = 0
        pending: set[Future] = set()
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency,
                                  thread_name_prefix="s3-part")

        def send(number: int, body: bytes) -> tuple[int, str]:
            r = self._call(self.client.upload_part, "upload part of", key, Bucket=self.bucket,
                           Key=full, UploadId=upload_id, PartNumber=number, Body=body)
            return number, r["ETag"]

        def collect(done: Iterable[Future]) -> None:
            for f in done:
                pending.discard(f)
                n, etag = f.result()
                etags[n] = etag

        try:
            for number, body in enumerate(parts_iter, start=1):
                if number > MAX_PARTS:
                    raise StorageError(f"object {key!r} is too large for one S3 upload")
                # Bounded memory: at most `concurrency` parts in flight plus the one being read.
                while len(pending) >= self.options.concurrency:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
                total += len(body)
                pending.add(pool.submit(send, number, body))
                del body
            collect(list(pending))
            done_resp = self._call(
                self.client.complete_multipart_upload, "complete upload of", key,
                Bucket=self.bucket, Key=full, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
            )
            return ObjectInfo(key, total, done_resp.get("ETag", ""))
        except BaseException:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # the upload stays invisible either way
                log.warning("could not abort multipart upload of %s", key)
            raise
        finally:
            pool.shutdown(wait=True)

    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_S3Reader(self, key), buffer_size=1 * MIB)  # type: ignore[return-value]

    def _get(self, key: str, start: int = 0, etag: str | None = None):
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if start:
            kw["Range"] = f"bytes={start}-"
        if etag:
            kw["IfMatch"] = etag
        from botocore.exceptions import ClientError  # lazy: start-up time (botocore)

        try:
            return self._call(self.client.get_object, "download", key, **kw)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and self._code(cause) in ("NoSuchKey", "404"):
                raise ObjectNotFound(key, self.describe()) from None
            raise

    def read_small(self, key: str) -> tuple[bytes, str]:
        resp = self._get(key)
        return resp["Body"].read(), resp.get("ETag", "")

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError  # lazy: start-up time (botocore)

        self._reachable()
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 and self._code(exc) != "NoSuchBucket":
                return None
            raise self._error(exc, "stat", key) from exc
        except Exception as exc:
            raise self._error(exc, "stat", key) from exc
        return ObjectInfo(key, r["ContentLength"], r.get("ETag", ""),
                          r["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(prefix, None)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        """One LIST request from after on (StartAfter), not a walk over every earlier key."""
        return self._list(prefix, after)

    def first_after(self, prefix: str, after: str) -> ObjectInfo | None:
        """One LIST request for one key (MaxKeys=1)."""
        extra = {"StartAfter": self.prefix + after} if after else {}
        r = self._call(self.client.list_objects_v2, "list", prefix or "/", Bucket=self.bucket,
                       Prefix=self.prefix + prefix, MaxKeys=1, **extra)
        for obj in r.get("Contents", [])[:1]:
            return ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"], obj.get("ETag", ""),
                              obj["LastModified"].timestamp())
        return None

    def folders(self, prefix: str) -> list[str]:
        """One LIST request per 1000 folders (Delimiter "/": S3 gives each folder once)."""
        self._reachable()
        paginator = self.client.get_paginator("list_objects_v2")
        full = self.prefix + prefix
        try:
            return [p["Prefix"][len(full):-1]
                    for page in paginator.paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
                    for p in page.get("CommonPrefixes", [])]
        except Exception as exc:
            raise self._error(exc, "list", prefix or "/") from exc

    def _list(self, prefix: str, after: str | None) -> Iterator[ObjectInfo]:
        self._reachable()
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"StartAfter": self.prefix + after} if after is not None else {}
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **extra):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"],
                                     obj.get("ETag", ""), obj["LastModified"].timestamp())
        except Exception as exc:
            raise self._error(exc, "list", prefix or "/") from exc

    def delete(self, keys: Iterable[str]) -> None:
        batch: list[dict[str, str]] = []
        for key in keys:
            batch.append({"Key": self._k(key)})
            if len(batch) == 1000:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        r = self._call(self.client.delete_objects, "delete", None, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})
        errors = r.get("Errors") or []
        if errors:
            e = errors[0]
            raise StorageError(f"cannot delete {e.get('Key')!r}: {e.get('Code')} {e.get('Message')}")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError  # lazy: start-up time (botocore)

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                   IfNoneMatch="*", **self._extra())
            return True
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise self._error(exc, "create", key) from exc
        except Exception as exc:
            raise self._error(exc, "create", key) from exc

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        from botocore.exceptions import ClientError  # lazy: start-up time (botocore)

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                   IfMatch=etag, **self._extra())
            return True
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey",
                                   "412", "409", "404"):
                return False
            raise self._error(exc, "replace", key) from exc
        except Exception as exc:
            raise self._error(exc, "replace", key) from exc

    def check_bucket(self) -> None:
        """Raise StorageError when the bucket is missing or the credentials are refused."""
        self._call(self.client.head_bucket, "check", None, Bucket=self.bucket)

    def check(self) -> None:
        self.check_bucket()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


class _S3Reader(io.RawIOBase):
    """One GET streamed; after a dropped connection it resumes with a ranged GET."""

    RESUMES = 5

    def __init__(self, store: S3Store, key: str) -> None:
        self.store = store
        self.key = key
        self.pos = 0
        resp = store._get(key)
        self.etag = resp.get("ETag")
        self.body = resp["Body"]
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        for attempt in range(self.RESUMES + 1):
            try:
                data = self.body.read(len(b))
                break
            except self.store._stream_errors as exc:
                if attempt == self.RESUMES:
                    raise self.store._error(exc, "download", self.key) from exc
                time.sleep(min(0.2 * 2**attempt, 5))
                self.body = self.store._get(self.key, self.pos, self.etag)["Body"]
        n = len(data)
        b[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self.body.close()
            except Exception:
                pass
        super().close()
