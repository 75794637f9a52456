"""The verdict's guard (copied into the sandbox as `gateway_guard.py`; imports only the standard library).

Student code shares the test process's interpreter with pytest and the verdict plugin, so whatever the plugin
keeps in Python objects is within the student's reach. The guard changes what the student can reach, and signs
what is reported with a key the student cannot read (docs/work.md, "The guard"):

- `arm()` is called by the launcher (cold) or the warm runner's test process after pytest and the plugin are
  imported and before pytest starts: no test or student module has been imported yet. It installs a PEP 578
  audit hook. Audit hooks cannot be removed from Python and this one is reachable from nothing (no module
  attribute holds it; `gc` introspection and `ctypes` are refused), so its closure (the key, the snapshots)
  is out of the student's reach.
- **Refused, and the run is over** (a signed `tamper` line, then `os._exit`): only what can serve nothing but
  forging the verdict: loading ctypes around its halted `sys.modules` entry (the entry removed, the extension
  loaded from its file or under another name) or any `ctypes` event; opening `/proc/<pid>/mem` or `environ`
  (the key is in the memory; the cold launcher's was in the start-up environment); a fresh import of a module
  that was loaded before the session (a second `_signal`, `_pytest.runner`); writing an attribute of pytest's,
  pluggy's or the plugin's classes or the code or defaults of any function loaded before the session; writing a
  library class's attribute from student code; compiling or unmarshalling code under a reference file's name
  from student code; a frame request while the hook runs (a signal handler inside it).
- **Refused quietly** (an ordinary error where it is asked, no mark: refusing is enough to stop it, and honest
  code does these): `import ctypes` (ModuleNotFoundError: its `sys.modules` entries are None, so
  `try: import ctypes / except ImportError` goes on without it); `gc.get_objects` / `get_referrers` /
  `get_referents`, `sys.settrace` / `setprofile` (cProfile too), `sys._current_frames`, another audit hook
  (RuntimeError from `_refuse_quietly`, the second hook, whose frame leads nowhere; `sys.addaudithook` then
  adds nothing). Frame introspection from student code that would reach the guard's own frames is refused too.
- **Open**: `gc.collect` / `disable` / `enable` / `freeze` / `get_count`, `sys.setrecursionlimit`,
  `sys._getframe` / `inspect.currentframe()` outside the hook, threads, `subprocess`, `multiprocessing` with
  fork, `/proc/self/status`, `stat`, `fd`, `/proc/cpuinfo` and the rest of `/proc`.
- The plugin speaks only through the audit event `gateway.verdict`. The hook accepts it only in pytest's process
  and thread, when every frame on the stack runs pytest's, pluggy's, the plugin's or the launcher's code (as
  loaded before the session) and the exact callers are pytest's (`call_and_report` for a test, ...). It checks
  that nothing snapshotted at the session's start has changed (hook implementations, the functions of pytest's
  and pluggy's modules, the collected items, their parents and fixtures, the reference modules' functions,
  builtins at each teardown), builds the record from the report's own fields and writes `<hmac> <json>`
  lines: HMAC-SHA256 with the run's key over the line's sequence number and its JSON. Bytes written on the pipe
  by anyone else (found by fd number, by a helper process, before a forged `os._exit`) fail the worker's check.
- Inside the hook no code runs that the student could have replaced: what it calls is bound when armed
  (builtins, C functions) or its own; it never calls pytest's properties; garbage collection is off while it
  runs (no student `__del__`). Not closed: a Python signal handler that runs while the hook runs is handed
  the hook's frame as its `frame` argument (docs/work.md, "What is prevented, what is not").
"""

from __future__ import annotations

import os
import sys
from typing import Any

