"""The embedded development stack (`gateway up`): never imported by the service."""
