"""Every object key of the repository, as pure functions. No key is formatted anywhere else."""

from __future__ import annotations

import hashlib
import math
import re
from urllib.parse import quote, unquote

#: 2: binlog index entries apart from their data (binlog/<src>/index/ and binlog/<src>/data/);
#: format-1 repositories are converted by `backupkit repo migrate` (repo/migrate.py).
FORMAT_VERSION = 2
#: The first format with the partitioned binlog layout.
PARTITIONED_FORMAT = 2
REPO_CONFIG = "backupkit.json"
BACKUPS = "backups/"
BINLOG = "binlog/"
LEASES = "leases/"
RESTORES = "restores/"
KEYS = "keys/"
MANIFEST = "manifest.json"
#: The wrapped data keys of an encrypted repository (the only object stored unencrypted there).
KEYRING = "keys/keyring.json"


def enc(name: str) -> str:
    """A database, table or source name as one safe key component (reversible)."""
    out = quote(name, safe="")
    return "%2E" + out[1:] if out.startswith(".") else out


#: The longest key component a database or table name becomes. Local file names stop at 255
#: bytes, and a 64-character name in 4-byte UTF-8 percent-encodes to 768.
MAX_NAME_COMPONENT = 120
_HASHED = "%~"  # never produced by enc(): marks a shortened component


def name_component(name: str) -> str:
    """enc(name), or for a long name a readable prefix of it plus a hash of the whole name.

    Shortened components are not reversible: the real names are in the manifest, which is
    where restore reads them from."""
    out = enc(name)
    if len(out) <= MAX_NAME_COMPONENT:
        return out
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    keep = out[:MAX_NAME_COMPONENT - len(_HASHED) - len(digest)]
    cut = keep.rfind("%")
    if cut > len(keep) - 3:  # never cut a %XX escape in two
        keep = keep[:cut]
    return f"{keep}{_HASHED}{digest}"


def dec(component: str) -> str:
    """The name behind a key component made by enc()."""
    return unquote(component)


# -- backups -------------------------------------------------------------------
def backup_prefix(backup_id: str) -> str:
    return f"{BACKUPS}{backup_id}/"


def backup_manifest(backup_id: str) -> str:
    """The commit marker of a backup: it exists only once every data object is stored."""
    return f"{BACKUPS}{backup_id}/{MANIFEST}"


def is_backup_key(key: str) -> bool:
    """True for every object of a backup (data and manifest)."""
    return key.startswith(BACKUPS)


def backup_id_of(key: str) -> str | None:
    """The backup id of a manifest key, or None for any other key."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == BACKUPS and parts[2] == MANIFEST:
        return parts[1]
    return None


def snapshot_schema(backup_id: str, db: str) -> str:
    """DDL of one database (tables, views, routines, triggers, events)."""
    return f"{BACKUPS}{backup_id}/schema/{name_component(db)}.json.zst"


def snapshot_globals(backup_id: str) -> str:
    """Users and grants, when included."""
    return f"{BACKUPS}{backup_id}/schema/_users.sql.zst"


def snapshot_chunk(backup_id: str, db: str, table: str, chunk: int) -> str:
    """One chunk of one table's rows in LOAD DATA's escaped tab-separated form."""
    return f"{BACKUPS}{backup_id}/data/{name_component(db)}/{name_component(table)}/{chunk:06d}.tsv.zst"


def cold_archive(backup_id: str, part: int = 0) -> str:
    """The datadir as a tar stream through zstd."""
    return f"{BACKUPS}{backup_id}/datadir.{part:04d}.tar.zst"


def cold_config(backup_id: str) -> str:
    """An optional server config file saved with a cold backup."""
    return f"{BACKUPS}{backup_id}/server.cnf.zst"


def physical_part(backup_id: str, part: int) -> str:
    """One bounded-size piece of a physical backup's mbstream (mariadb-backup --stream), zstd."""
    return f"{BACKUPS}{backup_id}/physical.{part:05d}.mbstream.zst"


# -- binlog --------------------------------------------------------------------
def is_binlog_key(key: str) -> bool:
    """True for every object of the shipped binlog (segments, index entries, roll-ups, gaps)."""
    return key.startswith(BINLOG)


