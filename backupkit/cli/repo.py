"""backupkit repo info | sync | targets | migrate | keygen | rotate-key."""

from __future__ import annotations

import typer

from backupkit.cli import options as opt
from backupkit.cli.common import INTERACTIVE_DEADLINE, json_mode, open_repo, render, settings
from backupkit.cli.console import console, emit_json, error_line, progress, table
from backupkit.errors import ConfigError, UsageError
from backupkit.repo import layout
from backupkit.util.units import human_bytes, human_seconds, utc_iso

app = typer.Typer(no_args_is_help=True)


@app.command("info")
def info() -> None:
    """Show the storage target, the repository format and totals."""
    repo = open_repo(create=False)
    repo.store.check()
    cfg = repo.config()
    totals = repo.usage()
    data = {
        "storage": repo.describe(),
        "initialized": cfg is not None,
        "format": cfg.get("format") if cfg else layout.FORMAT_VERSION,
        "repository_id": cfg.get("repository_id") if cfg else None,
        "created_at": utc_iso(cfg.get("created_at")) if cfg else None,
        "sources": repo.sources(),
        "totals": totals,
    }

    def human(c) -> None:
        c.print(f"target        {data['storage']}")
        c.print(f"format        {data['format']}" + ("" if cfg else " (empty: created on first backup)"))
        if cfg:
            c.print(f"repository    {data['repository_id']} created {data['created_at']}")
        c.print(f"backups       {totals['backups']} ({human_bytes(totals['backup_bytes'])})")
        c.print(f"binlog        {totals['segments']} segments ({human_bytes(totals['segment_bytes'])})"
                f" from {len(data['sources'])} source(s)")
        c.print(f"total         {totals['objects']} objects, {human_bytes(totals['bytes'])}")

    render(data, human)


# -- several targets and encryption (storage/mirror/, storage/crypto.py, repo/sync.py) ----------
def _named(spec, create: bool):
    return (spec.name, spec.open_or_unavailable(create=create))


@app.command("sync")
def sync(
    source: list[str] = typer.Option(None, "--from", help="Copy from this target (name, number or URL); "
                                     "repeat for fallbacks. Default: every other policy target."),
    dest: list[str] = typer.Option(None, "--to", help="Complete this target (name, number or URL). "
                                   "Default: every policy target."),
    dry_run: bool = opt.dry_run("Show what is missing; copy nothing."),
    repair: bool = typer.Option(False, "--repair", help="Replace damaged copies on the target with "
                                "verified copies from the source."),
    deep: bool = typer.Option(False, "--deep", help="Also read back and check every object the target "
                              "already holds."),
    parallel: int = typer.Option(4, "--parallel", min=1, max=64, help="Objects copied at once."),
) -> None:
    """Copy what a target lacks from the others, verified; resumable; how a new region is seeded."""
    from backupkit.repo.sync import sync_stores  # lazy: start-up time
    from backupkit.repo.targets import find_target, key_encryption_keys, target_specs  # lazy: start-up time

    cfg = settings()
    spec = cfg.repository_spec()
    policy_targets = target_specs(spec) if spec.configured else []
    dests = [find_target(spec, d) for d in dest] if dest else policy_targets
    if not dests:
        raise UsageError("nothing to sync: the policy has no storage targets",
                         "give --from and --to, or list [[storage.targets]] in the policy")
    keks = key_encryption_keys(spec)
    results = []
    for d in dests:
        srcs = [find_target(spec, s) for s in source] if source else \
            [t for t in policy_targets if t.url != d.url]
        srcs = [s for s in srcs if s.url != d.url]
        if not srcs:
            raise UsageError(f"no source to sync {d.name} from", "give --from")
        with progress(enabled=not json_mode()) as bar:
            task = bar.add_task(f"sync to {d.name}", total=None) if bar else None

            def tick(done: int, total: int, bar=bar, task=task) -> None:
                if bar is not None:
                    bar.update(task, completed=done, total=total or None)

            # A local target folder that does not exist yet is an empty target, not a lost one.
            res = sync_stores([_named(s, True) for s in srcs], _named(d, True), keks=keks,
                              dry_run=dry_run, repair=repair, deep=deep, parallel=parallel, progress=tick)
        results.append(res)
    data = {"results": [r.to_dict() for r in results], "complete": all(r.complete for r in results)}

    def human(c) -> None:
        for r in results:
            verb = "would copy" if r.dry_run else "copied"
            n, b = (r.missing, r.missing_bytes) if r.dry_run else (r.copied, r.copied_bytes)
            c.print(f"[bold]{r.target}[/]: {verb} {n} objects ({human_bytes(b)}) from "
                    f"{', '.join(r.sources)}; {r.present} already there; verified by {r.verified}"
                    + (f"; {r.seconds:.1f} s" if not r.dry_run else ""))
            if r.served_by and len(r.served_by) > 1:
                c.print("  served by " + ", ".join(f"{k}: {v}" for k, v in r.served_by.items()))
            for k in r.repaired:
                c.print(f"  repaired {k}")
            for k in r.damaged:
                c.print(f"  [red]damaged on the target[/] {k} (run with --repair)")
            for f in r.failed:
                c.print(f"  [red]failed[/] {f['key']}: {f['error']}")
            for k in r.held_back:
                c.print(f"  [yellow]held back[/] {k}: some of its objects could not be copied")

    if data["complete"] or dry_run:
        render(data, human)
        return
    integrity = any("checksum" in f["error"] or "authentic" in f["error"] or "corrupt" in f["error"]
                    for r in results for f in r.failed) or any(r.damaged for r in results)
    code = 5 if integrity else 4
    if json_mode():
        emit_json({"ok": False, "exit_code": code, **data})
    else:
        human(console)
        error_line("the sync is incomplete; run it again once the problems above are fixed")
    raise typer.Exit(code)


