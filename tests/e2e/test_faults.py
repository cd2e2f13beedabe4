"""The fault contract (docs/faults.md), each fault injected into real processes: Celery
workers on Redis, PostgreSQL, uvicorn. Nothing is mocked: workers are SIGKILLed,
Redis is killed and restarted empty, PostgreSQL refuses connections for a while."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from samsweep.core.settings import Settings
from tests.support.db import PG_ADMIN, trial_rows
from tests.support.http import free_port, wait_for, wait_study
from tests.support.processes import Deployment, wait_healthy
from tests.support.specs import digits_spec


def recovered(fault: str, since: float) -> None:
    """Print how long recovery took (informational: never asserted; run with -s)."""
    print(f"\n[recovery] {fault}: {time.monotonic() - since:.1f}s")


def trials(api: str, study: str) -> list[dict]:
    return httpx.get(f"{api}/studies/{study}/trials?curves=true", timeout=10).json()["trials"]


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pool children, no goodbye
    proc.wait()


def optuna_trials(d: Deployment, study: str) -> list[optuna.trial.FrozenTrial]:
    url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    engine = create_engine(d.env["SAMSWEEP_DATABASE_URL"])
    with engine.connect() as conn:  # from the database: the API may be down in the test
        name = conn.execute(
            text("SELECT optuna_study_name FROM samsweep_studies WHERE id = :s"), {"s": study}
        ).scalar_one()
    engine.dispose()
    return optuna.load_study(study_name=name, storage=url).get_trials()


def assert_each_cell_once(api: str, study: str, d: Deployment, n: int) -> list[dict]:
    ts = trials(api, study)
    assert len(ts) == n and all(t["state"] == "COMPLETE" for t in ts), ts
    complete = [f for f in optuna_trials(d, study) if f.state == TrialState.COMPLETE]
    assert sorted(f.number for f in complete) == sorted(t["optuna_trial_number"] for t in ts)
    assert {f.value for f in complete} == {t["value"] for t in ts}
    for t in ts:  # every epoch once, in order
        assert [c["epoch"] for c in t["curves"]] == list(range(1, t["metrics"]["epochs"] + 1))
    return ts


@pytest.fixture
def fault_deployment(server_deployment, tmp_path: Path) -> Deployment:
    server_deployment.env.update(
        SAMSWEEP_HEARTBEAT_SECONDS="0.5",
        SAMSWEEP_STALE_SECONDS="4",
        SAMSWEEP_MAX_ATTEMPTS="5",
        SAMSWEEP_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
    )
    return server_deployment


# docs/faults.md "The fault contract": a worker SIGKILLed mid-trial, twice, is resumed from its
# checkpoint and equals an uninterrupted run; the next worker FAILs the dead attempt's Optuna trial
def test_killed_workers_resume_from_checkpoint_and_record_once(fault_deployment):
    """SIGKILL the worker mid-trial, twice: each time the trial is detected dead by its
    heartbeat, re-run from its last checkpoint by the next worker, and recorded once,
    with the same result as a run that was never interrupted."""
    d = fault_deployment
    api = d.start_api()
    spec = digits_spec(rho=(0.05,), batch_size=(16,), epochs=10, seeds=(0, 1))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    kills = 0
    for at_epoch in (3, 6):
        worker = d.start_worker(f"worker-{kills}")
        victim = wait_for(
            lambda at=at_epoch: next(
                (t for t in trials(api, study) if t["state"] == "RUNNING" and t["epoch"] >= at),
                None,
            ),
            180,
            d,
            f"a trial at epoch {at_epoch}",
        )
        kill(worker)
        killed_at = time.monotonic()
        kills += 1
        # the dead worker's trial goes back to the queue (heartbeat), nothing else moves
        wait_for(
            lambda v=victim: (
                next(t for t in trials(api, study) if t["number"] == v["number"])["state"]
                == "QUEUED"
            ),
            30,
            d,
            "the dead worker's trial to be re-queued",
        )
        recovered("worker SIGKILL -> trial detected dead and re-queued", killed_at)
    d.start_worker("worker-last")
    wait_study(api, study, timeout=300, d=d)
    ts = assert_each_cell_once(api, study, d, 2)
    resumed = [t for t in ts if t["attempts"] > 1]
    assert resumed and all(t["metrics"]["resumed_from_epoch"] >= 2 for t in resumed)
    assert sum(t["attempts"] - 1 for t in ts) == kills
    failed = [f for f in optuna_trials(d, study) if f.state == TrialState.FAIL]
    assert len(failed) == kills and all(
        f.user_attrs["fail_reason"] == "worker lost; re-run" for f in failed
    )
    assert not list(Path(d.env["SAMSWEEP_CHECKPOINT_DIR"]).rglob("*.pt"))  # cleaned up

    # resumed == uninterrupted: retrain one resumed trial here, in one go, from the
    # stored spec and params through the worker's own mapping (nothing restated)
    import torch

    import trainer
    from samsweep.core.spec import StudySpec, TrialParams
    from worker.trial_config import trial_config

    torch.set_num_threads(1)  # as the workers (SAMSWEEP_TORCH_THREADS=1)
    t = resumed[0]
    stored = httpx.get(f"{api}/studies/{study}").json()["spec"]
    config = trial_config(StudySpec.model_validate(stored), TrialParams(**t["params"]))
    assert trainer.fit(config).test_accuracy == t["metrics"]["test_accuracy"]


# docs/faults.md "The fault contract": a worker SIGKILLed with one attempt allowed -> FAILED `worker
# lost`
def test_attempts_are_bounded(fault_deployment):
    """With one attempt allowed, a killed worker's trial FAILs with the reason, and the
    rest of the study goes on."""
    d = fault_deployment
    d.env["SAMSWEEP_MAX_ATTEMPTS"] = "1"
    api = d.start_api()
    spec = digits_spec(rho=(0.05,), batch_size=(16, 64), epochs=6, seeds=(0,))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    worker = d.start_worker("doomed")
    victim = wait_for(
        lambda: next((t for t in trials(api, study) if t["state"] == "RUNNING"), None),
        120,
        d,
        "a running trial",
    )
    kill(worker)
    d.start_worker("survivor")
    detail = wait_study(api, study, timeout=180, d=d)
    assert detail["status"] == "complete"
    by_number = {t["number"]: t for t in trials(api, study)}
    lost = by_number.pop(victim["number"])
    assert lost["state"] == "FAILED" and lost["error"].startswith("worker lost: no heartbeat")
    assert [t["state"] for t in by_number.values()] == ["COMPLETE"]


def start_redis(port: int, tmp: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
        != b"PONG\n"
    ):
        assert time.monotonic() < deadline, "redis did not start"
        time.sleep(0.1)  # the poll interval (no Deployment yet for wait_for's logs)
    return proc


# docs/faults.md "The fault contract": Redis killed and restarted empty loses no trial (re-sent on a
# new run_id)
def test_broker_restarted_empty_loses_nothing(server_deployment, tmp_path: Path):
    """Kill the broker while trials are queued and one is running, start it empty: the
    database re-sends every unfinished trial and the study completes, each cell once."""
    d = server_deployment
    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    try:
        d.env["SAMSWEEP_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
        api = d.start_api()
        d.start_worker()
        spec = digits_spec(rho=(0.0, 0.05), batch_size=(32, 64), epochs=4, seeds=(0, 1))
        study = httpx.post(f"{api}/studies", json=spec).json()["id"]
        wait_for(
            lambda: any(t["state"] == "RUNNING" for t in trials(api, study)),
            120,
            d,
            "a running trial",
        )
        db_url = d.env["SAMSWEEP_DATABASE_URL"]
        wait_for(lambda: _broker_identity(db_url), 30, d, "the sweeper to record Redis's run_id")
        redis_proc.kill()
        redis_proc.wait()
        queued_then = sum(t["state"] == "QUEUED" for t in trials(api, study))
        assert queued_then >= 4  # their messages are gone with the broker
        time.sleep(2)  # on purpose: the broker stays down for a sweep round or two
        redis_proc = start_redis(port, tmp_path)  # empty: --save "" --appendonly no
        restarted_at = time.monotonic()
        wait_for(  # a trial whose message died with the broker gets picked up
            lambda: sum(t["state"] == "QUEUED" for t in trials(api, study)) < queued_then,
            120,
            d,
            "a lost trial to be re-sent and started",
        )
        recovered("Redis restarted empty -> a lost trial re-sent and started", restarted_at)
        wait_study(api, study, timeout=300, d=d)
        ts = assert_each_cell_once(api, study, d, 8)
        assert all(t["attempts"] == 1 for t in ts)
        assert "the broker restarted: re-sending" in d.procs[0].log_path.read_text()
    finally:
        redis_proc.kill()


def _set_connections(db_url: str, allowed: bool) -> None:
    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
    admin.dispose()


# docs/faults.md "The fault contract": PostgreSQL refusing connections for 8 s (API answers 503):
# nothing lost; docs/faults.md "What must hold": every database write retries with backoff
def test_database_outage_is_survived(server_deployment):
    """PostgreSQL refuses every connection for 8 s mid-study: the API answers 503 (not
    500) meanwhile, workers retry with backoff, and nothing is lost or duplicated."""
    d = server_deployment
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(32,), epochs=8, seeds=(0, 1))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    wait_for(
        lambda: any(t["state"] == "RUNNING" and t["epoch"] >= 1 for t in trials(api, study)),
        120,
        d,
        "a trial mid-training",
    )
    _set_connections(d.env["SAMSWEEP_DATABASE_URL"], allowed=False)
    outage_began = time.monotonic()
    try:
        wait_for(
            lambda: httpx.get(f"{api}/studies/{study}").status_code == 503,
            10,
            d,
            "the API to answer 503",
        )
        during = [httpx.get(f"{api}/studies/{study}").status_code for _ in range(3)]
        # On purpose: the outage lasts 8 s in all, so the workers' writes meet it and retry.
        time.sleep(max(0.0, 8 - (time.monotonic() - outage_began)))
    finally:
        _set_connections(d.env["SAMSWEEP_DATABASE_URL"], allowed=True)
    back_at, epochs = time.monotonic(), _epochs(d, study)
    wait_for(lambda: _epochs(d, study) > epochs, 60, d, "training to record an epoch again")
    recovered("PostgreSQL back -> next epoch recorded", back_at)
    assert set(during) == {503}
    wait_study(api, study, timeout=300, d=d)
    ts = assert_each_cell_once(api, study, d, 4)
    assert all(t["attempts"] == 1 for t in ts)
    assert "database unavailable" in "".join(p.log_path.read_text() for p in d.procs[1:])


# docs/faults.md "The fault contract": a trial longer than a 2 s visibility timeout is not trained
# twice
def test_trial_longer_than_visibility_timeout_is_not_run_twice(server_deployment):
    """Redis re-delivers a task unacked for longer than its visibility timeout; the
    second delivery finds the trial claimed and does not train it again."""
    d = server_deployment
    d.env["SAMSWEEP_BROKER_VISIBILITY_TIMEOUT"] = "2"
    # kombu looks for expired unacked tasks every interval x throttle (~100 s by default)
    d.env["SAMSWEEP_BROKER_TRANSPORT_OPTIONS"] = (
        '{"unacked_restore_interval": 1, "unacked_restore_throttle": 1}'
    )
    api = d.start_api()
    d.start_worker("worker-a")
    d.start_worker("worker-b")
    spec = digits_spec(rho=(0.05,), batch_size=(16,), epochs=8, seeds=(0,))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    wait_study(api, study, timeout=300, d=d)
    (t,) = assert_each_cell_once(api, study, d, 1)
    assert t["attempts"] == 1 and t["metrics"]["wall_seconds"] > 2
    assert len(optuna_trials(d, study)) == 1
    logs = "".join(p.log_path.read_text() for p in d.procs[1:])
    assert logs.count(": 'complete'") == 1
    assert logs.count(": 'skipped'") >= 1, "Redis should have re-delivered the long task"


# docs/faults.md "The fault contract": loss -> inf fails the trial at once (`diverged`); the study
# goes on
def test_diverged_trials_fail_with_reason_and_the_study_goes_on(server_deployment):
    d = server_deployment
    api = d.start_api()
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(64,), epochs=3)
    # Within the spec's bounds (lr <= 10), yet NaN in the first epoch: weight decay 1 at
    # lr 10 multiplies the weights by -9 each step (BatchNorm alone survives lr 100).
    spec["train"].update(lr=10.0, weight_decay=1.0)
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    detail = wait_study(api, study, timeout=120, d=d)
    assert detail["status"] == "complete" and detail["counts"]["FAILED"] == 2
    for t in trials(api, study):
        assert t["state"] == "FAILED" and t["error"].startswith("diverged: "), t
        assert t["attempts"] == 1
    assert {f.state for f in optuna_trials(d, study)} == {TrialState.FAIL}
    assert httpx.get(f"{api}/studies/{study}/best").json()["best"] is None


# docs/faults.md "The fault contract": the API SIGKILLed and restarted mid-study loses nothing
def test_api_restart_loses_nothing(server_deployment):
    d = server_deployment
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    first = d.spawn("api-1", "api", "--port", str(port))

    wait_healthy(api, first)
    d.start_worker()
    spec = digits_spec(rho=(0.0, 0.05), batch_size=(32, 64), epochs=3, seeds=(0,))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    wait_for(lambda: any(t["state"] == "COMPLETE" for t in trials(api, study)), 120, d, "a result")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = {t["number"]: t for t in trial_rows(d.env["SAMSWEEP_DATABASE_URL"], study)}
    killed_at = time.monotonic()
    second = d.spawn("api-2", "api", "--port", str(port))
    wait_healthy(api, second)
    recovered("API SIGKILL -> restarted API healthy", killed_at)
    after = {t["number"]: t for t in trials(api, study)}
    for n, t in before.items():  # whatever was finished then is there, unchanged
        if t["state"] == "COMPLETE":
            assert after[n]["state"] == "COMPLETE" and after[n]["value"] == t["value"]
    wait_study(api, study, timeout=180, d=d)
    assert_each_cell_once(api, study, d, 4)


def _broker_identity(db_url: str) -> str | None:
    """The broker identity (Redis's run_id) the sweeper keeps in samsweep_meta, if any."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT value FROM samsweep_meta WHERE key = 'broker_identity'")
        ).scalar_one_or_none()
    engine.dispose()
    return value


