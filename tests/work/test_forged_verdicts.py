"""A red team's catalogue of forged verdicts, each against the real work path on both runners (issue 23, part 1).

Every attack is code in the student's `calc.py`, which the reference's tests import; the solution itself is
wrong, so the honest score is 0. Each attack must end with the honest score, and where the attack touches what
the guard protects, with score 0 and "tampering detected". The guard (`backends/work/sandbox_guard.py`) and the
signed channel are what hold; docs/work.md lists what is and is not prevented.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backends.work.report import report_score
from backends.work.student_testing import run_student_testing
from common.settings import get_settings

TESTS = {
    "test_calc.py": (
        "from calc import add, mean\n\n"
        "def test_add():\n    assert add(2, 3) == 5, 'add(2, 3) should be 5'\n\n"
        "def test_mean():\n    assert abs(mean([1, 2]) - 1.5) < 1e-9, 'mean of 1 and 2 is 1.5'\n"
    )
}
WRONG = "def add(a, b):\n    return 0\n\ndef mean(v):\n    return 0\n"
RIGHT = "def add(a, b):\n    return a + b\n\ndef mean(v):\n    return sum(v) / len(v)\n"
FORGED_JUNIT = (
    '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2" failures="0" errors="0">'
    '<testcase classname="test_calc" name="test_add" file="test_calc.py" time="0.001"/>'
    '<testcase classname="test_calc" name="test_mean" file="test_calc.py" time="0.001"/>'
    "</testsuite></testsuites>"
)
_SESSION = (
    "import json as _j\n"
    "_ids = ['test_calc.py::test_add', 'test_calc.py::test_mean']\n"
    "_events = [{'event': 'collected', 'nodeids': _ids}]\n"
    "_events += [{'event': 'test', 'nodeid': n, 'when': 'call', 'outcome': 'passed', 'message': '',\n"
    "             'details': '', 'duration': 0.0} for n in _ids]\n"
    "_events.append({'event': 'end', 'exitstatus': 0})\n"
    "FORGED = ''.join(_j.dumps(e) + '\\n' for e in _events).encode()\n"
    f"open('/out/junit.xml', 'w').write({FORGED_JUNIT!r})\n"
)
_CONFIG = (
    "import sys\n"
    "def _config():\n"
    "    return [h for h in sys.meta_path if type(h).__name__ == 'AssertionRewritingHook'][0].config\n"
)
_CHEAT = (
    "import pytest\n"
    "class _Cheat:\n"
    "    @pytest.hookimpl(wrapper=True)\n"
    "    def pytest_runtest_makereport(self, item, call):\n"
    "        report = yield\n        report.outcome = 'passed'\n        report.longrepr = None\n"
    "        return report\n"
)

ATTACKS: dict[str, str] = {
    # --- the five of issue 23
    "a whole forged session on the pipe (found by fd number), a forged junit.xml, os._exit(0)": (
        _SESSION + "import os, stat\n"
        "for _fd in range(3, 256):\n"
        "    try:\n"
        "        if stat.S_ISFIFO(os.fstat(_fd).st_mode):\n"
        "            os.write(_fd, FORGED)\n"
        "    except OSError:\n        pass\n"
        "os._exit(0)\n"
    ),
    "a forged session on the pipe found through /proc/self/fd": (
        _SESSION + "import os\nfor _fd in os.listdir('/proc/self/fd'):\n"
        "    try:\n        os.write(int(_fd), FORGED)\n    except OSError:\n        pass\nos._exit(0)\n"
    ),
    "TestReport.__init__ patched from a module the tests import": (
        "import _pytest.reports\n_orig = _pytest.reports.TestReport.__init__\n"
        "def _init(self, *a, **k):\n    _orig(self, *a, **k)\n    self.outcome = 'passed'\n    self.longrepr = None\n"
        "_pytest.reports.TestReport.__init__ = _init\n"
    ),
    "the plugin's own state replaced, then a makereport wrapper": (
        _CONFIG + _CHEAT + "_pm = _config().pluginmanager\n"
        "for _p in _pm.get_plugins():\n"
        "    if type(_p).__name__ == 'VerdictChannel':\n"
        "        _p._check = lambda *a: None\n        _p._check_item = lambda *a: None\n        _p._machinery = {}\n"
        "_pm.register(_Cheat())\n"
    ),
    "TestReport.from_item_and_call patched, then the snapshot reset": (
        "import _pytest.reports\n_orig = _pytest.reports.TestReport.from_item_and_call\n"
        "def _make(cls, item, call):\n    r = _orig.__func__(cls, item, call)\n    r.outcome = 'passed'\n"
        "    r.longrepr = None\n    return r\n"
        "_pytest.reports.TestReport.from_item_and_call = classmethod(_make)\n"
    ),
    "sys.settrace plus ctypes PyFrame_LocalsToFast clearing excinfo": (
        "import sys, ctypes\n"
        "def _tracer(frame, event, arg):\n"
        "    if event == 'return' and 'excinfo' in frame.f_locals:\n"
        "        frame.f_locals['excinfo'] = None\n"
        "        ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))\n"
        "    return _tracer\n"
        "sys.settrace(_tracer)\n"
    ),
    # --- more of the same families
    "sys.settrace alone": "import sys\nsys.settrace(lambda *a: None)\n",
    "threading.settrace": (
        "import threading\nthreading.settrace(lambda *a: None)\n"
        "_t = threading.Thread(target=lambda: None)\n_t.start()\n_t.join()\n"
    ),
    "gc finds the plugin manager and registers a cheat": (
        _CHEAT + "import gc\nfrom _pytest.config import PytestPluginManager\n"
        "for _o in gc.get_objects():\n"
        "    if isinstance(_o, PytestPluginManager):\n        _o.register(_Cheat())\n"
    ),
    "a makereport wrapper registered through sys.meta_path": (
        _CONFIG + _CHEAT + "_config().pluginmanager.register(_Cheat())\n"
    ),
    "pluggy's hook executor replaced": (
        _CONFIG + "_pm = _config().pluginmanager\n_inner = _pm._inner_hookexec\n"
        "def _exec(name, methods, kwargs, firstresult):\n"
        "    result = _inner(name, methods, kwargs, firstresult)\n"
        "    if name == 'pytest_runtest_makereport':\n"
        "        result.outcome = 'passed'\n        result.longrepr = None\n"
        "    return result\n"
        "_pm._inner_hookexec = _exec\n"
    ),
    "a pytest module function replaced": (
        "import _pytest.runner\n_orig = _pytest.runner.call_and_report\n"
        "def _car(item, when, log=True, **kw):\n"
        "    return _orig(item, 'setup' if when == 'call' else when, log, **kw)\n"
        "_pytest.runner.call_and_report = _car\n"
    ),
    "every later test's runtest and function shadowed by builtins": (
        "import sys\nimport _pytest.assertion.rewrite as _r\n"
        "def add(a, b):\n"
        "    for _h in sys.meta_path:\n"
        "        if isinstance(_h, _r.AssertionRewritingHook) and _h.session is not None:\n"
        "            for _item in _h.session.items:\n"
        "                _item.runtest = int\n                _item.obj = dict\n"
        "    return 0\n"
    ),
    "the verdict event raised from student code": (
        _CONFIG + "import sys\ndef add(a, b):\n    sys.audit('gateway.verdict', 'end', 0)\n    return 0\n"
    ),
    "the plugin's own hook called from a thread": (
        _CONFIG + "import threading\n"
        "def add(a, b):\n"
        "    for _p in _config().pluginmanager.get_plugins():\n"
        "        if type(_p).__name__ == 'VerdictChannel':\n"
        "            _t = threading.Thread(target=_p.pytest_sessionfinish, args=(None, 0))\n"
        "            _t.start()\n            _t.join()\n"
        "    return 0\n"
    ),
    "the guard armed again with a key the student knows": (
        "import gateway_guard\ngateway_guard.arm(3, b'k' * 32, '/work', [])\n"
    ),
    "replacing a builtin the reference's assertion uses": "import builtins\nbuiltins.abs = lambda x: 0\n",
    "reading the test process's memory": "open('/proc/self/mem', 'rb')\n",
    "reading the memory through a symlink in the work dir": (
        "import os\nos.symlink('/proc/self/mem', '/work/.m')\nopen('/work/.m', 'rb')\n"
    ),
    "ctypes imported": "import ctypes\n",
    "all threads' frames": "import sys\nsys._current_frames()\n",
    "gc referrers of the plugin's class": (
        "import gc, gateway_verdict\ngc.get_referrers(gateway_verdict.VerdictChannel)\n"
    ),
    "a forked child writes a forged session after the parent's": (
        _SESSION + "import os, stat\n"
        "def mean(v):\n"
        "    if os.fork() == 0:\n"
        "        for _fd in range(3, 256):\n"
        "            try:\n"
        "                if stat.S_ISFIFO(os.fstat(_fd).st_mode):\n"
        "                    os.write(_fd, FORGED)\n"
        "            except OSError:\n                pass\n"
        "        os._exit(0)\n"
        "    os.wait()\n"
        "    return 0\n"
    ),
    "a signal handler raising inside the hook, then the guard's frame from the traceback": (
        "import signal\n"
        "def _raise(*_):\n    raise TimeoutError('now')\n"
        "signal.signal(signal.SIGALRM, _raise)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)\n"
        "_found = []\n"
        "for _ in range(20000):\n"
        "    try:\n        open('/work/calc.py').close()\n"
        "    except TimeoutError as _e:\n"
        "        _tb = _e.__traceback__\n"
        "        while _tb is not None:\n"
        "            if _tb.tb_frame.f_code.co_filename.endswith('gateway_guard.py'):\n"
        "                _found.append(_tb.tb_frame.f_locals)\n"
        "            _tb = _tb.tb_next\n"
        "signal.setitimer(signal.ITIMER_REAL, 0)\n"
    ),
    "code compiled under the reference test's name": (
        "exec(compile('def test_add():\\n    pass\\n', '/work/test_calc.py', 'exec'), globals())\n"
    ),
    # --- around the quiet refusals (issue 23 part 2: they must not open a way in)
    "an audit hook of its own, handed the traceback the guard reads its stack from": (
        "import sys, os\n_found = []\n"
        "def _spy(ev, args):\n"
        "    if ev == 'object.__getattr__' and args[1] == 'tb_frame' and not _found:\n"
        "        f = args[0].tb_frame\n"
        "        while f is not None:\n"
        "            _found.append(dict(f.f_locals))\n            f = f.f_back\n"
        "sys.addaudithook(_spy)\n"
        "def add(a, b):\n"
        "    todo, seen = [v for d in _found for v in d.values()], set()\n"
        "    while todo:\n"
        "        v = todo.pop()\n"
        "        if id(v) in seen:\n            continue\n"
        "        seen.add(id(v))\n"
        "        if callable(v) and getattr(v, '__name__', '') == 'send':\n"
        "            for n in ('test_calc.py::test_add', 'test_calc.py::test_mean'):\n"
        "                v({'event': 'test', 'nodeid': n, 'when': 'call', 'outcome': 'passed', 'message': '',\n"
        "                   'details': '', 'duration': 0.0})\n"
        "            v({'event': 'end', 'exitstatus': 0})\n"
        f"            open('/out/junit.xml', 'w').write({FORGED_JUNIT!r})\n"
        "            os._exit(0)\n"
        "        todo += [c.cell_contents for c in getattr(v, '__closure__', None) or ()]\n"
        "    return 0\n"
    ),
    "ctypes's halted entry removed, then imported": "import sys\ndel sys.modules['ctypes']\nimport ctypes\n",
    "the ctypes extension loaded under another name": (
        "import importlib.machinery, importlib.util\n"
        "_spec = importlib.machinery.PathFinder.find_spec('_ctypes')\n"
        "_spec = importlib.util.spec_from_file_location('x._ctypes', _spec.origin)\n"
        "importlib.util.module_from_spec(_spec)\n"
    ),
    "reading the environment the process started with": "open('/proc/self/environ', 'rb')\n",
    "reading a thread's memory through /proc/thread-self": "open('/proc/thread-self/mem', 'rb')\n",
    "the quiet refusal's defaults rebound": (
        "import gateway_guard\ngateway_guard._refuse_quietly.__defaults__ = (frozenset(), RuntimeError)\n"
    ),
}
# Attacks that may end in the honest score without any mark: whether the alarm ever lands while the hook runs is
# the machine's timing; either way nothing of the guard is reached (the hook ends the run when it is).
HONEST_ENDINGS = {"a signal handler raising inside the hook, then the guard's frame from the traceback"}
# Attacks the guard refuses quietly (an ordinary error where they ask, issue 23 part 2): nothing happens, so the
# run ends with the wrong solution's honest score (0), without a mark.
HONEST_ENDINGS |= {
    "sys.settrace plus ctypes PyFrame_LocalsToFast clearing excinfo", "sys.settrace alone", "threading.settrace",
    "gc finds the plugin manager and registers a cheat", "ctypes imported", "all threads' frames",
    "gc referrers of the plugin's class", "the guard armed again with a key the student knows",
    "an audit hook of its own, handed the traceback the guard reads its stack from",
}  # fmt: skip


@pytest.fixture(autouse=True, params=["warm", "cold"])
def runner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> str:
    monkeypatch.setenv("SANDBOX_RUNNER", request.param)
    get_settings.cache_clear()
    return str(request.param)


def _results(report: dict[str, Any]) -> list[str]:
    return [t["result"] for c in report["tests"] for t in c["tests"]]


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_forged_verdict_ends_honest_or_as_tampering(make_job: Callable[..., Any], attack: str) -> None:
    report = run_student_testing(make_job(TESTS, {"calc.py": WRONG + ATTACKS[attack]}))
    assert report_score(report) == 0.0, (report["summary"], report["statusMessage"])
    assert "PASSED" not in _results(report)
    if attack not in HONEST_ENDINGS:
        assert report["status"] == "CRASHED", report["statusMessage"]
        assert "tampering detected" in report["statusMessage"], report["statusMessage"]


HONEST = {
    "logging, traceback, namedtuple, threads, inspect and a class of its own": (
        "import collections, inspect, logging, threading, traceback\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "class Acc:\n    total = 0\n"
        "def add(a, b):\n"
        "    logging.warning('adding %s and %s', a, b)\n"
        "    try:\n        raise ValueError('x')\n"
        "    except ValueError:\n        assert 'ValueError' in traceback.format_exc()\n"
        "    assert inspect.stack()\n"
        "    out = []\n"
        "    t = threading.Thread(target=lambda: out.append(a + b))\n    t.start()\n    t.join()\n"
        "    Acc.total += out[0]\n"
        "    return Point(out[0], 0).x\n"
        "def mean(v):\n    return sum(v) / len(v)\n"
    ),
}


@pytest.mark.parametrize("solution", list(HONEST))
def test_honest_code_is_graded_honestly(make_job: Callable[..., Any], solution: str) -> None:
    tests = {**TESTS, "test_input.py": (
        "import builtins\nfrom calc import add\n\n"
        "def test_with_input(monkeypatch):\n"
        "    monkeypatch.setattr(builtins, 'input', lambda *_: '2')\n"
        "    assert add(int(input()), 3) == 5\n"
    )}  # fmt: skip
    report = run_student_testing(make_job(tests, {"calc.py": HONEST[solution]}))
    assert report["summary"] == {"total": 3, "passed": 3, "failed": 0, "skipped": 0}, report["statusMessage"]
    assert report["status"] == "COMPLETED"


# Honest, common uses (issue 23 part 2): allowed ones keep full marks; refused ones fail where they ask, with an
# ordinary error (the test that needs them fails), never "tampering detected". `add` and `mean` are right.
_ADD, _MEAN = "def add(a, b):\n    return a + b\n", "def mean(v):\n    return sum(v) / len(v)\n"
ALLOWED_USES = {
    "ctypes imported only where it is available (as numpy does)": (
        "try:\n    import ctypes\nexcept ImportError:\n    ctypes = None\n" + _ADD + _MEAN
    ),
    "gc.collect, disable, enable, get_count, isenabled, freeze": (
        "import gc\n" + _MEAN + "def add(a, b):\n    gc.disable()\n    gc.collect()\n    gc.freeze()\n"
        "    gc.unfreeze()\n    assert not gc.isenabled() and len(gc.get_count()) == 3\n    gc.enable()\n"
        "    return a + b\n"
    ),
    "sys.setrecursionlimit and a deep recursion": (
        "import sys\nsys.setrecursionlimit(10000)\n"
        + _MEAN
        + "def _depth(n):\n    return 0 if n == 0 else 1 + _depth(n - 1)\n"
        "def add(a, b):\n    return _depth(3000) - 3000 + a + b\n"
    ),
    "inspect.currentframe, sys._getframe and a traceback printed": (
        "import inspect, sys, traceback\n" + _MEAN + "def add(a, b):\n"
        "    assert inspect.currentframe().f_code.co_name == 'add' == sys._getframe().f_code.co_name\n"
        "    try:\n        import ctypes  # noqa\n"
        "    except ImportError:\n        assert 'ctypes' in traceback.format_exc()\n"
        "    return a + b\n"
    ),
    "/proc/self/status, stat, statm, fd, /proc/cpuinfo and /proc/meminfo read": (
        "import os\n" + _MEAN + "def add(a, b):\n"
        "    for p in ('/proc/self/status', '/proc/self/stat', '/proc/self/statm', '/proc/cpuinfo', '/proc/meminfo'):\n"
        "        assert open(p).read()\n"
        "    assert os.listdir('/proc/self/fd') and os.listdir('/dev/fd')\n"
        "    return a + b\n"
    ),
    "threads, a thread pool and a timer": (
        "import concurrent.futures, threading\n" + _MEAN + "def add(a, b):\n"
        "    with concurrent.futures.ThreadPoolExecutor(2) as pool:\n        s = pool.submit(lambda: a + b).result()\n"
        "    done = []\n    t = threading.Timer(0, lambda: done.append(s))\n    t.start()\n    t.join()\n"
        "    return done[0]\n"
    ),
    "subprocess runs the interpreter": (
        "import subprocess, sys\n" + _MEAN + "def add(a, b):\n"
        "    out = subprocess.run([sys.executable, '-c', f'print({a} + {b})'], capture_output=True, check=True)\n"
        "    return int(out.stdout)\n"
    ),
    "multiprocessing: a forked process": (
        "import multiprocessing\n" + _MEAN + "def _sum(pair):\n    assert pair[0] + pair[1] == 5\n"
        "def add(a, b):\n"
        "    p = multiprocessing.get_context('fork').Process(target=_sum, args=((a, b),))\n    p.start()\n"
        "    p.join()\n    return a + b if p.exitcode == 0 else -1\n"
    ),
    "an audit hook of its own (quietly not added)": ("import sys\nsys.addaudithook(lambda *a: None)\n" + _ADD + _MEAN),
}
REFUSED_USES = {
    "ctypes imported": "def mean(v):\n    import ctypes\n    return 1.5\n",
    "multiprocessing.Value (it needs ctypes)": (
        "import multiprocessing\ndef mean(v):\n    return multiprocessing.Value('d', sum(v) / len(v)).value\n"
    ),
    "gc.get_referents (a deep-size recipe)": "import gc\ndef mean(v):\n    gc.get_referents(v)\n    return 1.5\n",
    "gc.get_objects": "import gc\ndef mean(v):\n    gc.get_objects()\n    return 1.5\n",
    "a tracer of its own": "import sys\ndef mean(v):\n    sys.settrace(lambda *a: None)\n    return 1.5\n",
    "cProfile": "import cProfile\ndef mean(v):\n    cProfile.Profile().enable()\n    return 1.5\n",
    "every thread's frames (a watchdog's dump)": (
        "import sys\ndef mean(v):\n    sys._current_frames()\n    return 1.5\n"
    ),
}


@pytest.mark.parametrize("use", list(ALLOWED_USES))
def test_an_allowed_honest_use_keeps_full_marks(make_job: Callable[..., Any], use: str) -> None:
    report = run_student_testing(make_job(TESTS, {"calc.py": ALLOWED_USES[use]}))
    assert report["status"] == "COMPLETED", report["statusMessage"]
    assert report["summary"]["passed"] == 2, _messages(report)


@pytest.mark.parametrize("use", list(REFUSED_USES))
def test_a_refused_honest_use_fails_only_where_it_asks(make_job: Callable[..., Any], use: str) -> None:
    report = run_student_testing(make_job(TESTS, {"calc.py": _ADD + REFUSED_USES[use]}))
    assert report["status"] == "COMPLETED", report["statusMessage"]
    assert _results(report) == ["PASSED", "FAILED"], _messages(report)
    assert report_score(report) == 0.5


def _messages(report: dict[str, Any]) -> list[str]:
    return [t["resultMessage"] for c in report["tests"] for t in c["tests"]]


RICH_REFERENCE = {
    "conftest.py": (
        "import pytest\n\n@pytest.fixture\ndef numbers():\n    return [1, 2, 3]\n\n"
        "@pytest.fixture(scope='module')\ndef shared():\n    return {'n': 0}\n"
    ),
    "test_rich.py": (
        "import unittest\nimport pytest\nfrom calc import add, mean\n\n"
        "@pytest.mark.parametrize(('a', 'b', 'c'), [(1, 2, 3), (2, 2, 4), (0, 0, 0)])\n"
        "def test_param(a, b, c):\n    assert add(a, b) == c\n\n"
        "class TestGroup:\n    def test_mean(self, numbers):\n        assert mean(numbers) == 2\n\n"
        "    def test_shared(self, shared):\n        shared['n'] += 1\n        assert shared['n'] >= 1\n\n"
        "def test_output(capsys, tmp_path):\n    print(add(1, 1))\n    (tmp_path / 'x').write_text('y')\n"
        "    assert capsys.readouterr().out == '2\\n'\n\n"
        "def test_raises():\n    with pytest.raises(TypeError):\n        add(1, None)\n\n"
        "@pytest.mark.skip(reason='not this week')\ndef test_skipped():\n    assert False\n\n"
        "class TestCase(unittest.TestCase):\n    def test_unit(self):\n        self.assertEqual(add(2, 5), 7)\n"
    ),
}


def test_a_rich_honest_reference_is_graded_honestly(make_job: Callable[..., Any]) -> None:
    """Fixtures from the reference's conftest, parametrize, classes, capsys, tmp_path, skip, unittest."""
    report = run_student_testing(make_job(RICH_REFERENCE, {"calc.py": RIGHT}))
    assert report["status"] == "COMPLETED", report["statusMessage"]
    assert report["summary"] == {"total": 9, "passed": 8, "failed": 0, "skipped": 1}
