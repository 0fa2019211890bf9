"""No named query raises on what is stored: times at the ends of what the store holds
(year 1, year 9999, DuckDB's own limits and infinities), huge and negative durations,
NaN and infinite numbers, nulls everywhere, odd histogram buckets. Records are written
into a real DuckDB store the way ingest writes them (and, for what only SQL can put
there, straight into the table); every named query then has to answer, with a result the
API can encode."""

from __future__ import annotations

import datetime as dt
import itertools
import math
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nimtrail import config as config_mod
from nimtrail import records
from tests.warehouse_data import action, call, deployment, sample, write
from warehouse.access import Principal
from warehouse.operations import Context, execute
from warehouse.queries.latency import BUCKETS, GROUPS
from warehouse.store import Store

ADMIN = Principal("ops", "admin")
CONFIG = config_mod.load(None, env={})
_ids = itertools.count()

EDGE_TIMES = [dt.datetime(1, 1, 1), dt.datetime(1, 1, 1, 0, 0, 0, 1), dt.datetime(1970, 1, 1),
              dt.datetime(2554, 7, 21, 23, 34, 33, 709551), dt.datetime(3000, 1, 1),
              dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime.now().replace(microsecond=0)]
EDGE_NUMBERS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, -1.0]
EDGE_INTS = [0, -1, 2**31 - 1, -(2**31)]
EDGE_BIGINTS = [2**63 - 1, -(2**63)]
times = st.one_of(st.none(), st.sampled_from(EDGE_TIMES),
                  st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)))
numbers = st.one_of(st.none(), st.sampled_from(EDGE_NUMBERS), st.floats(allow_nan=True, allow_infinity=True))
big_ints = st.one_of(st.none(), st.sampled_from(EDGE_INTS),
                     st.integers(min_value=-(2**31), max_value=2**31 - 1))
bigint = st.one_of(big_ints, st.sampled_from(EDGE_BIGINTS))
bounds = st.one_of(numbers.filter(lambda v: v is not None), st.sampled_from(["+Inf", "-Inf", "NaN", "x"]))
buckets = st.one_of(st.none(), st.lists(st.tuples(bounds, numbers).map(list), max_size=5),
                    st.dictionaries(st.sampled_from(["0.1", "1", "+Inf", "NaN", "-1", "x"]), numbers, max_size=4))
STRATEGIES = {"time": times, "number": numbers, "int": big_ints, "bigint": bigint, "buckets": buckets}
# The explicit examples take these in turn, so that every edge value is stored whatever
# the generated examples draw.
EDGES = {"time": [None, *EDGE_TIMES], "number": [None, *EDGE_NUMBERS], "int": [None, *EDGE_INTS],
         "bigint": [*EDGE_BIGINTS, None, *EDGE_INTS],
         "buckets": [None, [], [["+Inf", math.nan], ["-Inf", math.inf], ["NaN", -math.inf], ["x", None], [-0.0, 1e308]],
                     [[math.nan, -1e308], [math.inf, 5e-324], [-math.inf, -1.0], [5e-324, 0.0]],
                     {"0.1": math.nan, "1": math.inf, "+Inf": None, "NaN": -0.0},
                     {"-1": -math.inf, "x": 1e308, "+Inf": 5e-324}]}
LATENCY = {"by": sorted(GROUPS), "bucket": ["none", *BUCKETS], "source": ["auto", "calls", "metrics"]}
EXPLICIT = 4  # enough turns for every edge value and every choice (asserted below)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0") + "Z"


