"""The leg: one run of a job on one engine, and the one state machine every transition goes through."""
