"""`gateway up` as a first-time user runs it: one start, the printed requests on both engines, then Ctrl-C.

One `gateway up` for the whole module (a Prefect server start is expensive on 2 cores). The tests follow the
printed `curl` lines (parsed, then sent with httpx) to a finished result on Celery and on Prefect, and finally
send SIGINT and prove that every process `gateway up` started, and everything those forked, is gone.
The fast tests at the end start nothing: refusals (a taken port, a second `gateway up`) and the demo catalog.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import SERVICE_VARS
from tests.service.server import free_port, wait_for

GATEWAY = Path(sys.executable).with_name("gateway")
FINAL = {0, 1, 2, 6}
READY_MARK = "Ctrl-C stops everything"


@dataclass
class UpProcess:
    """The running `gateway up`: its process, its output so far (read by a thread), and where it listens."""

    process: subprocess.Popen[str]
    port: int
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)


def _clean_env(data_dir: Path, prefect_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS and not k.startswith("PREFECT_")}
    env.update(
        {
            "GATEWAY_DATA_DIR": str(data_dir),
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _read_into(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def _proc_start_time(pid: int) -> float | None:
    """psutil's `create_time` (what `gateway up` records too): tells a pid from a later process reusing it."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, started: float) -> bool:
    """Running (not a zombie) and still the same process."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() == started
    except psutil.Error:
        return False


def _cmdline(pid: int) -> str:
    """A process's command line, or nothing once it has exited (a short-lived child may exit after the listing)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def descendants(pid: int) -> dict[int, float]:
    """Every live descendant of `pid` (recursively) with its start time."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found: dict[int, float] = {}
    for child in children:
        with contextlib.suppress(psutil.Error):
            found[child.pid] = child.create_time()
    return found


def _kill_groups(pids: dict[int, float]) -> None:
    """Teardown of last resort: SIGKILL the process group of every recorded child still alive."""
    for pid, started in pids.items():
        if _alive(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def gateway_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    data_dir = tmp_path_factory.mktemp("gateway-up")
    port = free_port()
    env = _clean_env(data_dir, free_port())
    process = subprocess.Popen(
        [str(GATEWAY), "up", "--port", str(port)],
        env=env,
        cwd=data_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = UpProcess(process, port, data_dir)
    reader = threading.Thread(target=_read_into, args=(process.stdout, up.lines), daemon=True)
    reader.start()
    seen: dict[int, str] = {}
    try:
        wait_for(
            lambda: READY_MARK in up.output() or process.poll() is not None,
            300,
            interval=0.5,
            what="gateway up to print its curl lines",
        )
        assert process.poll() is None, f"gateway up exited with {process.returncode}:\n{up.output()}"
        yield up
    finally:
        seen = descendants(process.pid)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        _kill_groups(seen)
        reader.join(timeout=5)


# ------------------------------------------------------------------------------------------ the printed lines
@dataclass(frozen=True)
class Curl:
    """One printed `curl` command, as httpx arguments."""

    method: str
    url: str
    auth: tuple[str, str]
    body: dict[str, Any] | None

    def send(self, result_id: str | None = None) -> httpx.Response:
        url = self.url if result_id is None else re.sub(r"\$[A-Z]+_ID", result_id, self.url)
        return httpx.request(self.method, url, auth=self.auth, json=self.body, timeout=30)


def parse_curl(command: str) -> Curl:
    import json

    args = shlex.split(command)
    assert args[0] == "curl", command
    auth, body, url = None, None, None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg in ("-u", "-d", "-H", "-w"):
            value = args[i + 1]
            if arg == "-u":
                user, _, password = value.partition(":")
                auth = (user, password)
            elif arg == "-d":
                body = json.loads(value)
            i += 2
            continue
        if arg.startswith("http"):
            url = arg
        i += 1
    assert auth is not None and url is not None, command
    return Curl("POST" if body is not None else "GET", url, auth, body)


def printed_requests(output: str, engine: str) -> tuple[Curl, Curl, Curl, str]:
    """The submit, status and result requests printed for `engine`, plus the raw submit line."""
    var = f"{engine.upper()}_ID"
    submit_line = next(line for line in output.splitlines() if line.startswith(f"{var}=$("))
    submit = parse_curl(submit_line[len(var) + 3 :].split(" | ", 1)[0])
    reads = [line for line in output.splitlines() if line.startswith("curl ") and f"${var}" in line]
    status = next(parse_curl(line) for line in reads if line.endswith("/status"))
    result = next(parse_curl(line) for line in reads if not line.endswith("/status"))
    return submit, status, result, submit_line


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["celery", "prefect"])
def test_printed_submit_completes(gateway_up: UpProcess, engine: str) -> None:
    submit, status, result, _ = printed_requests(gateway_up.output(), engine)
    assert submit.url == f"http://127.0.0.1:{gateway_up.port}/api/tests"
    answer = submit.send()
    assert answer.status_code == 200, answer.text
    result_id = answer.json()["id"]
    final = wait_for(
        lambda: (s := status.send(result_id).json()) in FINAL and s + 100,
        240,
        interval=0.5,
        what=f"the {engine} run to finish",
    )
    assert final - 100 == 0, f"status {final - 100}; log dir {gateway_up.data_dir / 'logs'}"
    row = result.send(result_id).json()
    assert row["status"] == 0 and row["result"] == 1.0
    assert row["result_json"]["summary"]["passed"] == 3
    assert row["course_content_id"].endswith(engine)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("python3") is None, reason="needs curl and python3")
def test_printed_shell_line_runs_as_pasted(gateway_up: UpProcess) -> None:
    """The submit line pasted into a shell sets the id variable (a repeated commit answers with the same row)."""
    submit, _, _, line = printed_requests(gateway_up.output(), "celery")
    first = submit.send().json()["id"]
    done = subprocess.run(
        ["bash", "-c", f'{line}\necho "id=$CELERY_ID"'], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"id={first}" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_flower_answers_behind_basic_auth(gateway_up: UpProcess) -> None:
    """The printed Flower URL refuses a request without the printed login and serves the dashboard with it."""
    found = re.search(r"Flower at (http://\S+) \(login (\S+) / (\S+)\)", gateway_up.output())
    assert found, gateway_up.output()
    url, user, password = found.groups()
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=(user, "wrong"), timeout=10).status_code == 401
    page = httpx.get(url, auth=(user, password), timeout=10)
    assert page.status_code == 200 and "Flower" in page.text
    # The secret is in Flower's environment, never on its command line.
    command_lines = [_cmdline(p) for p in descendants(gateway_up.process.pid)]
    flower = [line for line in command_lines if "flower" in line]
    assert flower and all(password not in line for line in flower)


@pytest.mark.slow
def test_flower_inspects_the_embedded_worker(gateway_up: UpProcess) -> None:
    """Flower's worker view on the embedded broker: its inspect broadcast reaches the worker and the reply comes
    back through the broker folder (fs_transport.py). Queue lengths Flower cannot read there (README)."""
    found = re.search(r"Flower at (http://\S+) \(login (\S+) / (\S+)\)", gateway_up.output())
    assert found, gateway_up.output()
    url, user, password = found.groups()

    def workers() -> dict[str, Any] | None:
        answer = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, auth=(user, password), timeout=30)
        answer.raise_for_status()
        found = answer.json()
        return found if any(isinstance(w, dict) and w.get("stats") for w in found.values()) else None

    seen = wait_for(workers, 120, interval=1.0, what="Flower to list the worker with its stats")
    assert any(name.startswith("celery-system-worker@") for name in seen), seen


@pytest.mark.slow
def test_metrics_show_the_runs_that_happened_on_both_engines(gateway_up: UpProcess) -> None:
    """After one run on each engine (the tests above): one accepted send and one success per engine, none open."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{gateway_up.port}/metrics", timeout=10).text
    seen = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for engine in ("celery", "prefect"):
        sends = frozenset({"engine": engine, "outcome": "accepted"}.items())
        done = frozenset({"engine": engine, "role": "primary", "outcome": "succeeded"}.items())
        assert seen.get(("gateway_engine_sends_total", sends)) == 1, engine
        assert seen.get(("gateway_legs_finished_total", done)) == 1, engine
        assert (
            seen.get(("gateway_leg_duration_seconds_count", frozenset({"engine": engine, "role": "primary"}.items())))
            == 1
        )
        assert seen.get(("gateway_outbox_backlog", frozenset({"engine": engine}.items()))) == 0
    assert not [key for key in seen if key[0] == "gateway_legs_in_flight" and seen[key]]
    # The API's log is not a terminal: JSON lines, and the line about each finished leg names its job.
    import json

    lines = [json.loads(line) for line in (gateway_up.data_dir / "logs" / "api.log").read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    finished = [line for line in lines if line["message"] == "leg finished: succeeded"]
    assert {line["engine"] for line in finished} == {"celery", "prefect"}
    assert all(line["leg_id"] and line["result_id"] and line["role"] == "primary" for line in finished)


@pytest.mark.slow
def test_a_second_shell_gets_the_stack_settings(gateway_up: UpProcess) -> None:
    """`eval "$(gateway env)"` in a shell that knows only the data folder: the same API, Prefect API and home."""
    env = _clean_env(gateway_up.data_dir, free_port())
    env.pop("PREFECT_API_URL")
    script = f'eval "$({GATEWAY} env)" && echo "$GATEWAY_URL|$PREFECT_API_URL|$PREFECT_HOME|$FLOWER_URL"'
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    url, prefect_api, prefect_home, flower = done.stdout.strip().split("|")
    assert url == f"http://127.0.0.1:{gateway_up.port}", done.stdout
    assert f"Prefect API at {prefect_api}" in gateway_up.output() and f"Flower at {flower} " in gateway_up.output()
    assert prefect_home == str(gateway_up.data_dir / "prefect-home")
    assert httpx.get(f"{url}/api/health", timeout=30).status_code == 200
    assert httpx.get(f"{prefect_api}/health", timeout=30).status_code == 200
    assert (gateway_up.data_dir / "stack.env").stat().st_mode & 0o077 == 0  # it holds the Prefect auth string


@pytest.mark.slow
def test_the_prefect_server_accepts_only_the_stacks_auth_string(gateway_up: UpProcess) -> None:
    """Anyone on the host could drive an unauthenticated Prefect server; `gateway up` turns its auth on."""
    env = _clean_env(gateway_up.data_dir, free_port())
    script = f'eval "$({GATEWAY} env)" && printf "%s|%s" "$PREFECT_API_URL" "$PREFECT_API_AUTH_STRING"'
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    prefect_api, auth = done.stdout.split("|")
    user, _, password = auth.partition(":")
    assert user == "gateway" and len(password) >= 24
    assert httpx.post(f"{prefect_api}/flows/filter", json={}, timeout=30).status_code == 401
    wrong = httpx.post(f"{prefect_api}/flows/filter", json={}, auth=(user, "wrong"), timeout=30)
    assert wrong.status_code == 401
    assert httpx.post(f"{prefect_api}/flows/filter", json={}, auth=(user, password), timeout=30).status_code == 200
    # Every child was given it; none has it on its command line.
    assert all(password not in _cmdline(pid) for pid in descendants(gateway_up.process.pid))


@pytest.mark.slow
def test_sigint_stops_every_child(gateway_up: UpProcess) -> None:
    """Last in the module: Ctrl-C leaves no process behind, however deep (worker pool, flow runs, uvicorn)."""
    process = gateway_up.process
    children = descendants(process.pid)
    names = {_cmdline(pid) for pid in children}
    assert any("prefect server start" in n for n in names) and any("worker start" in n for n in names), names
    assert any(" serve " in n or n.rstrip().endswith(" serve") for n in names), names
    assert any(" flower " in n for n in names), names
    groups = {os.getpgid(pid) for pid in children if _alive(pid, children[pid])}
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=90) == 0, gateway_up.output()[-3000:]
    assert gateway_up.output().rstrip().endswith("stopped")
    assert not (gateway_up.data_dir / "stack.env").exists(), "a stopped stack leaves no settings for `gateway env`"
    wait_for(
        lambda: not [pid for pid, started in children.items() if _alive(pid, started)],
        30,
        what="every child to be gone",
    )
    in_groups = [p.pid for p in psutil.process_iter(["status"]) if _in_groups(p, groups)]
    assert in_groups == []


