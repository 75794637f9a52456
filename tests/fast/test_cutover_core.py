"""The engine-free cutover core, table-driven: buckets, the stage machine, routing decisions, gates, the policy."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cutover.buckets import bucket, in_canary
from gateway.cutover.decide import Rule, decide
from gateway.cutover.gates import Criterion, Evidence, Step, Verdict, evaluate, next_step, still_needs
from gateway.cutover.stage_machine import Action, InvalidChange, plan_change
from gateway.cutover.stages import CutoverConfig, GateThresholds, Policy, Scope, Stage

pytestmark = pytest.mark.fast

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MEMBERS = [f"m-{i}" for i in range(2000)]


def config(stage: Stage = Stage.OLD_ONLY, percentage: float = 0.0, **kw: object) -> CutoverConfig:
    base = CutoverConfig(Scope.BACKEND, "be-1", "prefect", "celery", stage=stage, percentage=percentage)
    return base.with_changes(**kw) if kw else base


# --- buckets -------------------------------------------------------------------------------------------------


def test_bucket_is_in_range_and_spread() -> None:
    buckets = [bucket("s", "cc", m) for m in MEMBERS]
    assert all(0 <= b < 10_000 for b in buckets)
    share = sum(in_canary(b, 25.0) for b in buckets) / len(buckets)
    assert 0.20 < share < 0.30  # 2,000 members: 25 % ± 5 points is many standard deviations wide


@pytest.mark.parametrize("narrow,wide", [(0.0, 5.0), (5.0, 25.0), (25.0, 50.0), (50.0, 100.0), (0.01, 0.02)])
def test_widening_only_adds_members(narrow: float, wide: float) -> None:
    before = {m for m in MEMBERS if in_canary(bucket("salt", "cc", m), narrow)}
    after = {m for m in MEMBERS if in_canary(bucket("salt", "cc", m), wide)}
    assert before <= after
    assert len(after) >= len(before)


def test_100_percent_is_everyone_and_0_is_no_one() -> None:
    assert all(in_canary(bucket("", "cc", m), 100.0) for m in MEMBERS)
    assert not any(in_canary(bucket("", "cc", m), 0.0) for m in MEMBERS)


def test_same_bucket_in_another_process_with_another_hash_seed() -> None:
    """Python's hash() differs per process; the bucket must not."""
    here = [bucket("salt", "cc-1", m) for m in MEMBERS[:50]]
    code = "from gateway.cutover.buckets import bucket;print([bucket('salt', 'cc-1', f'm-{i}') for i in range(50)])"
    for seed in ("1", "4242"):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        )
        assert done.stdout.strip() == str(here)


def test_salt_reshuffles() -> None:
    assert [bucket("a", "cc", m) for m in MEMBERS[:50]] != [bucket("b", "cc", m) for m in MEMBERS[:50]]


# --- the stage machine ---------------------------------------------------------------------------------------

PROMOTIONS = [
    (Stage.OLD_ONLY, 0.0, Stage.SHADOW, 0.0),
    (Stage.SHADOW, 0.0, Stage.CANARY, 5.0),
    (Stage.CANARY, 5.0, Stage.CANARY, 25.0),
    (Stage.CANARY, 25.0, Stage.CANARY, 50.0),
    (Stage.CANARY, 50.0, Stage.CANARY, 100.0),
    (Stage.CANARY, 100.0, Stage.NEW_PRIMARY, 100.0),
    (Stage.CANARY, 30.0, Stage.CANARY, 50.0),  # an operator's own percentage joins the steps above it
    (Stage.NEW_PRIMARY, 100.0, Stage.NEW_ONLY, 100.0),
]


@pytest.mark.parametrize("stage,pct,to_stage,to_pct", PROMOTIONS)
def test_promote(stage: Stage, pct: float, to_stage: Stage, to_pct: float) -> None:
    change = plan_change(config(stage, pct, version=3), Action.PROMOTE, T0)
    assert (change.after.stage, change.after.percentage) == (to_stage, to_pct)
    assert change.after.version == 4
    assert change.after.stage_since == T0


DEMOTIONS = [
    (Stage.NEW_ONLY, 100.0, Stage.NEW_PRIMARY, 100.0),
    (Stage.NEW_PRIMARY, 100.0, Stage.CANARY, 50.0),
    (Stage.CANARY, 50.0, Stage.SHADOW, 0.0),
    (Stage.CANARY, 5.0, Stage.SHADOW, 0.0),
    (Stage.SHADOW, 0.0, Stage.OLD_ONLY, 0.0),
]


