"""No record too large, no message poisons a stage: hostile OTLP through the running
pipeline (collector → Kafka → processor → Kafka → warehouse), every acknowledged call and
action counted in the warehouse through its query API."""

from __future__ import annotations

import urllib.request

from hypothesis import HealthCheck, given, settings, strategies as st

from nimtrail import api_client
from tests.harness import wait_for
from tests.hostile import agent_trace, post_traces, stored

POISON = "\x01" * (3 * 1024 * 1024)  # 3 MiB that JSON escapes to 18 MiB


def _start(env):
    for stage in ("warehouse", "processor", "collector"):
        env.start(stage)
    for stage in ("warehouse", "processor", "collector"):
        env.wait_ready(stage)


def _all_arrive(env, sent: list[dict[str, str]], timeout: float = 120.0) -> None:
    calls = {s["call_id"] for s in sent}
    tool_calls = {s["tool_call_id"] for s in sent}

    def arrived():
        missing_calls = calls - stored(env.api, "calls", "call_id")
        missing_actions = tool_calls - stored(env.api, "actions", "tool_call_id")
        return not missing_calls and not missing_actions

    wait_for(arrived, timeout=timeout, interval=0.5,
             what=f"all {len(calls)} calls and {len(tool_calls)} actions in the warehouse")


def _processor_metrics(env) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{env.ports['ops']}/metrics", timeout=10) as r:
        return r.read().decode()


def test_the_poison_request_is_bounded_and_the_200_traces_after_it_all_arrive(env):
    _start(env)
    body, poison = agent_trace(0, caller=POISON, tag="poison")
    assert len(body) > 6_000_000
    assert post_traces(env.otlp_http, body) == 200  # acknowledged: it must not be lost

    sent = []
    for n in range(200):
        body, ids = agent_trace(n, tag="after")
        assert post_traces(env.otlp_http, body) == 200
        sent.append(ids)
    _all_arrive(env, [poison, *sent])

    row = next(r for r in stored_rows(env.api, "calls") if r["call_id"] == poison["call_id"])
    prefix, _, tail = row["caller"].partition("…truncated")
    assert set(prefix) == {"\x01"} and len(prefix) < 1024
    assert tail.startswith(", 3145728 bytes, sha256:")
    assert 'nimtrail_processor_truncated_fields_total{field="caller"}' in _processor_metrics(env)


def stored_rows(api: str, name: str) -> list[dict]:
    return api_client.query(api, name, {"limit": 1000})["rows"]


# -- property: whatever the attributes, an acknowledged trace arrives whole --------------------

_SAFE_KEYS = ["enduser.id", "error.type", "nimtrail.tool.target", "gen_ai.agent.name",
              "gen_ai.provider.name", "server.address", "gen_ai.request.model", "gen_ai.tool.type",
              "hostile.a", "hostile.b", "hostile.\x00\x1f"]
_chars = st.characters(blacklist_categories=("Cs",))  # protobuf strings are valid UTF-8
_short = st.text(_chars, max_size=40)
_huge = st.builds(lambda ch, n: ch * n, st.sampled_from(["\x01", "\x00", '"', "\\", "é", "\U0001F600", "a"]),
                  st.integers(1, 1_500_000))
_leaf = _short | _huge | st.integers(-(2 ** 63), 2 ** 63 - 1) | st.floats() | st.booleans()
_tree = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(_short, inner, max_size=5), max_leaves=30)
_deep = st.integers(1, 30).map(lambda depth: _nest(depth))
_value = _leaf | _tree | _deep | st.lists(_short, min_size=500, max_size=3000)


def _nest(depth: int):
    value: object = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(_SAFE_KEYS), _value, max_size=4),
       st.one_of(_short, _huge))
def _post_hostile(env, sent, attributes, caller):
    body, ids = agent_trace(len(sent), hostile=attributes, caller=caller or "x", tag="fuzz")
    status = post_traces(env.otlp_http, body)
    # Refused requests are not acknowledged (and said so); any accepted one must arrive.
    assert status in (200, 400, 413), status
    if status == 200:
        sent.append(ids)


def test_hostile_attributes_never_lose_an_acknowledged_call_or_action(env):
    _start(env)
    sent: list[dict[str, str]] = []
    _post_hostile(env, sent)
    assert len(sent) >= 20  # most hostile requests are acknowledged: this tests those
    _all_arrive(env, sent)
