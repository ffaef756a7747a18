"""The streamed tar writer and the safe extractor (backupkit.strategies.cold.tar and untar), on real files."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from backupkit.errors import IntegrityError
from backupkit.strategies.cold.tar import FileRecord, Root, TarWriter, link_stays_inside
from backupkit.strategies.cold.untar import UnsafeArchive, check_records, extract, resolve_link

MiB = 1 << 20


def _tree(base: Path) -> Path:
    src = base / "src"
    (src / "db" / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    (src / "db" / "t.ibd").write_bytes(os.urandom(300_000))
    (src / "db" / "deep" / "empty").write_bytes(b"")
    with open(src / "sparse.bin", "wb") as fh:  # data, a 50 MiB hole, data, a trailing hole
        fh.write(b"a" * 5000)
        fh.seek(50 * MiB)
        fh.write(b"b" * 70_000)
        fh.truncate(120 * MiB)
    os.symlink("db/t.ibd", src / "inside-link")
    os.chmod(src / "db" / "deep", 0o750)
    os.chmod(src / "a.txt", 0o640)
    return src


def _chunks(data: bytes, size: int = 10_007):
    return [data[i:i + size] for i in range(0, len(data), size)]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def test_round_trip_keeps_content_modes_links_and_holes(tmp_path):
    src = _tree(tmp_path)
    writer = TarWriter([Root("data", src)])
    data = b"".join(writer)
    stats = writer.stats
    assert stats.files == 4 and stats.symlinks == 1 and stats.sparse_files == 1
    # the holes are neither read nor stored
    assert len(data) < 2 * MiB
    out = tmp_path / "out"
    out.mkdir()
    result = extract(_chunks(data), {"data": out}, stats.records)
    assert result.files == 4
    for rel in ("a.txt", "db/t.ibd", "db/deep/empty", "sparse.bin"):
        assert _digest(out / rel) == _digest(src / rel)
        assert (out / rel).stat().st_mode == (src / rel).stat().st_mode
        assert int((out / rel).stat().st_mtime) == int((src / rel).stat().st_mtime)
    assert (out / "db" / "deep").stat().st_mode & 0o777 == 0o750
    assert os.readlink(out / "inside-link") == "db/t.ibd"
    assert (out / "sparse.bin").stat().st_size == 120 * MiB
    assert (out / "sparse.bin").stat().st_blocks * 512 < 4 * MiB  # still sparse
    rec = {r.path: r for r in stats.records}["data/sparse.bin"]
    assert rec.sparse and rec.size == 120 * MiB and rec.sha256 == _digest(src / "sparse.bin")


def test_gnu_tar_reads_the_stream_including_sparse_files(tmp_path):
    if not shutil.which("tar"):
        pytest.skip("no tar")
    src = _tree(tmp_path)
    (tmp_path / "x.tar").write_bytes(b"".join(TarWriter([Root("data", src)])))
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "xf", str(tmp_path / "x.tar"), "-C", str(out)], check=True)
    assert _digest(out / "data" / "sparse.bin") == _digest(src / "sparse.bin")
    assert _digest(out / "data" / "db" / "t.ibd") == _digest(src / "db" / "t.ibd")


def test_links_leading_outside_and_special_files_are_not_archived(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "secret").write_text("outside")
    os.symlink("/etc/passwd", src / "abs-link")
    os.symlink("../secret", src / "up-link")
    os.mkfifo(src / "fifo")
    writer = TarWriter([Root("data", src)])
    data = b"".join(writer)
    reasons = {s.path: s.reason for s in writer.stats.skipped}
    assert set(reasons) == {"data/abs-link", "data/up-link", "data/fifo"}
    assert b"outside" not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["data"]


def test_link_stays_inside():
    assert link_stays_inside("a/b", "c")
    assert link_stays_inside("a/b", "../c")
    assert not link_stays_inside("a/b", "../../c")
    assert not link_stays_inside("b", "/etc/passwd")
    assert not link_stays_inside("b", "")


def _crafted(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _file(name: str, payload: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    return info, payload


def _rec(name: str, payload: bytes) -> FileRecord:
    return FileRecord(path=name, type="file", mode=0o644, size=len(payload),
                      sha256=hashlib.sha256(payload).hexdigest())


def _root_rec() -> tuple[tuple[tarfile.TarInfo, None], FileRecord]:
    info = tarfile.TarInfo("data")
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return (info, None), FileRecord(path="data", type="dir", mode=0o755)


@pytest.mark.parametrize("evil", ["data/../escaped", "../escaped", "/tmp/escaped-abs",
                                  "data/./x", "other/x"])
def test_unsafe_names_are_refused_before_anything_is_written(tmp_path, evil):
    out = tmp_path / "target" / "data"
    out.mkdir(parents=True)
    root_member, root_rec = _root_rec()
    data = _crafted([root_member, _file("data/ok", b"fine"), _file(evil, b"evil")])
    # a manifest that lists the evil name is refused before extraction begins
    with pytest.raises(UnsafeArchive):
        extract(_chunks(data), {"data": out}, [root_rec, _rec("data/ok", b"fine"), _rec(evil, b"evil")])
    assert list(out.iterdir()) == []
    # a clean manifest with an evil archive: refused at that member, nothing outside
    with pytest.raises(IntegrityError):
        extract(_chunks(data), {"data": out}, [root_rec, _rec("data/ok", b"fine")])
    assert not (tmp_path / "target" / "escaped").exists()
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-abs").exists()
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["data"]


def test_links_escaping_the_target_hard_links_and_devices_are_refused(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    root_member, root_rec = _root_rec()
    sym = tarfile.TarInfo("data/link")
    sym.type = tarfile.SYMTYPE
    sym.linkname = "../../etc"
    with pytest.raises(UnsafeArchive):
        check_records([root_rec, FileRecord(path="data/link", type="symlink", target="../../etc")],
                      ["data"])
    with pytest.raises(UnsafeArchive):  # the archive's link differs from the manifest's
        extract(_chunks(_crafted([root_member, (sym, None)])), {"data": out},
                [root_rec, FileRecord(path="data/link", type="symlink", target="ok")])
    hard = tarfile.TarInfo("data/hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "data/x"
    dev = tarfile.TarInfo("data/dev")
    dev.type = tarfile.CHRTYPE
    for member, kind in ((hard, "hardlink"), (dev, "device")):
        with pytest.raises(UnsafeArchive):
            check_records([root_rec, FileRecord(path=member.name, type=kind)], ["data"])
        with pytest.raises(UnsafeArchive):
            extract(_chunks(_crafted([root_member, (member, None)])), {"data": out},
                    [root_rec, FileRecord(path=member.name, type="file")])
    assert list(out.iterdir()) == []


def test_writing_through_a_symlink_is_refused(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    root_member, root_rec = _root_rec()
    sym = tarfile.TarInfo("data/sub")
    sym.type = tarfile.SYMTYPE
    sym.linkname = "."  # inside, but then used as a folder to write through
    data = _crafted([root_member, (sym, None), _file("data/sub/x", b"x")])
    with pytest.raises(UnsafeArchive):
        extract(_chunks(data), {"data": out},
                [root_rec, FileRecord(path="data/sub", type="symlink", target="."),
                 _rec("data/sub/x", b"x")])
    assert not (out / "x").exists()


def test_damaged_content_and_missing_members_are_integrity_errors(tmp_path):
    root_member, root_rec = _root_rec()
    data = _crafted([root_member, _file("data/f", b"real")])
    out = tmp_path / "a"
    out.mkdir()
    with pytest.raises(IntegrityError, match="checksum"):
        extract(_chunks(data), {"data": out}, [root_rec, _rec("data/f", b"fake")])
    out = tmp_path / "b"
    out.mkdir()
    with pytest.raises(IntegrityError, match="lacks"):
        extract(_chunks(data), {"data": out}, [root_rec, _rec("data/f", b"real"), _rec("data/g", b"")])
    out = tmp_path / "c"
    out.mkdir()
    with pytest.raises(IntegrityError, match="not in the manifest"):
        extract(_chunks(data), {"data": out}, [root_rec])


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def test_chained_links_leading_outside_are_refused(tmp_path):
    """data/d1/d2/l2 -> ../.. makes d1/d2/l2/../OUTSIDE the folder above data (issue 14, defect 4)."""
    out = tmp_path / "target" / "data"
    out.mkdir(parents=True)
    root_member, root_rec = _root_rec()
    members = [root_member, _dir("data/d1"), _dir("data/d1/d2"), _link("data/d1/d2/l2", "../.."),
               _link("data/aria_log_control", "d1/d2/l2/../OUTSIDE")]
    records = [root_rec, FileRecord(path="data/d1", type="dir", mode=0o755),
               FileRecord(path="data/d1/d2", type="dir", mode=0o755),
               FileRecord(path="data/d1/d2/l2", type="symlink", target="../.."),
               FileRecord(path="data/aria_log_control", type="symlink", target="d1/d2/l2/../OUTSIDE")]
    assert link_stays_inside("aria_log_control", "d1/d2/l2/../OUTSIDE")  # the old, textual check
    with pytest.raises(UnsafeArchive, match="through other links"):
        check_records(records, ["data"])
    with pytest.raises(UnsafeArchive):
        extract(_chunks(_crafted(members)), {"data": out}, records)
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["data"]


@pytest.mark.parametrize(("links", "bad"), [
    ({"a": "b", "b": "a"}, "a"),                      # a loop
    ({"x/l": "..", "y": "x/l/.."}, "y"),              # x/l is the root, so y is its parent
    ({"x/l": "../..", "y": "x/l/z"}, "y"),
    ({"l1": "x", "x": "../out"}, "l1"),                # a link to a link that leaves
])
def test_resolve_link_follows_links_like_the_kernel(links, bad):
    assert resolve_link(bad, links) is None


def test_resolve_link_keeps_links_that_stay_inside():
    links = {"d/l": "..", "y": "d/l/d/f", "z": "y", "w": "./d/../d"}
    assert resolve_link("d/l", links) == ""
    assert resolve_link("y", links) == "d/f"
    assert resolve_link("z", links) == "d/f"
    assert resolve_link("w", links) == "d"


def test_setuid_and_setgid_bits_are_dropped(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    root_member, root_rec = _root_rec()
    info, payload = _file("data/suid", b"#!/bin/sh\n")
    info.mode = 0o6755
    sub = tarfile.TarInfo("data/sub")
    sub.type = tarfile.DIRTYPE
    sub.mode = 0o2775
    rec = _rec("data/suid", payload)
    rec.mode = 0o6755
    extract(_chunks(_crafted([root_member, (info, payload), (sub, None)])), {"data": out},
            [root_rec, rec, FileRecord(path="data/sub", type="dir", mode=0o2775)])
    assert stat.S_IMODE(os.stat(out / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out / "sub").st_mode) == 0o775
