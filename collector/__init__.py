"""The collector: receivers that accept telemetry and forward it, untouched, to Kafka.

It never joins or interprets: every input is either made durable in Kafka or sent to the
dead-letter topic with a reason.
"""