@pytest.mark.parametrize("stage,pct,to_stage,to_pct", DEMOTIONS)
def test_demote(stage: Stage, pct: float, to_stage: Stage, to_pct: float) -> None:
    change = plan_change(config(stage, pct), Action.DEMOTE, T0)
    assert (change.after.stage, change.after.percentage) == (to_stage, to_pct)


@pytest.mark.parametrize(
    "cfg,action,kw,message",
    [
        (config(Stage.NEW_ONLY, 100.0), Action.PROMOTE, {}, "last stage"),
        (config(), Action.DEMOTE, {}, "first stage"),
        (config(), Action.ROLLBACK, {}, "rollback goes back"),
        (config(Stage.CANARY, 5.0), Action.ROLLBACK, {"stage": Stage.NEW_PRIMARY}, "rollback goes back"),
        (config(), Action.SET, {"stage": Stage.CANARY}, "canary needs a percentage"),
        (config(), Action.SET, {"stage": Stage.CANARY, "percentage": 101}, "canary needs a percentage"),
        (config(), Action.SET, {}, "set needs a stage"),
        (config(), Action.CONFIGURE, {"shadow_fraction": 1.5}, "shadow_fraction"),
        (config(), Action.CONFIGURE, {"canary_steps": [25, 5]}, "canary_steps"),
        (config(), Action.CONFIGURE, {"thresholds": {"min_samples": 0}}, "min_samples"),
        (config(), Action.CONFIGURE, {"engine": "x"}, "not configurable"),
        (config(Stage.CANARY, 5.0), Action.CONFIGURE, {"salt": "new"}, "salt"),
        (config(new_engine="prefect"), Action.CONFIGURE, {}, "same"),
    ],
)
def test_refused_changes(cfg: CutoverConfig, action: Action, kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidChange, match=message):
        plan_change(cfg, action, T0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stage,pct", [(Stage.SHADOW, 0), (Stage.CANARY, 50), (Stage.NEW_PRIMARY, 100), (Stage.NEW_ONLY, 100)]
)
def test_rollback_is_one_call_to_old_only(stage: Stage, pct: float) -> None:
    change = plan_change(config(stage, pct), Action.ROLLBACK, T0, reason="parity dropped")
    assert change.after.stage == Stage.OLD_ONLY and change.after.percentage == 0
    assert change.reason == "parity dropped"


def test_set_implies_percentages_and_noop_keeps_version() -> None:
    assert plan_change(config(), Action.SET, T0, stage=Stage.NEW_PRIMARY).after.percentage == 100
    assert plan_change(config(), Action.SET, T0, stage=Stage.SHADOW, percentage=40).after.percentage == 0
    same = plan_change(config(Stage.SHADOW, version=7), Action.SET, T0, stage=Stage.SHADOW)
    assert same.is_noop and same.after.version == 7


def test_configure_keeps_stage_time_and_merges_thresholds() -> None:
    start = config(Stage.CANARY, 25.0, stage_since=T0)
    change = plan_change(start, Action.CONFIGURE, T0 + timedelta(hours=1), policy="auto",
                         thresholds={"min_samples": 5})  # fmt: skip
    assert change.after.policy == Policy.AUTO
    assert change.after.thresholds.min_samples == 5
    assert change.after.thresholds.max_p99_ratio == GateThresholds().max_p99_ratio
    assert change.after.stage_since == T0  # configuring is not a new stage
    assert change.changed.keys() == {"policy", "thresholds"}


def test_dry_run_is_the_same_call_without_saving() -> None:
    start = config(Stage.SHADOW)
    before = start.to_dict()
    change = plan_change(start, Action.PROMOTE, T0)
    assert start.to_dict() == before  # the config given is untouched (frozen data, a new value returned)
    assert change.changed["stage"] == ("shadow", "canary")


# --- routing decisions ---------------------------------------------------------------------------------------


def test_no_migration_is_the_legacy_rule() -> None:
    d = decide(None, "celery", "cc", "m")
    assert (d.primary, d.shadow, d.rule) == ("celery", None, Rule.LEGACY)
    assert d.record == {"rule": "execution_backend.type"}


