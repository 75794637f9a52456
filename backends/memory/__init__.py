"""An in-memory engine for the fast test layer: scripted states and results, like httpx's `MockTransport`."""
