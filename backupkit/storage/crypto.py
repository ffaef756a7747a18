"""Client-side encryption at rest: AES-256-GCM in 1 MiB chunks, data keys wrapped by a key-encryption key.

Format of an encrypted object (every object of the repository except the keyring itself)::

    header  = b"BKENC1" | chunk_shift (1 byte) | 0 (1 byte) | data key id (8 bytes) | salt (16 bytes)
    chunk i = AES-256-GCM(object key, nonce = i as 11 bytes big-endian | final flag, aad = header | key name)

The object key is HKDF-SHA256(data key, salt), so nonces never repeat under one key. The chunk index and the
final flag are in the nonce and the object's name and header are authenticated data: reordered, truncated,
extended, renamed or flipped bytes all fail authentication, chunk by chunk, before any plaintext of the bad
chunk is released. Streams are bounded in memory (one chunk in, one chunk out).

The data keys (DEKs) come from a `DataKeys` source: the repository's keyring (repo/keyring.py), where each
is wrapped by one or more key-encryption keys (KEKs) that come from a 0600 file or an environment variable
and are never stored. Rotation adds a wrap under a new KEK (and may drop the old ones): no data is
re-encrypted. This module holds the primitives and the store wrapper only; it knows no repository key.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import io
import logging
import os
import secrets
import stat as stat_mod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backupkit.errors import ConfigError, IntegrityError
from backupkit.storage.base import Capabilities, FailoverReader, ObjectInfo, ObjectStore
from backupkit.util.paths import expand_user
from backupkit.util.streams import Chunks, iter_chunks, read_exact

log = logging.getLogger(__name__)

CIPHER = "AES-256-GCM"
MAGIC = b"BKENC1"
CHUNK_SHIFT = 20  # 1 MiB of plaintext per chunk
CHUNK_SIZE = 1 << CHUNK_SHIFT
TAG = 16
DEK_ID_LEN = 8
SALT_LEN = 16
HEADER_LEN = len(MAGIC) + 2 + DEK_ID_LEN + SALT_LEN  # 32
KEY_LEN = 32
_HKDF_INFO = b"backupkit object key v1"
WRAP_AAD = b"backupkit data key v1 "
_FP_LABEL = b"backupkit key fingerprint v1"


# -- sizes -------------------------------------------------------------------------
def stored_size(plain: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Bytes stored for a plaintext of this length (header, chunks, one tag per chunk)."""
    chunks = max(1, -(-plain // chunk_size))
    return HEADER_LEN + plain + chunks * TAG


def plain_size(stored: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Plaintext length of a well-formed encrypted object of this stored length (-1 if impossible)."""
    body = stored - HEADER_LEN
    if body < TAG:
        return -1
    chunks = -(-body // (chunk_size + TAG))
    return body - chunks * TAG


# -- key-encryption keys --------------------------------------------------------------
@dataclass(frozen=True)
class KeyEncryptionKey:
    """A key that wraps data keys; loaded from a file or the environment, never stored."""

    key: bytes
    key_id: str  # the label the policy gives it
    source: str  # "file /path" or "env NAME", for messages

    @property
    def fingerprint(self) -> str:
        """A public, stable identifier of the key material (an HMAC, so it reveals nothing)."""
        return hmac.new(self.key, _FP_LABEL, hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:  # never show the key
        return f"KeyEncryptionKey(key_id={self.key_id!r}, fingerprint={self.fingerprint!r})"


def parse_key_text(text: bytes, where: str) -> bytes:
    """32 key bytes from 64 hex digits, base64 of 32 bytes, or 32 raw bytes."""
    if len(text) == KEY_LEN and not _looks_textual(text):
        return bytes(text)
    s = text.strip().decode("ascii", errors="replace")
    if len(s) == 64:
        try:
            return bytes.fromhex(s)
        except ValueError:
            pass
    try:
        key = base64.b64decode(s, validate=True)
        if len(key) == KEY_LEN:
            return key
    except ValueError:
        pass
    raise ConfigError(f"{where} does not hold a 256-bit key",
                      "use 64 hex digits or base64 of 32 bytes; 'backupkit repo keygen FILE' makes one")


def _looks_textual(b: bytes) -> bool:
    return all(32 <= c < 127 or c in (9, 10, 13) for c in b)


def load_key_file(path: str | Path, key_id: str | None = None) -> KeyEncryptionKey:
    """A key from a file that only its owner may read (mode 0600 or stricter)."""
    p = expand_user(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"key file {p} not found", "check encryption.key_file in the policy") from None
    except OSError as exc:
        raise ConfigError(f"key file {p} cannot be read: {exc.strerror}") from None
    if st.st_mode & (stat_mod.S_IRWXG | stat_mod.S_IRWXO):
        raise ConfigError(f"key file {p} is readable by others (mode {stat_mod.S_IMODE(st.st_mode):04o})",
                          f"run: chmod 600 {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"key file {p} cannot be read: {exc.strerror}") from None
    key = parse_key_text(data, f"key file {p}")
    return KeyEncryptionKey(key, key_id or "", f"file {p}")


def load_key_env(name: str, key_id: str | None = None) -> KeyEncryptionKey:
    """A key from an environment variable (hex or base64)."""
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set", "export the repository key in it")
    key = parse_key_text(value.encode(), f"environment variable {name}")
    return KeyEncryptionKey(key, key_id or "", f"env {name}")


def new_key_text() -> str:
    """A fresh random 256-bit key as 64 hex digits."""
    return secrets.token_bytes(KEY_LEN).hex()


def write_key_file(path: str | Path) -> KeyEncryptionKey:
    """Create a new key file (mode 0600); never overwrites an existing file."""
    p = expand_user(path)
    text = new_key_text()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{p} already exists",
                          "choose a new file name; keys are never overwritten") from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {p}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return KeyEncryptionKey(bytes.fromhex(text), "", f"file {p}")


# -- streams ----------------------------------------------------------------------------
def _object_key(dek: bytes, salt: bytes) -> AESGCM:
    okm = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=_HKDF_INFO).derive(dek)
    return AESGCM(okm)


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def make_header(dek_id: str, salt: bytes | None = None, chunk_shift: int = CHUNK_SHIFT) -> bytes:
    return MAGIC + bytes([chunk_shift, 0]) + bytes.fromhex(dek_id) + (salt or secrets.token_bytes(SALT_LEN))


def encrypt_stream(chunks: Iterable[bytes], key: str, dek_id: str, dek: bytes,
                   chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Encrypt a stream for object `key`: the header, then one sealed chunk per chunk_size of plaintext."""
    shift = chunk_size.bit_length() - 1
    header = make_header(dek_id, chunk_shift=shift)
    aead = _object_key(dek, header[-SALT_LEN:])
    aad = header + key.encode()
    yield header
    buf = bytearray()
    index = 0
    for block in chunks:
        buf += block
        # Seal a chunk only once more data follows it: the last chunk carries the final flag.
        if len(buf) > chunk_size:
            with memoryview(buf) as view:
                start = 0
                while len(buf) - start > chunk_size:
                    with view[start:start + chunk_size] as part:
                        yield aead.encrypt(_nonce(index, False), part, aad)
                    start += chunk_size
                    index += 1
            del buf[:start]
    yield aead.encrypt(_nonce(index, True), bytes(buf), aad)


def parse_header(header: bytes, key: str) -> tuple[str, int]:
    """The data key id and chunk size of an encrypted object; IntegrityError if it is not one."""
    if len(header) < HEADER_LEN or not header.startswith(MAGIC):
        raise IntegrityError(f"object {key!r} is not encrypted by backupkit (bad header)",
                             "the stored copy is damaged or was written without encryption")
    shift = header[len(MAGIC)]
    if not 12 <= shift <= 26:
        raise IntegrityError(f"object {key!r} has a bad encryption header", "the stored copy is damaged")
    dek_id = header[len(MAGIC) + 2:len(MAGIC) + 2 + DEK_ID_LEN].hex()
    return dek_id, 1 << shift


class DecryptingReader(io.RawIOBase):
    """Plaintext of an encrypted object; each chunk is authenticated before any of it is returned.

    When the raw stream comes from a mirror (a FailoverReader), a chunk that fails
    authentication is read again from the next copy, provided that copy has the same header: no
    unauthenticated byte is ever returned, and nothing already returned is read twice.
    """

    def __init__(self, raw: BinaryIO, key: str, keyring_lookup) -> None:
        self._raw = raw
        self.key = key
        header = read_exact(raw, HEADER_LEN)
        self.header = header
        self.dek_id, self.chunk_size = parse_header(header, key)
        dek = keyring_lookup(self.dek_id, key)
        self._aead = _object_key(dek, header[-SALT_LEN:])
        self._aad = header + key.encode()
        self._index = 0
        self._offset = HEADER_LEN  # stored offset of the next unread chunk
        self._next = read_exact(raw, self.chunk_size + TAG)
        self._buf = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def _open_chunk(self, ct: bytes, final: bool) -> bytes:
        return self._aead.decrypt(_nonce(self._index, final), ct, self._aad)

    def _advance(self) -> bool:
        if self._done:
            return False
        while True:
            cur = self._next
            full = len(cur) == self.chunk_size + TAG
            nxt = read_exact(self._raw, self.chunk_size + TAG) if full else b""
            final = not nxt
            try:
                if len(cur) < TAG:
                    raise InvalidTag
                plain = self._open_chunk(cur, final)
                break
            except InvalidTag:
                if self._switch():
                    continue
                raise IntegrityError(
                    f"object {self.key!r} fails authentication at chunk {self._index} "
                    "(wrong key, truncated or tampered data)",
                    "the stored copy is damaged or was changed; restore from another target") from None
        self._index += 1
        self._offset += len(cur)
        self._next = nxt
        self._done = final
        self._buf = memoryview(plain)
        return True

    def _switch(self) -> bool:
        """Continue from another copy of the object (a mirror), at the chunk that failed here."""
        if not isinstance(self._raw, FailoverReader):
            return False
        if self._raw.switch_target(self._offset, HEADER_LEN) != self.header:
            return False
        self._next = read_exact(self._raw, self.chunk_size + TAG)
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            if not self._advance():
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def readall(self) -> bytes:
        return b"".join(self.read_chunks())

    def read_chunks(self) -> Iterator[bytes]:
        """The plaintext chunk by chunk (no copies)."""
        if self._buf:
            yield bytes(self._buf)
            self._buf = memoryview(b"")
        while self._advance():
            yield self._buf.obj  # type: ignore[misc]
            self._buf = memoryview(b"")

    def close(self) -> None:
        if not self.closed:
            try:
                self._raw.close()
            finally:
                super().close()


class DataKeys(abc.ABC):
    """Where an EncryptedStore gets its data keys (the repository's keyring: repo/keyring.py)."""

    @abc.abstractmethod
    def for_write(self) -> tuple[str, bytes]:
        """The id and the key new objects are written with (made on first use when allowed)."""

    @abc.abstractmethod
    def for_read(self, dek_id: str, key: str) -> bytes:
        """The data key dek_id, which object key is encrypted with; IntegrityError if not opened."""

    @abc.abstractmethod
    def is_plain(self, key: str) -> bool:
        """Objects stored unencrypted (the keyring itself: it holds wrapped keys, never plaintext)."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """What a manifest records about its encryption: ids and fingerprints, never a key."""


class EncryptedStore(ObjectStore):
    """An ObjectStore that encrypts on put and decrypts and authenticates on open, over any store."""

    def __init__(self, inner: ObjectStore, keys: DataKeys) -> None:
        self.inner = inner
        self.keys = keys
        self.url = inner.url

    def encryption_info(self) -> dict[str, Any]:
        return self.keys.info()

    def _dek(self, dek_id: str, key: str) -> bytes:
        return self.keys.for_read(dek_id, key)

    # -- interface -------------------------------------------------------------------------
    def _seal(self, key: str, data: BinaryIO | Chunks | bytes) -> Iterator[bytes]:
        dek_id, dek = self.keys.for_write()
        return encrypt_stream(iter_chunks(data), key, dek_id, dek)

    def put(self, key: str, data: BinaryIO | Chunks | bytes) -> ObjectInfo:
        if self.keys.is_plain(key):
            return self.inner.put(key, data)
        info = self.inner.put(key, self._seal(key, data))
        return ObjectInfo(key, plain_size(info.size), info.etag, info.mtime)

    def _sealed_bytes(self, key: str, data: bytes) -> bytes:
        return data if self.keys.is_plain(key) else b"".join(self._seal(key, data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(key, self._sealed_bytes(key, data))

    def replace_if_match(self, key: str, data: bytes, etag: str) -> bool:
        return self.inner.replace_if_match(key, self._sealed_bytes(key, data), etag)

    def _reader(self, raw: BinaryIO, key: str) -> DecryptingReader:
        try:
            return DecryptingReader(raw, key, self._dek)
        except BaseException:
            raw.close()
            raise

    def open(self, key: str) -> BinaryIO:
        if self.keys.is_plain(key):
            return self.inner.open(key)
        # Unbuffered on purpose: each readinto copies straight out of the authenticated chunk.
        return self._reader(self.inner.open(key), key)  # type: ignore[return-value]

    def read_small(self, key: str) -> tuple[bytes, str]:
        data, etag = self.inner.read_small(key)
        if self.keys.is_plain(key):
            return data, etag
        return self.decrypt_bytes(key, data), etag

    def decrypt_bytes(self, key: str, data: bytes) -> bytes:
        """Plaintext of a whole stored object held in memory."""
        with self._reader(io.BytesIO(data), key) as r:  # type: ignore[arg-type]
            return b"".join(r.read_chunks())

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        if self.keys.is_plain(info.key):
            return info
        return ObjectInfo(info.key, max(plain_size(info.size), 0), info.etag, info.mtime)

    def stat(self, key: str) -> ObjectInfo | None:
        info = self.inner.stat(key)
        return None if info is None else self._info(info)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            yield self._info(info)

    def list_after(self, prefix: str, after: str) -> Iterator[ObjectInfo]:
        for info in self.inner.list_after(prefix, after):  # keys are stored as they are
            yield self._info(info)

    def folders(self, prefix: str) -> list[str]:
        return self.inner.folders(prefix)  # keys are stored as they are

    def first_after(self, prefix: str, after: str) -> ObjectInfo | None:
        info = self.inner.first_after(prefix, after)
        return None if info is None else self._info(info)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)

    def check(self) -> None:
        self.inner.check()

    def describe(self) -> str:
        return f"{self.inner.describe()} (encrypted, {CIPHER})"

    # -- capabilities: every chunk is authenticated before it is returned ---------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(authenticated_reads=True,
                            several_copies=self.inner.capabilities().several_copies)

    def unwrap(self) -> ObjectStore:
        return self.inner

    @property
    def target_name(self) -> str:
        return self.inner.target_name

    def note_failover(self, key: str, bad: str, good: str | None, reason: str, corrupt: bool = False) -> None:
        self.inner.note_failover(key, bad, good, reason, corrupt)

    def alternatives(self, key: str) -> list[ObjectStore]:
        alts = self.inner.alternatives(key)
        if len(alts) <= 1:
            return [self]
        return [EncryptedStore(alt, self.keys) for alt in alts]

    def close(self) -> None:
        self.inner.close()
