"""The query front's merges, as pure units: an operation without a merge is refused, not
answered from one shard's part; pages and lookups merge in their query's order."""

from __future__ import annotations

import pytest

from warehouse import front, operations
from warehouse.access import Principal
from warehouse.operations import Context, Operation


class FakeShards:
    """Two shards' answers to each read, as the front would receive them."""

    def __init__(self, answers: dict[str, list]):
        self.answers = answers
        self.names = ["shard 0 of 2", "shard 1 of 2"]

    def ask(self, read: str, args: dict) -> list:
        return self.answers[read]


def test_an_operation_without_a_merge_is_refused_over_shards(monkeypatch):
    bare = Operation("query", "bare", frozenset(), frozenset({"admin"}), lambda ctx, p: {"rows": []})
    monkeypatch.setitem(operations.OPERATIONS, "query/bare", bare)
    ctx = Context(None, None, Principal("p", "admin"), None, shards=FakeShards({}))
    with pytest.raises(front.NotOverShards, match="query/bare is not answered over 2 warehouse shards"):
        operations.execute(ctx, "query", "bare", {})


def test_every_operation_says_how_it_is_answered_over_shards():
    assert [op.path for op in operations.OPERATIONS.values() if op.over_shards is None] == []


def test_rows_merge_newest_first_with_nulls_last_and_ties_by_id():
    found = [{"t": None, "id": "a"}, {"t": "2026-01-01T00:00:01.000000Z", "id": "b"},
             {"t": "2026-01-01T00:00:02.000000Z", "id": "d"}, {"t": "2026-01-01T00:00:02.000000Z", "id": "c"}]
    assert [r["id"] for r in front._ordered(found, ("t", "id"), descending=True)] == ["c", "d", "b", "a"]
    assert [r["id"] for r in front._ordered(found, ("t", "id"))] == ["b", "c", "d", "a"]


def test_verification_names_the_shard_of_each_problem():
    ok = {"ok": True, "problems": [], "warnings": [], "ledger": {"entries": 3}, "rows_checked": {"model_calls": 2},
          "digests": {"checked": 1, "latest": "a", "public_key_sha256": "k"}}
    bad = {**ok, "ok": False, "problems": [{"check": "row", "where": "model_calls call_id=x", "message": "changed"}],
           "digests": {"checked": 2, "latest": "b", "public_key_sha256": "k"}}
    doc = front.verifications(["shard 0 of 2", "shard 1 of 2"], [ok, bad])
    assert not doc["ok"] and doc["first_problem"] == "shard 1 of 2: model_calls call_id=x: changed"
    assert doc["rows_checked"] == {"model_calls": 4} and doc["digests"]["checked"] == 3
    assert doc["digests"]["public_key_sha256"] == "k" and doc["ledger"]["entries"] == 6


def test_a_shard_finds_the_others_on_one_host_or_where_shard_api_says():
    import dataclasses

    from nimtrail.config import Config, HostPort
    from warehouse import shards

    base = Config()
    base = dataclasses.replace(base, warehouse=dataclasses.replace(base.warehouse, shards=3,
                                                                    api=HostPort("127.0.0.1:8700")))
    one = shards.for_shard(base, 2)
    assert one.warehouse.api.port == 8712 and one.data_dir.endswith("shards/2-of-3")
    # (the front on warehouse.api; the others beside the processors' 8701 + k)
    assert [shards.peer_url(one, i) for i in range(3)] == ["http://127.0.0.1:8700", "http://127.0.0.1:8711",
                                                           "http://127.0.0.1:8712"]
    pods = dataclasses.replace(base, warehouse=dataclasses.replace(
        base.warehouse, shard_api="nimtrail-warehouse-{shard}.shards.svc:8700"))
    mine = shards.for_shard(pods, 1)
    assert mine.warehouse.api.port == 8700  # every pod listens on warehouse.api
    assert shards.peer_url(mine, 0) == "http://nimtrail-warehouse-0.shards.svc:8700"
    assert shards.for_shard(Config()) == Config()  # one shard: the plain layout


def test_on_one_host_no_shard_takes_a_port_another_default_listener_has():
    """`nimtrail up --processors N --shards M` runs them all on the default ports."""
    import dataclasses

    from nimtrail.config import Config
    from warehouse import shards

    c = Config()
    taken = {c.collector.otlp_http.port, c.collector.otlp_grpc.port, c.app.port, c.kafka.port,
             *(c.processor.ops.port + k for k in range(8))}
    layout = dataclasses.replace(c, warehouse=dataclasses.replace(c.warehouse, shards=8))
    ports = [shards.for_shard(layout, i).warehouse.api.port for i in range(8)]
    assert ports[0] == c.warehouse.api.port and len(set(ports)) == 8 and not set(ports) & taken
