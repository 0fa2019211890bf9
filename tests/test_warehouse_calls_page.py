"""The `calls` page reads only where its rows were written: the page's whole rows by the
seconds they were observed in, its actions where the warehouse's index says they are. The
answer is the one a reader without those hints gets, replaced calls included."""

from __future__ import annotations

import pytest

from nimtrail import config as config_mod
from tests.warehouse_data import action, call, write
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.params import Params
from warehouse.queries.calls import CALLS_PARAMS, _whole_rows, calls
from warehouse.store import Store

SRE = Principal("sre", "viewer")


@pytest.fixture()
def store(tmp_path):
    store = Store(tmp_path / "audit.duckdb")
    # Calls written over several days (each batch a commit of its own), actions for every
    # other call, and then a newer version of an old call, written now.
    for day in range(5):
        ids = [f"d{day}-{i}" for i in range(40)]
        write(store, "model_call", [call(c, days=day + i / 1000) for i, c in enumerate(ids)])
        write(store, "tool_action", [action(f"a-{c}", c, days=day) for c in ids[::2]])
    write(store, "model_call", [call("d4-3", days=4 + 3 / 1000, version=2, caller="bob")])
    yield store
    store.close()


def _page(store: Store, **params: str) -> dict:
    ctx = Context(store, store.reader(), SRE, config_mod.load(None, env={}))
    return execute(ctx, "query", "calls", {k: [v] for k, v in params.items()})


@pytest.mark.parametrize("params", [{}, {"limit": "7"}, {"limit": "30", "offset": "25"}, {"caller": "bob"},
                                    {"limit": "1000"}])
def test_the_page_is_the_one_read_without_hints(store, params):
    asked = Params({k: [v] for k, v in params.items()}, CALLS_PARAMS)
    located = calls(store.reader(), asked, store.written_where)
    assert located == calls(store.reader(), asked)
    assert located["rows"], params
    served = _page(store, **params)  # what the query API answers: the same page
    assert [(r["call_id"], r["actions"]) for r in served["rows"]] == [
        (r["call_id"], r["actions"]) for r in located["rows"]]


def test_a_replaced_call_and_the_actions_of_an_old_one_are_found(store):
    rows = {r["call_id"]: r for r in _page(store, limit="1000")["rows"]}
    assert len(rows) == 200
    assert rows["d4-3"]["version"] == 2 and rows["d4-3"]["caller"] == "bob"
    assert [a["action_id"] for a in rows["d4-2"]["actions"]] == ["a-d4-2"]
    assert rows["d4-3"]["actions"] is None  # odd calls have no action


def test_a_page_whose_row_moved_since_is_read_whole(store):
    """Between the page's ids and its rows a newer version may be written (observed
    later): the rows are read again without the bound rather than lost."""
    assert [r["call_id"] for r in _whole_rows(store.reader(), [("d1-5", 0), ("d0-1", 0)])] == ["d0-1", "d1-5"]
