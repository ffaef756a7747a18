"""Malformed input through the real CLI entry point, in the style of a fuzzer (issue 14).

Hypothesis draws URLs, times, GTIDs, binlog positions and policy values; each is run through
backupkit.cli.app.main in this process. Every input must end with a documented exit code and, on
failure, one line: no traceback, no "internal error", no hang (each call is bounded).

Nothing here reaches a real server: connection URLs point at loopback ports where nothing
listens (never :3306), and S3 endpoints likewise.
"""

from __future__ import annotations

import os
import string
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backupkit.mysql.sandbox import free_port
from backupkit.repo.catalog import BackupManifest, BinlogPoint, Catalog, SourceIdentity
from backupkit.storage import open_store
from tests.support.cli import run_cli_inprocess

pytestmark = pytest.mark.timeout(600)

DOCUMENTED = {0, 2, 3, 4, 5}
CLOSED_PORT = free_port()  # nothing listens here for the length of the test
ENV = {"AWS_ACCESS_KEY_ID": "fuzz", "AWS_SECRET_ACCESS_KEY": "fuzz",
       "BACKUPKIT_S3_ENDPOINT": f"http://127.0.0.1:{CLOSED_PORT}",
       "BACKUPKIT_SOURCE_PASSWORD": "", "BACKUPKIT_TARGET_PASSWORD": ""}
