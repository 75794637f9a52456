"""Comparison of a job's primary leg with its shadow leg: normalise two reports, diff per test, classify."""
