"""TLS to the source: off on loopback by default, required and verified with tls=on, and a server
that refuses insecure transport still gets a connection (a second, TLS, try)."""

from __future__ import annotations

import subprocess

import pytest

from backupkit.errors import SourceError
from backupkit.mysql.connection import connect, parse_conn
from backupkit.mysql.sandbox import Sandbox


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert, ext = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                       "server.pem", "san.cnf"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=backupkit test CA",
             "-keyout", str(ca_key), "-out", str(ca))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
             "-out", str(csr))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))
    sb = Sandbox(name="tls", extra_args=[f"--ssl-ca={ca}", f"--ssl-cert={cert}", f"--ssl-key={key}"]).start()
    try:
        sb.sql("SET GLOBAL require_secure_transport = ON")  # after start: the sandbox checks readiness
        yield sb, ca
    finally:
        sb.destroy()


def _cipher(conn) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cur.fetchone()[1]


def test_loopback_server_that_requires_tls_gets_a_tls_connection(tls_server):
    sb, _ = tls_server
    conn = connect(parse_conn(sb.url))  # tls=auto: plain first on loopback, refused, then TLS
    try:
        assert _cipher(conn)
    finally:
        conn.close()


def test_tls_off_against_such_a_server_is_one_clear_error(tls_server):
    sb, _ = tls_server
    with pytest.raises(SourceError, match="access denied"):  # MariaDB's word for insecure transport
        connect(parse_conn(sb.url + "?tls=off"))


def test_tls_on_verifies_the_certificate(tls_server, tmp_path):
    sb, ca = tls_server
    conn = connect(parse_conn(f"{sb.url}?tls=on&tls_ca={ca}"))
    try:
        assert _cipher(conn)
    finally:
        conn.close()
    other = tmp_path / "other-ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", str(tmp_path / "other.key"), "-out", str(other))
    with pytest.raises(SourceError, match="cannot connect"):
        connect(parse_conn(f"{sb.url}?tls=on&tls_ca={other}"))  # not signed by this CA


def test_plain_loopback_connection_uses_no_tls(mariadb):
    conn = connect(parse_conn(mariadb.url))
    try:
        assert _cipher(conn) == ""
    finally:
        conn.close()