# BACKUPKIT_FUZZ_EXAMPLES=500 for a longer, randomised hunt; the default run is repeatable
EXAMPLES = int(os.environ.get("BACKUPKIT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> str:
    """A local repository with one (forged) snapshot, so valid moments reach the planner."""
    path = tmp_path_factory.mktemp("fuzz") / "repo"
    store = open_store(f"file://{path}")
    now = time.time()
    Catalog(store).commit_backup(BackupManifest(
        id="20261130T120000Z-snapshot-f022", kind="snapshot", source=SourceIdentity("fuzz-src"),
        point=BinlogPoint(file="binlog.000001", pos=4, gtid="0-1-5", time=now - 3600),
        started_at=now - 3600, finished_at=now - 3599,
        details={"databases": [], "tables": [], "options": {}}))
    return f"file://{path}"


def _check(*args: str) -> None:
    t0 = time.monotonic()
    r = run_cli_inprocess(*args, env=ENV)
    took = time.monotonic() - t0
    shown = f"{args!r} -> {r.returncode}\n{r.stderr}"
    assert r.returncode in DOCUMENTED, shown
    assert "Traceback" not in r.stderr + r.stdout, shown
    assert "internal error" not in r.stderr + r.stdout, shown
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    if r.returncode:
        assert len(errors) == 1, shown
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 3, shown  # + warnings
    assert took < 20, f"{shown}\ntook {took:.1f}s"


# -- strategies -------------------------------------------------------------------------
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40)
junk = st.text(alphabet=string.printable + "é表😀[]@:/?#%~", max_size=30)
port = st.one_of(st.just(str(CLOSED_PORT)), st.sampled_from(["", "0", "-1", "65536", "99999", "x",
                                                             "3306x", " 1"]))
host = st.sampled_from(["127.0.0.1", "[::1]", "[::1", "::1]", "localhost", "[", "]", "", "@",
                        "[::1]:", "127.0.0.1:"])
userinfo = st.one_of(st.just(""), st.builds(lambda u, p: f"{u}:{p}@", junk, junk),
                     st.builds(lambda u: f"{u}@", junk))


@st.composite
def connection_urls(draw) -> str:
    scheme = draw(st.sampled_from(["mysql", "mariadb", "mysq", "MYSQL", "http", "", "mysql:"]))
    h = draw(host)
    p = draw(port)
    where = f"{h}:{p}" if h in ("127.0.0.1", "[::1]") and p else h
    if h == "localhost":  # a socket: make it one that does not exist
        where = f"localhost?socket=/nonexistent/{draw(junk)}.sock"
    tail = draw(st.sampled_from(["", "/db", "?tls=on", "?tls=maybe", "?tls_ca=/x", "/%zz", "#frag"]))
    sep = draw(st.sampled_from(["://", ":/", ":", "//", ":///"]))
    url = f"{scheme}{sep}{draw(userinfo)}{where}{tail}"
    if "3306" in url.replace(str(CLOSED_PORT), ""):
        url = url.replace("3306", "1")  # never the machine's own instance
    return draw(st.one_of(st.just(url), text.filter(lambda s: "3306" not in s)))


@st.composite
def storage_urls(draw) -> str:
    kind = draw(st.sampled_from(["file", "s3", "other", "junk"]))
    if kind == "file":
        return draw(st.sampled_from(["file://", "file:///", "file://relative/x", "file://localhost",
                                     "file://u:p@host/x", "file:///dev/null/x", "file://[::1/x",
                                     "file:///proc/self/nope", "file:/x", "file:"]))
    if kind == "s3":
        bucket = draw(st.sampled_from(["", "b", "B_ad", "a" * 70, "b.", "[::1", "u:p@b"]))
        query = draw(st.sampled_from([
            "", f"?endpoint=http://127.0.0.1:{CLOSED_PORT}", "?endpoint=ftp://x",
            "?endpoint=http://u:pw@[::1", "?endpoint=http://h:99999", "?region=", "?addressing=odd",
            "?storage_class=NOPE", "?unknown=1", "?endpoint=", "?part_size=x"]))
        return f"s3://{bucket}/{draw(junk)}{query}"
    if kind == "other":
        return draw(st.sampled_from(["ftp://x/y", "gs://b", "://", "s3:/b", "http://127.0.0.1/x"]))
    return draw(junk.filter(lambda s: s.strip() and not s.startswith(("/", ".", "~"))))


digits = st.integers(min_value=-5, max_value=10 ** 20).map(str)
times = st.one_of(
    text,
    st.builds(lambda y, mo, d, h, mi, s, frac, zone: f"{y}-{mo}-{d}T{h}:{mi}:{s}{frac}{zone}",
              st.sampled_from(["2026", "0000", "9999", "99999", "-1", "26"]),
              st.sampled_from(["01", "13", "00", "1", "02"]),
              st.sampled_from(["01", "31", "30", "00", "29"]),
              st.sampled_from(["00", "23", "24", "2"]),
              st.sampled_from(["00", "59", "60"]),
              st.sampled_from(["00", "60", "61", "5"]),
              st.sampled_from(["", ".5", ".999999999999", ".", ".x", ",5"]),
              st.sampled_from(["", "Z", "+02:00", "+25:00", "-00:00", " Europe/Berlin",
                               " Nowhere/Zone", "+0530", "z", "UTC"])),
    st.sampled_from(["now", "yesterday", "-1h", "1h ago", "2026-03-29 02:30 Europe/Berlin",
                     "2026-10-25 02:30 Europe/Berlin", "2026-03-29 02:30", "@1700000000",
                     "1700000000", "1e99", "nan", "inf", "", " ", "2026-11-30", "18:09:30"]),
    digits)
gtids = st.one_of(
    text,
    st.builds(lambda d, s, n: f"{d}-{s}-{n}", digits, digits, digits),
    st.builds(lambda a, b: f"{a},{b}", st.sampled_from(["0-1-5", "1-1-1", "x"]),
              st.sampled_from(["0-1-6", "0-2-1", "", "-"])),
    st.sampled_from(["3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5", "uuid:1-", "0-1-", "--", "0-1-5-",
                     "0-18446744073709551616-1", "0-1-18446744073709551616"]))
positions = st.one_of(
    text,
    st.builds(lambda f, p: f"{f}:{p}", st.sampled_from(["binlog.000001", "binlog.00002", "", ":",
                                                        "../x", "binlog.000001:4"]), digits),
    st.sampled_from(["binlog.000001", ":4", "binlog.000001:", "binlog.000001:4:4", "a:b"]))


# -- the CLI, input by input ------------------------------------------------------------------
@FUZZ
@given(url=connection_urls())
@example(url="//:\r@127.0.0.1:1")  # found: the \r split the error into two lines
def test_connection_urls(url, tmp_path):
    _check("snapshot", "--source", url, "--storage", str(tmp_path / "r"))


@FUZZ
@given(url=connection_urls())
def test_restore_target_urls(url, repo):
    _check("restore", "--latest", "--target", url, "--storage", repo, "--dry-run")


@FUZZ
@given(url=storage_urls())
@example(url="s3://b/\x0c0")  # found: a form feed split the error into two lines
@example(url="s3://b/?part_size=x")  # found: internal error ValueError
@example(url=" ~0")  # found: internal error RuntimeError (no user "0" to expand ~0)
def test_storage_urls(url):
    _check("list", "--storage", url)


@FUZZ
@given(t=times)
def test_times(t, repo):
    _check("restore", "--to-time", t, "--storage", repo, "--dry-run")
    _check("report", "--at", t, "--storage", repo)
    _check("binlog", "events", "--from", t, "--storage", repo)


@FUZZ
@given(g=gtids, which=st.sampled_from(["--to-gtid", "--stop-before-gtid"]))
def test_gtids(g, which, repo):
    _check("restore", which, g, "--storage", repo, "--dry-run")


@FUZZ
@given(p=positions)
def test_positions(p, repo, tmp_path):
    _check("restore", "--to-position", p, "--storage", repo, "--dry-run")
    _check("binlog", "ship", "--once", "--from-position", p, "--storage", str(tmp_path / "r"),
           "--source", f"mysql://root@127.0.0.1:{CLOSED_PORT}")


@FUZZ
@example(value="99999999999999d")  # found: internal error OSError (a year past 9999)
@given(value=st.sampled_from(["2d", "-1", "0", "1h", "x", "99999999999999d", "1.5d", "", "P1D",
                              "7 days", "1e9", "nan"]))
def test_durations(value, repo):
    _check("prune", "--recovery-window", value, "--storage", repo, "--dry-run")
    _check("binlog", "prune", "--keep", value, "--storage", repo, "--dry-run")


@FUZZ
@given(opt=st.sampled_from(["--databases", "--tables", "--parallel", "--chunk-size",
                            "--compression-level", "--engine"]),
       value=st.one_of(text, digits, st.sampled_from(["", "a.b.c", "db.", ".t", "`x`", "-1", "0",
                                                      "4097", "1e3", "logical", "physical"])))
def test_snapshot_options(opt, value, tmp_path):
    _check("snapshot", opt, value, "--storage", str(tmp_path / "r"),
           "--source", f"mysql://root@127.0.0.1:{CLOSED_PORT}")


# -- policy values (TOML files) ---------------------------------------------------------------
def _policy_keys() -> dict[str, list[str]]:
    """Every section and key of the policy model (so new keys are fuzzed as they are added)."""
    from pydantic import BaseModel

    from backupkit.config import Policy, TargetSection

    out: dict[str, list[str]] = {}
    for name, f in Policy.model_fields.items():
        ann = f.annotation
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type)), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = sorted(ann.model_fields)
    out["storage.targets"] = sorted(TargetSection.model_fields)
    return out