TRUSTED_PREFIXES = ("_pytest", "pytest", "pluggy", "gateway_verdict", "gateway_guard", "__main__")
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
# Refused quietly, by `_refuse_quietly` (an ordinary RuntimeError in the caller; `sys.addaudithook` then simply
# adds nothing): what would reach objects the student cannot otherwise name (gc's reverse and whole-heap views,
# every thread's frames), a tracer (it can write a running frame's locals) and another audit hook (it would be
# handed the guard's own objects, e.g. the traceback the hook reads its stack from). Refusing is enough to stop
# each; an honest student who uses one gets an error, never "tampering detected".
_QUIET = frozenset({
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile", "sys.addaudithook",
    "sys._current_frames", "sys._current_exceptions", "sys._settraceallthreads", "sys._setprofileallthreads",
})  # fmt: skip
# The only /proc/<pid>/ entries refused (as tampering): the memory (the key is in it) and the environment the
# process started with (the cold launcher's key was in it). The kernel refuses both to a non-dumpable process of
# another uid anyway; asking can serve nothing but forging. Everything else there (status, fd, maps, ...) is open.
_PROC_SECRETS = frozenset({"mem", "environ"})
# Module globals pytest itself sets during a run.
_SET_BY_PYTEST = frozenset({("_pytest.assertion.util", "_reprcompare"), ("_pytest.assertion.util", "_assertion_pass"),
                            ("_pytest.assertion.util", "_config"), ("_pytest.doctest", "RUNNER_CLASS"),
                            ("_pytest.doctest", "CHECKER_CLASS")})  # fmt: skip
# Events the hook never looks at, and those it looks at only while it runs itself (a request then is not its own).
_IGNORED = frozenset({"builtins.id", "exec", "os.putenv", "os.unsetenv", "sys.excepthook", "time.sleep"})
_ONLY_INSIDE = frozenset({"sys._getframe"})
_PARENT_KEYS = ("_obj", "session", "config", "path", "parent", "_id", "name", "_fixtureinfo", "callspec")
# Instance attributes pytest itself sets on nodes; any other instance attribute named like a class attribute
# (`item.runtest = int`, `module.setup = ...`) shadows pytest's code.
_NODE_OWN = frozenset({"_obj", "obj", "name", "parent", "config", "session", "path", "keywords", "own_markers",
                       "extra_keyword_matches", "stash", "_nodeid", "_store", "funcargs", "fixturenames",
                       "_fixtureinfo", "_request", "originalname", "callspec", "_report_sections",
                       "user_properties", "_instance", "_location", "_mod", "_excinfo", "_explicit_tearDown",
                       "_cached_errors_and_skips"})  # fmt: skip


def codes_of(objects: Any, into: set[Any]) -> None:
    """Every code object reachable from the functions and classes in `objects` (methods, properties, nested)."""
    code_type = type(codes_of.__code__)
    todo = list(objects)
    seen: set[int] = set()
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if type(obj) is code_type:
            into.add(obj)
            todo.extend(c for c in obj.co_consts if type(c) is code_type)
        elif isinstance(obj, type):
            todo.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod)):
            todo.append(obj.__func__)
        elif isinstance(obj, property):
            todo.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif type(obj).__name__ in ("function", "method"):
            todo.append(obj.__code__)
            if "__wrapped__" in getattr(obj, "__dict__", {}):
                todo.append(obj.__dict__["__wrapped__"])


def _is_ctypes(name: str) -> bool:
    """ctypes, its submodules and its extension (also loaded under another package: `x._ctypes`)."""
    return name == "ctypes" or name.startswith("ctypes.") or name.rpartition(".")[2].startswith("_ctypes")


def _refuse_quietly(event: str, args: Any, _quiet: frozenset[str] = _QUIET, _error: type = RuntimeError) -> None:
    """The second audit hook (after the guard's). It holds nothing: its frame, found in the traceback of what it
    refuses, leads only to the caller's. Its defaults are bound here (rebinding them or its code is refused)."""
    if event in _quiet:
        raise _error(f"{event} is not available in the sandbox")


def _code_sets() -> tuple[set[Any], set[Any]]:
    """(trusted, known): the code of pytest's, pluggy's, the plugin's and the launcher's modules, and of every
    module loaded so far."""
    trusted: set[Any] = set()  # code that may be on the stack when the plugin reports
    known: set[Any] = set()  # code loaded before the session (the standard library too)
    for name, module in list(sys.modules.items()):
        if module is None:  # a halted import (ctypes)
            continue
        values = list(vars(module).values())
        codes_of(values, known)
        if name.startswith(TRUSTED_PREFIXES):
            codes_of(values, trusted)
    return trusted, known


