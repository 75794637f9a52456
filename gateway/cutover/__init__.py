"""Gradual cutover from one engine to another, as pure functions over plain data (no database, no engine).

`stages` (the stages and the config of one migration), `machine` (which changes are allowed: promote, demote,
rollback, set), `buckets` (sticky member buckets), `decide` (where one job goes under a config), `gates` (an
evaluation over comparison evidence, and what the policy does with it). The store keeps the configs and their
events; routing and the reconciler call in here; nothing here imports the rest of the gateway.
"""
