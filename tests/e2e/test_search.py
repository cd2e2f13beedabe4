"""A sampler's study on real parts (the API, two real Celery workers), on the embedded
default and on PostgreSQL + Redis: TPE over a ρ range and a learning-rate range with
n_trials 4 and two seeds ends with exactly 4 configurations x 2 seeds, each
configuration's seeds sharing its params, every value inside its range, every trial
recorded in Optuna with its value, and the report comparing tuned SAM with the tuned
baseline. (The dispatcher alone: tests/service/test_search.py.)"""

from __future__ import annotations

import httpx
import optuna

from samsweep.core.settings import Settings
from tests.support.http import wait_study
from tests.support.specs import digits_spec


def run_searched(d, api: str, sampler: str, epochs: int) -> tuple[str, list[dict], dict]:
    """A sampler's study over a ρ range and an lr range, n_trials 4, two seeds, run to
    its end: its id, its trials, and its configurations (params -> seeds), each checked:
    exactly 4, each once per seed, every value inside its range."""
    spec = digits_spec(rho=(0.0,), batch_size=(32,), epochs=epochs, seeds=(0, 1))
    spec["search"]["rho"] = {"low": 0.01, "high": 0.5, "log": True}
    spec["train"]["lr"] = {"low": 0.005, "high": 0.2, "log": True}
    spec["dataset"]["val_fraction"] = 0.2
    spec["sampler"] = {"name": sampler, "n_trials": 4, "seed": 0}
    created = httpx.post(f"{api}/studies", json=spec)
    assert created.status_code == 201 and created.json()["n_trials"] == 8, created.text
    sid = created.json()["id"]
    detail = wait_study(api, sid, timeout=300, d=d)
    assert detail["status"] == "complete" and detail["counts"]["COMPLETE"] == 8, detail
    trials = httpx.get(f"{api}/studies/{sid}/trials").json()["trials"]
    configs: dict[tuple, list[int]] = {}
    for t in trials:
        p = dict(t["params"])
        configs.setdefault(tuple(sorted(p.items() - {("seed", p["seed"])})), []).append(p["seed"])
        assert 0.005 <= p["lr"] <= 0.2 and (p["rho"] == 0 or 0.01 <= p["rho"] <= 0.5), p
    assert len(configs) == 4 and all(sorted(s) == [0, 1] for s in configs.values()), configs
    return sid, trials, configs


# docs/spec.md "Search": TPE, n_trials 4, two seeds, two workers
def test_tpe_runs_exactly_n_trials_configurations_per_seed(deployment):
    d = deployment
    api = d.start_api()
    d.start_worker("worker-1")
    d.start_worker("worker-2")
    sid, trials, configs = run_searched(d, api, "tpe", epochs=2)
    assert all(t["attempts"] == 1 for t in trials), trials
    assert sum(dict(c)["rho"] == 0 for c in configs) == 2  # the baseline's half, tuned too

    name = httpx.get(f"{api}/studies/{sid}").json()["optuna_study_name"]
    url = Settings(
        state_dir=d.env["SAMSWEEP_STATE_DIR"], database_url=d.env.get("SAMSWEEP_DATABASE_URL")
    ).resolved_optuna_url
    frozen = optuna.load_study(study_name=name, storage=url).trials
    assert len(frozen) == 8 and all(f.state == optuna.trial.TrialState.COMPLETE for f in frozen)
    assert {f.number for f in frozen} == {t["optuna_trial_number"] for t in trials}

    report = httpx.get(f"{api}/studies/{sid}/report").json()
    (group,) = report["groups"]
    assert len(group["rows"]) == 4 and group["selected_rho"] > 0, group
    assert [r["baseline"] for r in group["rows"]] == [True, True, False, False]
    assert sum(r["selected"] for r in group["rows"]) == 2  # tuned SAM and tuned baseline
    assert group["gain"]["n_pairs"] == 2, group["gain"]


# docs/spec.md "Search": a worker SIGKILLed in the middle of a TPE study: its trial is run
# again, and the study still ends with exactly n_trials configurations, none trained twice
def test_a_killed_worker_loses_no_configuration(server_deployment, tmp_path):
    import os
    import signal

    from tests.support.http import wait_for

    d = server_deployment
    d.env.update(SAMSWEEP_HEARTBEAT_SECONDS="0.5", SAMSWEEP_STALE_SECONDS="4",
                 SAMSWEEP_CHECKPOINT_DIR=str(tmp_path / "checkpoints"))  # fmt: skip
    api = d.start_api()
    spec = digits_spec(rho=(0.0,), batch_size=(16,), epochs=6, seeds=(0,))
    spec["search"]["rho"] = {"low": 0.01, "high": 0.5}
    spec["sampler"] = {"name": "tpe", "n_trials": 3, "seed": 1}
    sid = httpx.post(f"{api}/studies", json=spec).json()["id"]
    worker = d.start_worker("worker-1")

    def running():
        ts = httpx.get(f"{api}/studies/{sid}/trials").json()["trials"]
        return any(t["state"] == "RUNNING" and t["epoch"] >= 2 for t in ts) or None

    wait_for(running, 120, d, "a trial at epoch 2")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    d.start_worker("worker-2")
    detail = wait_study(api, sid, timeout=300, d=d)
    assert detail["counts"]["COMPLETE"] == 3, detail
    trials = httpx.get(f"{api}/studies/{sid}/trials").json()["trials"]
    assert len({t["params"]["rho"] for t in trials}) == 3 and len(trials) == 3
    assert sorted(t["attempts"] for t in trials) == [1, 1, 2]  # the killed one ran again


# docs/spec.md "Search": GP with two real workers: its configurations are drawn beside the
# workers (worker/drawer.py), and the API process never loads torch (its memory maps
# no torch library: docs/DESIGN.md §6)
def test_gp_runs_with_the_api_never_loading_torch(deployment):
    from pathlib import Path

    d = deployment
    api = d.start_api()
    api_pid = d.procs[-1].pid
    d.start_worker("worker-1")
    d.start_worker("worker-2")
    run_searched(d, api, "gp", epochs=1)
    maps = Path(f"/proc/{api_pid}/maps").read_text()
    assert "torch" not in maps, [line for line in maps.splitlines() if "torch" in line][:3]
