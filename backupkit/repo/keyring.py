"""The keyring of an encrypted repository: its data keys, each wrapped by key-encryption keys.

One object (layout.KEYRING), stored unencrypted: it holds wrapped keys only. The encryption layer
(storage/crypto.EncryptedStore) gets its data keys from RepositoryKeys; rotation re-wraps them in
one conditional update and touches no data.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backupkit.errors import ConfigError, IntegrityError, KeyMismatch, ObjectNotFound, StorageError
from backupkit.repo import layout
from backupkit.repo.catalog import decode_manifest, encode_manifest
from backupkit.storage.base import ObjectStore
from backupkit.storage.crypto import (
    CHUNK_SIZE,
    CIPHER,
    DEK_ID_LEN,
    KEY_LEN,
    WRAP_AAD,
    DataKeys,
    EncryptedStore,
    KeyEncryptionKey,
)

log = logging.getLogger(__name__)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


class Keyring:
    """The repository's data keys, unwrapped with the configured key-encryption keys."""

    def __init__(self, body: dict[str, Any], etag: str, keys: dict[str, bytes]) -> None:
        self.body = body
        self.etag = etag
        self.keys = keys  # dek id (hex) -> data key

    @property
    def current_id(self) -> str:
        """The data key new objects are written with: the newest one."""
        deks = self.body["data_keys"]
        return max(deks, key=lambda d: (d["created_at"], d["id"]))["id"]

    def wrapped_by(self) -> list[dict[str, str]]:
        """Which key ids and fingerprints wrap the data keys (no secrets)."""
        seen: dict[str, dict[str, str]] = {}
        for d in self.body["data_keys"]:
            for w in d["wraps"]:
                seen[w["fingerprint"]] = {"key_id": w.get("key_id", ""), "fingerprint": w["fingerprint"]}
        return list(seen.values())

    # -- wrapping -------------------------------------------------------------------------
    @staticmethod
    def wrap(dek_id: str, dek: bytes, kek: KeyEncryptionKey) -> dict[str, Any]:
        nonce = secrets.token_bytes(12)
        wrapped = AESGCM(kek.key).encrypt(nonce, dek, WRAP_AAD + dek_id.encode())
        return {"key_id": kek.key_id, "fingerprint": kek.fingerprint, "nonce": _b64(nonce),
                "wrapped": _b64(wrapped), "created_at": time.time()}

    @staticmethod
    def unwrap(dek_id: str, wrap: dict[str, Any], kek: KeyEncryptionKey) -> bytes:
        try:
            return AESGCM(kek.key).decrypt(_unb64(wrap["nonce"]), _unb64(wrap["wrapped"]),
                                           WRAP_AAD + dek_id.encode())
        except (InvalidTag, KeyError, ValueError) as exc:
            raise IntegrityError(f"data key {dek_id} in object {layout.KEYRING!r} does not authenticate "
                                 f"under key {kek.key_id or kek.fingerprint}",
                                 "the keyring was tampered with or damaged") from exc

    # -- load / create ------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, etag: str, keks: list[KeyEncryptionKey]) -> Keyring:
        body = decode_manifest(layout.KEYRING, data)
        if body.get("type") != "keyring" or body.get("cipher") != CIPHER:
            raise IntegrityError(f"object {layout.KEYRING!r} is not a backupkit keyring")
        keys: dict[str, bytes] = {}
        for d in body.get("data_keys", []):
            by_fp = {w["fingerprint"]: w for w in d.get("wraps", [])}
            for kek in keks:
                w = by_fp.get(kek.fingerprint)
                if w is not None:
                    keys[d["id"]] = cls.unwrap(d["id"], w, kek)
                    break
        ring = cls(body, etag, keys)
        if not keys:
            have = ", ".join(f"{w['key_id'] or '?'} ({w['fingerprint']})" for w in ring.wrapped_by())
            given = ", ".join(f"{k.key_id or '?'} ({k.fingerprint})" for k in keks)
            raise KeyMismatch(
                f"wrong key: {given} does not open the data keys in object {layout.KEYRING!r}",
                f"they are wrapped by {have}")
        return ring

    @classmethod
    def load(cls, store: ObjectStore, keks: list[KeyEncryptionKey]) -> Keyring | None:
        """The keyring of the repository, or None when it has none yet."""
        try:
            data, etag = store.read_small(layout.KEYRING)
        except ObjectNotFound:
            return None
        return cls.parse(data, etag, keks)

    @classmethod
    def create(cls, store: ObjectStore, kek: KeyEncryptionKey) -> Keyring:
        """Make the first data key, wrapped by kek; a concurrent creator's keyring wins."""
        if store.stat(layout.REPO_CONFIG) is not None:
            raise ConfigError(f"{store.describe()} already holds an unencrypted repository",
                              "encryption is chosen when a repository is created; use a new target")
        dek_id = secrets.token_bytes(DEK_ID_LEN).hex()
        dek = secrets.token_bytes(KEY_LEN)
        now = time.time()
        body = {"type": "keyring", "cipher": CIPHER, "chunk_size": CHUNK_SIZE, "created_at": now,
                "updated_at": now,
                "data_keys": [{"id": dek_id, "created_at": now, "wraps": [cls.wrap(dek_id, dek, kek)]}]}
        if store.put_if_absent(layout.KEYRING, encode_manifest(body)):
            log.info("created data key %s wrapped by key %s", dek_id, kek.fingerprint)
        ring = cls.load(store, [kek])
        if ring is None:
            raise StorageError(f"keyring {layout.KEYRING!r} vanished right after it was written")
        return ring

    # -- rotation -----------------------------------------------------------------------
    def writable_id(self) -> str:
        """The data key this host writes with: the newest one its keys open.

        A keyring whose newest data key was wrapped by a new key only (a rotation with
        --new-data-key by an older backupkit) still leaves hosts on the old key writing."""
        deks = [d for d in self.body["data_keys"] if d["id"] in self.keys]
        return max(deks, key=lambda d: (d["created_at"], d["id"]))["id"]

    def rotated(self, new: KeyEncryptionKey, retire_old: bool = False,
                new_data_key: bool = False,
                current: list[KeyEncryptionKey] | None = None) -> dict[str, Any]:
        """A new keyring body: every data key also wrapped by `new`; old wraps dropped if retire_old.

        A new data key is wrapped by `new` and, unless retire_old, by every current key that
        wraps the existing ones, so hosts still on an old key keep reading what new hosts write."""
        missing = [d["id"] for d in self.body["data_keys"] if d["id"] not in self.keys]
        if missing:
            raise IntegrityError(f"cannot rotate: data keys {', '.join(missing)} in {layout.KEYRING!r} are "
                                 "not opened by the configured keys", "add the key that wraps them")
        body = {k: v for k, v in self.body.items() if k not in ("checksum", "format")}
        deks = []
        for d in self.body["data_keys"]:
            wraps = [] if retire_old else [w for w in d["wraps"] if w["fingerprint"] != new.fingerprint]
            wraps.append(self.wrap(d["id"], self.keys[d["id"]], new))
            deks.append({**d, "wraps": wraps})
        if new_data_key:
            dek_id = secrets.token_bytes(DEK_ID_LEN).hex()
            dek = secrets.token_bytes(KEY_LEN)
            wrapping = {w["fingerprint"] for w in self.wrapped_by()}
            keeps = [] if retire_old else [k for k in current or [] if k.fingerprint in wrapping
                                           and k.fingerprint != new.fingerprint]
            deks.append({"id": dek_id, "created_at": time.time(),
                         "wraps": [self.wrap(dek_id, dek, kek) for kek in [new, *keeps]]})
        body["data_keys"] = deks
        body["updated_at"] = time.time()
        return body


