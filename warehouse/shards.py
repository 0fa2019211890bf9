"""Warehouse shards: which audit partitions a shard writes, where its files are, and how
the query front reaches the others.

The processor puts every version of a record in the partition its key names
(`kafka_io.partition_of`), so "highest version wins" is decided inside whichever store
holds that partition: shard i of M writes the partitions p with p % M == i, with its own
DuckDB file, ledger, digests and offsets, and needs nothing from the others; and every
governance record (`owns`). One shard is
the plain layout (<data_dir>/audit.duckdb, the API on warehouse.api); with more, shard i
keeps everything under <data_dir>/shards/<i>-of-<M>/ and serves its internal API on
warehouse.api's port + 10 + i, and shard 0 answers the query API over all of them
(warehouse/front.py). A layout names its M, so running with another number of shards
starts new stores instead of mixing partitions into files that held others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from pathlib import Path

from nimtrail.config import Config, HostPort

log = logging.getLogger(__name__)
TOKEN_HEADER = "X-Nimtrail-Shard-Token"


# On one host, shard i > 0 serves its internal API on warehouse.api's port + 10 + i (8711,
# 8712, ...): beside the processors' ops ports, 8701 + k for the k-th standby.
PORT_OFFSET = 10


def port_offset(index: int) -> int:
    """How far shard `index`'s port is from warehouse.api's on one host (0 for the front)."""
    return PORT_OFFSET + index if index else 0


def sharded(config: Config) -> bool:
    return config.warehouse.shards > 1


def name(config: Config, index: int | None = None) -> str:
    """What a shard is called where it is named (verify's problems, logs, digest keys)."""
    w = config.warehouse
    return f"shard {w.shard if index is None else index} of {w.shards}"


def owns(config: Config, topic: str, partition: int) -> bool:
    """Whether this shard writes `topic`'s `partition`. The governance records (the audit
    deployments topic) are few and joined by calls, actions and samples everywhere: every
    shard writes all of them, as Kafka Streams replicates a GlobalKTable to every instance,
    so those joins stay inside a shard."""
    return (topic == config.topics.audit_deployments
            or partition % config.warehouse.shards == config.warehouse.shard)


def digest_prefix(config: Config) -> str:
    """Digest files of all shards share the digests topic: each shard's keys start with
    its layout directory's name ("" for one shard, so unsharded keys are unchanged)."""
    w = config.warehouse
    return f"{w.shard}-of-{w.shards}/" if sharded(config) else ""


def for_shard(config: Config, index: int | None = None) -> Config:
    """The configuration shard `index` (default: warehouse.shard) runs with: its own data
    directory, API port (unless warehouse.shard_api puts each shard on a host of its own)
    and digest copy directory; the signing key and the shards' token stay where the base
    configuration puts them. One shard: `config` unchanged."""
    w = config.warehouse
    index = w.shard if index is None else index
    if not sharded(config):
        return config
    base = Path(config.data_dir)
    layout = f"{index}-of-{w.shards}"
    store = ""
    if w.path:  # an explicit file: the shard's file beside it
        explicit = Path(w.path)
        store = str(explicit.with_name(f"{explicit.stem}-{layout}{explicit.suffix}"))
    warehouse = dataclasses.replace(
        w, shard=index, path=store,
        api=w.api if w.shard_api else HostPort(
            f"{w.api.rpartition(':')[0]}:{w.api.port + port_offset(index) if w.api.port else 0}"),
        keys_dir=w.keys_dir or str(base / "keys"),
        shard_token_file=w.shard_token_file or str(base / "shards" / "token"),
        digest_copy_dir=str(Path(w.digest_copy_dir) / layout) if w.digest_copy_dir else "")
    return dataclasses.replace(config, data_dir=str(base / "shards" / layout), warehouse=warehouse)


def all_shards(config: Config) -> list[Config]:
    return [for_shard(config, i) for i in range(config.warehouse.shards)]


def peer_url(config: Config, index: int) -> str:
    """Where shard `index` serves its API, as a shard running with `config` (its own,
    from `for_shard`: its port is the layout's + its offset) reaches it; or where
    warehouse.shard_api says."""
    w = config.warehouse
    if w.shard_api:
        return f"http://{w.shard_api.replace('{shard}', str(index))}"
    host = "127.0.0.1" if w.api.host in ("", "0.0.0.0") else w.api.host
    return f"http://{host}:{w.api.port - port_offset(w.shard) + port_offset(index)}"


def token(config: Config, create: bool = False) -> str:
    """The shards' shared secret (`create`: make it on first start, mode 0600)."""
    path = Path(config.warehouse.shard_token_file or Path(config.data_dir) / "shards" / "token")
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another shard made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
                f.flush()
                os.fsync(f.fileno())
    return path.read_text().strip()


def as_on_disk(config: Config) -> Config:
    """`config` with warehouse.shards as the data directory holds them, when the
    configuration names none (`nimtrail up --shards M` sets it for its children only) and
    one layout is all there is: offline commands find the stores a sharded run wrote."""
    if sharded(config) or config.warehouse_path.exists():
        return config
    counts = {p.name.split("-of-")[1] for p in (Path(config.data_dir) / "shards").glob("*-of-*")}
    if len(counts) != 1 or not (count := counts.pop()).isdigit():
        return config
    return dataclasses.replace(config, warehouse=dataclasses.replace(config.warehouse, shards=int(count)))


def other_layouts(config: Config) -> list[str]:
    """Shard directories of other numbers of shards: stores this layout does not read."""
    root = Path(config.data_dir).parent if sharded(config) else Path(config.data_dir) / "shards"
    mine = Path(config.data_dir).name if sharded(config) else None
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and "-of-" in p.name
                  and not p.name.endswith(f"-of-{config.warehouse.shards}") and p.name != mine)
