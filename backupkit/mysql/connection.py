"""Source and target connection settings; passwords come only from the environment or a 0600 file."""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pymysql

from backupkit.errors import ConfigError, SourceError, UsageError
from backupkit.util.paths import expand_user
from backupkit.util.redact import has_control, redact_url

PASSWORD_ENV = "BACKUPKIT_SOURCE_PASSWORD"
TARGET_PASSWORD_ENV = "BACKUPKIT_TARGET_PASSWORD"
DEFAULT_URL = "mysql://root@127.0.0.1:3306"


@dataclass(frozen=True)
class ConnSpec:
    """Where and as whom to connect. The password is held here only, never rendered."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    socket: str | None = None
    database: str | None = None
    password: str | None = None
    tls: str = "auto"  # auto: preferred, but off on loopback and sockets; on: required; off
    tls_ca: str | None = None  # CA file that verifies the server's certificate (tls=on)

    def loopback(self) -> bool:
        """A socket or a loopback address: TLS protects nothing there."""
        return bool(self.socket) or self.host in ("localhost", "::1") or self.host.startswith("127.")

    def display(self) -> str:
        """The URL with no password, for messages and manifests."""
        where = self.socket if self.socket else f"{self.host}:{self.port}"
        return f"mysql://{self.user}@{where}"

    def __repr__(self) -> str:  # never leak the password through repr()
        return f"ConnSpec({self.display()})"

    __str__ = display

    def with_database(self, database: str | None) -> ConnSpec:
        return replace(self, database=database)


def read_password_file(path: str | Path) -> str:
    """The password in a file that only its owner can read (mode 0600 or stricter)."""
    p = expand_user(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"password file {p} does not exist", "create it with mode 0600") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"password file {p} has mode {stat.S_IMODE(st.st_mode):04o}",
                          f"run 'chmod 600 {p}'")
    return p.read_text().rstrip("\r\n")


def parse_conn(url: str | None, password_env: str = PASSWORD_ENV,
               password_file: str | None = None) -> ConnSpec:
    """mysql://user@host:port[/db][?socket=/path][&tls=auto|on|off][&tls_ca=FILE] or a socket path;
    the password comes from the environment or a 0600 file."""
    if url is not None and not url.strip():
        raise UsageError("empty connection URL", "use mysql://user@host:port or a socket path")
    url = (url or DEFAULT_URL).strip()
    shown = redact_url(url)  # every message shows this: never the password
    if has_control(url):
        raise UsageError(f"bad connection URL {shown!r}: it holds a control character",
                         "use mysql://user@host:port or a socket path")
    if url.startswith("/") or url.endswith(".sock"):
        spec = ConnSpec(socket=url, host="localhost", port=0)
    else:
        try:
            parsed = urlparse(url)
            port = parsed.port or 3306
            has_password = parsed.password is not None
            user, host = parsed.username, parsed.hostname
        except ValueError as exc:  # an unclosed [ or a port that is not a number
            raise UsageError(f"bad connection URL {shown!r}: {exc}",
                             "use mysql://user@host:port or a socket path") from None
        if parsed.scheme not in ("mysql", "mariadb"):
            raise UsageError(f"bad connection URL {shown!r}",
                             "use mysql://user@host:port or a socket path")
        if has_password:
            raise UsageError(f"connection URLs must not contain a password: {shown!r}",
                             f"put it in {password_env} or a 0600 password_file")
        if not 0 < port < 65536:
            raise UsageError(f"bad port in connection URL {shown!r}")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        tls = query.get("tls", "auto").lower()
        if tls not in ("auto", "on", "off"):
            raise UsageError(f"bad tls={tls!r} in connection URL {shown!r}",
                             "use tls=auto, tls=on or tls=off")
        spec = ConnSpec(host=host or "127.0.0.1", port=port,
                        user=unquote(user or "root"), socket=query.get("socket"),
                        database=parsed.path.lstrip("/") or None, tls=tls, tls_ca=query.get("tls_ca"))
        password_file = password_file or query.get("password_file")
    password = os.environ.get(password_env)
    if password is None and password_file:
        password = read_password_file(password_file)
    return replace(spec, password=password)


def connect(spec: ConnSpec, *, database: str | None = None, autocommit: bool = True,
            read_timeout: int | None = None, **kw) -> pymysql.connections.Connection:
    """A pymysql connection; failure raises SourceError (exit 3) with one line."""
    args = dict(user=spec.user, password=spec.password or "", charset="utf8mb4",
                autocommit=autocommit, connect_timeout=5, local_infile=True,
                database=database or spec.database, read_timeout=read_timeout,
                binary_prefix=True)
    if spec.socket:
        args["unix_socket"] = spec.socket
    else:
        args["host"] = spec.host
        args["port"] = spec.port
    # TLS: required with tls=on; with auto, used when the server offers it -- except on loopback
    # and sockets, where it protects nothing and costs ~20 ms a connection (pymysql loads the CA
    # store each time); a server that requires secure transport there gets a second, TLS, try.
    if spec.tls == "on":
        args["ssl"] = _tls_context(spec.tls_ca)
    elif spec.tls == "off" or spec.loopback():
        args["ssl_disabled"] = True
    args.update(kw)
    try:
        try:
            return pymysql.connect(**args)
        except pymysql.err.OperationalError as exc:
            # MariaDB refuses insecure transport as "access denied" (1045), MySQL with 3159
            refused = exc.args and exc.args[0] in (1045, 3159) or "insecure transport" in str(exc)
            if spec.tls != "auto" or not args.get("ssl_disabled") or not refused:
                raise
            args.pop("ssl_disabled")
            return pymysql.connect(**args)
    except pymysql.err.OperationalError as exc:
        code = exc.args[0] if exc.args else 0
        msg = exc.args[1] if len(exc.args) > 1 else str(exc)
        if code in (1045, 1044):
            raise SourceError(f"access denied for {spec.display()}",
                              f"check the user and {PASSWORD_ENV}") from None
        raise SourceError(f"cannot connect to {spec.display()}: {msg}",
                          "check that the server is running and the URL is right") from None
    except pymysql.err.InternalError as exc:
        raise SourceError(f"cannot connect to {spec.display()}: {exc}") from None


_TLS_CONTEXTS: dict = {}


def _tls_context(ca_file: str | None):
    """One verifying TLS context per CA file, shared by the connections (loading CAs is slow)."""
    ctx = _TLS_CONTEXTS.get(ca_file)
    if ctx is None:
        try:
            ctx = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read TLS CA file {ca_file}: {exc}",
                              "give a PEM file with tls_ca=... in the connection URL") from None
        _TLS_CONTEXTS[ca_file] = ctx
    return ctx


def quote_ident(name: str) -> str:
    """A quoted SQL identifier: backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualified(db: str, table: str) -> str:
    return f"{quote_ident(db)}.{quote_ident(table)}"
