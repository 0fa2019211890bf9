"""Running an operation on the store file directly, for the CLI while the warehouse is
stopped (DuckDB lets only one process open the file, so while it runs, the CLI goes
through the query API instead).

Verification opens the file read-only and so leaves no trace; everything else opens it
for writing, as `local:<user>` with the admin role (whoever can open the file can do
anything to it), and is access-logged and ledgered like an API request.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import duckdb

from nimtrail.config import Config
from nimtrail.errors import NimtrailError
from warehouse import front, shards
from warehouse.access import local_principal
from warehouse.operations import Context, execute
from warehouse.store import Store, duckdb_config


class StoreUnavailable(NimtrailError):
    """The store file is missing or another process (a running warehouse) holds it."""


class StoreDamaged(NimtrailError):
    """The store file is not a DuckDB database DuckDB can read: empty, cut short, overwritten."""


# What DuckDB raises on a file whose bytes it cannot read or make sense of (a constraint
# or a binder error is a fault of the operation, not of the file).
UNREADABLE = (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException,
              duckdb.FatalException)


def _locked_by_another_process(path: Path) -> bool:
    """Whether another process holds DuckDB's lock on the file (DuckDB takes a POSIX
    record lock: exclusive for a writer, shared for a reader). Asked of the lock itself,
    so that a file DuckDB cannot read is never mistaken for one that is in use."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's own lock
    return False


def _damaged(path: Path, e: duckdb.Error) -> StoreDamaged:
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else f"is damaged ({size} bytes, unreadable)"
    # DuckDB's message can run over several lines; the report is one
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StoreDamaged(f"the audit store {path} {what}: not a database DuckDB can read "
                        f"({detail}); restore it from a backup, then verify again")


def _raw(params: dict[str, Any]) -> dict[str, list[str]]:
    out = {}
    for key, value in params.items():
        if value is None or value == "":
            continue
        out[key] = [("true" if value else "false") if isinstance(value, bool) else str(value)]
    return out


def run(config: Config, kind: str, name: str, params: dict[str, Any],
        public_key: Path | None = None) -> Any:
    """Run an operation on the store's file. A sharded warehouse's files are verified one
    by one (each names its shard); its other operations need the running front."""
    config = shards.as_on_disk(config)
    if shards.sharded(config):
        if (kind, name) != ("query", "verify"):
            raise StoreUnavailable(f"{kind} {name} on a sharded warehouse ({config.warehouse.shards} "
                                   "shards) needs its query front running (shard 0); offline, only "
                                   "verify reads the shards' files")
        layout = shards.all_shards(config)
        return front.verifications([shards.name(c) for c in layout],
                                   [_run_on_file(c, kind, name, params, public_key) for c in layout])
    return _run_on_file(config, kind, name, params, public_key)


def _run_on_file(config: Config, kind: str, name: str, params: dict[str, Any],
                 public_key: Path | None = None) -> Any:
    path = config.warehouse_path
    if not path.exists():
        raise StoreUnavailable(f"no audit store at {path}")
    read_only = (kind, name) == ("query", "verify")
    try:
        if read_only:
            con = duckdb.connect(str(path), read_only=True, config=duckdb_config(config.warehouse))
            store = None
        else:
            store = Store(path, config.warehouse)
            con = store.reader()
    except duckdb.Error as e:
        if _locked_by_another_process(path):
            raise StoreUnavailable(f"cannot open {path}: another process has it open (a running "
                                   "warehouse whose query API did not answer?)") from e
        raise _damaged(path, e) from e
    try:
        ctx = Context(store, con, local_principal(), config, "local", public_key=public_key)
        return execute(ctx, kind, name, _raw(params))
    except UNREADABLE as e:
        # opened, but a part of the file that a query needs cannot be read
        raise _damaged(path, e) from e
    finally:
        con.close()
        if store is not None:
            store.close()
