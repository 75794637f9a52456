"""What the `verified` answer policy costs a student: submit → final row, canary 100 % to Celery, Prefect shadowing.

    .venv/bin/python bench/bench_verified_latency.py [--jobs 8] [--redis-db 13]

Starts the conformance stack (the API on a scratch PostgreSQL database, a Celery worker, a Prefect server and
runner), sets content `walk` (Prefect → Celery) to canary 100 % with shadow fraction 1, and submits `--jobs`
passing solutions under `answer_policy=primary` (the row is written when Celery finishes) and as many under
`verified` (the row waits for Prefect's verdict too), alternating the policy job by job. Prints the p50 and p90 of
submit → final row for each, and their difference: the latency a verified canary adds is the wait for the slower
(old) engine. The stack is stopped in a `finally`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "conformance"))

from legacy_stack import ADMIN, DIRS, running_stack, wait_until  # noqa: E402
from test_cutover import PASSING, repo_with_commits  # noqa: E402

from tests.conftest import PostgresDB, RedisDB  # noqa: E402
from tests.service.conftest import fresh_pg_database  # noqa: E402

FINAL = {0, 1, 2, 6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8, help="jobs per policy")
    parser.add_argument("--redis-db", type=int, default=13)
    args = parser.parse_args()
    base = PostgresDB("127.0.0.1", 5432, "postgres", f"bench_verified_{uuid.uuid4().hex[:6]}")
    with (
        fresh_pg_database(base) as db,
        running_stack(
            Path(mkdtemp(prefix="bench-verified-")),
            db.env(),
            RedisDB("127.0.0.1", 6379, args.redis_db).env(),
            prefect=True,
        ) as stack,  # fmt: skip
        stack.client(ADMIN) as admin,
    ):
        repos = Path(mkdtemp(prefix="bench-verified-repos-"))
        commits = repo_with_commits(repos, "bench", PASSING, 2 * args.jobs)
        seconds: dict[str, list[float]] = {"primary": [], "verified": []}
        for i in range(2 * args.jobs):
            policy = ("primary", "verified")[i % 2]
            answer = admin.post("/api/admin/cutover/content/cc-walk/set", json={
                "new_engine": "celery", "stage": "canary", "percentage": 100, "shadow_fraction": 1.0,
                "answer_policy": policy, "thresholds": {"parity": []}, "reason": "bench"})  # fmt: skip
            assert answer.status_code == 200, answer.text
            body = {"directory": DIRS["walk"], "course_member_id": "m-alice", "version_identifier": commits[i],
                    "provider_url": repos.as_uri(), "project": "bench"}  # fmt: skip
            started = time.monotonic()
            status = f"/api/results/{admin.post('/api/tests', json=body).json()['id']}/status"
            wait_until(lambda url=status: admin.get(url).json() in FINAL, "the row", 300)
            seconds[policy].append(time.monotonic() - started)
    print(f"| policy | jobs | p50 submit → final row | p90 |  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print("|---|---|---|---|")
    for policy, found in seconds.items():
        ordered = sorted(found)
        p90 = ordered[int(0.9 * (len(ordered) - 1))]
        print(f"| {policy} | {len(found)} | {statistics.median(found):.2f} s | {p90:.2f} s |")
    extra = statistics.median(seconds["verified"]) - statistics.median(seconds["primary"])
    print(f"verified adds {extra:.2f} s at the median")


if __name__ == "__main__":
    main()