def _epochs(d: Deployment, study: str) -> int:
    return sum(t["epoch"] or 0 for t in trial_rows(d.env["SAMSWEEP_DATABASE_URL"], study))


# docs/faults.md "The fault contract" and docs/deploy.md "Production": an Optuna study
# deleted under a running study -> its trials FAILED once, `error: KeyError: ...`, never `worker
# lost`
def test_a_deleted_optuna_study_fails_its_trials_with_the_real_reason(fault_deployment):
    """optuna-dashboard can DELETE a study under a running samsweep study. The worker is
    alive: its trials must fail once, with the exception that stopped them (the missing
    Optuna record), never three times as 'worker lost'."""
    d = fault_deployment
    api = d.start_api()
    spec = digits_spec(rho=(0.05,), batch_size=(16,), epochs=20, seeds=(0, 1))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    d.start_worker()
    wait_for(
        lambda: any(t["state"] == "RUNNING" and t["epoch"] >= 1 for t in trials(api, study)),
        120,
        d,
        "a running trial",
    )
    url = Settings(database_url=d.env["SAMSWEEP_DATABASE_URL"]).resolved_optuna_url
    name = httpx.get(f"{api}/studies/{study}").json()["optuna_study_name"]
    optuna.delete_study(study_name=name, storage=url)  # what the dashboard's DELETE does
    wait_for(
        lambda: httpx.get(f"{api}/studies/{study}").json()["status"] == "complete",
        120,
        d,
        "the study to finish",
    )
    ts = trials(api, study)
    assert [t["state"] for t in ts] == ["FAILED", "FAILED"], ts
    for t in ts:
        assert t["attempts"] == 1 and "worker lost" not in t["error"], t["error"]
        # the running one stopped at its next report; the queued one could not start
        assert t["error"].startswith("error: KeyError:"), t["error"]