@pytest.mark.parametrize(
    "stage,pct,fraction,primary,shadow,rule",
    [
        (Stage.OLD_ONLY, 0, 1.0, "prefect", None, Rule.OLD_ONLY),
        (Stage.SHADOW, 0, 0.5, "prefect", "celery", Rule.SHADOW),
        (Stage.SHADOW, 0, 0.0, "prefect", None, Rule.SHADOW),
        (Stage.CANARY, 100, 1.0, "celery", "prefect", Rule.CANARY_IN),
        (Stage.CANARY, 0.01, 1.0, "prefect", "celery", Rule.CANARY_OUT),  # m-x's bucket is above 0
        (Stage.NEW_PRIMARY, 100, 0.1, "celery", "prefect", Rule.NEW_PRIMARY),
        (Stage.NEW_ONLY, 100, 1.0, "celery", None, Rule.NEW_ONLY),
    ],
)
def test_decide_per_stage(
    stage: Stage, pct: float, fraction: float, primary: str, shadow: str | None, rule: Rule
) -> None:
    cfg = config(stage, pct, shadow_fraction=fraction, version=9)
    assert bucket("", "cc", "m-x") > 0
    d = decide(cfg, "prefect", "cc", "m-x")
    assert (d.primary, d.shadow, d.rule) == (primary, shadow, rule)
    assert d.record["stage"] == stage.value and d.record["config_version"] == 9
    assert d.record["bucket"] == bucket("", "cc", "m-x")
    assert d.record["percentage"] == pct


def test_canary_members_stay_put_when_widened() -> None:
    narrow = config(Stage.CANARY, 5.0)
    wide = narrow.with_changes(percentage=25.0)
    on_new = [m for m in MEMBERS if decide(narrow, "prefect", "cc", m).primary == "celery"]
    assert on_new and all(decide(wide, "prefect", "cc", m).primary == "celery" for m in on_new)


# --- gates ---------------------------------------------------------------------------------------------------

TH = GateThresholds(min_samples=100, max_mismatch_rate=0.01, max_infra_error_rate=0.02, max_p99_ratio=1.5)
TIMES = {"old_p99_seconds": 10.0, "new_p99_seconds": 12.0}


@pytest.mark.parametrize(
    "evidence,verdict,decided_by,needs",
    [
        (Evidence(), Verdict.INCONCLUSIVE, Criterion.SAMPLES, ["100 more comparisons"]),
        (Evidence(comparable=99, **TIMES), Verdict.INCONCLUSIVE, Criterion.SAMPLES, ["1 more comparison"]),
        # a new engine that stopped: no comparable sample, but 100 of its legs and every one an infra error
        (Evidence(comparable=0, new_legs=100, new_infra_errors=100), Verdict.FAILED, Criterion.INFRA_ERROR_RATE,
         ["new engine infra error 100 % (95 %: 96.3–100 %) above 2 %"]),
        # too few comparable samples and too few of its legs to judge them: still waiting
        (Evidence(comparable=10, new_legs=99, new_infra_errors=89), Verdict.INCONCLUSIVE, Criterion.SAMPLES,
         ["90 more comparisons"]),
        # enough legs, but their infra errors not conclusively above the threshold: waiting for samples
        (Evidence(comparable=10, new_legs=200, new_infra_errors=4), Verdict.INCONCLUSIVE, Criterion.SAMPLES,
         ["90 more comparisons"]),
        # 100 clean comparisons are not enough to say the rate is below 1 % at 95 %: the interval says how many
        (Evidence(comparable=100, new_legs=100, **TIMES), Verdict.INCONCLUSIVE, Criterion.MISMATCH_RATE,
         ["mismatch 0 % (95 %: 0–3.7 %) includes 1 %: about 281 more comparisons at this rate would decide",
          "new engine infra error 0 % (95 %: 0–3.7 %) includes 2 %: about 89 more new-engine legs at this rate"
          " would decide"]),
        (Evidence(comparable=400, new_legs=400, **TIMES), Verdict.SUCCESSFUL, Criterion.ALL, []),
        (Evidence(comparable=1000, mismatches=1, new_legs=1000, **TIMES), Verdict.SUCCESSFUL, Criterion.ALL, []),
        # one mismatch in a hundred: neither clean nor broken yet
        (Evidence(comparable=100, mismatches=1, new_legs=400, **TIMES), Verdict.INCONCLUSIVE,
         Criterion.MISMATCH_RATE, ["mismatch 1 % (95 %: 0.2–5.4 %) includes 1 %: it sits on the threshold"]),
        (
            Evidence(comparable=1000, mismatches=31, new_legs=1000, **TIMES),
            Verdict.FAILED,
            Criterion.MISMATCH_RATE,
            ["mismatch 3.1 % (95 %: 2.2–4.4 %) above 1 %"],
        ),
        # the same mismatches, but 25 only flaky and 5 accepted: 1 real in 1000
        (
            Evidence(comparable=1000, mismatches=31, noise_mismatches=25, accepted_mismatches=5, new_legs=1000,
                     **TIMES),
            Verdict.SUCCESSFUL,
            Criterion.ALL,
            [],
        ),
        (
            Evidence(comparable=100, new_legs=100, new_infra_errors=5, **TIMES),
            Verdict.FAILED,
            Criterion.INFRA_ERROR_RATE,
            ["new engine infra error 5 % (95 %: 2.2–11.2 %) above 2 %"],
        ),
        (
            Evidence(comparable=100, new_legs=100, old_p99_seconds=10.0, new_p99_seconds=20.0),
            Verdict.FAILED,
            Criterion.P99_RATIO,
            ["p99 run time ratio 2.00× > 1.50×"],
        ),
        (
            Evidence(comparable=100, mismatches=50, new_legs=100, new_infra_errors=50, old_p99_seconds=1.0,
                     new_p99_seconds=9.0),
            Verdict.FAILED,
            Criterion.MISMATCH_RATE,
            ["mismatch 50 % (95 %: 40.4–59.6 %) above 1 %", "new engine infra error 50 % (95 %: 40.4–59.6 %) above 2 %",
             "p99 run time ratio 9.00× > 1.50×"],
        ),
        (Evidence(comparable=400, new_legs=400), Verdict.INCONCLUSIVE, Criterion.P99_RATIO,
         ["run times from both engines"]),
    ],
)  # fmt: skip
def test_evaluate(evidence: Evidence, verdict: Verdict, decided_by: Criterion, needs: list[str]) -> None:
    result = evaluate(evidence, TH)
    assert (result.verdict, result.decided_by, list(result.needs)) == (verdict, decided_by, needs)


