"""The lines `gateway up` prints once everything is ready: who runs where, logins, copy-paste requests."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from common.engines import Engine
from gateway.devstack.services import Plan
from gateway.devstack.supervisor import Supervisor


def print_ready(plan: Plan, demo: Any, supervisor: Supervisor, console: Console) -> None:
    """Who runs where, the demo logins, and the copy-paste requests (plain text: never wrapped by Rich)."""
    from gateway.devstack.demo import ADMIN, CONTENTS, STUDENT, curl_lines

    out = sys.stdout
    console.print()
    api = f"[bold green]gateway up[/bold green]: API at {plan.base_url} (health: {plan.base_url}/api/health)"
    console.print(api, soft_wrap=True)
    if plan.prefect_api:
        console.print(f"Prefect API at {plan.prefect_api}", soft_wrap=True)
    if plan.flower_url and plan.flower_login:
        login = f"{plan.flower_login.user} / {plan.flower_login.password}"
        console.print(f"Flower at {plan.flower_url} (login {login})", soft_wrap=True, markup=False, highlight=False)
    console.print(f"metrics at {plan.base_url}/metrics", soft_wrap=True)
    for service in supervisor.services:
        console.print(f"  {service.spec.name:<15} pid {service.process.pid:<8} log {service.log_path}", soft_wrap=True)
    out.write(f"\ndemo logins: student {STUDENT} / {demo.credentials.student_password}")
    out.write(f"   admin {ADMIN} / {demo.credentials.admin_password}\n")
    for content in CONTENTS:
        if content.engine == Engine.PREFECT and plan.prefect_api is None:
            continue
        out.write(f"\n# {content.engine}: submit the passing example ({content.path}), poll its status, read it\n")
        for line in curl_lines(demo, plan.base_url, content):
            out.write(line + "\n")
    out.write("\nstatus 0 = COMPLETED; the result is 1.0 with 3 tests passed. Ctrl-C stops everything.\n")
    out.flush()