# docs/faults.md "The fault contract": an allocation failure is INFEASIBLE, not retried; the study
# goes on
def test_out_of_memory_cell_is_infeasible_and_not_retried(server_deployment):
    """A worker limited to 3 GiB of address space: batch 4096 fails to allocate (the real
    CPU allocator error), its cell is INFEASIBLE at once, and batch 32 still trains.
    (Restored: it backs docs/faults.md's 'allocation failure (INFEASIBLE)' row.)"""
    d = server_deployment
    api = d.start_api()
    d.start_worker(memory_limit=3 * 2**30)
    spec = digits_spec(rho=(0.0,), batch_size=(32, 4096), epochs=1)
    spec["dataset"] = {"name": "cifar10", "path": "cifar10-subset"}
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    detail = wait_study(api, study, timeout=240, d=d)
    assert detail["status"] == "complete", detail
    by_batch = {t["params"]["batch_size"]: t for t in trials(api, study)}
    assert by_batch[32]["state"] == "COMPLETE", by_batch[32]
    oom = by_batch[4096]
    assert oom["state"] == "INFEASIBLE" and oom["attempts"] == 1
    assert oom["error"] == "infeasible: out of memory at batch size 4096 on cpu"
    assert detail["counts"]["INFEASIBLE"] == 1
    states = sorted(f.state.name for f in optuna_trials(d, study))
    assert states == ["COMPLETE", "FAIL"]


