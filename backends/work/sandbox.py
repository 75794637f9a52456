"""Run pytest on a prepared directory in a sandbox, with the verdict streamed back on a pipe only the worker reads.

Isolation (`settings.sandbox_isolation`, docs/work.md "Sandbox"):
- `bwrap` (default): bubblewrap puts the run in new user, pid, network, mount, ipc, uts and cgroup namespaces.
  The run sees `/usr` (and the interpreter's prefix) read-only, a generated `/etc/passwd`, its own `/proc` and
  `/dev`, `/work` (the student's files; the reference's files are bind-mounted read-only over their names) and
  `/out` writable, the launcher and the pytest runtime read-only under `/opt/gateway`; nothing else of the
  worker's file system. Its network namespace is empty (not even loopback reaches the worker's services). When
  the worker is root, each run gets a uid of its own (`sandbox_uids`), so RLIMIT_NPROC, signals and file modes
  separate runs. When the outermost bwrap process is killed, its pid namespace and every process in it die.
- `none`: the same launcher and channel under a uid of its own (as root) and rlimits, no namespaces.

The verdict: the worker makes a pipe and hands its write end to the launcher; the launcher registers the verdict
plugin (`sandbox_plugin`) before pytest imports any test; the plugin streams events on it. The worker reads it
while the run goes (live progress) and `verdict.decide` turns it into outcomes. JUnit XML is still written to
`/out`, only to be compared with the channel.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from backends.work import sandbox_clock, sandbox_guard, sandbox_launch, sandbox_plugin
from backends.work.errors import InfrastructureError
from backends.work.sandbox_cgroup import CgroupPlace, MemoryBound, RunGroup, cgroup_place, run_group
from backends.work.sandbox_memory import MemoryWatch
from backends.work.sandbox_runtime import Runtime, build_site, interpreter_candidates, interpreter_prefix
from backends.work.sandbox_slots import SlotUsage, run_slot, slot_count, slot_usage
from backends.work.sandbox_space import mount_space, release_space, space_full
from backends.work.sandbox_uids import kill_uid, run_uid
from backends.work.sandbox_wall import WallClock
from backends.work.sandbox_warm import WarmProcess, warm_runner
from common.settings import SandboxIsolation, SandboxRunner, Settings

log = logging.getLogger(__name__)
_PYTEST_INI = "[pytest]\njunit_family = xunit1\nconsole_output_style = classic\n"
_CHANNEL_CAP = 16 * 1024 * 1024  # more than this on the verdict pipe is a flood, not a test run
_IN = Path("/opt/gateway")  # where the runner and the runtime appear inside a bwrap sandbox


@dataclass(frozen=True)
class Limits:
    """The limits of one run; `from_settings` reads the defaults, meta.yaml may change `timeout`.

    `timeout` is the assignment's time limit; it is enforced as `cpu_seconds` of CPU time of the test process
    from the pytest session's start (`sandbox_clock`), with a measurement tolerance: the clock cuts the run at
    `cpu_allowance` (the limit × (1 + `cpu_tolerance`)), because the same computation costs more CPU time beside
    other busy processes. The wall clock from the same start is limited to `wall_seconds` (generous: a sleep or a
    deadlock, not a computation slowed by load). `startup_seconds` bounds
    the time from the sandbox's start to the session's start; past it the run is an infrastructure error.
    """

    timeout: float
    cpu_seconds: float
    memory_bytes: int
    max_processes: int
    max_file_bytes: int
    output_cap: int
    wall_seconds: float = 0.0
    startup_seconds: float = 120.0
    run_memory_bytes: int = 0  # all of the run's processes together (`sandbox_memory`); 0 = not watched
    cpu_tolerance: float = 0.0  # the CPU clock's measurement tolerance, a share of `cpu_seconds`

    @property
    def cpu_allowance(self) -> float:
        """The CPU time at which the clock cuts the run: the limit plus its measurement tolerance."""
        return self.cpu_seconds * (1.0 + self.cpu_tolerance)

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float | None = None) -> Limits:
        limit = float(timeout if timeout is not None else settings.sandbox_timeout_seconds)
        tolerance = max(float(settings.sandbox_cpu_tolerance), 0.0)
        # The wall clock never cuts before the CPU clock could: at least the CPU allowance plus the extra.
        floor = limit * (1.0 + tolerance) + settings.sandbox_wall_min_extra_seconds
        return cls(
            timeout=limit,
            cpu_seconds=min(limit, float(settings.sandbox_cpu_seconds)),
            cpu_tolerance=tolerance,
            wall_seconds=max(limit * settings.sandbox_wall_factor, floor),
            startup_seconds=float(settings.sandbox_startup_seconds),
            run_memory_bytes=settings.sandbox_run_memory_mb * 1024 * 1024,
            memory_bytes=settings.sandbox_memory_mb * 1024 * 1024,
            max_processes=settings.sandbox_max_processes,
            max_file_bytes=settings.sandbox_max_file_mb * 1024 * 1024,
            output_cap=settings.sandbox_output_cap_bytes,
        )


@dataclass
class RunOutcome:
    """What happened: exit status, timeout, captured output, the channel's lines and the JUnit XML text."""

    returncode: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    junit_xml: str | None
    channel: list[bytes] = field(default_factory=list)
    channel_flooded: bool = False
    wall_limit: float = 0.0  # the wall clock's limit from the session's start (for the verdict's message)
    cpu_limit: float = 0.0  # the CPU time the tests were given from the session's start ...
    cpu_allowance: float = 0.0  # ... and where the clock cut them (the limit plus its measurement tolerance)
    space_full: bool = False  # the run used all of its writable space (`sandbox_space`)
    memory_limit: int = 0  # the run's memory budget (bytes) ...
    memory_exceeded: bool = False  # ... which its processes passed together: the worker ended the run
    memory_peak: int = 0  # the most the run's processes held together (bytes): its cgroup's peak, or polled
    memory_bound: str = MemoryBound.WATCH.value  # what held the run's total memory (`sandbox_cgroup`)
    channel_key: bytes = b""  # the run's key: every line on the channel carries its HMAC (`sandbox_guard`)
    output_dropped: dict[str, int] = field(default_factory=dict)  # bytes of stdout/stderr beyond the cap
    duration: float = 0.0
    startup_seconds: float | None = None  # process start until pytest had collected
    isolation: str = SandboxIsolation.BWRAP.value
    runner: str = "cold"


