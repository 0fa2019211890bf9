"""Running an operation on the store file directly, for the CLI while the warehouse is
stopped (DuckDB lets only one process open the file, so while it runs, the CLI goes
through the query API instead).

Verification opens the file read-only and so leaves no trace; everything else opens it
for writing, as `local:<user>` with the admin role (whoever can open the file can do
anything to it), and is access-logged and ledgered like an API request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from nimtrail.config import Config
from nimtrail.errors import NimtrailError
from warehouse.access import local_principal
from warehouse.operations import Context, execute
from warehouse.store import Store


class StoreUnavailable(NimtrailError):
    """The store file is missing or another process (a running warehouse) holds it."""


def _raw(params: dict[str, Any]) -> dict[str, list[str]]:
    out = {}
    for key, value in params.items():
        if value is None or value == "":
            continue
        out[key] = [("true" if value else "false") if isinstance(value, bool) else str(value)]
    return out


def run(config: Config, kind: str, name: str, params: dict[str, Any],
        public_key: Path | None = None) -> Any:
    path = config.warehouse_path
    if not path.exists():
        raise StoreUnavailable(f"no audit store at {path}")
    read_only = (kind, name) == ("query", "verify")
    try:
        if read_only:
            con = duckdb.connect(str(path), read_only=True)
            store = None
        else:
            store = Store(path)
            con = store.reader()
    except duckdb.IOException as e:
        raise StoreUnavailable(f"cannot open {path}: another process has it open (a running "
                               f"warehouse whose query API did not answer?): {e}") from e
    try:
        ctx = Context(store, con, local_principal(), config, "local", public_key=public_key)
        return execute(ctx, kind, name, _raw(params))
    finally:
        con.close()
        if store is not None:
            store.close()
