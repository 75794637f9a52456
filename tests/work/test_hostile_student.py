"""A hostile student against the real work path: each attack fails and the run is graded honestly.

Every job goes through `run_student_testing` (real git repositories, the real bubblewrap sandbox, the verdict
channel). The student's `calc.py` is wrong (the honest score is 0 of 2) unless a test says otherwise, and carries
the attack. Where the attack's failure could be an accident of the test itself, a control run shows the same
probe succeeding without isolation (`sandbox_isolation=none`), so the probe is known to work.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.work import sandbox
from backends.work.errors import InfrastructureError
from backends.work.report import report_score
from backends.work.student_testing import run_student_testing
from common.settings import get_settings

from .conftest import processes_of_uid

TESTS = {
    "test_calc.py": (
        "from calc import add, mean\n\n"
        "def test_add():\n    assert add(2, 3) == 5, 'add(2, 3) should be 5'\n\n"
        "def test_mean():\n    assert mean([1, 2]) == 1.5, 'mean of 1 and 2 is 1.5'\n"
    )
}
WRONG = "def add(a, b):\n    return 0\n\ndef mean(v):\n    return 0\n"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a uid per run needs a root worker")
FORGED_JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2" failures="0" errors="0">'
    '<testcase classname="test_calc" name="test_add" file="test_calc.py" time="0.001"/>'
    '<testcase classname="test_calc" name="test_mean" file="test_calc.py" time="0.001"/>'
    "</testsuite></testsuites>"
)


@pytest.fixture(autouse=True, params=["warm", "cold"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> str:
    """Every test here runs on the warm runner and on a cold bwrap run: isolation must hold on both."""
    monkeypatch.setenv("SANDBOX_RUNNER", request.param)
    get_settings.cache_clear()
    return str(request.param)


def _tests(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for c in report["tests"] for t in c["tests"]}


def _assert_honest_zero(report: dict[str, Any]) -> None:
    """The wrong solution scores 0 whatever the attack did, and nothing says PASSED."""
    assert report_score(report) == 0.0, report["summary"]
    assert report["summary"]["passed"] == 0 and report["result"] != "PASSED"
    assert all(t["result"] != "PASSED" for t in _tests(report).values())


def _assert_tampering(report: dict[str, Any]) -> None:
    _assert_honest_zero(report)
    assert report["status"] == "CRASHED" and "tampering detected" in report["statusMessage"], report["statusMessage"]


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every uid may enter (pytest's tmp_path is root-only, which would hide files for the wrong reason)."""
    path = Path(tempfile.mkdtemp(prefix="gw-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the verdict
def test_control_the_wrong_solution_scores_zero(make_job: Callable[..., Any]) -> None:
    report = run_student_testing(make_job(TESTS, {"calc.py": WRONG}))
    assert report["summary"] == {"total": 2, "passed": 0, "failed": 2, "skipped": 0}
    assert report["status"] == "COMPLETED"


def test_atexit_junit_rewrite(make_job: Callable[..., Any]) -> None:
    hook = (
        "import atexit, glob, os\n\n"
        "def _forge():\n"
        "    for path in glob.glob('/out/*.xml') + glob.glob('/work/**/*.xml', recursive=True):\n"
        f"        open(path, 'w').write({FORGED_JUNIT!r})\n"
        "    os._exit(0)\n\n"
        "atexit.register(_forge)\n"
    )
    _assert_honest_zero(run_student_testing(make_job(TESTS, {"calc.py": WRONG + hook})))


def test_forked_helper_rewrites_junit_after_pytest(make_job: Callable[..., Any]) -> None:
    """A child outlives the test and rewrites the XML the moment pytest writes it: the XML never decides."""
    helper = (
        "import os, time\n\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while not os.path.exists('/out/junit.xml'):\n"
        "        time.sleep(0.001)\n"
        f"    open('/out/junit.xml', 'w').write({FORGED_JUNIT!r})\n"
        "    os._exit(0)\n"
    )
    report = run_student_testing(make_job(TESTS, {"calc.py": WRONG + helper}))
    _assert_honest_zero(report)
    assert report["status"] in ("COMPLETED", "CRASHED")  # CRASHED when the forgery landed before the read


def test_forged_events_on_the_verdict_channel(make_job: Callable[..., Any]) -> None:
    """Student code finds the channel's pipe among its fds and writes 'passed' for every test."""
    forge = (
        "import json, os\n\n"
        "_lines = [{'event': 'collected', 'nodeids': ['test_calc.py::test_add', 'test_calc.py::test_mean']}]\n"
        "_lines += [{'event': 'test', 'nodeid': n, 'when': 'call', 'outcome': 'passed', 'message': '',\n"
        "            'details': '', 'duration': 0.0} for n in _lines[0]['nodeids']]\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n"
        "        if os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:'):\n"
        "            os.write(fd, ''.join(json.dumps(x) + '\\n' for x in _lines).encode())\n"
        "    except OSError:\n"
        "        pass\n"
    )
    _assert_tampering(run_student_testing(make_job(TESTS, {"calc.py": WRONG + forge})))


def test_a_whole_forged_session_then_exit(make_job: Callable[..., Any]) -> None:
    """The strongest forgery from inside: a complete session with an end event, then `os._exit(0)` before pytest
    could speak. It still lacks the JUnit XML pytest writes before its end; see docs/work.md for what remains."""
    forge = (
        "import json, os\n\n"
        "_ids = ['test_calc.py::test_add', 'test_calc.py::test_mean']\n"
        "_lines = [{'event': 'collected', 'nodeids': _ids}]\n"
        "_lines += [{'event': 'test', 'nodeid': n, 'when': 'call', 'outcome': 'passed', 'message': '',\n"
        "            'details': '', 'duration': 0.0} for n in _ids]\n"
        "_lines.append({'event': 'end', 'exitstatus': 0})\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n"
        "        if os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:'):\n"
        "            os.write(fd, ''.join(json.dumps(x) + '\\n' for x in _lines).encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    _assert_tampering(run_student_testing(make_job(TESTS, {"calc.py": WRONG + forge})))


def test_write_fake_result_files_anywhere(make_job: Callable[..., Any], world_dir: Path, settings_for: Any) -> None:
    data = world_dir / "data"
    (data / "prefect-results").mkdir(parents=True)
    for path in (data, data / "prefect-results"):
        path.chmod(0o777)  # only the namespaces can keep the student out, not the file modes
    before = {p: p.stat().st_mtime_ns for p in world_dir.rglob("*")}
    targets = [str(data / "prefect-results" / "forged.json"), str(data / "gateway.sqlite"), "/tmp/forged.json",
               str(world_dir / "forged.json"), "/opt/gateway/runner/pytest.ini", "/work/test_calc.py",
               "/etc/forged", "/forged.json"]  # fmt: skip
    attack = (
        "def written():\n    done = []\n"
        f"    for path in {targets!r}:\n"
        "        try:\n            open(path, 'w').write('{\"summary\": {\"passed\": 2}}')\n"
        "            done.append(path)\n"
        "        except OSError:\n            pass\n    return done\n"
    )
    tests = {**TESTS, "test_probe.py": "from calc import written\n\ndef test_sealed():\n    assert written() == []\n"}
    report = run_student_testing(make_job(tests, {"calc.py": WRONG + attack}), settings=settings_for(data_dir=data))
    assert _tests(report)["test_sealed"]["result"] == "PASSED", _tests(report)["test_sealed"]["resultMessage"]
    assert report["summary"]["passed"] == 1 and report["summary"]["total"] == 3
    assert {p: p.stat().st_mtime_ns for p in world_dir.rglob("*")} == before
    assert not Path("/tmp/forged.json").exists()


# ------------------------------------------------------------------------------------------------ configuration
CHEAT_HOOK = (
    "import pytest\n\n@pytest.hookimpl(wrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
    "    report = yield\n    report.outcome = 'passed'\n    report.longrepr = None\n    return report\n"
)


@pytest.mark.parametrize("where", ["conftest.py", "sub/conftest.py"])
def test_student_conftest_marks_every_test_passed(make_job: Callable[..., Any], where: str) -> None:
    _assert_honest_zero(run_student_testing(make_job(TESTS, {"calc.py": WRONG, where: CHEAT_HOOK})))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("pytest.ini", "[pytest]\naddopts = -k 'not test_mean'\n"),
        ("pyproject.toml", "[tool.pytest.ini_options]\naddopts = \"-k 'not test_mean'\"\n"),
        ("setup.cfg", "[tool:pytest]\naddopts = -k 'not test_mean'\n"),
        ("tox.ini", "[pytest]\naddopts = -k 'not test_mean'\n"),
    ],
)
def test_student_config_deselects_the_failing_test(make_job: Callable[..., Any], name: str, content: str) -> None:
    half = "def add(a, b):\n    return a + b\n\ndef mean(v):\n    return 0\n"
    report = run_student_testing(make_job(TESTS, {"calc.py": half, name: content}))
    assert report["summary"] == {"total": 2, "passed": 1, "failed": 1, "skipped": 0}


def test_pytest_plugins_entry_in_student_module(make_job: Callable[..., Any]) -> None:
    student = {"calc.py": "pytest_plugins = ['cheat']\n" + WRONG, "cheat.py": CHEAT_HOOK}
    _assert_honest_zero(run_student_testing(make_job(TESTS, student)))


def test_student_pytest_py_does_not_replace_pytest(make_job: Callable[..., Any]) -> None:
    fake = f"import os\nopen('/out/junit.xml', 'w').write({FORGED_JUNIT!r})\nos._exit(0)\n"
    for name in ("pytest.py", "_pytest/__init__.py", "pluggy.py"):
        report = run_student_testing(make_job(TESTS, {"calc.py": WRONG, name: fake}))
        assert report["summary"] == {"total": 2, "passed": 0, "failed": 2, "skipped": 0}, name


def test_student_test_file_named_like_the_reference_test(make_job: Callable[..., Any]) -> None:
    mine = "def test_add():\n    pass\n\ndef test_mean():\n    pass\n"
    _assert_honest_zero(run_student_testing(make_job(TESTS, {"calc.py": WRONG, "test_calc.py": mine})))


def test_student_code_cannot_rewrite_a_reference_test_before_it_runs(make_job: Callable[..., Any]) -> None:
    tests = {**TESTS, "test_more.py": "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n"}
    attack = (
        "import os\n"
        "for action in (lambda: open('/work/test_more.py', 'w').write('def test_more():\\n    pass\\n'),\n"
        "               lambda: os.unlink('/work/test_more.py'), lambda: os.rename('/work/test_more.py', '/work/x')):\n"
        "    try:\n        action()\n    except OSError:\n        pass\n"
    )
    report = run_student_testing(make_job(tests, {"calc.py": WRONG + attack}))
    _assert_honest_zero(report)
    assert report["summary"]["total"] == 3


# ------------------------------------------------------------------------------------------------ in-process tricks
IN_PROCESS = {
    "plugin registered through gc": (
        "import gc, pytest\nfrom _pytest.config import PytestPluginManager\n\n"
        "class _Cheat:\n"
        "    @pytest.hookimpl(wrapper=True)\n"
        "    def pytest_runtest_makereport(self, item, call):\n"
        "        report = yield\n        report.outcome = 'passed'\n        report.longrepr = None\n"
        "        return report\n\n"
        "for _o in gc.get_objects():\n"
        "    if isinstance(_o, PytestPluginManager):\n        _o.register(_Cheat())\n        break\n"
    ),
    "Function.runtest patched": "import _pytest.python\n_pytest.python.Function.runtest = lambda self: None\n",
    "reference test module patched": ("import test_more\n\ndef _pass():\n    pass\n\ntest_more.test_more = _pass\n"),
}


# Refused quietly (`gc.get_objects` raises where it is asked, issue 23 part 2): nothing is registered, the run
# ends with the wrong solution's honest score and no mark.
QUIETLY_REFUSED = {"plugin registered through gc"}


@pytest.mark.parametrize("trick", list(IN_PROCESS))
def test_in_process_tricks_are_detected(make_job: Callable[..., Any], trick: str) -> None:
    tests = {**TESTS, "test_more.py": "from calc import add\n\ndef test_more():\n    assert add(1, 1) == 2\n"}
    report = run_student_testing(make_job(tests, {"calc.py": WRONG + IN_PROCESS[trick]}))
    if trick in QUIETLY_REFUSED:
        _assert_honest_zero(report)
        assert "tampering" not in report["statusMessage"], report["statusMessage"]
    else:
        _assert_tampering(report)


# ------------------------------------------------------------------------------------------------ ending the run
def test_os_exit_mid_run(make_job: Callable[..., Any]) -> None:
    student = {"calc.py": "import os\n\ndef add(a, b):\n    os._exit(0)\n\ndef mean(v):\n    return 1.5\n"}
    report = run_student_testing(make_job(TESTS, student))
    _assert_honest_zero(report)
    assert report["status"] == "CRASHED" and "exited abruptly" in report["statusMessage"]


def test_killing_the_parent_and_the_worker(make_job: Callable[..., Any]) -> None:
    worker = os.getpid()
    attack = (
        "import os, signal\n\ndef kills():\n    done = []\n"
        f"    for pid in (os.getppid(), 1, {worker}):\n"
        "        try:\n            os.kill(pid, signal.SIGKILL)\n            done.append(pid)\n"
        "        except OSError:\n            pass\n    return done\n"
    )
    probe = f"from calc import kills\n\ndef test_kill():\n    assert {worker} not in kills()\n"
    report = run_student_testing(make_job({**TESTS, "test_probe.py": probe}, {"calc.py": WRONG + attack}))
    # The run went on to the end (its pid 1 ignores the signal), the worker's pid was not even visible to it.
    assert report["status"] == "COMPLETED" and report["summary"] == {"total": 3, "passed": 1, "failed": 2,
                                                                     "skipped": 0}  # fmt: skip
    assert _tests(report)["test_kill"]["result"] == "PASSED"


# ------------------------------------------------------------------------------------------------ reach
NETWORK_PROBE = (
    "import socket\n\ndef reached(targets):\n    done = []\n    for host, port in targets:\n"
    "        try:\n            socket.create_connection((host, port), timeout=2).close()\n"
    "            done.append(f'{host}:{port}')\n"
    "        except OSError:\n            pass\n    return done\n"
)


@pytest.fixture
def listening() -> Iterator[int]:
    """A service on the worker's loopback, so 'unreachable' means the sandbox, not an empty port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_network_is_unreachable(make_job: Callable[..., Any], listening: int, settings_for: Any) -> None:
    targets = [("127.0.0.1", listening), ("127.0.0.1", 6379), ("127.0.0.1", 5432), ("127.0.0.1", 8000),
               ("1.1.1.1", 53), ("8.8.8.8", 443)]  # fmt: skip
    tests = {"test_net.py": f"from probe import reached\n\ndef test_net():\n    found = reached({targets!r})\n"
                            "    assert not found, ' | '.join(found)\n"}  # fmt: skip
    job = make_job(tests, {"probe.py": NETWORK_PROBE})
    report = run_student_testing(job)
    assert _tests(report)["test_net"]["result"] == "PASSED", _tests(report)["test_net"]["resultMessage"]
    control = run_student_testing(job, settings=settings_for(sandbox_isolation="none"))
    assert f"127.0.0.1:{listening}" in _tests(control)["test_net"]["resultMessage"]


def test_worker_files_are_invisible(make_job: Callable[..., Any], world_dir: Path, settings_for: Any) -> None:
    data = world_dir / "data"
    other_run = world_dir / "gateway-sandbox-other" / "work"
    files = {
        data / "gateway.sqlite": "DATABASE", data / "prefect.db": "PREFECT-DB", data / "secrets.yaml": "SECRET",
        data / "prefect-results" / "r.json": "OTHER-REPORT", data / "submissions.git" / "HEAD": "SUBMISSIONS",
        other_run / "calc.py": "OTHER-STUDENT",
    }  # fmt: skip
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    for path in world_dir.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    # Another run's dir and the data dir, listed; (the sandbox root itself may show the read-only runtime dir).
    paths = [str(p) for p in files] + ["/etc/shadow", str(data), str(other_run.parent), str(other_run)]
    probe = (
        "import os\n\ndef leaks():\n    found = []\n"
        f"    for path in {paths!r}:\n"
        "        try:\n            found.append(path + '=' + (repr(os.listdir(path)) if os.path.isdir(path)\n"
        "                                                 else open(path).read(40)))\n"
        "        except OSError:\n            pass\n    return found\n"
    )
    tests = {"test_read.py": "from probe import leaks\n\ndef test_read():\n    found = leaks()\n"
                             "    assert not found, ' | '.join(found)\n"}  # fmt: skip
    job = make_job(tests, {"probe.py": probe})
    settings = {"data_dir": data, "secrets_file": data / "secrets.yaml", "sandbox_root": world_dir}
    report = run_student_testing(job, settings=settings_for(**settings))
    assert _tests(report)["test_read"]["result"] == "PASSED", _tests(report)["test_read"]["resultMessage"]
    control = run_student_testing(job, settings=settings_for(sandbox_isolation="none", **settings))
    leaked = _tests(control)["test_read"]["resultMessage"]
    assert "DATABASE" in leaked and "OTHER-STUDENT" in leaked  # the probe reads what the namespaces hide


# ------------------------------------------------------------------------------------------------ other runs
HONEST_WAITING = (
    "import os, time\n\ndef add(a, b):\n    return a + b\n\ndef mean(v):\n"
    "    deadline = time.monotonic() + 60\n"
    "    while not os.path.exists('/work/release') and time.monotonic() < deadline:\n"
    "        time.sleep(0.02)\n"
    "    return sum(v) / len(v)\n"
)
ATTACKS_ON_OTHERS = {
    "kill -9 -1": (
        "import os, signal, time\n\ndef add(a, b):\n    end = time.monotonic() + 3\n"
        "    while time.monotonic() < end:\n        try:\n            os.kill(-1, signal.SIGKILL)\n"
        "        except OSError:\n            pass\n    return 0\n\ndef mean(v):\n    return 0\n"
    ),
    "fork bomb": (
        "import os, time\n\ndef add(a, b):\n    end = time.monotonic() + 3\n"
        "    while time.monotonic() < end:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n    return 0\n\ndef mean(v):\n    return 0\n"
    ),
}


def _pytest_running_in(root: Path) -> Path | None:
    runs = [p for p in root.glob("gateway-sandbox-*/space/work") if (p / "calc.py").exists()]
    return runs[0] if len(runs) == 1 else None


@pytest.fixture(scope="module")
def concurrent_roots() -> Iterator[tuple[Path, Path]]:
    """The honest and the hostile run's sandbox roots, shared by every case of the module (warm and cold, each
    attack). A new root builds its own runtime (site copy, bytecode cache, probe, warm runner: most of a case's
    time); what a case needs of its own is a fresh run dir and uid, which each run makes and removes."""
    path = Path(tempfile.mkdtemp(prefix="gw-concurrent-"))
    path.chmod(0o755)
    roots = path / "honest", path / "hostile"
    for root in roots:
        root.mkdir(mode=0o755)
    yield roots
    shutil.rmtree(path, ignore_errors=True)


@ROOT_ONLY
@pytest.mark.parametrize("attack", list(ATTACKS_ON_OTHERS))
def test_attack_on_a_concurrent_run(
    make_job: Callable[..., Any], concurrent_roots: tuple[Path, Path], settings_for: Any, attack: str
) -> None:
    """An honest run is in the middle of a test while another run attacks; the honest one is graded 2 of 2."""
    honest_root, hostile_root = concurrent_roots
    honest_uid = 63000 + os.getpid() % 1000
    honest_job = make_job(TESTS, {"calc.py": HONEST_WAITING})
    hostile_job = make_job(TESTS, {"calc.py": ATTACKS_ON_OTHERS[attack]})
    results: dict[str, Any] = {}

    def honest() -> None:
        settings = settings_for(sandbox_root=honest_root, sandbox_uid_base=honest_uid, sandbox_uid_count=1)
        results["honest"] = run_student_testing(honest_job, settings=settings)

    thread = threading.Thread(target=honest)
    thread.start()
    try:
        deadline = 60.0
        end = time.monotonic() + deadline
        while _pytest_running_in(honest_root) is None and time.monotonic() < end:
            time.sleep(0.02)
        work = _pytest_running_in(honest_root)
        assert work is not None, "the honest run never started"
        hostile = run_student_testing(hostile_job, settings=settings_for(sandbox_root=hostile_root,
                                                                         sandbox_max_processes=30))  # fmt: skip
        assert thread.is_alive(), "the honest run ended before the attack was over"
        assert processes_of_uid(honest_uid), "the honest run's processes are gone"
        (work / "release").write_text("go")
    finally:
        thread.join(timeout=120)
    assert report_score(hostile) == 0.0
    assert results["honest"]["summary"] == {"total": 2, "passed": 2, "failed": 0, "skipped": 0}
    assert results["honest"]["status"] == "COMPLETED"


@ROOT_ONLY
def test_setsid_execve_escape_is_gone_at_the_end(make_job: Callable[..., Any], settings_for: Any) -> None:
    uid = 60000 + os.getpid() % 1000
    escape = (
        "import os\n\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execve('/bin/sleep', ['sleep', '1000'], {})\n    os._exit(0)\n"
    )
    report = run_student_testing(make_job(TESTS, {"calc.py": WRONG + escape}),
                                 settings=settings_for(sandbox_uid_base=uid, sandbox_uid_count=1))  # fmt: skip
    _assert_honest_zero(report)
    assert processes_of_uid(uid) == []


# ------------------------------------------------------------------------------------------------ no isolation
def test_missing_bubblewrap_refuses_to_grade(
    make_job: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings_for: Any
) -> None:
    """The one fault faked: bubblewrap absent (PATH without it), which this machine cannot otherwise show."""
    job = make_job(TESTS, {"calc.py": WRONG})
    git = shutil.which("git")
    assert git is not None
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(only_git))
    sandbox._runtime_for.cache_clear()
    try:
        settings = settings_for()
        assert "bubblewrap (bwrap) is not installed" in (sandbox.sandbox_health(settings) or "")
        with pytest.raises(InfrastructureError, match="bubblewrap"):
            run_student_testing(job, settings=settings)
    finally:
        sandbox._runtime_for.cache_clear()