# ------------------------------------------------------------------------------------------------- the run dir
@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def runner(self) -> Path:
        return self.root / "runner"

    @property
    def space(self) -> Path:
        """The run's writable space (`sandbox_space`: a tmpfs of its own when the worker is root)."""
        return self.root / "space"

    @property
    def work(self) -> Path:
        return self.space / "work"

    @property
    def out(self) -> Path:
        return self.space / "out"


def _base(settings: Settings) -> Path:
    return settings.sandbox_root.expanduser() if settings.sandbox_root else Path(tempfile.gettempdir())


def make_run_dir(settings: Settings) -> RunDir:
    """A fresh, empty sandbox tree; the caller fills `work/` and then calls `run_pytest`."""
    base = _base(settings)
    base.mkdir(parents=True, exist_ok=True)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="gateway-sandbox-", dir=base)))
    rd.space.mkdir()
    try:
        mount_space(rd.space, settings.sandbox_disk_mb * 1024 * 1024)
    except OSError as exc:
        remove_run_dir(rd)
        raise InfrastructureError(f"the run's disk space could not be made: {exc.strerror or exc}") from None
    for sub in (rd.runner, rd.work, rd.out):
        sub.mkdir()
    for module, name in (
        (sandbox_launch, "launch.py"),
        (sandbox_plugin, "gateway_verdict.py"),
        (sandbox_guard, "gateway_guard.py"),
        (sandbox_clock, "gateway_clock.py"),
    ):
        (rd.runner / name).write_text(Path(module.__file__).read_text())  # type: ignore[arg-type]
    (rd.runner / "pytest.ini").write_text(_PYTEST_INI)
    return rd


