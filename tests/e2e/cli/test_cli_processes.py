"""The CLI's processes at their edges, as real processes: Ctrl-C during `samsweep run`
(with the embedded server it started, and with an API it did not start), a second
Ctrl-C during the clean-up, SIGKILL of `samsweep up` and of `samsweep run` (nothing
they started outlives them), and `samsweep optuna-url` opened by Optuna itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import psutil
import pytest
from sqlalchemy import create_engine, text

from tests.support.http import free_port, wait_for
from tests.support.processes import Deployment, wait_healthy
from tests.support.specs import digits_spec

# digits, 30 epochs, batch 16: a trial takes far longer than these tests wait for it.
LONG_SPEC = digits_spec(rho=(0.0, 0.05), batch_size=(16,), epochs=30)


class Reaper:
    """Every process a test saw, killed at teardown whatever the test did (their parents
    may be gone, and the embedded server runs in a session of its own)."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}

    def track(self, *procs: psutil.Process) -> list[psutil.Process]:
        for p in procs:
            self.procs.setdefault(p.pid, p)
        return list(procs)

    def tree(self, pid: int) -> list[psutil.Process]:
        """`pid` and all its descendants now, tracked."""
        try:
            root = psutil.Process(pid)
            return self.track(root, *root.children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def kill_all(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()  # psutil checks the pid was not reused
        psutil.wait_procs(list(self.procs.values()), timeout=10)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.kill_all()


def _alive_after(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still running (zombies count as gone) after at most `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)  # the poll interval of this wait


def _describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline()[-4:])}")
        except psutil.Error:
            out.append(str(p.pid))
    return "; ".join(out)


def _wait_for(what: str, check, proc: subprocess.Popen, d: Deployment, timeout: float = 240):
    """conftest.wait_for while `proc` lives, HTTP errors meaning "not yet", with up.log."""
    return wait_for(
        check, timeout, _WithUpLog(d), what, poll=0.3, process=proc, ignore=(httpx.HTTPError,)
    )


class _WithUpLog:
    def __init__(self, d: Deployment) -> None:
        self.d = d

    def logs(self) -> str:
        return _logs(self.d)


def _logs(d: Deployment) -> str:
    up_log = Path(d.env["SAMSWEEP_STATE_DIR"]) / "up.log"
    extra = f"\n--- up.log\n{up_log.read_text()[-6000:]}" if up_log.exists() else ""
    return d.logs() + extra


def _running_study(api: str):
    """The id of the only study once one of its trials is RUNNING, else None."""
    items = httpx.get(f"{api}/studies", timeout=5).json()["items"]
    if not items:
        return None
    detail = httpx.get(f"{api}/studies/{items[0]['id']}", timeout=5).json()
    return detail["id"] if detail["counts"]["RUNNING"] else None


def _any_study(api: str):
    items = httpx.get(f"{api}/studies", timeout=5).json()["items"]
    return items[0]["id"] if items else None


def _embedded_run(d: Deployment, tmp_path: Path, reaper: Reaper, spec: dict = LONG_SPEC):
    """`samsweep run` with no API up: it starts `samsweep up`; returns it once a trial of
    its study is RUNNING, with the study id and every process it has started by then."""
    api = f"http://127.0.0.1:{free_port()}"
    d.env["SAMSWEEP_API_URL"] = api
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    run = d.spawn("run", "run", str(spec_path))
    reaper.track(psutil.Process(run.pid))
    study_id = _wait_for("running trial", lambda: _running_study(api), run, d)
    tree = reaper.tree(run.pid)
    # run, up, the worker and its pool child
    assert len(tree) >= 4, _describe(tree)
    return run, api, study_id, tree


def _study_rows(state: Path, study_id: str) -> tuple[object, dict[str, int]]:
    """(cancelled_at, trials per state), read from the SQLite file, not the API."""
    engine = create_engine(f"sqlite:///{state}/samsweep.sqlite")
    with engine.connect() as conn:
        cancelled_at = conn.execute(
            text("SELECT cancelled_at FROM samsweep_studies WHERE id = :s"), {"s": study_id}
        ).scalar_one()
        states = dict(
            conn.execute(
                text(
                    "SELECT state, count(*) FROM samsweep_trials WHERE study_id = :s GROUP BY state"
                ),
                {"s": study_id},
            ).all()
        )
    engine.dispose()
    return cancelled_at, states


# docs/cli.md "The CLI": Ctrl-C with the server it started cancels the study (the running trial
# stops at its epoch's end), then stops the server; exit 130, no traceback
def test_ctrl_c_cancels_the_study_of_the_embedded_server(deployment_factory, tmp_path, reaper):
    d = deployment_factory()
    run, api, study_id, tree = _embedded_run(d, tmp_path, reaper)

    os.kill(run.pid, signal.SIGINT)  # what Ctrl-C at the terminal sends it
    rc = run.wait(timeout=120)
    out = run.log_path.read_text()  # stdout and stderr
    assert rc == 130, _logs(d)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert f"cancelled study {study_id}" in out, out
    alive = _alive_after(tree, timeout=30)
    assert not alive, f"outlived `samsweep run`: {_describe(alive)}\n{_logs(d)}"

    cancelled_at, states = _study_rows(tmp_path / "state", study_id)
    assert cancelled_at is not None
    assert not states.get("QUEUED") and not states.get("RUNNING"), states
    assert states.get("CANCELLED", 0) == 2, states  # the running one too, at its epoch's end

    # The next `samsweep up` on this state directory has nothing of it left to train.
    port = free_port()
    up = d.spawn("up", "up", "--port", str(port))
    reaper.tree(up.pid)
    wait_healthy(f"http://127.0.0.1:{port}", up)
    detail = httpx.get(f"http://127.0.0.1:{port}/studies/{study_id}", timeout=10).json()
    assert detail["status"] == "cancelled", detail
    # Time passes on purpose: nothing may come back during a few sweep rounds (1 s each
    # here), and there is no state change to poll for when the claim is that none happens.
    time.sleep(3)
    _, states = _study_rows(tmp_path / "state", study_id)
    assert not states.get("QUEUED") and not states.get("RUNNING"), states


# docs/cli.md "The CLI": Ctrl-C again stops at once
def test_a_second_ctrl_c_during_the_clean_up_stops_at_once(deployment_factory, tmp_path, reaper):
    d = deployment_factory()
    run, api, study_id, tree = _embedded_run(d, tmp_path, reaper)

    os.kill(run.pid, signal.SIGINT)
    _wait_for(
        "the wait for the running trial",
        lambda: True if "waiting up to" in run.log_path.read_text() else None,
        run,
        d,
        timeout=30,
    )
    os.kill(run.pid, signal.SIGINT)
    rc = run.wait(timeout=90)
    out = run.log_path.read_text()
    assert rc == 130, _logs(d)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert f"cancelled study {study_id}" in out and "not waiting any longer" in out, out
    alive = _alive_after(tree, timeout=30)
    assert not alive, f"outlived `samsweep run`: {_describe(alive)}\n{_logs(d)}"
    cancelled_at, _ = _study_rows(tmp_path / "state", study_id)
    assert cancelled_at is not None


# docs/cli.md "The CLI": on an API it did not start, Ctrl-C leaves the study running and prints
# the `curl` line that cancels it
def test_ctrl_c_leaves_a_study_on_an_api_it_did_not_start(deployment_factory, tmp_path, reaper):
    """No worker: the study stays queued, `run` follows it until interrupted."""
    d = deployment_factory(api_token="t" * 20)
    assert d.run("migrate").returncode == 0
    api = d.start_api()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(json.dumps(LONG_SPEC))  # JSON is YAML
    run = d.spawn("run", "run", str(spec_path), "--url", api)
    reaper.track(psutil.Process(run.pid))
    study_id = _wait_for("a study", lambda: _any_study(api), run, d, timeout=60)
    _wait_for(  # its first progress line: it is following the study now
        "the progress line",
        lambda: True if " trials  running " in run.log_path.read_text() else None,
        run,
        d,
        timeout=30,
    )
    os.kill(run.pid, signal.SIGINT)
    rc = run.wait(timeout=30)
    out = run.log_path.read_text()
    assert rc == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert f"study {study_id} keeps running on {api}" in out, out
    hint = f'curl -X POST -H "Authorization: Bearer $SAMSWEEP_API_TOKEN" {api}/studies/{study_id}'
    assert f"{hint}/cancel" in out, out
    assert "t" * 20 not in out  # the token itself is never printed
    detail = httpx.get(f"{api}/studies/{study_id}", timeout=10).json()
    assert detail["status"] == "queued" and detail["counts"]["QUEUED"] == 2, detail
    assert httpx.get(f"{api}/health", timeout=5).status_code == 200  # not stopped either


# docs/cli.md "The CLI": `samsweep up`: the worker never outlives it, SIGKILL included
def test_sigkill_of_up_stops_its_worker(deployment_factory, reaper):
    d = deployment_factory()
    port = free_port()
    up = d.spawn("up", "up", "--port", str(port))
    wait_healthy(f"http://127.0.0.1:{port}", up)

    def worker_and_pool():
        tree = reaper.tree(up.pid)
        return tree if len(tree) >= 3 else None  # up, the worker, its pool child

    tree = _wait_for("the worker's pool child", worker_and_pool, up, d, timeout=60)
    worker = next(p for p in tree if "worker" in p.cmdline())
    assert worker.ppid() == up.pid
    up.kill()  # SIGKILL to `up` alone: no handler, no `finally`
    up.wait(timeout=10)
    alive = _alive_after(tree, timeout=20)
    assert not alive, f"outlived a SIGKILLed `samsweep up`: {_describe(alive)}\n{d.logs()}"


# docs/cli.md "The CLI": the `up` that `samsweep run` starts is bound to `run` the same way
def test_sigkill_of_run_stops_the_embedded_server(deployment_factory, tmp_path, reaper):
    """While a trial trains: the server's warm shutdown is bounded by `up`'s grace."""
    d = deployment_factory()
    run, api, _, tree = _embedded_run(d, tmp_path, reaper)
    run.kill()
    run.wait(timeout=10)
    alive = _alive_after(tree, timeout=60)
    assert not alive, f"outlived a SIGKILLed `samsweep run`: {_describe(alive)}\n{_logs(d)}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/health", timeout=2)


def test_run_whose_embedded_server_died_says_so(deployment_factory, tmp_path, reaper):
    """SIGKILL of the `samsweep up` that `run` started: `run` names the lost API (no
    traceback) and the orphaned worker stops too."""
    d = deployment_factory()
    run, api, _, tree = _embedded_run(d, tmp_path, reaper)
    up = next(p for p in tree if "up" in p.cmdline() and p.ppid() == run.pid)
    up.kill()
    rc = run.wait(timeout=60)
    out = run.log_path.read_text()
    assert rc == 1, _logs(d)
    assert "Traceback" not in out and f"lost the API at {api}" in out, out
    alive = _alive_after(tree, timeout=30)
    assert not alive, f"outlived a SIGKILLed `samsweep up`: {_describe(alive)}\n{_logs(d)}"


def _optuna_url_sees_the_study(d: Deployment) -> str:
    api = d.start_api()
    r = httpx.post(f"{api}/studies", json=digits_spec(), timeout=30)
    assert r.status_code == 201, r.text
    result = d.run("optuna-url", "--show-password")
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    try:
        summaries = optuna.get_all_study_summaries(storage)
    finally:
        storage.engine.dispose()
    study_id = r.json()["id"]
    assert len(summaries) == 1, (url, summaries)
    tags = (summaries[0].study_name, summaries[0].user_attrs.get("samsweep_study_id"))
    assert any(study_id in str(t) for t in tags), (url, tags)
    return url


# docs/cli.md "The CLI": `optuna-url` on PostgreSQL adds ?options=-csearch_path%3Doptuna
def test_optuna_url_on_postgresql_reaches_optunas_schema(server_deployment):
    d = server_deployment
    url = _optuna_url_sees_the_study(d)
    assert url.startswith(d.env["SAMSWEEP_DATABASE_URL"] + "?")
    assert "options=-csearch_path%3Doptuna" in url
    # The plain database URL, what a user would have tried, sees none of it.
    plain = optuna.storages.RDBStorage(d.env["SAMSWEEP_DATABASE_URL"])
    try:
        assert optuna.get_all_study_summaries(plain) == []
    finally:
        plain.engine.dispose()


def test_optuna_url_on_sqlite(deployment_factory, tmp_path):
    d = deployment_factory()
    assert d.run("migrate").returncode == 0
    url = _optuna_url_sees_the_study(d)
    assert url == f"sqlite:///{(tmp_path / 'state').resolve()}/optuna.sqlite"


# docs/cli.md "The CLI": `samsweep worker` — prefork children are spawned, never forked, so CUDA
# is never initialized in a process that forks (docs/DESIGN.md §7)
def test_worker_pool_children_are_spawned_not_forked(server_deployment):
    d = server_deployment
    worker = psutil.Process(d.start_worker("worker", "--concurrency", "2").pid)

    def pool_children() -> list[list[str]]:
        cmdlines = []
        for child in worker.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                cmdlines.append(child.cmdline())
        # spawn's semaphore tracker is a helper, not a pool child
        pool = [c for c in cmdlines if not any("semaphore_tracker" in a for a in c)]
        return pool if len(pool) >= 2 else []

    children = wait_for(pool_children, 60, d, "the worker's two pool children")
    # A spawned child is a fresh interpreter running billiard's spawn_main; a forked one
    # would carry its parent's command line (`-m samsweep.cli worker`).
    for cmdline in children:
        assert "--billiard-fork" in cmdline, children
        assert any("spawn_main" in arg for arg in cmdline), children
        assert "samsweep.cli" not in cmdline, children
