"""A second "host" on this machine: a network namespace joined to the root one by a veth pair (issue 24).

Made by the test with `ip netns`/`ip link`, with its own /30 (10.244.N.0/30, N chosen by a seeded draw), and
removed after (deleting the root end of the pair removes both ends; then the namespace). `cut()` takes the root
end down: the host falls silent for everyone else. A `blackhole` route for the /30 stays beneath the link's own
route, so while it is cut packets to the host are dropped, as on a real cut (without it they would follow the
default route, where this machine's sandbox network accepts any TCP connection). `restore()` brings it back.
Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import random
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """None when namespaces can be made here, else why not."""
    name = f"gw24probe{uuid.uuid4().hex[:6]}"
    try:
        made = _ip("netns", "add", name, check=False)
    except FileNotFoundError:
        return "no `ip` command"
    if made.returncode != 0:
        return f"`ip netns add` refused: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class Host:
    """A namespace: `address` is its own, `peer` the root namespace's end of the link (reachable from it)."""

    name: str
    link: str
    address: str
    peer: str

    def prefix(self) -> list[str]:
        """Run a command on this host: `[*host.prefix(), "cmd", ...]`."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


def _subnets_in_use() -> set[int]:
    """The 10.244.N.0/30 subnets some route already names: a host another run left behind (a run killed before its
    teardown) keeps its link and routes, and reusing its /30 would fail at `route add` ("File exists")."""
    routes = _ip("route", "show", "table", "all", check=False).stdout
    return {int(m) for m in re.findall(r"\b10\.244\.(\d+)\.", routes)}


def _free_subnet(seed: int) -> int:
    """The seeded draw's first subnet that no route names (the same one every run on a clean machine)."""
    draw, taken = random.Random(seed), _subnets_in_use()
    candidates = [draw.randrange(1, 250) for _ in range(64)]
    return next((n for n in candidates if n not in taken), candidates[0])


@contextlib.contextmanager
def host(seed: int) -> Iterator[Host]:
    token = uuid.uuid4().hex[:6]
    subnet = _free_subnet(seed)
    name, link, inner = f"gw24{token}", f"gw24r{token}", f"gw24n{token}"
    peer, address = f"10.244.{subnet}.1", f"10.244.{subnet}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", link, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{peer}/30", "dev", link)
        _ip("link", "set", link, "up")
        _ip("route", "add", "blackhole", f"10.244.{subnet}.0/30", "metric", "4000")
        for args in (("addr", "add", f"{address}/30", "dev", inner), ("link", "set", inner, "up"),
                     ("link", "set", "lo", "up")):  # fmt: skip
            _ip("netns", "exec", name, "ip", *args)
        yield Host(name, link, address, peer)
    finally:
        _ip("route", "del", "blackhole", f"10.244.{subnet}.0/30", check=False)
        _ip("link", "del", link, check=False)
        _ip("netns", "del", name, check=False)