def _hand_over(rd: RunDir, uid: int | None, protected: list[str]) -> None:
    """Give `work/` and `out/` to the run's uid; the runner and the reference's files stay root's, read-only."""
    os.chmod(rd.root, 0o711)
    os.chmod(rd.space, 0o711)
    for path in (rd.runner, *rd.runner.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (rd.runner / "passwd").write_text(f"sandbox:x:{uid if uid is not None else os.getuid()}:0::/work:/bin/false\n")
    (rd.runner / "group").write_text("sandbox:x:0:\n")
    if uid is None:
        return
    keep = {rd.work / rel for rel in protected}
    for top in (rd.work, rd.out):
        for dirpath, dirnames, filenames in os.walk(top):
            os.chown(dirpath, uid, uid)
            for name in filenames + dirnames:
                path = Path(dirpath, name)
                if path in keep:
                    os.lchown(path, 0, 0)
                    os.chmod(path, 0o644)
                else:
                    os.lchown(path, uid, uid)


def remove_run_dir(rd: RunDir) -> None:
    with contextlib.suppress(OSError):
        release_space(rd.space)
    shutil.rmtree(rd.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- isolation
def _is_root() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _uid_for_run(settings: Settings) -> Iterator[int | None]:
    if not _is_root():
        yield None
        return
    locks = _base(settings) / ".gateway-sandbox-uids"
    with run_uid(settings.sandbox_uid_base, settings.sandbox_uid_count, locks) as uid:
        yield uid


@dataclass(frozen=True)
class _MountPlan:
    """The run's file system view, the same for bwrap (cold) and the warm runner: what is bound where."""

    binds: list[tuple[str, str, bool]]  # (host path, path in the sandbox, read-only)
    symlinks: list[tuple[str, str]]  # (target, link)


def _mount_plan(rd: RunDir, runtime: Runtime, protected: list[str], fill_pycache: bool = False) -> _MountPlan:
    binds: list[tuple[str, str, bool]] = [("/usr", "/usr", True)]
    symlinks: list[tuple[str, str]] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            symlinks.append((os.readlink(top), top))
        elif os.path.isdir(top):
            binds.append((top, top, True))
    prefix = str(interpreter_prefix(runtime.python))
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        binds.append((prefix, prefix, True))
    binds += [
        (etc, etc, True) for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime") if os.path.exists(etc)
    ]
    binds += [
        (str(rd.runner / "passwd"), "/etc/passwd", True), (str(rd.runner / "group"), "/etc/group", True),
        (str(rd.work), "/work", False), (str(rd.out), "/out", False),
        (str(rd.runner), str(_IN / "runner"), True), (str(runtime.site), str(_IN / "site"), True),
        (str(runtime.site.parent), str(runtime.site.parent), True),  # the warm runner imported from these paths
        (str(_pycache(runtime)), str(_IN / "pycache"), not fill_pycache),
    ]  # fmt: skip
    binds += [(str(rd.work / rel), f"/work/{rel}", True) for rel in protected]
    return _MountPlan(binds, symlinks)


def _bwrap_args(rd: RunDir, runtime: Runtime, protected: list[str], fill_pycache: bool = False) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise InfrastructureError("bubblewrap (bwrap) is not installed; install it or set SANDBOX_ISOLATION=none")
    plan = _mount_plan(rd, runtime, protected, fill_pycache)
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    for src, dst, readonly in plan.binds:
        args += ["--ro-bind" if readonly else "--bind", src, dst]
    for target, link in plan.symlinks:
        args += ["--symlink", target, link]
    return [*args, "--proc", "/proc", "--dev", "/dev", "--chdir", "/work", "--remount-ro", "/", "--"]


@dataclass(frozen=True)
class _View:
    """Paths as the run sees them."""

    work: str
    out: str
    runner: str
    site: str
    pycache: str


def _view(rd: RunDir, runtime: Runtime, isolation: SandboxIsolation) -> _View:
    if isolation is SandboxIsolation.BWRAP:
        return _View("/work", "/out", str(_IN / "runner"), str(_IN / "site"), str(_IN / "pycache"))
    return _View(str(rd.work), str(rd.out), str(rd.runner), str(runtime.site), str(_pycache(runtime)))


def _pycache(runtime: Runtime) -> Path:
    """The runs' `sys.pycache_prefix`: bytecode of the standard library and pytest, compiled once per worker by
    `_fill_pycache`, read-only to runs (and the only place a run looks for bytecode: none from `/work`)."""
    return runtime.site.parent / "pycache"


_PROBE = "import sys; sys.path.insert(0, sys.argv[1]); import pytest, _pytest.junitxml; print('ok')"


def _probe(settings: Settings, python: str, site: Path) -> str | None:
    """Start `python` in a real sandbox and import pytest from the runtime; None when it works, else why not."""
    rd = make_run_dir(settings)
    try:
        with _uid_for_run(settings) as uid:
            _hand_over(rd, uid, [])
            runtime = Runtime(python, site)
            isolation = settings.sandbox_isolation
            view = _view(rd, runtime, isolation)
            prefix = _bwrap_args(rd, runtime, []) if isolation is SandboxIsolation.BWRAP else []
            cmd = [*prefix, python, "-I", "-S", "-c", _PROBE, view.site]
            try:
                done = subprocess.run(
                    cmd, env=_env(view, -1, []), cwd="/", capture_output=True, timeout=60, check=False,
                    user=uid, group=uid, extra_groups=[] if uid is not None else None,
                )  # fmt: skip
            except (OSError, subprocess.SubprocessError) as exc:
                return f"{python}: {exc}"
            if done.returncode == 0 and done.stdout.strip() == b"ok":
                return None
            tail = done.stderr.decode(errors="replace").strip().splitlines()
            return f"{python}: exit {done.returncode}: {tail[-1] if tail else 'no output'}"
    finally:
        remove_run_dir(rd)


def _fill_pycache(settings: Settings, runtime: Runtime) -> None:
    """Compile what a run imports (standard library, pytest) into the runs' pycache, once per runtime and
    isolation mode, by running a one-test session the way runs do but allowed to write bytecode there."""
    cache = _pycache(runtime)
    marker = cache / f".filled-{settings.sandbox_isolation.value}"
    if marker.exists():
        return
    cache.mkdir(mode=0o755, exist_ok=True)
    rd = make_run_dir(settings)
    read_fd, write_fd = os.pipe()
    try:
        (rd.work / "test_warmup.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
        _hand_over(rd, None, [])
        isolation = settings.sandbox_isolation
        view = _view(rd, runtime, isolation)
        prefix = _bwrap_args(rd, runtime, [], fill_pycache=True) if isolation is SandboxIsolation.BWRAP else []
        limits = ["300", str(4 << 30), "4096", str(256 << 20)]
        cmd = [*prefix, runtime.python, "-I", "-S", f"{view.runner}/launch.py", view.site, view.pycache, *limits,
               "--", *_pytest_args(view, ["test_warmup.py"], False)]  # fmt: skip
        env = {**_env(view, write_fd, []), "GATEWAY_WRITE_PYCACHE": "1"}
        cwd = view.work if isolation is SandboxIsolation.NONE else "/"
        done = subprocess.run(
            cmd, env=env, cwd=cwd, pass_fds=(write_fd,), capture_output=True, timeout=300, check=False
        )
        if done.returncode != 0:
            log.warning("could not fill the sandbox's bytecode cache (runs compile instead): exit %s", done.returncode)
            return
        for own in (cache / "work", cache / str(rd.root).lstrip("/")):  # the warm-up test's bytecode, not a run's
            shutil.rmtree(own, ignore_errors=True)
        for dirpath, _dirs, files in os.walk(cache):
            os.chmod(dirpath, 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o644)
        marker.touch()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not fill the sandbox's bytecode cache (runs compile instead): %s", exc)
    finally:
        os.close(read_fd)
        os.close(write_fd)
        remove_run_dir(rd)


@lru_cache(maxsize=8)
def _runtime_for(isolation: str, python: str | None, base: str, uid_base: int, uid_count: int) -> Runtime:
    settings = Settings(sandbox_isolation=isolation, sandbox_python=python, sandbox_root=Path(base),
                        sandbox_uid_base=uid_base, sandbox_uid_count=uid_count)  # type: ignore[arg-type]  # fmt: skip
    site = build_site(Path(base))
    (site.parent / "pycache").mkdir(mode=0o755, exist_ok=True)  # mounted into every run, filled below
    reasons = []
    for candidate in interpreter_candidates(python):
        reason = _probe(settings, candidate, site)
        if reason is None:
            runtime = Runtime(candidate, site)
            _fill_pycache(settings, runtime)
            return runtime
        reasons.append(reason)
    hint = "" if isolation == SandboxIsolation.NONE else " (SANDBOX_ISOLATION=none only where code is trusted)"
    raise InfrastructureError(f"the sandbox ({isolation}) cannot start a test run: {'; '.join(reasons)}{hint}")


def sandbox_runtime(settings: Settings) -> Runtime:
    """The checked interpreter and runtime for runs, made once per worker; `InfrastructureError` when the sandbox
    cannot work here (bubblewrap missing or refused by the kernel, no usable interpreter): the worker then
    refuses to grade rather than grading without isolation."""
    return _runtime_for(settings.sandbox_isolation.value, settings.sandbox_python, str(_base(settings)),
                        settings.sandbox_uid_base, settings.sandbox_uid_count)  # fmt: skip


def _slot_dir(settings: Settings) -> Path:
    return _base(settings) / ".gateway-sandbox-slots"


def memory_place(settings: Settings) -> CgroupPlace:
    """Where runs' memory cgroups are made on this worker, or why the polled bound is the one in force."""
    root = settings.sandbox_cgroup_root
    return cgroup_place(str(root) if root else None)


def sandbox_slot_usage(settings: Settings) -> SlotUsage:
    """How many sandboxes run on this machine now (all workers sharing the sandbox root), and how many may."""
    return slot_usage(_slot_dir(settings), slot_count(settings.sandbox_slots))


def sandbox_health(settings: Settings) -> str | None:
    """For start-up and health checks: None when runs can be graded, else the reason they cannot."""
    try:
        sandbox_runtime(settings)
    except InfrastructureError as exc:
        return exc.message
    return None


# ------------------------------------------------------------------------------------------------- the run
class _OutputReader:
    """A run's stdout or stderr: a pipe the worker drains while the run goes, keeping the first `cap` bytes.

    A pipe, not a file: RLIMIT_FSIZE does not apply to it, so a run that prints without end never fails in
    pytest's own summary (which would read as tampering); what is beyond the cap is dropped and said so."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd = fd
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0
        self.eof = False

    def read_ready(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
            return
        room = max(self.cap - len(self.kept), 0)
        self.kept += chunk[:room]
        self.dropped += len(chunk) - min(room, len(chunk))

    def text(self) -> str:
        text = self.kept.decode("utf-8", "replace")
        return text + (f"\n[output truncated: {self.dropped} more bytes not kept]" if self.dropped else "")


def signed_body(line: bytes, key: bytes, seq: int) -> bytes | None:
    """The JSON of a channel line `<hmac> <json>` when its HMAC is the guard's for sequence number `seq`."""
    mac, _, body = line.partition(b" ")
    expected = hmac.digest(key, str(seq).encode() + b":" + body, "sha256").hex().encode()
    return body if hmac.compare_digest(mac, expected) else None


class _ChannelReader:
    """Collects the verdict pipe's complete lines; hands each new batch of signed events to a callback."""

    def __init__(self, fd: int, on_events: Callable[[list[dict[str, object]]], None] | None, key: bytes) -> None:
        self.fd = fd
        self.key = key
        self.signed = 0
        self.on_events = on_events
        self.lines: list[bytes] = []
        self.partial = b""
        self.size = 0
        self.flooded = False
        self.eof = False
        self.collected_at: float | None = None
        self.session_at: float | None = None  # when the `start` event arrived: the time limit counts from here

    def pump(self, timeout: float, outputs: tuple[_OutputReader, ...] = ()) -> None:
        """Wait up to `timeout` for the channel or an output pipe, and read what is ready."""
        waiting = {o.fd: o for o in outputs if not o.eof}
        if not self.eof:
            waiting[self.fd] = None  # type: ignore[assignment]
        if not waiting:
            return
        ready, _, _ = select.select(list(waiting), [], [], timeout)
        for fd in ready:
            output = waiting[fd]
            if output is not None:
                output.read_ready()
            else:
                self._read_ready()

    def _read_ready(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
            return
        self.size += len(chunk)
        if self.size > _CHANNEL_CAP:
            self.flooded = True
            return
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        self.lines.extend(complete)
        events = []
        for line in complete:
            body = signed_body(line, self.key, self.signed)
            if body is None:
                continue  # not the guard's: the verdict will say so
            self.signed += 1
            with contextlib.suppress(ValueError):
                record = json.loads(body)
                if isinstance(record, dict):
                    events.append(record)
        if self.session_at is None and any(e.get("event") == "start" for e in events):
            self.session_at = time.monotonic()
        if self.collected_at is None and any(e.get("event") == "collected" for e in events):
            self.collected_at = time.monotonic()
        if events and self.on_events is not None:
            self.on_events(events)

    def drain(self, deadline: float, outputs: tuple[_OutputReader, ...] = (), killed: bool = False) -> None:
        """Read what is left; `killed`: the run was killed for its memory (an OOM kill in its cgroup, or the
        worker's watch), so an unterminated last line is a write that kill cut, dropped rather than called
        malformed (which would read as tampering)."""
        while not (self.eof and all(o.eof for o in outputs)) and time.monotonic() < deadline:
            self.pump(0.05, outputs)
        if self.partial and not killed:
            self.lines.append(self.partial)  # an unterminated line: the verdict will call it malformed
        self.partial = b""


def _env(
    view: _View, channel_fd: int, protected: list[str], key: bytes = b"", cpu_seconds: float = 300.0
) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": view.work,
        "TMPDIR": f"{view.work}/.tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "GATEWAY_VERDICT_FD": str(channel_fd),
        "GATEWAY_VERDICT_KEY": (key or secrets.token_bytes(32)).hex(),
        "GATEWAY_REFERENCE_FILES": json.dumps(protected),
        "GATEWAY_CPU_SECONDS": repr(float(cpu_seconds)),
    }


def _pytest_args(view: _View, test_files: list[str], has_conftest: bool) -> list[str]:
    """pytest's configuration is the gateway's: its ini, rootdir, no cache, no plugin but the verdict channel."""
    return [
        "-c", f"{view.runner}/pytest.ini", "--rootdir", view.work, "--confcutdir", view.work,
        "-p", "no:cacheprovider", "-p", "no:stepwise", "-p", "no:pastebin",
        *([] if has_conftest else ["--noconftest"]),
        f"--junitxml={view.out}/junit.xml", "-q", "--tb=short", "--color=no", "--", *test_files,
    ]  # fmt: skip


def _startup_cpu(limits: Limits) -> int:
    """RLIMIT_CPU until the session starts: start-up plus the session's own budget (the clock lowers it then)."""
    return math.ceil(limits.startup_seconds + limits.cpu_allowance) + 1


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_Fds = tuple[int, BinaryIO, BinaryIO]  # the channel's write end, stdout, stderr


def _start_cold(
    rd: RunDir, runtime: Runtime, view: _View, test_files: list[str], protected: list[str], limits: Limits,
    uid: int | None, fds: _Fds, isolation: SandboxIsolation, key: bytes, group: RunGroup | None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """A new interpreter per run: bwrap (or nothing, with isolation none) + `python -I -S launch.py`.

    With a run cgroup, the process starts as a shell waiting at a gate (a line on its stdin); the worker writes
    its pid into the run's `cgroup.procs`, then opens the gate, and the shell `exec`s bwrap in the same process:
    nothing of the run ever runs outside its cgroup."""
    channel, out, err = fds
    launch = [
        runtime.python, "-I", "-S", f"{view.runner}/launch.py", view.site, view.pycache,
        str(_startup_cpu(limits)), str(limits.memory_bytes), str(limits.max_processes), str(limits.max_file_bytes),
        "--", *_pytest_args(view, test_files, "conftest.py" in protected),
    ]  # fmt: skip
    prefix = _bwrap_args(rd, runtime, protected) if isolation is SandboxIsolation.BWRAP else []
    gate_r, gate_w = os.pipe() if group is not None else (subprocess.DEVNULL, -1)
    gate = ["/bin/sh", "-c", 'read -r _ && exec "$@" </dev/null', "gateway-gate"] if group is not None else []
    try:
        try:
            proc = subprocess.Popen(
                [*gate, *prefix, *launch], cwd=view.work if isolation is SandboxIsolation.NONE else "/",
                env=_env(view, channel, protected, key, limits.cpu_allowance), stdin=gate_r, stdout=out,
                stderr=err,
                start_new_session=True, close_fds=True, pass_fds=(channel,), user=uid, group=uid,
                extra_groups=[] if uid is not None else None,
            )  # fmt: skip
        except OSError as exc:
            raise InfrastructureError(f"test runner could not start: {exc.strerror or exc}") from None
        if group is not None:
            try:
                group.place_pid(proc.pid)
            except OSError as exc:
                _kill_group(proc.pid)
                proc.wait()
                raise InfrastructureError(f"the run could not be put in its cgroup: {exc.strerror or exc}") from None
            os.write(gate_w, b"go\n")
        return proc
    finally:
        if group is not None:
            os.close(gate_r)  # type: ignore[arg-type]
            os.close(gate_w)


def _start_warm(
    rd: RunDir, runtime: Runtime, view: _View, test_files: list[str], protected: list[str], limits: Limits,
    uid: int, fds: _Fds, key: bytes, group: RunGroup | None,
) -> WarmProcess:  # fmt: skip
    """A fork of the worker's warm runner, in the same view, namespaces, uid and limits as a cold run."""
    channel, out, err = fds
    plan = _mount_plan(rd, runtime, protected)
    newroot = rd.root / "newroot"
    newroot.mkdir(mode=0o755)
    env = {k: v for k, v in _env(view, channel, protected).items() if not k.startswith("GATEWAY_")}
    job = {
        "newroot": str(newroot), "binds": plan.binds, "symlinks": plan.symlinks, "env": env, "uid": uid,
        "cwd": view.work, "pycache": view.pycache, "reference": protected,
        "limits": [_startup_cpu(limits), limits.memory_bytes, limits.max_processes, limits.max_file_bytes],
        "cpu_seconds": limits.cpu_allowance,
        "args": _pytest_args(view, test_files, "conftest.py" in protected), "key": key.hex(),
        "cgroup": group.procs_files() if group is not None else [],  # the keeper joins these before forking
    }  # fmt: skip
    return warm_runner(runtime).start(job, channel, out.fileno(), err.fileno())


def run_pytest(
    rd: RunDir,
    test_files: list[str],
    protected: list[str],
    limits: Limits,
    settings: Settings,
    on_events: Callable[[list[dict[str, object]]], None] | None = None,
) -> RunOutcome:
    """Run pytest on `test_files` (relative to `rd.work`) under the limits; `protected` are the reference's files
    (read-only to the run). Waits for a free slot first (`sandbox_slots`). Always kills what it started.

    Clocks: the run's wall clock starts when the pytest session does (the `start` event), not when the sandbox
    does, and does not count the test process's waits for a CPU (`sandbox_wall`); until the session starts only
    `limits.startup_seconds` applies, and passing it is an `InfrastructureError` (a machine too slow to start a
    run is not the student's fault)."""
    runtime = sandbox_runtime(settings)
    isolation = settings.sandbox_isolation
    (rd.work / ".tmp").mkdir(exist_ok=True)
    view = _view(rd, runtime, isolation)
    place = memory_place(settings)
    with (
        run_slot(_slot_dir(settings), slot_count(settings.sandbox_slots)),
        _uid_for_run(settings) as uid,
        run_group(place, limits.run_memory_bytes, limits.max_processes) as group,
    ):
        _hand_over(rd, uid, protected)
        warm = settings.sandbox_runner is SandboxRunner.WARM and isolation is SandboxIsolation.BWRAP and uid is not None
        read_fd, write_fd = os.pipe()
        key = secrets.token_bytes(32)
        reader = _ChannelReader(read_fd, on_events, key)
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        outputs = (_OutputReader(out_r, limits.output_cap), _OutputReader(err_r, limits.output_cap))
        started = time.monotonic()
        timed_out = startup_timed_out = False
        memory = MemoryWatch(uid if group is None else None, limits.run_memory_bytes)  # polled: no cgroup here
        memory_exceeded, memory_peak = False, 0
        wall = WallClock(limits.wall_seconds)
        proc: subprocess.Popen[bytes] | WarmProcess
        try:
            with open(out_w, "wb") as out, open(err_w, "wb") as err:
                try:
                    if warm:
                        proc = _start_warm(rd, runtime, view, test_files, protected, limits, uid, (write_fd, out, err),
                                           key, group)  # fmt: skip
                    else:
                        proc = _start_cold(rd, runtime, view, test_files, protected, limits, uid, (write_fd, out, err),
                                           isolation, key, group)  # fmt: skip
                finally:
                    os.close(write_fd)
            try:
                while proc.poll() is None:
                    now = time.monotonic()
                    if reader.session_at is None and now >= started + limits.startup_seconds:
                        startup_timed_out = True
                        break
                    if reader.session_at is not None and wall.started_at is None:
                        known = proc.pid if isolation is SandboxIsolation.NONE else None
                        wall.start(reader.session_at, uid if isolation is SandboxIsolation.BWRAP else None, known)
                    if wall.expired(now):
                        timed_out = True
                        break
                    if memory.check(now) or (group is not None and group.oom_killed()):
                        break
                    reader.pump(0.05, outputs)
            finally:
                # Ending the run's pid 1 (bwrap's init, the warm run's init) ends its pid namespace and all in
                # it; the process group and the uid are the fallbacks.
                if isinstance(proc, WarmProcess):
                    kill_uid(uid)  # type: ignore[arg-type]
                else:
                    _kill_group(proc.pid)
                proc.wait()
                if group is not None:
                    group.kill()
                if uid is not None:
                    kill_uid(uid)
            if isinstance(proc, WarmProcess) and proc.refused:
                raise InfrastructureError(f"the warm runner could not start the run: {proc.refused}")
            if group is not None and group.oom_killed() and not group.limit_hit():
                raise InfrastructureError(
                    "a process of the run was killed for memory below the run's own limit: the worker's or the "
                    "machine's memory ran out (budgets of concurrent runs above what the worker has)"
                )
            memory_exceeded = memory.exceeded or (group is not None and group.oom_killed())
            memory_peak = group.peak() if group is not None else memory.peak
            reader.drain(time.monotonic() + 5, outputs, killed=memory_exceeded)
        finally:
            for fd in (read_fd, out_r, err_r):
                os.close(fd)
    if startup_timed_out:
        raise InfrastructureError(
            f"the test session did not start within {limits.startup_seconds:g}s of the sandbox's start"
        )
    returncode = proc.returncode
    sig = None
    if returncode < 0:
        sig = -returncode
    elif isolation is SandboxIsolation.BWRAP and returncode > 128:
        sig = returncode - 128  # bwrap reports a command killed by signal N as 128 + N
    junit = rd.out / "junit.xml"
    xml = None
    if junit.is_file() and not junit.is_symlink() and not timed_out:
        xml = junit.read_text(encoding="utf-8", errors="replace")
    return RunOutcome(
        returncode=None if timed_out else returncode,
        signal=None if timed_out else sig,
        timed_out=timed_out,
        stdout=outputs[0].text(),
        stderr=outputs[1].text(),
        output_dropped={name: o.dropped for name, o in zip(("stdout", "stderr"), outputs, strict=True) if o.dropped},
        junit_xml=xml,
        channel=reader.lines,
        channel_flooded=reader.flooded,
        wall_limit=limits.wall_seconds,
        cpu_limit=limits.cpu_seconds,
        cpu_allowance=limits.cpu_allowance,
        space_full=space_full(rd.space),
        memory_limit=limits.run_memory_bytes,
        memory_exceeded=memory_exceeded,
        memory_peak=memory_peak,
        memory_bound=place.bound.value if limits.run_memory_bytes > 0 else MemoryBound.WATCH.value,
        channel_key=key,
        duration=time.monotonic() - started,
        startup_seconds=None if reader.collected_at is None else reader.collected_at - started,
        isolation=isolation.value,
        runner="warm" if warm else "cold",
    )