def binlog_prefix(source_id: str) -> str:
    return f"{BINLOG}{enc(source_id)}/"


INDEX_DIR = "index"
DATA_DIR = "data"


def segment_data(source_id: str, binlog_file: str, start: int, end: int) -> str:
    """A segment: a valid binlog file holding events [start, end) of binlog_file."""
    return f"{BINLOG}{enc(source_id)}/{DATA_DIR}/{enc(binlog_file)}/{start:012d}-{end:012d}.binlog.zst"


def segment_index(source_id: str, binlog_file: str, start: int, end: int) -> str:
    """The index entry (commit marker) of a segment: under index/, apart from the data, so that
    listing the index never pages through data keys."""
    return f"{BINLOG}{enc(source_id)}/{INDEX_DIR}/{enc(binlog_file)}/{start:012d}-{end:012d}.json"


ROLLUP_DIR = "_rollup"
ROLLUP_SUFFIX = ".rollup.zst"


def index_prefix(source_id: str) -> str:
    """Every index entry of a source (and nothing else)."""
    return f"{BINLOG}{enc(source_id)}/{INDEX_DIR}/"


def segment_file_prefix(source_id: str, binlog_file: str) -> str:
    """Every index entry of one binlog file."""
    return f"{BINLOG}{enc(source_id)}/{INDEX_DIR}/{enc(binlog_file)}/"


def index_after_file(source_id: str, binlog_file: str) -> str:
    """A key that sorts after every index entry of binlog_file and before those of any later file
    (for list_after): '0' is the character after '/'."""
    return segment_file_prefix(source_id, binlog_file)[:-1] + "0"


def rollup_prefix(source_id: str) -> str:
    """Every roll-up of a source."""
    return f"{BINLOG}{enc(source_id)}/{ROLLUP_DIR}/"


def segment_rollup(source_id: str, binlog_file: str) -> str:
    """The index entries of one binlog file in one object. For a finished file that the head
    names, authoritative (the file's entries are not listed); otherwise a cache."""
    return f"{BINLOG}{enc(source_id)}/{ROLLUP_DIR}/{enc(binlog_file)}{ROLLUP_SUFFIX}"