@app.command("targets")
def targets() -> None:
    """Each storage target: reachable or not, what it lacks (its lag), and what survives its loss."""
    from backupkit.repo.compare import target_status  # lazy: start-up time
    from backupkit.repo.sync import survival_by_target  # lazy: start-up time
    from backupkit.repo.targets import (  # lazy: start-up time
        key_encryption_keys,
        target_specs,
        wrap_encryption,
    )
    from backupkit.restore.loss import loss_report  # lazy: start-up time

    cfg = settings()
    spec = cfg.repository_spec()
    specs = target_specs(spec)
    named = [_named(s, False) for s in specs]
    status = target_status(named, deadline=INTERACTIVE_DEADLINE)
    keks = key_encryption_keys(spec)
    reachable = {r["name"] for r in status if r["reachable"]}
    survival = survival_by_target([n for n in named if n[0] in reachable],
                                  lambda s: wrap_encryption(s, keks), loss_report,
                                  stall_timeout=INTERACTIVE_DEADLINE)
    survival += [{"lost_target": n, "surviving": [], "strategies": [],
                  "error": "unreachable now: not judged"} for n, _ in named if n not in reachable]
    data = {"write_quorum": cfg.policy.storage.write_quorum or len(specs), "targets": status,
            "if_lost": survival}

    def human(c) -> None:
        c.print(table("storage targets", ["target", "reachable", "objects", "missing", "missing backups",
                                          "missing segments", "lag"],
                      [[r["name"], "yes" if r["reachable"] else f"no: {r.get('error', '')}", r["objects"],
                        r["missing_objects"], r["missing_backups"], r["missing_segments"],
                        human_seconds(r["lag_s"]) if r["lag_s"] is not None else "-"] for r in status]))
        c.print(loss_by_target_table(survival))

    render(data, human)


def loss_by_target_table(survival: list[dict]):
    """A rich table: for each target, each strategy's newest recovery point and loss window if it is lost."""
    rows = []
    for s in survival:
        if s.get("error"):
            rows.append([s["lost_target"], "all", s["error"], "-"])
        for x in s["strategies"]:
            point = (f"{utc_iso(x['recovery_point'])} ({x['recovery_source']})"
                     if x["recovery_point"] else "none")
            rows.append([s["lost_target"], x["label"], point, human_seconds(x["loss_seconds"])])
    return table("if one storage target is lost (the others still hold)",
                 ["lost target", "strategy", "newest recovery point", "loss window"], rows)


