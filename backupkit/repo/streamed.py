"""A checksummed manifest (repo/catalog.py encode_manifest) holding one long list, encoded and
decoded entry by entry: a roll-up of 65,536 index entries parsed whole is about 300 MiB of dicts;
decoded here, each entry is made into its record as soon as it is read, so only the records and a
window of text are held at once. The manifest's own checksum (SHA-256 of its canonical JSON) is
computed along the way and checked before anything is returned: a damaged object yields nothing.
Encoded here, it is written in its canonical form (compact, keys sorted) with the checksum in its
place, one entry's text at a time."""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import zstandard

from backupkit.errors import IntegrityError

T = TypeVar("T")
PIECE = 1 << 20  # decompressed bytes decoded at a time
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_NUMBER = frozenset("0123456789.eE+-")


class NotCanonical(ValueError):
    """The manifest's keys are not in the order encode_manifest writes them: decode it whole."""


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pieces(data: bytes) -> Iterator[str]:
    text = codecs.getincrementaldecoder("utf-8")()
    with zstandard.ZstdDecompressor().stream_reader(data) as reader:
        while True:
            raw = reader.read(PIECE)
            if not raw:
                break
            yield text.decode(raw)
    yield text.decode(b"", final=True)


class _Text:
    """JSON text arriving in pieces: whitespace, single characters and whole values."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self.pieces, self.buf, self.pos = pieces, "", 0

    def more(self) -> bool:
        for piece in self.pieces:
            if piece:
                self.buf, self.pos = self.buf[self.pos:] + piece, 0
                return True
        return False

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos:self.pos + 1]

    def take(self, ch: str) -> None:
        if self.peek() != ch:
            raise ValueError(f"expected {ch!r} at {self.pos}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except ValueError:
                if self.more():
                    continue  # the value goes on in the next piece
                raise
            if type(value) in (int, float) and (end == len(self.buf) or self.buf[end] in _NUMBER) \
                    and self.more():
                continue  # a number cut by the piece's end ("1." read as 1): read on
            self.pos = end
            return value


def decode_list(key: str, data: bytes, field: str, entry: Callable[[dict[str, Any]], T | None],
                max_format: int) -> tuple[dict[str, Any], list[T]]:
    """The manifest in data (zstd) as (its other fields, entry(d) for each d of its list `field`,
    Nones left out). IntegrityError when it is damaged (not zstd, not JSON, checksum or format);
    NotCanonical when its keys are not sorted (the caller decodes it whole); what entry raises
    is raised as it is."""
    rest: dict[str, Any] = {}
    out = list(iter_list(key, data, field, entry, max_format, rest))
    return rest, out


def iter_list(key: str, data: bytes, field: str, entry: Callable[[dict[str, Any]], T | None],
              max_format: int, rest: dict[str, Any] | None = None) -> Iterator[T]:
    """decode_list's entries one at a time (rest, when given, gets the other fields), so that a
    caller passing them on (a roll-up made of chunks, repo/rollups.py) holds one at a time. The
    checks come at the end: the iterator raises IntegrityError (or NotCanonical) after the
    entries it yielded, so a caller must use nothing of them before it is exhausted."""
    try:
        yield from _decode(data, field, entry, max_format, {} if rest is None else rest)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"roll-up {key!r} is not valid zstd", "the stored copy is damaged") from exc
    except _BadSum:
        raise IntegrityError(f"checksum mismatch in manifest {key!r}", "the stored copy is damaged") from None
    except _BadFormat as exc:
        raise IntegrityError(f"manifest {key!r} has format {exc.args[0]!r}; this backupkit reads up to "
                             f"{max_format}", "upgrade backupkit") from None
    except NotCanonical:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"manifest {key!r} is not valid JSON", "the stored copy is damaged") from exc


class _BadSum(Exception):
    pass


class _BadFormat(Exception):
    pass


def _decode(data: bytes, field: str, entry: Callable[[dict[str, Any]], T | None], max_format: int,
            rest: dict[str, Any]) -> Iterator[T]:
    text = _Text(_pieces(data))
    digest = hashlib.sha256()
    got: Any = None
    last: str | None = None
    text.take("{")
    digest.update(b"{")
    sep = ""
    while text.peek() != "}":
        if last is not None:
            text.take(",")
        name = text.value()
        if not isinstance(name, str):
            raise ValueError("a key that is not a string")
        if last is not None and name <= last:
            raise NotCanonical(name)
        last = name
        text.take(":")
        if name == "checksum":
            got = text.value()
            continue
        digest.update(f"{sep}{_canon(name)}:".encode())
        sep = ","
        if name != field or text.peek() != "[":
            rest[name] = value = text.value()
            digest.update(_canon(value).encode())
            continue
        text.take("[")
        digest.update(b"[")
        n = 0
        while text.peek() != "]":
            if n:
                text.take(",")
            d = text.value()
            digest.update(f"{',' if n else ''}{_canon(d)}".encode())
            n += 1
            if not isinstance(d, dict):
                raise ValueError(f"an entry of {field} is not an object")
            made = entry(d)
            if made is not None:
                yield made
        text.take("]")
        digest.update(b"]")
    text.take("}")
    digest.update(b"}")
    if text.peek() != "":
        raise ValueError("data after the manifest")
    if got != "sha256:" + digest.hexdigest():
        raise _BadSum()
    fmt = rest.get("format")
    if not isinstance(fmt, int) or fmt > max_format:
        raise _BadFormat(fmt)


def _squeezed(text: bytearray) -> bytes:
    """text compressed (zstd level 1), copied out of zstandard's result: that one keeps the
    allocation of the worst case (about the size of text) whatever it holds."""
    return bytes(memoryview(zstandard.ZstdCompressor(level=1).compress(bytes(text))))


#: Encoded entries are held compressed, in blocks of about this many bytes of text, until the
#: checksum (which comes before them in the text) is known.
BLOCK = 1 << 20


def encode_list(body: dict[str, Any], field: str, entries: Iterable[dict[str, Any]]) -> bytes:
    """body with its list `field` made of entries, as a checksummed manifest compressed with zstd
    (what decode_manifest and decode_list read): its canonical JSON with the checksum in its
    sorted place, the frame holding its size as zstd's one-shot compress writes it. Each entry's
    text is made once and held compressed (zstd level 1, in blocks) until the checksum is known:
    never the whole text or every entry's dict (a roll-up of 65,536 entries encoded whole peaked
    at about 450 MiB; its entries' text alone is about 45 MiB)."""
    names = sorted({*body, field} - {"checksum"})
    blocks: list[bytes] = []
    pending = bytearray()
    total = 0

    def made() -> Iterator[bytes]:  # the list's text, entry by entry, kept as it goes
        nonlocal pending, total
        for i, entry in enumerate(entries):
            part = (b"," if i else b"") + _canon(entry).encode()
            total += len(part)
            pending += part
            if len(pending) >= BLOCK:
                blocks.append(_squeezed(pending))
                pending = bytearray()
            yield part
        if pending:
            blocks.append(_squeezed(pending))
            pending = bytearray()

    def kept() -> Iterator[bytes]:
        for block in blocks:
            yield zstandard.ZstdDecompressor().decompress(block)

    def text(checksum: str | None, items: Callable[[], Iterator[bytes]]) -> Iterator[bytes]:
        sep = "{"
        for name in sorted([*names, "checksum"]) if checksum else names:
            yield f"{sep}{_canon(name)}:".encode()
            sep = ","
            if name == "checksum":
                yield _canon(checksum).encode()
            elif name == field:
                yield b"["
                yield from items()
                yield b"]"
            else:
                yield _canon(body[name]).encode()
        yield b"}" if sep == "," else b"{}"

    digest = hashlib.sha256()
    for piece in text(None, made):
        digest.update(piece)
    checksum = "sha256:" + digest.hexdigest()
    size = total + sum(len(piece) for piece in text(checksum, lambda: iter(())))
    out = zstandard.ZstdCompressor(level=3).compressobj(size=size)
    blob = [out.compress(piece) for piece in text(checksum, kept)]
    blob.append(out.flush())
    return b"".join(blob)
