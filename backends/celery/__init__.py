"""The Celery engine: the app factory, the tasks, and the adapter the gateway uses.

Importing this package imports nothing heavy: the gateway reaches Celery only through `adapter.CeleryAdapter`,
and the worker loads `app` (which lists the task modules in `include`).
"""
