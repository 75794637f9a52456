"""Where `gateway up` binds: free-port checks and the Prefect API address it will use."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from common.settings import Settings
from gateway.devstack.errors import UpError

DEFAULT_PREFECT_PORT = 4200


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind `host:port` now (SO_REUSEADDR like uvicorn, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def prefect_api_for_up(settings: Settings) -> str:
    """The Prefect API URL the stack will use: PREFECT_API_URL as given, else 4200 or any free port.

    An explicit URL is the user's choice, so a taken port is an error; the default one is internal, so another
    port is picked instead.
    """
    if settings.prefect_api_url:
        parts = urlsplit(settings.prefect_api_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        if not port_free(host, port):
            raise UpError(
                f"port {port} of PREFECT_API_URL ({host}) is already in use; stop what runs there or unset "
                "PREFECT_API_URL to let `gateway up` pick a port"
            )
        return settings.prefect_api_url
    host = "127.0.0.1"
    port = DEFAULT_PREFECT_PORT if port_free(host, DEFAULT_PREFECT_PORT) else _any_free_port(host)
    return f"http://{host}:{port}/api"


def flower_port_for_up(host: str, asked: int | None) -> int:
    """Flower's port: the one asked for (an error if taken), else 5555, else any free port."""
    from gateway.devstack.flower import DEFAULT_PORT

    if asked is not None:
        if not port_free(host, asked):
            raise UpError(f"port {asked} on {host} is already in use; pick another with --flower-port")
        return asked
    return DEFAULT_PORT if port_free(host, DEFAULT_PORT) else _any_free_port(host)