def rotate_key(store: ObjectStore, current: list[KeyEncryptionKey], new: KeyEncryptionKey,
               retire_old: bool = False, new_data_key: bool = False) -> dict[str, Any]:
    """Re-wrap every data key with `new` in one conditional update of the keyring; no data is touched."""
    ring = Keyring.load(store, current)
    if ring is None:
        raise ConfigError(f"{store.describe()} has no keyring", "it is not an encrypted repository yet")
    body = ring.rotated(new, retire_old=retire_old, new_data_key=new_data_key, current=current)
    if not store.replace_if_match(layout.KEYRING, encode_manifest(body), ring.etag):
        raise StorageError(f"{layout.KEYRING!r} changed while rotating", "run the rotation again")
    # Read back with the new key alone: a rotation that cannot be opened must not go unnoticed.
    after = Keyring.load(store, [new])
    assert after is not None
    return {"data_keys": [d["id"] for d in body["data_keys"]], "current_data_key": after.current_id,
            "wrapped_by": after.wrapped_by()}


def is_plain_key(key: str) -> bool:
    """Objects stored unencrypted: only the keyring (it holds wrapped keys, never plaintext data)."""
    return key.startswith(layout.KEYS)


class RepositoryKeys(DataKeys):
    """The data keys of a repository, from its keyring, unwrapped with the configured KEKs.

    The keyring is read once and again when an object names a data key it lacks (a rotation since);
    with create, the first write of a repository without a keyring makes one.
    """

    def __init__(self, store: ObjectStore, keks: list[KeyEncryptionKey], create: bool = True) -> None:
        if not keks:
            raise ConfigError("encryption needs a key", "set encryption.key_file or encryption.key_env")
        self.store = store
        self.keks = keks  # the first one wraps new data keys
        self.create = create
        self._ring: Keyring | None = None
        self._lock = threading.Lock()

    def keyring(self, for_write: bool = False) -> Keyring:
        with self._lock:
            if self._ring is None:
                ring = Keyring.load(self.store, self.keks)
                if ring is None:
                    if not (for_write and self.create):
                        raise ConfigError(f"{self.store.describe()} is not an encrypted repository "
                                          f"(no {layout.KEYRING})",
                                          "remove the encryption section or write a backup first")
                    ring = Keyring.create(self.store, self.keks[0])
                self._ring = ring
            return self._ring

    def for_write(self) -> tuple[str, bytes]:
        ring = self.keyring(for_write=True)
        dek_id = ring.writable_id()
        return dek_id, ring.keys[dek_id]

    def for_read(self, dek_id: str, key: str) -> bytes:
        ring = self._ring or self.keyring()
        dek = ring.keys.get(dek_id)
        if dek is None:
            self._ring = None  # maybe rotated since: read again once
            ring = self.keyring()
            dek = ring.keys.get(dek_id)
        if dek is None:
            raise KeyMismatch(f"object {key!r} is encrypted with data key {dek_id}, which the configured "
                                 "keys do not open", "wrong key, or the keyring lacks this data key")
        return dek

    def is_plain(self, key: str) -> bool:
        return is_plain_key(key)

    def info(self) -> dict[str, Any]:
        ring = self.keyring(for_write=True)
        kek = self.keks[0]
        return {"cipher": CIPHER, "chunk_size": CHUNK_SIZE, "data_key_id": ring.writable_id(),
                "key_id": kek.key_id, "key_fingerprint": kek.fingerprint}


def open_encrypted(inner: ObjectStore, keks: list[KeyEncryptionKey], create_keyring: bool = True
                   ) -> EncryptedStore:
    """The encryption layer over inner, with the data keys of the repository stored there."""
    return EncryptedStore(inner, RepositoryKeys(inner, keks, create=create_keyring))