def _in_groups(process: psutil.Process, groups: set[int]) -> bool:
    if process.info["status"] == psutil.STATUS_ZOMBIE:
        return False
    try:
        return os.getpgid(process.pid) in groups
    except ProcessLookupError:
        return False


# ------------------------------------------------------------------------------------- fast, no stack started
def _run_up(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = _clean_env(data_dir, free_port())
    return subprocess.run(
        [str(GATEWAY), "up", *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_taken_api_port_fails_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run_up(["--port", str(port)], tmp_path / "data")
    assert done.returncode == 1
    assert done.stderr.strip() == f"gateway up: port {port} on 127.0.0.1 is already in use; pick another with --port"
    assert not (tmp_path / "data" / "logs").exists()  # nothing was started


def test_second_up_on_the_same_data_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    data = tmp_path / "data"
    data.mkdir()
    with (data / "up.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        done = _run_up(["--port", str(free_port())], data)
    assert done.returncode == 1
    assert f"another `gateway up` (pid 4242) is running on the data folder {data}" in done.stderr


def test_demo_catalog_is_idempotent_across_restarts(isolated_env: Path) -> None:
    """A second load (a restart) keeps the logins, ids and commits, and adds no row."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from common.settings import get_settings
    from gateway.devstack.demo import ADMIN, CONTENTS, STUDENT, load_demo
    from gateway.store.accounts import verify_password
    from gateway.store.db import make_sync_engine
    from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, User

    settings = get_settings()
    first = load_demo(settings)

    def snapshot() -> dict[str, Any]:
        engine = make_sync_engine(settings)
        try:
            with Session(engine) as session:
                counts = {m.__name__: session.scalar(select(func.count()).select_from(m)) for m in
                          (ExecutionBackend, CourseContent, CourseMember, User)}  # fmt: skip
                backends = {b.slug: (b.id, b.type, b.properties) for b in session.scalars(select(ExecutionBackend))}
                users = {u.username: (u.role, u.password_hash) for u in session.scalars(select(User))}
        finally:
            engine.dispose()
        return {"counts": counts, "backends": backends, "users": users}

    before = snapshot()
    second = load_demo(settings)
    assert second == first and snapshot() == before
    assert before["counts"] == {"ExecutionBackend": 2, "CourseContent": 2, "CourseMember": 1, "User": 2}
    assert {v[1] for v in before["backends"].values()} == {c.engine for c in CONTENTS}
    assert before["backends"]["demo-prefect"][2] == {"deployment": "test-assignment/system"}
    assert verify_password(first.credentials.student_password, before["users"][STUDENT][1])
    assert before["users"][ADMIN][0] == "admin"
    assert (isolated_env / "demo-credentials.json").stat().st_mode & 0o777 == 0o600


def test_leftovers_of_a_killed_up_are_stopped_first(tmp_path: Path) -> None:
    """A SIGKILLed `gateway up` could not stop its children; the next one stops them (whole group, by pid+start)."""
    import json
    import socket

    data = tmp_path / "data"
    data.mkdir()
    leftover = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True)
    try:
        wait_for(lambda: descendants(leftover.pid), 10, what="the leftover's child")
        group = {leftover.pid: _proc_start_time(leftover.pid) or 0.0, **descendants(leftover.pid)}
        entries = [{"name": "celery-worker", "pid": leftover.pid, "start": _proc_start_time(leftover.pid)}]
        (data / "up-children.json").write_text(json.dumps(entries))
        # The leftover is reaped the moment it exits, as init reaps the orphan of a killed `gateway up`. Left a
        # zombie of this process, it would keep its pid and start time, and the stop would wait out both of its
        # 10 s graces (SIGTERM, then SIGKILL) for a process that is already gone.
        reaper = threading.Thread(target=leftover.wait, daemon=True)
        reaper.start()
        with socket.socket() as taken:  # keeps the run short: it stops the leftovers, then refuses the port
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            done = _run_up(["--port", str(taken.getsockname()[1])], data)
        assert f"stopped celery-worker (pid {leftover.pid}), left running by an earlier `gateway up`" in done.stderr
        assert done.returncode == 1 and "already in use" in done.stderr
        leftover.wait(timeout=15)
        wait_for(lambda: not [p for p, started in group.items() if _alive(p, started)], 15, what="the leftover group")
        assert not (data / "up-children.json").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leftover.pid, signal.SIGKILL)
        leftover.wait(timeout=10)


def test_env_without_a_running_stack_says_so_in_one_line(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, free_port())
    done = subprocess.run([str(GATEWAY), "env"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"gateway env: no `gateway up` is running on {tmp_path} (no stack.env there)"
    ]


def test_stack_env_lines_survive_the_shell(tmp_path: Path) -> None:
    """Values with spaces or quotes come back unchanged through `eval`; absent ones are not exported."""
    from gateway.devstack.stack_env import write_stack_env

    odd = str(tmp_path / "it's a dir")
    write_stack_env(tmp_path, {"GATEWAY_DATA_DIR": odd, "GATEWAY_PORT": "8123", "PREFECT_API_URL": None})
    env = _clean_env(tmp_path, free_port())
    env.pop("PREFECT_API_URL")
    script = (
        f'eval "$({GATEWAY} env)" && printf "%s|%s|%s" "$GATEWAY_DATA_DIR" "$GATEWAY_PORT" "${{PREFECT_API_URL-unset}}"'
    )
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == f"{odd}|8123|unset"


def test_the_quickstart_lists_every_option_of_up() -> None:
    import typer.main

    from gateway.cli import app

    up_command = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    declared = {
        name for param in up_command.params for name in (*param.opts, *getattr(param, "secondary_opts", []))
    } - {"--help"}
    quickstart = (Path(__file__).resolve().parents[1] / "docs" / "quickstart.md").read_text()
    table = quickstart.split("| Option | Meaning |", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`(--[a-z-]+)", table))
    assert declared == listed, f"undocumented: {sorted(declared - listed)}; gone: {sorted(listed - declared)}"


def test_every_child_gets_the_prefect_auth_string_the_server_checks(tmp_path: Path) -> None:
    import base64

    from pydantic import SecretStr

    from common.settings import Settings
    from gateway.devstack.services import child_env

    settings = Settings(_env_file=None, gateway_data_dir=tmp_path, prefect_api_auth_string=SecretStr("gateway:s3c"))
    env = child_env(settings, "http://127.0.0.1:4321/api")
    assert env["PREFECT_API_AUTH_STRING"] == env["PREFECT_SERVER_API_AUTH_STRING"] == "gateway:s3c"
    token = base64.b64encode(b"gateway:s3c").decode()
    assert settings.prefect_api_headers() == {"Authorization": f"Basic {token}"}
    assert Settings(_env_file=None, gateway_data_dir=tmp_path).prefect_api_headers() == {}
