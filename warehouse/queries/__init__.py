"""The named read queries, one module per subject. Every value from the network is a bound
parameter; no SQL text is ever built from input. `warehouse.operations` lists them with
the roles that may run them."""