def rollup_file_of(key: str) -> str | None:
    """The binlog file of a roll-up key, or None for any other key."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] + "/" == BINLOG and parts[2] == ROLLUP_DIR \
            and parts[3].endswith(ROLLUP_SUFFIX):
        return dec(parts[3].removesuffix(ROLLUP_SUFFIX))
    return None


SUMMARY_NAME = "summary.json.zst"


def binlog_summary(source_id: str) -> str:
    """The summary of a source's finished binlog files (repo/stretches.py): for each file, its
    stretches and the ETag and size of the roll-up they were made from. Derived data, replaced in
    place when a roll-up is written; a reader uses a file's entry only while the listed roll-up
    has that ETag and size. Under _rollup/, so the listing of the roll-ups shows it."""
    return f"{BINLOG}{enc(source_id)}/{ROLLUP_DIR}/{SUMMARY_NAME}"


def rollup_chunk(source_id: str, binlog_file: str, start: int, end: int) -> str:
    """The index entries of binlog_file that start in [start, end), in one object: written while
    the file is still open, in levels (repo/rollups.py), authoritative for that interval."""
    return (f"{BINLOG}{enc(source_id)}/{ROLLUP_DIR}/{enc(binlog_file)}/"
            f"{start:012d}-{end:012d}{ROLLUP_SUFFIX}")


def rollup_chunk_prefix(source_id: str, binlog_file: str) -> str:
    """Every chunk of one binlog file."""
    return f"{BINLOG}{enc(source_id)}/{ROLLUP_DIR}/{enc(binlog_file)}/"


def chunk_summary(source_id: str, binlog_file: str) -> str:
    """The summary of an open file's chunks (repo/rollups.py): for each chunk of the writer's
    chain, its stretches and the ETag and size of the chunk they were made from. Derived data,
    replaced in place after each chunk; beside the chunks, so it goes with them."""
    return f"{rollup_chunk_prefix(source_id, binlog_file)}{SUMMARY_NAME}"


def rollup_chunk_of(key: str) -> tuple[str, int, int] | None:
    """(binlog file, start, end) of a chunk key, or None for any other key."""
    parts = key.split("/")
    if len(parts) == 5 and parts[0] + "/" == BINLOG and parts[2] == ROLLUP_DIR \
            and parts[4].endswith(ROLLUP_SUFFIX):
        start, _, end = parts[4].removesuffix(ROLLUP_SUFFIX).partition("-")
        if start.isdigit() and end.isdigit():
            return dec(parts[3]), int(start), int(end)
    return None


def chunk_summary_of(key: str) -> str | None:
    """The binlog file of a chunk summary key, or None for any other key."""
    parts = key.split("/")
    if len(parts) == 5 and parts[0] + "/" == BINLOG and parts[2] == ROLLUP_DIR \
            and parts[4] == SUMMARY_NAME:
        return dec(parts[3])
    return None


def index_from(source_id: str, binlog_file: str, pos: int) -> str:
    """A key just before every index entry of binlog_file starting at or after pos (for
    list_after): entries are named <start>-<end>, 12 digits each."""
    return f"{segment_file_prefix(source_id, binlog_file)}{pos:012d}"


def is_segment_index(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 5 and parts[0] + "/" == BINLOG and parts[2] == INDEX_DIR \
        and parts[4].endswith(".json")


def segment_of(key: str) -> tuple[str, int, int] | None:
    """(binlog file, start, end) of a segment index key, or None for any other key."""
    if not is_segment_index(key):
        return None
    parts = key.split("/")
    start, _, end = parts[4].removesuffix(".json").partition("-")
    if not (start.isdigit() and end.isdigit()):
        return None
    return dec(parts[3]), int(start), int(end)


# -- format 1 (read by repo/migrate.py only) -------------------------------------------
def legacy_segment_of(key: str) -> tuple[str, str, int, int, str] | None:
    """(source, binlog file, start, end, "index" or "data") of a format-1 segment key
    (binlog/<src>/<file>/<start>-<end>.json or .binlog.zst), or None."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != BINLOG or parts[2] in (ROLLUP_DIR, "gaps"):
        return None
    name = parts[3]
    for suffix, kind in ((".json", "index"), (".binlog.zst", "data")):
        if name.endswith(suffix):
            start, _, end = name.removesuffix(suffix).partition("-")
            if start.isdigit() and end.isdigit():
                return dec(parts[1]), dec(parts[2]), int(start), int(end), kind
    return None


COMPACTED_DIR = "compacted"


def compaction_record(source_id: str, binlog_file: str, start: int, end: int,
                      due: float | None = None, pieces: int = 0) -> str:
    """What a compacted segment [start, end) of binlog_file replaced, and when that may go
    (operations/compact.py): written after its index entry, removed once the pieces' data is
    deleted at the end of the grace period. Not a commit marker: it only says what to delete.
    due (the end of its grace, whole seconds rounded up) and the number of pieces are in the
    key, so that a run reads only the records that are due; a key without them (written before)
    is read to learn its due time."""
    tail = f"{start:012d}-{end:012d}" + (f".due-{math.ceil(due)}.n-{pieces}" if due is not None else "")
    return f"{BINLOG}{enc(source_id)}/{COMPACTED_DIR}/{enc(binlog_file)}/{tail}.json"


_RECORD_NAME = re.compile(r"^(\d+)-(\d+)(?:\.due-(\d+)\.n-(\d+))?\.json$")


def compaction_record_of(key: str) -> tuple[str, int, int, float | None, int] | None:
    """(binlog file, start, end, due or None, pieces) of a compaction record's key; None when
    key is not one. due is None for a key written before the due time was in it."""
    if not is_compaction_record(key):
        return None
    parts = key.split("/")
    m = _RECORD_NAME.match(parts[4])
    if m is None:
        return None
    due = float(m.group(3)) if m.group(3) is not None else None
    return dec(parts[3]), int(m.group(1)), int(m.group(2)), due, int(m.group(4) or 0)