def _world(pick) -> dict[str, list[dict]]:
    """One example's records; `pick(name, choices=None)` gives each value: one of `choices`,
    or (without) one of the kind of value `name` is in STRATEGIES."""
    n = next(_ids)
    t = [_iso(pick("time")) for _ in range(6)]
    call_id, action_id = f"c{n}", f"a{n}"
    deployment_id = pick("deployment_id", ["prod/llama", "prod/other", None])
    calls = [call(call_id, started_at=t[0], ended_at=t[1], observed_at=t[2], deployment_id=deployment_id,
                  deployment_version=pick("int"), ttft_ms=pick("number"), e2e_ms=pick("number"),
                  queue_ms=pick("number"), input_tokens=pick("bigint"), output_tokens=pick("bigint"),
                  http_status=pick("int"), tool_call_ids=pick("tool_call_ids", [None, [], ["tc-" + call_id]]),
                  caller=pick("caller", [None, "alice", ""]))]
    actions = [action(action_id, call_id, started_at=t[3], ended_at=t[4], observed_at=t[5],
                      tool_call_id=pick("tool_call_id", [None, "tc-" + call_id]))]
    actions[0]["call_id"] = pick("call_id", [call_id, None, "missing"])
    found = records.new("finding", finding_id=f"f{n}", severity=pick("severity", ["low", None]),
                        subject_ids=[call_id, action_id], detected_at=_iso(pick("time")),
                        detail=pick("detail", [{}, {"status": "open", "x": 1e308}, None]),
                        version=1, observed_at=_iso(pick("time")))
    found["kind"] = pick("kind", ["clock_skew", "ungated_action", None])
    metric = pick("metric", ["vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                             "vllm:num_requests_running"])
    samples = [sample(f"s{n}-{i}", _iso(pick("time")), metric, pick("buckets"),
                      deployment_id=pick("sample_deployment_id", ["prod/llama", None]), value=pick("number"))
               for i in range(2)]
    deployments = [deployment("prod/llama", pick("version", [1, 2, 3]), valid_from=_iso(pick("time")),
                              observed_at=_iso(pick("time")), gpu_count=pick("int"))]
    return {"model_call": calls, "tool_action": actions, "finding": [found], "metric_sample": samples,
            "deployment": deployments}


@st.composite
def worlds(draw) -> dict[str, list[dict]]:
    return _world(lambda name, choices=None: draw(st.sampled_from(choices) if choices else STRATEGIES[name]))


def _edge_examples() -> list[dict]:
    """EXPLICIT examples that take every edge value of each kind, every choice and every
    latency parameter in turn, a turn going on from one example to the next."""
    turns: dict[str, int] = {}
    sizes: dict[str, int] = {}

    def pick(name, choices=None):
        values = choices or EDGES[name]
        turns[name], sizes[name] = turns.get(name, -1) + 1, len(values)
        return values[turns[name] % len(values)]

    examples = [{"world": _world(pick), "latency": {k: pick(k, v) for k, v in LATENCY.items()}}
                for _ in range(EXPLICIT)]
    # Every value had its turn; but the latency bucket, one of nine per example, which the
    # generated examples draw from too.
    assert all(turns[name] + 1 >= sizes[name] for name in sizes if name != "bucket"), (turns, sizes)
    return examples


def _queries(call_id: str, action_id: str, latency: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    wide = {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"}
    out = [("calls", {}), ("calls", wide), ("calls", {"since": "2020-01-01T00:00:00Z"}),
           ("calls", {"call_id": call_id}), ("calls", {"offset": "3", "limit": "1"}),
           ("trace-back", {"call_id": call_id}), ("trace-back", {"action_id": action_id}),
           ("trace-back", {"tool_call_id": "tc-" + call_id}),
           ("actions", {}), ("actions", {"order": "risk"}), ("actions", {"flagged": "true"}), ("actions", wide),
           ("facets", {}), ("facets", {"since": "0001-01-01T00:00:00Z"}),
           ("deployments", {}), ("deployments", {"versions": "all"}),
           ("findings", {}), ("findings", wide), ("findings", {**wide, "group": "false"}), ("holds", {}), ("access-log", {}),
           ("retention-report", {"from": "0001-01-01T00:00:00Z",
                                                           "to": "9999-12-31T00:00:00Z"}), ("verify", {})]
    out += [("latency", latency), ("latency", {**latency, **wide}), ("latency", {"precision": "estimate"})]
    out += [("usage", {"by": by}) for by in ("caller", "deployment", "model")] + [("usage", wide)]
    return out


def _answers(store: Store, name: str, params: dict[str, str]) -> None:
    ctx = Context(store, store.reader(), ADMIN, CONFIG)
    try:
        result = execute(ctx, "query", name, {k: [v] for k, v in params.items()})
    except Exception as e:  # noqa: BLE001 - name the query in the failure
        raise AssertionError(f"query {name} {params} raised {type(e).__name__}: {e}") from e
    finally:
        ctx.con.close()
    orjson.dumps(result)  # what the API answers with


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    store = Store(Path(tmp_path_factory.mktemp("extremes")) / "audit.duckdb")
    # What only SQL can store: DuckDB's own limits and infinities, beyond Python's datetime.
    con = store.con
    for i, when in enumerate(("294247-01-10 04:00:54.775806", "290309-12-22 (BC) 00:00:00", "infinity",
                              "-infinity")):
        con.execute("INSERT INTO model_calls (call_id, started_at, ended_at, observed_at, e2e_ms, ttft_ms, "
                    "deployment_id, deployment_version, version) VALUES (?, ?::TIMESTAMP, ?::TIMESTAMP, "
                    "?::TIMESTAMP, 'inf', 'nan', 'prod/llama', 1, 1)", [f"sql-{i}", when, when, when])
        con.execute("INSERT INTO findings (finding_id, kind, subject_ids, detected_at, version) "
                    "VALUES (?, 'clock_skew', ['sql'], ?::TIMESTAMP, 1)", [f"sql-{i}", when])
        con.execute("INSERT INTO metric_samples (sample_id, ts, metric, value, version) "
                    "VALUES (?, ?::TIMESTAMP, 'vllm:time_to_first_token_seconds', 'nan', 1)", [f"sql-{i}", when])
    yield store
    store.close()


def _with_edge_examples(test):
    for edge in reversed(_edge_examples()):
        test = example(**edge)(test)
    return test


# Each example stores its records and asks every named query (about 30) over the API's
# path: the edge values come from the explicit examples, and a fixed set of generated
# ones adds values in between.
@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@_with_edge_examples
@given(world=worlds(), latency=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in LATENCY.items()}))
def test_every_named_query_answers_on_extreme_stored_values(store, world, latency):
    for kind in ("deployment", "model_call", "tool_action", "finding", "metric_sample"):
        write(store, kind, world[kind])
    call_id, action_id = world["model_call"][0]["call_id"], world["tool_action"][0]["action_id"]
    for name, params in _queries(call_id, action_id, latency):
        _answers(store, name, params)
