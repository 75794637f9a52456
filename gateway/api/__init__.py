"""The HTTP face: the FastAPI app, routes, auth dependencies, response views."""
