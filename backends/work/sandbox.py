"""Run pytest on a prepared directory in a sandbox: own uid, resource limits, scrubbed env, wall-clock timeout.

The sandbox is a fresh directory tree `run/` (root-owned, traverse-only):
    run/runner/  the launcher, the progress plugin and a pytest.ini (read-only for the sandbox user)
    run/work/    the student's files + the assignment's tests; cwd, HOME and TMPDIR of the run
    run/out/     junit.xml and progress.jsonl, written by the run
When the worker is root, the run drops to `settings.sandbox_user` (Linux ignores RLIMIT_NPROC for root, so a fork
bomb is only contained under another uid). The child gets a minimal environment built from scratch: nothing the
worker holds (broker URLs, tokens) is inherited. On timeout or at the end, the whole process group is killed,
and any straggler that left the group (setsid) is found by a per-run marker in its environment and killed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from backends.work import sandbox_launch, sandbox_plugin
from backends.work.errors import InfrastructureError
from common.settings import Settings

_MARKER = "GATEWAY_SANDBOX_RUN"
_PYTEST_INI = "[pytest]\naddopts = -p no:cacheprovider\njunit_family = xunit1\nconsole_output_style = classic\n"


@dataclass(frozen=True)
class Limits:
    """The limits of one run; `from_settings` reads the defaults, meta.yaml may change `timeout`."""

    timeout: float
    cpu_seconds: int
    memory_bytes: int
    max_processes: int
    max_file_bytes: int
    output_cap: int

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float | None = None) -> Limits:
        return cls(
            timeout=float(timeout if timeout is not None else settings.sandbox_timeout_seconds),
            cpu_seconds=settings.sandbox_cpu_seconds,
            memory_bytes=settings.sandbox_memory_mb * 1024 * 1024,
            max_processes=settings.sandbox_max_processes,
            max_file_bytes=settings.sandbox_max_file_mb * 1024 * 1024,
            output_cap=settings.sandbox_output_cap_bytes,
        )


@dataclass(frozen=True)
class Identity:
    """Who the run executes as and with which interpreter (`pythonpath` set when borrowing site-packages)."""

    uid: int | None
    gid: int | None
    python: str
    pythonpath: str | None


@dataclass
class RunOutcome:
    """What happened: exit code or signal, timeout, captured output, the JUnit XML text and the progress log."""

    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    junit_xml: str | None
    events: list[dict[str, object]] = field(default_factory=list)
    duration: float = 0.0
    startup_seconds: float | None = None  # process start until pytest had collected

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None


# ------------------------------------------------------------------------------------------------- identity
def _user_ids(user: str) -> tuple[int, int]:
    if user.isdigit():
        uid = int(user)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise InfrastructureError(f"sandbox user {user!r} does not exist on this worker") from None
    return entry.pw_uid, entry.pw_gid


def _site_packages() -> str:
    import pytest

    return str(Path(pytest.__file__).resolve().parent.parent)


@lru_cache(maxsize=16)
def _probe(python: str, uid: int | None, gid: int | None, pythonpath: str | None) -> bool:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    code = f"import sys, pytest; sys.exit(0 if sys.version_info[:2] == {tuple(sys.version_info[:2])!r} else 3)"
    try:
        done = subprocess.run(
            [python, "-s", "-c", code], env=env, cwd="/", user=uid, group=gid, extra_groups=[] if uid else None,
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def resolve_identity(settings: Settings) -> Identity:
    """The uid and interpreter for runs; raises `InfrastructureError` when no interpreter works for that user."""
    uid = gid = None
    if os.geteuid() == 0 and settings.sandbox_user:
        uid, gid = _user_ids(settings.sandbox_user)
    if settings.sandbox_python:
        candidates = [(settings.sandbox_python, None), (settings.sandbox_python, _site_packages())]
    else:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        candidates = [(sys.executable, None)]
        for name in (f"python{version}", f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
            found = shutil.which(name)
            if found:
                candidates.append((found, _site_packages()))
    for python, pythonpath in candidates:
        if _probe(python, uid, gid, pythonpath):
            return Identity(uid, gid, python, pythonpath)
    who = f"uid {uid}" if uid is not None else "this user"
    raise InfrastructureError(
        f"no Python {sys.version_info[0]}.{sys.version_info[1]} with pytest is executable by {who}; "
        "set SANDBOX_PYTHON or SANDBOX_USER"
    )


# ------------------------------------------------------------------------------------------------- the run dir
@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def runner(self) -> Path:
        return self.root / "runner"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def out(self) -> Path:
        return self.root / "out"


def make_run_dir(settings: Settings) -> RunDir:
    """A fresh, empty sandbox tree; the caller fills `work/` and then calls `run_pytest`."""
    base = settings.sandbox_root.expanduser() if settings.sandbox_root else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="gateway-sandbox-", dir=base))
    rd = RunDir(root)
    for sub in (rd.runner, rd.work, rd.out):
        sub.mkdir()
    for module, name in ((sandbox_launch, "launch.py"), (sandbox_plugin, "gateway_progress.py")):
        (rd.runner / name).write_text(Path(module.__file__).read_text())  # type: ignore[arg-type]
    (rd.runner / "pytest.ini").write_text(_PYTEST_INI)
    return rd


def _hand_over(rd: RunDir, ident: Identity) -> None:
    """Give `work/` and `out/` to the sandbox user; the rest stays root-owned and read-only to it."""
    os.chmod(rd.root, 0o711)
    for path in (rd.runner, *rd.runner.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    if ident.uid is None:
        return
    for top in (rd.work, rd.out):
        for dirpath, dirnames, filenames in os.walk(top):
            os.chown(dirpath, ident.uid, ident.gid or ident.uid)
            for name in filenames + dirnames:
                os.lchown(os.path.join(dirpath, name), ident.uid, ident.gid or ident.uid)


def remove_run_dir(rd: RunDir) -> None:
    shutil.rmtree(rd.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- killing
def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is still in the process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            return True
    return False


def _kill_group(pgid: int) -> None:
    """SIGKILL the group until nothing live is left in it (a fork bomb keeps forking between two kills)."""
    for _ in range(500):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _group_alive(pgid):
            return
        time.sleep(0.01)


def _sweep(marker: str) -> int:
    """Kill every process whose environment carries this run's marker (it left the group); returns how many."""
    needle = f"{_MARKER}={marker}".encode()
    killed = 0
    for _ in range(50):
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    env = handle.read()
            except OSError:
                continue
            if needle in env.split(b"\0"):
                found += 1
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
        killed += found
        if not found:
            break
        time.sleep(0.02)
    return killed