POLICY_KEYS = _policy_keys()
toml_values = st.one_of(
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.booleans().map(lambda b: str(b).lower()),
    text.map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(['"* * * * *"', '"61 * * * *"', '"@hourly"', '"0 0 31 2 *"', '"1d"', '"-1d"',
                     '""', "[]", '["a", 1]', '["x"]', "{}", '{ a = 1 }', "1979-05-27T07:32:00Z",
                     '"s3://u:Secret@b/x"', '"mysql://u:Secret@h"', '"file://rel/x"', '"Nowhere/Zone"',
                     '"99999999999999d"', '"127.0.0.1:99999"', '"[::1"', '"/dev/null"', "inf", "nan",
                     '"AES256"', '"aws:kms"', '"path"', '"physical"']),
)


@FUZZ
@given(section=st.sampled_from(sorted(POLICY_KEYS)), data=st.data(),
       values=st.lists(toml_values, min_size=1, max_size=3))
def test_policy_values(section, data, values, tmp_path):
    keys = data.draw(st.lists(st.sampled_from(POLICY_KEYS[section] + ["unknown_key"]),
                              min_size=len(values), max_size=len(values), unique=True))
    body = [f"{k} = {v}" for k, v in zip(keys, values, strict=True)]
    if section == "storage.targets":
        lines = ["[[storage.targets]]", *body] + ([] if "url" in keys else [f'url = "file://{tmp_path}/t"'])
    elif section == "storage":
        lines = ["[storage]", *body] + ([] if "url" in keys else [f'url = "file://{tmp_path}/repo"'])
    else:
        lines = ["[storage]", f'url = "file://{tmp_path}/repo"', f"[{section}]", *body]
    p = tmp_path / "p.toml"
    p.write_text("\n".join(lines) + "\n")
    for cmd in (("policy", "check", str(p)), ("policy", "plan", str(p)), ("list", "--policy", str(p))):
        r = run_cli_inprocess(*cmd, env=ENV)
        assert "Secret" not in r.stdout + r.stderr, (cmd, lines, r.stderr)
        assert r.returncode in DOCUMENTED, (cmd, lines, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (cmd, lines, r.stderr)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        # one line per problem in the file: at most one per key written
        assert not r.returncode or 1 <= len(errors) <= len(keys) + 1, (cmd, lines, r.stderr)


@pytest.mark.parametrize("args", [
    ("snapshot", "--source", "//:\r@127.0.0.1:1"),
    ("list", "--storage", "s3://b/\x0c0"),
    ("list", "--storage", "s3://b/?part_size=x"),
    ("list", "--storage", "~nosuchuser0/repo"),
    ("prune", "--recovery-window", "99999999999999d", "--dry-run"),
    ("snapshot", "--source", "mysql://u:p@[::1"),
    ("restore", "--to-time", "2026-03-29 02:30 Europe/Berlin", "--dry-run"),
    ("restore", "--to-gtid", "0-18446744073709551616-1", "--dry-run"),
    ("binlog", "ship", "--once", "--from-position", "binlog.000001:x"),
])
def test_a_sample_through_a_real_process(args, repo):
    """The same contract through the console script in its own process (sys.exit, real streams)."""
    from tests.support import run_cli

    extra = () if "--storage" in args else ("--storage", repo)
    r = run_cli(*args, *extra, env={**ENV, "BACKUPKIT_SOURCE": f"mysql://root@127.0.0.1:{CLOSED_PORT}"})
    assert r.returncode in DOCUMENTED and r.returncode != 0, (args, r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
