"""Issue 23, part 1, through a real stack on both engines: the strongest forgery of the catalogue.

The failing student's module forges a whole session on the verdict pipe (found by fd number), writes a forged
`junit.xml` and leaves with `os._exit(0)`. Before the guard this read as 1.0 on Celery and on Prefect; now the
lines carry no valid HMAC and the row reads score 0 with "tampering detected" on both. The catalogue of
attacks on the work path itself is tests/work/test_forged_verdicts.py.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from legacy_stack import BOB, DIRS, Stack
from test_legacy_client import poll_result_status, submit

from tests.support.git import git

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

FORGE = """
import json, os, stat
_ids = [f'test_calc.py::{n}' for n in ('test_add', 'test_mul', 'test_mean')]
_events = [{'event': 'collected', 'nodeids': _ids}]
_events += [{'event': 'test', 'nodeid': n, 'when': 'call', 'outcome': 'passed', 'message': '', 'details': '',
             'duration': 0.0} for n in _ids]
_events.append({'event': 'end', 'exitstatus': 0})
_data = ''.join(json.dumps(e) + '\\n' for e in _events).encode()
open('/out/junit.xml', 'w').write('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3">'
    + ''.join(f'<testcase classname="test_calc" name="{n}" file="test_calc.py" time="0.001"/>'
              for n in ('test_add', 'test_mul', 'test_mean')) + '</testsuite></testsuites>')
for _fd in range(3, 256):
    try:
        if stat.S_ISFIFO(os.fstat(_fd).st_mode):
            os.write(_fd, _data)
    except OSError:
        pass
os._exit(0)
"""


def test_a_forged_session_reads_as_tampering_on_both_engines(both_engines: Stack) -> None:
    repo = Path(urlsplit(both_engines.repos.students["failing"][0]).path)
    for key in ("celery", "prefect"):
        module = repo / DIRS[key] / "calc.py"
        module.write_text(module.read_text() + FORGE)
    git(["add", "-A"], repo)
    git(["commit", "-q", "--no-gpg-sign", "-m", "forge"], repo)
    commit = git(["rev-parse", "HEAD"], repo)
    with both_engines.client(BOB) as bob:
        for key in ("celery", "prefect"):
            answer = submit(bob, key, commit)
            assert answer.status_code == 200, answer.text
            run = answer.json()
            assert poll_result_status(bob, run["id"]) == 0, key  # the run completed: a report, not an error
            row = bob.get(f"/api/results/{run['id']}").json()
            assert row["result"] == 0.0, (key, row["result_json"]["summary"])
            assert "tampering detected" in row["result_json"]["statusMessage"], key
