"""The submit path: `POST /api/tests` on the Celery route vs a thin reference endpoint, in the same run.

Both run as real uvicorn processes against the same PostgreSQL server and Redis broker (no worker: messages
just queue). Throughput with 32 concurrent connections, and p50/p99 latency of sequential requests. Prints
figures and the ratio gateway/reference. Run: `.venv/bin/python bench/bench_submit.py [--requests N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import psycopg2
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.catalog import load_catalog  # noqa: E402
from gateway.store.migrate import upgrade  # noqa: E402
from tests.gateway.server import free_port, start_server, stop_server  # noqa: E402
from tests.support.celery_worker import base_env, settings_from_env  # noqa: E402

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


async def throughput(url: str, make_body, total: int, concurrency: int, auth) -> float:  # type: ignore[no-untyped-def]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=60) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                resp = await client.post(path_of(url), json=make_body(i))
                if resp.status_code != 200:
                    raise RuntimeError(f"{resp.status_code}: {resp.text[:500]}")

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


def path_of(url: str) -> str:
    return "/ref" if url.endswith("#ref") else "/api/tests"


def sequential(url: str, make_body, total: int, auth) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    times = []
    with httpx.Client(base_url=url, auth=auth, timeout=60) as client:
        for i in range(total):
            start = time.perf_counter()
            client.post(path_of(url), json=make_body(i)).raise_for_status()
            times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    admin = psycopg2.connect(dbname="postgres", **PG)
    admin.autocommit = True
    name = f"bench_submit_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    lock = redis.Redis(host="127.0.0.1", port=6379)
    token = uuid.uuid4().hex
    db = next((n for n in range(15, 0, -1) if lock.set(f"gateway-tests:lock:{n}", token, nx=True, ex=3600)), None)
    if db is None:
        sys.exit("no free Redis database")
    servers = []
    try:
        with TemporaryDirectory() as tmp:
            data = Path(tmp)
            env = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_DB": name, "REDIS_HOST": "127.0.0.1", "REDIS_DB": str(db),
                   "GATEWAY_RECONCILE_INTERVAL": "5"}  # fmt: skip
            settings = settings_from_env({**env, "GATEWAY_DATA_DIR": str(data)})
            upgrade(settings)
            load_catalog(
                {
                    "execution_backends": [{"slug": "celery", "type": "celery"}],
                    "course_contents": [
                        {
                            "id": "cc",
                            "path": "w1.e1",
                            "directory": "w1/e1",
                            "execution_backend": "celery",
                            "reference_url": "file:///ref",
                            "reference_commit": "0" * 40,
                        }
                    ],  # fmt: skip
                    "course_members": [{"id": "m1", "user_id": "u1", "repository_url": "file:///student"}],
                    "users": [{"username": "bench", "password": "bench-pw", "role": "admin"}],
                },
                settings,
            )
            gateway = start_server(env, data / "gw")
            servers.append(gateway)
            ref_port = free_port()
            import subprocess

            ref_log = open(data / "ref.log", "wb")  # noqa: SIM115
            ref = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "bench.submit_reference:create_app", "--factory", "--port",
                 str(ref_port), "--log-level", "warning"],
                env=base_env(env, data / "ref"), stdout=ref_log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            ref_url = f"http://127.0.0.1:{ref_port}#ref"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    httpx.post(f"http://127.0.0.1:{ref_port}/ref", json={}, timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.2)
            run = uuid.uuid4().hex[:6]

            def gw_body(i: int) -> dict[str, object]:
                return {
                    "directory": "w1/e1",
                    "course_member_id": "m1",
                    "version_identifier": f"{run}-{i}-{time.time_ns()}",
                }

            def ref_body(i: int) -> dict[str, object]:
                return {"module": {"url": "file:///student", "commit": str(i)}}

            auth = ("bench", "bench-pw")
            sequential(gateway.url, gw_body, 50, auth)  # warm-up (pools, auth cache)
            sequential(ref_url, ref_body, 50, None)
            try:
                ref_tp = asyncio.run(throughput(ref_url, ref_body, args.requests, args.concurrency, None))
                gw_tp = asyncio.run(throughput(gateway.url, gw_body, args.requests, args.concurrency, auth))
            except BaseException:
                print(gateway.log_text()[-3000:], file=sys.stderr)
                raise
            ref_p50, ref_p99 = sequential(ref_url, ref_body, args.sequential, None)
            gw_p50, gw_p99 = sequential(gateway.url, gw_body, args.sequential, auth)
            print(
                f"reference: {ref_tp:7.1f} req/s ({args.concurrency} conns), p50 {ref_p50:.2f} ms, p99 {ref_p99:.2f} ms"
            )
            print(f"gateway:   {gw_tp:7.1f} req/s ({args.concurrency} conns), p50 {gw_p50:.2f} ms, p99 {gw_p99:.2f} ms")
            print(f"ratio gateway/reference: throughput {gw_tp / ref_tp:.2f}, p50 {gw_p50 / ref_p50:.2f}, "
                  f"p99 {gw_p99 / ref_p99:.2f}")  # fmt: skip
            os.killpg(ref.pid, 15)
            ref.wait(timeout=15)
    finally:
        for server in servers:
            stop_server(server)
        redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
        if lock.get(f"gateway-tests:lock:{db}") == token.encode():
            lock.delete(f"gateway-tests:lock:{db}")
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