# docs/faults.md "The fault contract": worker stopped after its study was cancelled -> the stale
# trial is CANCELLED, not re-run (the sweep's rule on its own: tests/service/test_sweeper.py)
def test_a_worker_stopped_after_its_study_was_cancelled_leaves_it_cancelled(fault_deployment):
    """Freeze the worker mid-trial (so it never reaches the epoch boundary where it would
    see the cancel), cancel the study, SIGKILL the worker and start another: the sweeper
    finds the trial's heartbeat stale and CANCELs it; the new worker never trains it."""
    d = fault_deployment
    api = d.start_api()
    worker = d.start_worker("worker-0")
    spec = digits_spec(rho=(0.05,), batch_size=(16,), epochs=30, seeds=(0,))
    study = httpx.post(f"{api}/studies", json=spec).json()["id"]
    wait_for(
        lambda: any(t["state"] == "RUNNING" and t["epoch"] >= 1 for t in trials(api, study)),
        120,
        d,
        "the trial mid-training",
    )
    os.killpg(worker.pid, signal.SIGSTOP)  # the worker and its pool child stop where they are
    r = httpx.post(f"{api}/studies/{study}/cancel")
    assert r.status_code == 200 and r.json()["counts"]["RUNNING"] == 1, r.text
    kill(worker)
    d.start_worker("worker-1")
    db_url = d.env["SAMSWEEP_DATABASE_URL"]
    (t,) = wait_for(
        lambda: (rows := trial_rows(db_url, study))[0]["state"] != "RUNNING" and rows,
        60,
        d,
        "the sweeper to release the stale trial",
    )
    assert t["state"] == "CANCELLED" and t["error"] == "cancelled", t
    assert t["attempts"] == 1 and t["finished_at"] is not None  # never claimed again
    assert wait_study(api, study, timeout=30, d=d)["status"] == "cancelled"