def compaction_prefix(source_id: str) -> str:
    """Every compaction record of a source (a few per level and grace period)."""
    return f"{BINLOG}{enc(source_id)}/{COMPACTED_DIR}/"


def is_compaction_record(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 5 and parts[0] + "/" == BINLOG and parts[2] == COMPACTED_DIR \
        and parts[4].endswith(".json")


def gap_record(source_id: str, binlog_file: str, pos: int) -> str:
    """A recorded gap in the shipped binlog, named after where the gap begins."""
    return f"{BINLOG}{enc(source_id)}/gaps/{enc(binlog_file)}-{pos:012d}.json"


def gaps_prefix(source_id: str) -> str:
    return f"{BINLOG}{enc(source_id)}/gaps/"


def shipper_status(source_id: str) -> str:
    """The shipper's small status object: the confirmed-through watermark, the shipped server.
    Replaced in place (at most every few seconds while idle); never a commit marker."""
    return f"{BINLOG}{enc(source_id)}/shipper-status.json"


def binlog_head(source_id: str) -> str:
    """The source's head: the newest committed segment's index entry and the finished roll-ups,
    replaced after each commit so that the resume point needs one GET rather than a full LIST.
    A cache, never a commit marker: the listed index entries still decide what exists."""
    return f"{BINLOG}{enc(source_id)}/head.json"


def source_of(key: str) -> str | None:
    """The source id of a binlog key."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] + "/" == BINLOG:
        return dec(parts[1])
    return None


# -- verify ---------------------------------------------------------------------------
VERIFY = "verify/"


def verified_record() -> str:
    """What `verify` has checked (object key and checksum) and when it last read everything: later
    runs check only what is new. Replaced by each run; never a commit marker."""
    return f"{VERIFY}verified.json.zst"


def verified_file_record(source_id: str, binlog_file: str) -> str:
    """What `verify` has checked of one binlog file whose segments are recorded one by one (the
    open file; a finished one with damage): a run reads only the records of the files it checks."""
    return f"{VERIFY}binlog/{enc(source_id)}/{enc(binlog_file)}.json.zst"


def is_replaced_in_place(key: str) -> bool:
    """Small state objects each writer replaces in place (the head, the shipper's status, the
    verify records): two targets may hold different versions of them, and that is no damage."""
    if key.startswith(VERIFY):
        return True
    return key.startswith(BINLOG) and key.rsplit("/", 1)[-1] in ("head.json", "shipper-status.json")


# -- leases and records -----------------------------------------------------------
def shipper_lease(source_id: str) -> str:
    """The lease a binlog shipper holds so that only one ships each source."""
    return f"{LEASES}ship-{enc(source_id)}.json"


def restore_record(record_id: str) -> str:
    """A measured restore (a drill or a real one): feeds the RTO in the loss report."""
    return f"{RESTORES}{record_id}.json"


# -- replication (repo/placement.py, repo/sync.py) ------------------------------------
def is_commit_marker(key: str) -> bool:
    """Objects whose existence commits something: copied last, and only after their data."""
    return (key == REPO_CONFIG or backup_id_of(key) is not None or is_segment_index(key)
            or (key.startswith(BINLOG) and "/gaps/" in key) or key.startswith(RESTORES))


def commit_marker_of(key: str) -> str | None:
    """The manifest or segment index that records a data object's checksum, or None."""
    parts = key.split("/")
    if parts[0] + "/" == BACKUPS and len(parts) >= 3 and not is_commit_marker(key):
        return backup_manifest(parts[1])
    if parts[0] + "/" == BINLOG and len(parts) == 5 and parts[2] == DATA_DIR \
            and parts[4].endswith(".binlog.zst"):
        parts[2] = INDEX_DIR
        return "/".join(parts).removesuffix(".binlog.zst") + ".json"
    legacy = legacy_segment_of(key)  # data left in place by `repo migrate`, named by a format-2 entry
    if legacy is not None and legacy[4] == "data":
        return segment_index(*legacy[:4])
    return None


def is_replicated(key: str) -> bool:
    """Objects a mirror keeps on every target (leases live on one target only)."""
    return not key.startswith(LEASES)

