"""The bundled broker's cluster id (pure unit)."""

import uuid

from cli import broker


def test_cluster_id_never_starts_with_a_dash(monkeypatch):
    # A UUID whose first byte is 0xF8 encodes to a base64url string starting with '-',
    # which Kafka's storage tool would take for an option.
    ids = iter([uuid.UUID(bytes=b"\xf8" + b"\0" * 15), uuid.UUID(bytes=b"\x10" * 16)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(ids))
    cluster_id = broker.new_cluster_id()
    assert not cluster_id.startswith("-") and len(cluster_id) == 22