FAILED = evaluate(Evidence(comparable=100, mismatches=50, new_legs=100, **TIMES), TH)
SUCCESS = evaluate(Evidence(comparable=400, new_legs=400, **TIMES), TH)
WAITING = evaluate(Evidence(comparable=3), TH)
LONG_AGO = T0 - timedelta(hours=2)


@pytest.mark.parametrize(
    "stage,pct,policy,since,evaluation,step",
    [
        (Stage.CANARY, 25, Policy.MANUAL, LONG_AGO, FAILED, Step.DEMOTE),
        (Stage.NEW_PRIMARY, 100, Policy.MANUAL, T0, FAILED, Step.DEMOTE),  # demotion does not wait
        (Stage.SHADOW, 0, Policy.AUTO, LONG_AGO, FAILED, Step.HOLD),  # old still answers: nothing to undo
        (Stage.CANARY, 25, Policy.AUTO, LONG_AGO, SUCCESS, Step.PROMOTE),
        (Stage.CANARY, 25, Policy.AUTO, T0, SUCCESS, Step.HOLD),  # minimum time not served
        (Stage.CANARY, 25, Policy.MANUAL, LONG_AGO, SUCCESS, Step.RECOMMEND_PROMOTE),
        (Stage.SHADOW, 0, Policy.AUTO, LONG_AGO, WAITING, Step.HOLD),
        (Stage.OLD_ONLY, 0, Policy.AUTO, LONG_AGO, None, Step.PROMOTE),
        (Stage.NEW_ONLY, 100, Policy.AUTO, LONG_AGO, SUCCESS, Step.HOLD),
    ],
)
def test_next_step(stage: Stage, pct: float, policy: Policy, since: datetime, evaluation: object, step: Step) -> None:
    cfg = config(stage, pct, policy=policy, stage_since=since, min_stage_seconds=3600)
    assert next_step(cfg, evaluation, T0).step == step  # type: ignore[arg-type]


def test_still_needs_lists_time_left() -> None:
    cfg = config(Stage.SHADOW, stage_since=T0 - timedelta(seconds=600), min_stage_seconds=3600)
    assert still_needs(cfg, WAITING, T0) == ["97 more comparisons", "3000 s more in this stage"]
