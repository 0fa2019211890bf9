"""nimtrail's shared contracts: topic names, canonical records, configuration, CLI."""

__version__ = "0.1.0"