# ------------------------------------------------------------------------------------------------- the run
def _read_capped(path: Path, cap: int) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError:
        return ""
    text = data[:cap].decode("utf-8", "replace")
    return text + ("\n[output truncated]" if len(data) > cap else "")


class _Tail:
    """Reads complete JSON lines appended to the progress file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, object]] = []

    def poll(self) -> list[dict[str, object]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        new: list[dict[str, object]] = []
        for line in chunk[: end + 1].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                new.append(record)
        self.events.extend(new)
        return new


def _env(rd: RunDir, ident: Identity, marker: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(rd.work),
        "TMPDIR": str(rd.work / ".tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "GATEWAY_PROGRESS_FILE": str(rd.out / "progress.jsonl"),
        _MARKER: marker,
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(rd.runner), ident.pythonpath) if p)
    return env


def run_pytest(
    rd: RunDir,
    test_files: list[str],
    limits: Limits,
    ident: Identity,
    on_events: Callable[[list[dict[str, object]]], None] | None = None,
) -> RunOutcome:
    """Run pytest on `test_files` (relative to `rd.work`) under the limits; always kills what it started."""
    (rd.work / ".tmp").mkdir(exist_ok=True)
    _hand_over(rd, ident)
    marker = uuid.uuid4().hex
    junit = rd.out / "junit.xml"
    cmd = [
        ident.python, "-s", "-B", str(rd.runner / "launch.py"),
        str(limits.cpu_seconds), str(limits.memory_bytes), str(limits.max_processes), str(limits.max_file_bytes),
        "--", "-s", "-B", "-m", "pytest", "-c", str(rd.runner / "pytest.ini"), "--rootdir", str(rd.work),
        "-p", "gateway_progress", f"--junitxml={junit}", "-q", "--tb=short", "--color=no", "--", *test_files,
    ]  # fmt: skip
    stdout_path, stderr_path = rd.root / "stdout.txt", rd.root / "stderr.txt"
    tail = _Tail(rd.out / "progress.jsonl")
    started = time.monotonic()
    startup: float | None = None
    timed_out = False
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                cmd, cwd=rd.work, env=_env(rd, ident, marker), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, close_fds=True, user=ident.uid, group=ident.gid,
                extra_groups=[] if ident.uid is not None else None,
            )  # fmt: skip
        except OSError as exc:
            raise InfrastructureError(f"test runner could not start: {exc.strerror or exc}") from None
        try:
            deadline = started + limits.timeout
            while True:
                try:
                    proc.wait(timeout=0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
                new = tail.poll()
                if new:
                    if startup is None and any(e.get("event") == "collected" for e in new):
                        startup = time.monotonic() - started
                    if on_events is not None:
                        on_events(new)
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
        finally:
            _kill_group(proc.pid)
            proc.wait()
            _kill_group(proc.pid)
            _sweep(marker)
    new = tail.poll()
    if new and on_events is not None:
        on_events(new)
    if startup is None and any(e.get("event") == "collected" for e in tail.events):
        startup = time.monotonic() - started
    xml = None
    if junit.is_file() and not timed_out:
        xml = junit.read_text(encoding="utf-8", errors="replace")
    return RunOutcome(
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        stdout=_read_capped(stdout_path, limits.output_cap),
        stderr=_read_capped(stderr_path, limits.output_cap),
        junit_xml=xml,
        events=tail.events,
        duration=time.monotonic() - started,
        startup_seconds=startup,
    )
