"""Processors: turn raw signals into canonical records and join them.

Normalisers are pure functions from raw input to partial records; the joiner is the one
stateful piece; the service consumes, runs both, produces the audit topics and only then
commits its input offsets.
"""