@app.command("migrate")
def migrate(
    dry_run: bool = opt.dry_run("Count what would be rewritten; change nothing."),
    parallel: int = typer.Option(8, "--parallel", min=1, max=64, help="Index entries copied at once."),
) -> None:
    """Bring a format-1 repository to format 2 (the binlog index apart from its data); stop the
    shippers first. Idempotent: run it again after an interruption."""
    from backupkit.repo.migrate import migrate_repository  # lazy: start-up time

    repo = open_repo(create=False)
    result = migrate_repository(repo.store, dry_run=dry_run, parallel=parallel)
    data = result.to_dict()

    def human(c) -> None:
        if result.from_format is None:
            c.print("empty repository: nothing to migrate (created as format "
                    f"{layout.FORMAT_VERSION} on the first write)")
            return
        verb = "would rewrite" if dry_run else "rewrote"
        c.print(f"format {result.from_format} -> {result.to_format}{' (dry run)' if dry_run else ''}: "
                f"{verb} {result.entries} index entr{'y' if result.entries == 1 else 'ies'} of "
                f"{len(result.sources)} source(s) in {result.seconds:.1f}s (data objects stay in place)")

    render(data, human)


@app.command("keygen")
def keygen(path: str = typer.Argument(..., help="New key file (mode 0600; never overwritten).")) -> None:
    """Create a random 256-bit key file for encryption.key_file (or a rotation)."""
    from backupkit.storage.crypto import write_key_file  # lazy: start-up time

    kek = write_key_file(path)
    data = {"key_file": path, "fingerprint": kek.fingerprint}

    def human(c) -> None:
        c.print(f"created {path} (mode 0600), fingerprint {kek.fingerprint}")
        c.print("keep a copy somewhere safe: without it the repository cannot be read")

    render(data, human)


@app.command("rotate-key")
def rotate_key_cmd(
    new_key_file: str = typer.Option(None, "--new-key-file", help="The new key (a 0600 file)."),
    new_key_env: str = typer.Option(None, "--new-key-env", help="Or an environment variable holding it."),
    new_key_id: str = typer.Option(None, "--new-key-id", help="A label for the new key."),
    retire_old: bool = typer.Option(False, "--retire-old", help="Drop the wraps by the old keys, so only "
                                    "the new key opens the repository."),
    new_data_key: bool = typer.Option(False, "--new-data-key", help="Also start a new data key for new "
                                      "objects (old objects keep theirs)."),
) -> None:
    """Re-wrap the repository's data keys with a new key; no data is re-encrypted."""
    from backupkit.repo.keyring import rotate_key  # lazy: start-up time
    from backupkit.repo.targets import key_encryption_keys, open_raw  # lazy: start-up time
    from backupkit.storage.crypto import load_key_env, load_key_file  # lazy: start-up time

    if bool(new_key_file) == bool(new_key_env):
        raise UsageError("give exactly one of --new-key-file and --new-key-env")
    cfg = settings()
    current = key_encryption_keys(cfg.repository_spec())
    if not current:
        raise ConfigError("the policy has no encryption section", "configure the current key first")
    new = load_key_file(new_key_file, new_key_id) if new_key_file else load_key_env(new_key_env, new_key_id)
    store = open_raw(cfg.repository_spec(), create=False)
    result = rotate_key(store, current, new, retire_old=retire_old, new_data_key=new_data_key)
    data = {"storage": store.describe(), **result, "new_key_fingerprint": new.fingerprint,
            "retired_old": retire_old}

    def human(c) -> None:
        c.print(f"re-wrapped {len(result['data_keys'])} data key(s) in {store.describe()} with key "
                f"{new.key_id or new.fingerprint}")
        c.print("wrapped by: " + ", ".join(f"{w['key_id'] or '?'} ({w['fingerprint']})"
                                           for w in result["wrapped_by"]))
        c.print("now point encryption.key_file (or key_env) of the policy at the new key"
                + ("" if retire_old else "; the old key still opens the repository until --retire-old"))

    render(data, human)
