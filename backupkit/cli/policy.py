"""backupkit policy ..."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("check")
def check(
    file: str = typer.Argument(..., help="Policy file to validate."),
    offline: bool = typer.Option(False, "--offline", help="Validate only; do not connect."),
) -> None:
    """Validate a policy file, then connect to its source and its storage."""
    from backupkit.cli.common import render
    from backupkit.cli.context import COMMON
    from backupkit.config import Settings
    from backupkit.mysql.connection import connect
    from backupkit.mysql.server import server_facts

    st = Settings.resolve(file, COMMON.storage, COMMON.source)
    result: dict = {"policy": st.policy.name, "file": file, "valid": True}
    if not offline:
        spec = st.source_spec()
        conn = connect(spec)
        try:
            facts = server_facts(conn)
        finally:
            conn.close()
        result["source"] = {"url": spec.display(), "flavor": facts.flavor, "version": facts.version,
                            "log_bin": facts.log_bin, "binlog_format": facts.binlog_format}
        store = st.open_store(create=False)
        store.check()
        result["storage"] = store.describe()

    def human(c) -> None:
        c.print(f"{file}: policy {st.policy.name!r} is valid")
        if "source" in result:
            s = result["source"]
            c.print(f"source  {s['url']}: {s['version']}, log_bin={s['log_bin']}, "
                    f"binlog_format={s['binlog_format']}")
            c.print(f"storage {result['storage']}: reachable")

    render(result, human)
