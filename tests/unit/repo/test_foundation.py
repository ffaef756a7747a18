"""Pure logic of the foundation: keys, manifests, connection specs, common options."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupkit.cli.context import extract_common
from backupkit.errors import ConfigError, IntegrityError, StorageError, UsageError
from backupkit.mysql.connection import parse_conn, quote_ident
from backupkit.repo import layout
from backupkit.repo.catalog import (
    BackupManifest,
    BinlogPoint,
    SourceIdentity,
    decode_manifest,
    encode_manifest,
)
from backupkit.repo.codec import StoredObject
from backupkit.storage import open_store
from backupkit.storage.local import check_key


@given(st.text(min_size=1, max_size=64))
def test_key_components_round_trip_and_stay_one_safe_component(name):
    comp = layout.enc(name)
    assert layout.dec(comp) == name
    assert "/" not in comp and not comp.startswith(".")
    check_key(f"x/{comp}")


def test_manifest_checksum_detects_tampering():
    m = BackupManifest(id="20261126T000000Z-snapshot-abcd", kind="snapshot",
                       source=SourceIdentity("src"), point=BinlogPoint("binlog.000001", 4, "0-1-1", 1.5),
                       started_at=1.0, finished_at=2.0,
                       objects=[StoredObject("k", 1, "00" * 32, 2)])
    data = encode_manifest(m.to_dict())
    back = BackupManifest.from_dict(decode_manifest("k", data))
    assert back.point == m.point and back.objects == m.objects
    tampered = data.replace(b'"binlog.000001"', b'"binlog.000002"')
    with pytest.raises(IntegrityError, match="checksum mismatch in manifest 'k'"):
        decode_manifest("k", tampered)


def test_manifest_from_a_newer_format_is_refused():
    data = encode_manifest({"type": "backup", "format": layout.FORMAT_VERSION + 1})
    with pytest.raises(IntegrityError, match="upgrade backupkit"):
        decode_manifest("k", data)


def test_common_options_are_taken_from_anywhere():
    common, rest = extract_common(["snapshot", "--storage", "s3://b/p", "--json", "--parallel", "2",
                                   "--policy=p.toml", "--", "--debug"])
    assert (common.storage, common.policy, common.json, common.debug) == ("s3://b/p", "p.toml", True, False)
    assert rest == ["snapshot", "--parallel", "2", "--", "--debug"]
    with pytest.raises(UsageError):
        extract_common(["list", "--storage"])


def test_connection_password_never_rendered(monkeypatch, tmp_path):
    monkeypatch.setenv("BACKUPKIT_SOURCE_PASSWORD", "s3cr3t")
    spec = parse_conn("mysql://backup@db.example:3307")
    assert (spec.user, spec.host, spec.port, spec.password) == ("backup", "db.example", 3307, "s3cr3t")
    assert "s3cr3t" not in repr(spec) + str(spec) + spec.display()
    with pytest.raises(UsageError, match="must not contain a password"):
        parse_conn("mysql://backup:pw@db:3306")


def test_password_file_must_be_0600(monkeypatch, tmp_path):
    monkeypatch.delenv("BACKUPKIT_SOURCE_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    os.chmod(pw, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        parse_conn("mysql://u@h:1", password_file=str(pw))
    os.chmod(pw, 0o600)
    assert parse_conn("mysql://u@h:1", password_file=str(pw)).password == "from-file"


def test_socket_path_source():
    spec = parse_conn("/run/mysqld/mysqld.sock")
    assert spec.socket == "/run/mysqld/mysqld.sock"


def test_identifiers_are_quoted():
    assert quote_ident("we`ird") == "`we``ird`"


@pytest.mark.parametrize("url", ["ftp://x/y", "s3://", "nonsense"])
def test_bad_storage_urls(url):
    with pytest.raises(UsageError):
        open_store(url)


def test_storage_url_query_sets_s3_options():
    store = open_store("s3://bucket/pre/fix?endpoint=http://127.0.0.1:9&addressing=path&region=eu-west-1")
    assert store.bucket == "bucket" and store.prefix == "pre/fix/"
    assert store.options.endpoint_url == "http://127.0.0.1:9"
    assert store.options.addressing_style == "path" and store.options.region == "eu-west-1"


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/.tmp/x", ""])
def test_local_keys_cannot_escape(key):
    with pytest.raises(StorageError, match="invalid object key"):
        check_key(key)


def test_tls_setting_in_the_connection_url():
    assert parse_conn("mysql://u@db.example:3306").tls == "auto"
    assert not parse_conn("mysql://u@db.example:3306").loopback()
    assert parse_conn("mysql://u@127.0.0.1:3306").loopback() and parse_conn("/run/m.sock").loopback()
    spec = parse_conn("mysql://u@db.example:3306?tls=on&tls_ca=/etc/mysql/ca.pem")
    assert (spec.tls, spec.tls_ca) == ("on", "/etc/mysql/ca.pem")
    with pytest.raises(UsageError, match="tls=auto, tls=on or tls=off"):
        parse_conn("mysql://u@db.example:3306?tls=maybe")


def test_tls_on_with_an_unreadable_ca_file_is_a_config_error(tmp_path):
    from backupkit.mysql.connection import connect

    spec = parse_conn(f"mysql://u@127.0.0.1:1?tls=on&tls_ca={tmp_path / 'missing.pem'}")
    with pytest.raises(ConfigError, match="cannot read TLS CA file"):
        connect(spec)


def test_prefetched_keeps_order_raises_the_producers_error_and_stops_on_close():
    import threading

    from backupkit.util.workers import prefetched

    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("producer broke")

    it = prefetched(failing())
    assert next(it) == 1
    with pytest.raises(ValueError, match="producer broke"):
        next(it)

    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    it = prefetched(endless(), depth=2)
    assert next(it) == 0
    it.close()  # the consumer stops early: the producer is stopped and joined
    assert len(produced) <= 4 and not any(t.name == "prefetch" for t in threading.enumerate())
