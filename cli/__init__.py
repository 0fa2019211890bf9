"""The `nimtrail` command: its commands, the supervisor behind `nimtrail up`, the demo
launcher and the bundled Kafka broker.

The base package `nimtrail` holds the contracts every stage shares (topics, records,
config, Kafka I/O, the deployment model) and imports no stage; this package sits on top
of the stages and starts or queries them.
"""