_prepared: tuple[set[Any], set[Any], frozenset[str]] | None = None


def prepare() -> None:
    """The warm runner's zygote computes the code sets once, before any job; each run's `arm` copies them (when
    no module was loaded since) instead of walking every module again, and drops them: no student code runs
    between the two."""
    global _prepared  # noqa: PLW0603
    import _hashlib, _json, _thread, functools  # noqa: E401, F401, I001, PLC0415 - what arm imports
    import _pytest.fixtures, _pytest.main, _pytest.nodes, _pytest.reports, _pytest.runner, _pytest.unittest  # noqa: E401, F401, PLC0415
    import gateway_verdict, pluggy._callers, pluggy._hooks, pluggy._manager  # noqa: E401, F401, PLC0415

    trusted, known = _code_sets()
    _prepared = (trusted, known, frozenset(n for n in sys.modules if not _is_ctypes(n)))


def _code(owner: Any, name: str) -> Any:
    value = vars(owner)[name]
    value = getattr(value, "__func__", value)
    return value.__code__


def arm(channel_fd: int, key: bytes, work_dir: str, reference: list[str]) -> None:  # noqa: C901, PLR0915
    """Install the hook. Everything it uses is bound here, so a later change to a module attribute or a builtin
    does not reach it; after this returns the key exists only in the hook's closure."""
    import _hashlib  # noqa: PLC0415
    import _json  # noqa: PLC0415
    import _thread  # noqa: PLC0415
    import builtins  # noqa: PLC0415
    import functools  # noqa: PLC0415
    import gc  # noqa: PLC0415

    import _pytest.fixtures  # noqa: PLC0415
    import _pytest.main  # noqa: PLC0415
    import _pytest.nodes  # noqa: PLC0415
    import _pytest.reports  # noqa: PLC0415
    import _pytest.runner  # noqa: PLC0415
    import _pytest.unittest  # noqa: PLC0415
    import gateway_verdict  # noqa: PLC0415
    import pluggy._callers  # noqa: PLC0415
    import pluggy._hooks  # noqa: PLC0415
    import pluggy._manager  # noqa: PLC0415

    for name in [n for n in sys.modules if _is_ctypes(n)]:
        del sys.modules[name]  # the caller dropped its own references
    sys.modules["ctypes"] = sys.modules["_ctypes"] = None  # type: ignore[assignment]  # `import ctypes` fails
    # quietly (ModuleNotFoundError: an honest `try: import ctypes / except ImportError` goes on without it); the
    # hook refuses, as tampering, any other way to load it (these entries removed, the extension by its path)

    _type, _len, _isinstance, _id, _str, _int, _float, _bool = type, len, isinstance, id, str, int, float, bool
    _tuple, _list, _dict, _callable, _vars, _any, _zip = tuple, list, dict, callable, vars, any, zip
    _bytes, _exit, _lookup_error = bytes, os._exit, LookupError
    _write, _getpid, _getcwd, _readlink = os.write, os.getpid, os.getcwd, os.readlink
    _digest, _encode_str, _get_ident = _hashlib.hmac_digest, _json.encode_basestring_ascii, _thread.get_ident
    _getframe, _gc_disable, _gc_enable, _gc_isenabled = sys._getframe, gc.disable, gc.enable, gc.isenabled
    _modules, _str_repr_int, _str_repr_float = sys.modules, _int.__repr__, _float.__repr__
    module_type, function_type, code_type = _type(os), _type(arm), _type(arm.__code__)
    report_type, collect_report_type, item_type = _pytest.reports.TestReport, _pytest.reports.CollectReport, \
        _pytest.nodes.Item  # fmt: skip
    hook_caller_type, hook_impl_type = pluggy._hooks.HookCaller, pluggy._hooks.HookImpl
    fixture_info_type = _pytest.fixtures.FuncFixtureInfo
    unittest_item_type = _pytest.unittest.TestCaseFunction
    cached = functools.cached_property  # caches its value in the instance: not a shadow
    descriptor_types = (property, staticmethod, classmethod, cached)
    class_keys = frozenset(
        (name, attr)
        for name, module in list(sys.modules.items())
        if name.startswith(("_pytest", "pluggy", "pytest", "gateway_"))
        for attr, value in list(vars(module).items())
        if isinstance(value, type) and vars(value).get("__module__") == name
    )  # pytest's own classes, by where they live: their methods and properties are snapshotted too
    _getattr = getattr
    is_ctypes, proc_secrets = _is_ctypes, _PROC_SECRETS  # bound here: the module's names are the student's to change

    def resolve(path: str) -> str:
        """`os.path.realpath` from C calls only (the library's is Python a student could have changed)."""
        parts = path.split("/") if path.startswith("/") else (_getcwd() + "/" + path).split("/")
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            try:
                target = _readlink(candidate)
            except OSError:
                done.append(part)
                continue
            hops += 1
            if hops > 40:
                return candidate
            if target.startswith("/"):
                done = []
            parts = target.split("/") + parts
        return "/" + "/".join(done)

    work = resolve(work_dir) + "/"
    reference_files = frozenset(resolve(work_dir + "/" + rel) for rel in reference)
    reference_bytes = _tuple(p.encode() for p in reference_files)
    pid, main_thread = _getpid(), _get_ident()

    global _prepared  # noqa: PLW0603
    prepared, _prepared = _prepared, None
    loaded = frozenset(n for n in sys.modules if not _is_ctypes(n))
    if prepared is not None and prepared[2] == loaded:  # (the ctypes entries are not modules)
        trusted, known = set(prepared[0]), set(prepared[1])  # copies: nothing outside the hook holds these
    else:
        trusted, known = _code_sets()
    del prepared
    frame = _getframe(0).f_back
    while frame is not None:  # the launcher's own frames (its module code is in no module's dict)
        trusted.add(frame.f_code)
        frame = frame.f_back
    known |= trusted
    guard_codes: set[Any] = set()
    codes_of([arm, codes_of, resolve], guard_codes)
    preloaded = frozenset(sys.modules)
    frozen_types = {_id(v): v for v in gc.get_objects() if _isinstance(v, type)}
    pytest_types = {i for i, t in frozen_types.items() if _str(_vars(t).get("__module__", "")).startswith(
        ("_pytest", "pytest", "pluggy", "gateway_"))}  # fmt: skip
    plugin_codes = {_code(gateway_verdict.VerdictChannel, n) for n in _vars(gateway_verdict.VerdictChannel)
                    if n.startswith("pytest_")}  # fmt: skip
    pluggy_chain = (_code(pluggy._callers, "_multicall"), _code(pluggy._manager.PluginManager, "_hookexec"),
                    _code(pluggy._hooks.HookCaller, "__call__"))  # fmt: skip
    session = _pytest.main.Session
    callers = {
        "start": {_code(_pytest.main, "wrap_session")},
        "end": {_code(_pytest.main, "wrap_session")},
        "collected": {_code(session, "perform_collect")},
        "collect_error": {_code(session, "perform_collect"), _code(session, "collect"), _code(session, "genitems")},
        "test": {_code(_pytest.runner, "call_and_report")},
    }
    state: dict[str, Any] = {"seq": 0, "inside": set(), "tamper": [], "config": None, "nodes": {},
                             "snap": None, "builtins": None, "reference_mods": {}, "reference_list": []}  # fmt: skip

    # ------------------------------------------------------------------------------------------- the channel
    def encode(value: Any) -> str:
        t = _type(value)
        if t is _str:
            return _encode_str(value)
        if t is _bool:
            return "true" if value else "false"
        if t is _int:
            return _str_repr_int(value)
        if t is _float:
            return _str_repr_float(value)
        if value is None:
            return "null"
        if t is _list:
            return "[" + ", ".join([encode(v) for v in value]) + "]"
        if t is _dict:
            return "{" + ", ".join([_encode_str(k) + ": " + encode(v) for k, v in value.items()]) + "}"
        return _encode_str("?")

    def send(record: dict[str, Any]) -> None:
        if _getpid() != pid:
            return
        body = encode(record).encode()
        seq = state["seq"]
        state["seq"] = seq + 1
        mac = _digest(key, _str_repr_int(seq).encode() + b":" + body, "sha256").hex()
        data = mac.encode() + b" " + body + b"\n"
        while data:
            data = data[_write(channel_fd, data) :]

    def tamper(reason: str) -> None:
        if reason not in state["tamper"]:
            state["tamper"].append(reason)
            send({"event": "tamper", "reason": reason})

    def over(reason: str) -> None:
        """A refusal that ends the run: the tamper line is on the pipe, nothing the student does can take it back."""
        if _getpid() == pid:
            tamper(reason)
        _exit(3)

    # ------------------------------------------------------------------------------------------- the stack
    own: list[Any] = []  # tracebacks whose frame the hook itself reads (no other frame request while inside)

    def stack() -> list[Any]:
        """Frames below the hook, innermost first ([0] is the hook). Taken from a traceback of its own: a
        `sys._getframe` here would be a request the hook could not tell from a student's."""
        try:
            raise _lookup_error
        except _lookup_error as exc:
            tb = exc.__traceback__
        own.append(tb)
        try:
            f = tb.tb_frame.f_back.f_back  # stack's frame, its caller (on_verdict or the hook), ...
        finally:
            own.pop()
        found = []
        while f is not None:
            if f.f_code not in guard_codes or not found:
                found.append(f)
            f = f.f_back
        return found

    def reaches_guard(f: Any) -> bool:
        while f is not None:
            if f.f_code in guard_codes:
                return True
            f = f.f_back
        return False

    def untrusted(frames: list[Any], allowed: set[Any]) -> bool:
        return _any(f.f_code not in allowed for f in frames[1:])  # [0] is the hook itself

    def proc_path(path: Any) -> bool:
        """A process's memory or start-up environment under /proc (also through a symlink, `/dev/fd` or a task)."""
        t = _type(path)
        if t is _int:
            return False
        if t is _bytes:
            path = path.decode("utf-8", "replace")
        elif t is not _str:
            return True  # a path-like object would run its own code here: refused
        real = resolve(path)
        if not real.startswith("/proc/"):
            return False
        parts = real[6:].split("/")
        if parts[0] not in ("self", "thread-self") and not parts[0].isdigit():
            return False
        if _len(parts) >= 4 and parts[1] == "task":
            parts = parts[2:]
        return _len(parts) == 2 and parts[1] in proc_secrets

    # ------------------------------------------------------------------------------------------- snapshots
    def machinery() -> dict[Any, Any]:
        found = {}
        for name, module in _list(_modules.items()):
            if _type(name) is _str and name.startswith(("_pytest", "pluggy", "pytest", "gateway_")):
                for attr, value in _list(_vars(module).items()):
                    if _type(attr) is not _str:
                        found[("?", "?")] = found  # never equal to the snapshot
                    elif (_callable(value) or _type(value) is module_type) and (name, attr) not in _SET_BY_PYTEST:
                        found[(name, attr)] = value
                        if (name, attr) in class_keys:
                            for cattr, cvalue in _list(_vars(value).items()):  # its methods, properties, ...
                                if _callable(cvalue) or _type(cvalue) in descriptor_types:
                                    found[(name, attr, cattr)] = cvalue
        return found

    def hook_impls() -> dict[str, Any]:
        hooks: dict[str, Any] = {}
        pm = _vars(state["config"])["pluginmanager"]
        for name, caller in _list(_vars(_vars(pm)["hook"]).items()):
            if _type(name) is not _str or _type(caller) is not hook_caller_type:
                hooks["?"] = _id(caller)
                continue
            impls = caller._hookimpls
            if _type(impls) is not _list:
                hooks[name] = -1
                continue
            ids = []
            for impl in impls:
                if _type(impl) is not hook_impl_type:
                    ids.append(-1)
                else:
                    ids += [_id(impl), _id(impl.function), _id(impl.plugin), impl.hookwrapper is True]
                    ids.append(impl.wrapper is True)
            hooks[name] = _tuple(ids)
        hooks["_inner_hookexec"] = _id(_vars(pm).get("_inner_hookexec"))
        hooks["_hookexec"] = _id(_vars(pm).get("_hookexec"))
        hooks["hook"] = _id(_vars(pm)["hook"])
        hooks["config.hook"] = _id(_vars(state["config"]).get("hook"))
        return hooks

    class_attrs: dict[Any, Any] = {}

    def class_names(cls: Any) -> Any:
        names = class_attrs.get(cls)
        if names is None:
            names = set()
            for klass in cls.__mro__:
                names.update(k for k, v in _vars(klass).items() if _type(k) is _str and _type(v) is not cached)
            class_attrs[cls] = names
        return names

    def node_state(node: Any) -> Any:
        """Identities (kept alive by the snapshot) of what decides how a test runs, for it and its parents."""
        found: list[Any] = []
        while node is not None:
            cls = _type(node)
            found.append(_id(cls))
            if _id(cls) not in pytest_types:
                found.append("foreign node")
                break
            own = _vars(node)
            for k in own:
                if _type(k) is not _str:
                    found.append(_id(k))
                elif k not in _NODE_OWN and k in class_names(cls):
                    found.append(k)  # an instance attribute shadowing pytest's method or property
            for k in _PARENT_KEYS:
                if not (k == "_obj" and cls is unittest_item_type):  # pytest makes a unittest's anew per run
                    found.append(_id(_getattr(node, k, None)))
            info = own.get("_fixtureinfo")
            if info is not None:
                if _type(info) is not fixture_info_type:
                    found.append("foreign fixture info")
                else:
                    for name, defs in _list(info.name2fixturedefs.items()):
                        found.append(_id(name))
                        found.append(_id(defs))
                        for d in _list(defs):
                            found += [_id(d), _id(_vars(d).get("func"))]
            node = _getattr(node, "parent", None)
        return _tuple(found)

    def reference_modules() -> list[tuple[str, Any]]:
        found = []
        for name, module in _list(_modules.items()):
            file = _vars(module).get("__file__") if _type(module) is module_type else None
            if _type(name) is _str and _type(file) is _str and resolve(file) in reference_files:
                found.append((name, module))
        return found

    def reference_globals() -> dict[Any, Any]:
        found = {}
        for name, module in state["reference_list"]:
            for attr, value in _list(_vars(module).items()):
                if _type(attr) is not _str:
                    found[("?", "?")] = found
                elif _callable(value) or _type(value) is module_type or attr == "__builtins__":
                    found[(name, attr)] = value
        return found

    def diff(now: dict[Any, Any], then: dict[Any, Any]) -> Any:
        for name, value in then.items():
            if now.get(name, diff) is not value:
                return name
        for name in now:
            if name not in then:
                return name
        return None

    def check(teardown: bool) -> None:
        snap = state["snap"]
        changed = diff(machinery(), snap["machinery"])
        if changed:
            tamper(f"pytest's {'.'.join(changed)} was replaced during the run")
        now_hooks = hook_impls()
        for name in set(now_hooks) | set(snap["hooks"]):
            if now_hooks.get(name) != snap["hooks"].get(name):
                tamper(f"the implementations of {name} changed during the run")
        if state["reference_mods"] and teardown:  # after a reference's own monkeypatch is undone
            changed = diff(reference_globals(), state["reference_mods"])
            if changed:
                tamper(f"the reference's {changed[0]}.{changed[1]} was replaced during the run")
        for node, nodeid, before in state["nodes"].values():
            if node_state(node) != before:
                tamper(f"test {nodeid} was changed after collection")
        if teardown:
            now = _dict(_vars(builtins))
            if _any(_type(k) is not _str for k in now):
                tamper("a builtin was added under a name that is not a string")
            else:
                changed = diff(now, state["builtins"])
                if changed:
                    tamper(f"the builtin {changed} was replaced")

    def reference_codes(objects: list[Any]) -> list[Any]:
        """Code from reference files among `objects`: functions, classes (plain `type`) and their methods; student
        objects in a reference module's namespace are looked at only through C, never through their own code."""
        todo, found, seen = _list(objects), [], set()
        while todo:
            obj = todo.pop()
            t = _type(obj)
            if _id(obj) in seen:
                continue
            seen.add(_id(obj))
            if t is code_type:
                if resolve(obj.co_filename) in reference_files:
                    found.append(obj)
                    todo.extend(c for c in obj.co_consts if _type(c) is code_type)
            elif t is function_type:
                todo.append(obj.__code__)
            elif t is type:
                todo.extend(_vars(obj).values())
            elif t is staticmethod or t is classmethod:
                todo.append(obj.__func__)
            elif t is property:
                todo.extend(f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        return found

    # ------------------------------------------------------------------------------------------- records
    def on_verdict(args: Any, frames: list[Any]) -> None:
        if _get_ident() != main_thread:
            over("the verdict was spoken from another thread")
        kind = args[0] if _len(args) > 0 else None
        chain = [f.f_code for f in frames[1:6]]
        names = "<".join(c.co_name for c in chain)
        if _len(chain) < 5 or chain[0] not in plugin_codes:
            over(f"the verdict was spoken from code that is not pytest's ({names})")
        for f in frames[1:]:
            if f.f_code not in trusted:
                over(f"the verdict was spoken from code that is not pytest's ({f.f_code.co_name} in {names})")
        if kind != "configure" and (_tuple(chain[1:4]) != pluggy_chain or chain[4] not in callers.get(kind, ())):
            over(f"the verdict was spoken from code that is not pytest's ({names})")
        obj = args[1]
        if kind == "configure":
            state["config"] = obj
            return
        if kind == "start":
            state["snap"] = {"machinery": machinery(), "hooks": hook_impls()}
            state["builtins"] = _dict(_vars(builtins))
            send({"event": "start"})
            return
        check(False)
        if state["tamper"]:
            return
        if kind == "collect_error":
            if _type(obj) is not collect_report_type or _any(_type(a) is not _str for a in args[2:5]):
                over("a collection report that is not pytest's")
            send({"event": "collect_error", "nodeid": args[4], "message": args[2],
                  "details": args[3][-16000:]})  # fmt: skip
        elif kind == "collected":
            state["reference_list"] = reference_modules()  # the reference's modules, once (the test modules)
            for _name, module in state["reference_list"]:
                for code in reference_codes(_list(_vars(module).values())):
                    trusted.add(code)
                    known.add(code)
            state["reference_mods"] = reference_globals()
            nodeids = []
            items, names = _list(obj), args[2]
            if _type(names) is not _list or _len(names) != _len(items):
                over("the collected items and their names disagree")
            for item, nodeid in _zip(items, names):  # noqa: B905 - lengths checked above
                foreign = _id(_type(item)) not in pytest_types or not _isinstance(item, item_type)
                if foreign or _type(nodeid) is not _str:
                    over("a collected item that is not pytest's")
                func = _vars(item).get("_obj")
                if _type(func) is function_type:
                    filename = resolve(func.__code__.co_filename)
                    if filename.startswith(work) and filename not in reference_files:
                        tamper(f"test {nodeid} runs code from a student file")
                state["nodes"][_id(item)] = (item, nodeid, node_state(item))
                nodeids.append(nodeid)
            send({"event": "collected", "nodeids": nodeids})
        elif kind == "test":
            if _type(obj) is not report_type:
                over("a test report that is not pytest's")
            fields = _vars(obj)
            when, outcome = fields.get("when"), fields.get("outcome")
            if when == "teardown":
                check(True)
                if state["tamper"]:
                    return
            if _type(when) is not _str or _type(outcome) is not _str or _any(_type(a) is not _str for a in args[2:5]):
                over("a test report that is not pytest's")
            if when == "call" or outcome != "passed":
                failed = outcome != "passed"
                duration = fields.get("duration")
                send({"event": "test", "nodeid": args[4], "when": when, "outcome": outcome,
                      "message": args[2] if failed else "", "details": args[3][-16000:] if failed else "",
                      "duration": duration if _type(duration) is _float else 0.0})  # fmt: skip
        elif kind == "end":
            check(True)
            if not state["tamper"]:
                send({"event": "end", "exitstatus": obj if _type(obj) is _int else -1})

    # ------------------------------------------------------------------------------------------- the hook
    def decide(event: str, args: Any, me: int, nested: bool) -> None:  # noqa: C901, PLR0912
        if event == "object.__getattr__":
            if _len(args) < 2 or args[1] not in _FRAME_ATTRS:
                return
            if nested:
                if not (own and args[0] is own[-1]):
                    over("refused: frame introspection inside the verdict's guard")
                return
            # A traceback may lead into the guard (an exception a signal handler raised while the hook ran):
            # student code may not have that frame; pytest, formatting the failure, may.
            own.append(args[0])
            try:
                target = _getattr(args[0], args[1])
            finally:
                own.pop()
            if reaches_guard(target) and (me != main_thread or untrusted(stack(), known)):
                over("refused: a frame of the verdict's guard")
        elif event == "sys._getframe":
            if nested:
                over("refused: frame introspection inside the verdict's guard")
        elif event == "gateway.verdict":
            on_verdict(args, stack())
        elif event.startswith(("ctypes.", "sys.monitoring")):
            over(f"refused: {event}")
        elif event == "import":
            name = args[0]
            if _type(name) is not _str:
                over("refused: importing ?")
            if is_ctypes(name):
                # An import statement (no path: the machinery looks in sys.modules next) that the None entry halts
                # is quiet; loading the extension from its file, or ctypes once its entries were removed, is not.
                top = name.partition(".")[0]
                if not (_len(args) > 1 and args[1] is None and top in _modules and _modules[top] is None):
                    over(f"refused: importing {name}")
            elif name in preloaded:
                over(f"refused: importing {name} again")
        elif event in ("open", "os.listdir", "os.scandir", "os.chdir") and args:
            if proc_path(args[0]):
                over(f"refused: {event} of a process's memory or environment")
        elif event in ("object.__setattr__", "object.__delattr__"):
            target = args[0]
            tid = _id(target)
            if _type(target) is function_type and target.__code__ in known:
                over(f"refused: replacing the code of {target.__qualname__}")
            if tid in pytest_types and frozen_types[tid] is target:
                over(f"refused: changing pytest's class {target.__qualname__}")
            if tid in frozen_types and frozen_types[tid] is target and (me != main_thread or untrusted(stack(), known)):
                over(f"refused: changing the library's class {target.__qualname__} from student code")
        elif event == "compile":
            name = args[1] if _len(args) > 1 else None
            if _type(name) is _bytes:
                name = name.decode("utf-8", "replace")
            if (
                _type(name) is _str
                and resolve(name) in reference_files
                and (me != main_thread or untrusted(stack(), known))
            ):
                over("refused: compiling code under a reference file's name")
        elif event == "code.__new__":
            name = args[1] if _len(args) > 1 else None
            if _type(name) is _str and resolve(name) in reference_files:
                over("refused: making code under a reference file's name")
        elif event in ("marshal.loads", "marshal.load"):
            data = args[0] if args else b""
            if _type(data) is _bytes and _any(ref in data for ref in reference_bytes):
                over("refused: unmarshalling code under a reference file's name")

    inside: set[int] = state["inside"]

    def hook(event: str, args: Any) -> None:
        """No exception ever leaves this function (it would carry the guard's frames): a refusal ends the run."""
        if event in _IGNORED or (event in _ONLY_INSIDE and not inside):
            return  # the frequent events that matter only while the hook itself runs (or never): fast
        if event == "object.__getattr__" and not inside and (_len(args) < 2 or args[1] not in _FRAME_ATTRS):
            return
        me = _get_ident()
        nested = me in inside
        enabled = _gc_isenabled()
        _gc_disable()  # no collection, so no student `__del__`, while the hook runs
        inside.add(me)
        try:
            decide(event, args, me, nested)
        except BaseException:  # noqa: BLE001 - see the docstring
            over(f"the verdict's guard failed on {event}")
        finally:
            if not nested:
                inside.discard(me)
                if enabled:
                    _gc_enable()

    sys.addaudithook(hook)
    sys.addaudithook(_refuse_quietly)
