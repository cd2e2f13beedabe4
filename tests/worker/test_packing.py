"""Several trials per GPU (worker/packing.py) with a fake memory probe: the planner never
holds more than the budget given measured peaks, a configuration's first trial runs alone
until its peak is known, waiters are served first come first served, and a dead slot's
hold is dropped."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from worker import packing
from worker.packing import MIB, Hold, Ledger, Packer, admits, budget, with_margin

GIB = 1024 * MIB


class FakeGpu:
    """One GPU's memory as the slots' probes see it: each slot's allocator peak is the true
    peak of the trial it runs (what torch.cuda.max_memory_reserved would report)."""

    def __init__(self, total: int) -> None:
        self.total_bytes = total
        self.running: dict[int, int] = {}  # pid -> true bytes of its trial
        self.caps: dict[int, int | None] = {}

    def probe(self, pid: int) -> FakeProbe:
        return FakeProbe(self, pid)

    def in_use(self) -> int:
        return sum(self.running.values())


class FakeProbe:
    def __init__(self, gpu: FakeGpu, pid: int) -> None:
        self.gpu, self.pid = gpu, pid

    def total(self) -> int:
        return self.gpu.total_bytes

    def peak(self) -> int:
        return self.gpu.running.get(self.pid, 0)

    def reset_peak(self) -> None:
        pass

    def cap(self, nbytes: int | None) -> None:
        self.gpu.caps[self.pid] = nbytes

    def free(self) -> None:
        self.gpu.running.pop(self.pid, None)


@pytest.fixture
def live(monkeypatch) -> set[int]:
    """The pids the ledger takes for running processes (fake slots have fake pids)."""
    alive: set[int] = set()
    monkeypatch.setattr(packing, "alive", lambda pid: pid in alive)
    return alive


def slots(tmp_path: Path, gpu: FakeGpu, live: set[int], n: int, mode="auto") -> list[Packer]:
    live.update(range(1, n + 1))
    ledger = Ledger(tmp_path, "0")
    return [Packer(ledger, gpu.probe(pid), mode, n, pid=pid) for pid in range(1, n + 1)]


def test_admits_alone_only_on_an_idle_gpu_and_never_past_the_budget() -> None:
    a, b = Hold(1, 10, bytes=600), Hold(2, 11, bytes=300)
    assert admits([], Hold(3, 12, alone=True), 1000)
    assert not admits([a], Hold(3, 12, alone=True), 1000)
    assert not admits([Hold(1, 10, alone=True)], Hold(3, 12, bytes=1), 1000)
    assert admits([a, b], Hold(3, 12, bytes=100), 1000)
    assert not admits([a, b], Hold(3, 12, bytes=101), 1000)
    assert admits([a, Hold(3, 9, bytes=900)], Hold(3, 12, bytes=400), 1000)  # its own old hold
    assert budget(80 * GIB, 4) == int(80 * GIB * 0.95) - 4 * 512 * MIB


# docs/deploy.md "Packing": packed by measured memory, never over-committing: whatever the
# order in which trials of known and unknown configurations arrive and end, the holds never
# sum past the budget, the memory really in use never past it either, a configuration's
# first trial is alone until its first epoch, and every trial is eventually admitted
@pytest.mark.parametrize("seed", range(6))
def test_packing_never_over_commits_whatever_arrives(tmp_path: Path, live, seed: int) -> None:
    rng = random.Random(seed)
    gpu = FakeGpu(16 * GIB)
    packers = slots(tmp_path, gpu, live, 4)
    limit = packers[0].budget
    true_peak = {f"cfg{i}": rng.choice([1, 2, 3, 5, 7]) * GIB for i in range(5)}
    todo = [rng.choice(sorted(true_peak)) for _ in range(40)]
    state: dict[int, dict] = {p.pid: {} for p in packers}  # pid -> {key, epochs left}
    done, alone_seen, steps = 0, set(), 0
    while done < len(todo) and steps < 10_000:
        steps += 1
        p = rng.choice(packers)
        s = state[p.pid]
        if not s and (next_index := done + sum(1 for x in state.values() if x)) < len(todo):
            key = todo[next_index]
            if p.try_admit(key, next_index) is not None:
                s.update(key=key, epochs=rng.randint(1, 3), first=True)
                gpu.running[p.pid] = true_peak[key]
                if p.hold.alone:
                    alone_seen.add(key)
        elif s:
            if s["first"]:
                s["first"] = False
                p.measured()
            s["epochs"] -= 1
            if s["epochs"] == 0:
                p.release()
                state[p.pid] = {}
                done += 1
        with p.ledger.locked() as ledger:
            holds = [Hold(**h) for h in ledger["holds"]]
        assert sum(h.bytes for h in holds) <= limit
        assert not any(h.alone for h in holds) or len(holds) == 1
        assert gpu.in_use() <= limit  # true peaks are under their margins
        for pid, cap in gpu.caps.items():  # a packed trial's allocator is capped at its hold
            if pid in gpu.running and cap is not None:
                assert cap >= gpu.running[pid]
    assert done == len(todo), "a trial was never admitted"
    assert alone_seen == set(todo)  # each configuration's first trial learned its peak alone
    peaks = Ledger(tmp_path, "0").peaks_path.read_text()
    assert all(f'"{k}": {with_margin(true_peak[k])}' in peaks for k in set(todo))


def test_a_trial_waiting_to_run_alone_is_not_overtaken(tmp_path: Path, live) -> None:
    gpu = FakeGpu(16 * GIB)
    a, b, c = slots(tmp_path, gpu, live, 3)
    with a.ledger.locked() as state:
        state["peaks"]["small"] = 1 * GIB
    assert a.try_admit("small", 1) is not None
    assert b.try_admit("new", 2) is None  # unknown: waits to run alone, first in line
    assert c.try_admit("small", 3) is None  # fits, but b came first
    a.release()
    assert c.try_admit("small", 3) is None
    assert b.try_admit("new", 2) is not None and b.hold.alone
    gpu.running[b.pid] = 2 * GIB
    b.measured()  # its peak is known: the others may join now
    assert not b.hold.alone and b.hold.bytes == with_margin(2 * GIB)
    assert gpu.caps[b.pid] == with_margin(2 * GIB)
    assert c.try_admit("small", 3) is not None


def test_a_dead_slots_hold_and_place_in_line_are_dropped(tmp_path: Path, live) -> None:
    gpu = FakeGpu(16 * GIB)
    a, b = slots(tmp_path, gpu, live, 2)
    assert a.try_admit("new", 1) is not None and a.hold.alone
    assert b.try_admit("new", 2) is None
    live.discard(a.pid)  # killed mid-trial
    assert b.try_admit("new", 2) is not None


def test_with_n_slots_per_gpu_trials_share_without_accounting_until_one_runs_out(
    tmp_path: Path, live
) -> None:
    gpu = FakeGpu(16 * GIB)
    a, b = slots(tmp_path, gpu, live, 2, mode=2)
    assert a.try_admit("new", 1) is not None and b.try_admit("new", 2) is not None
    assert a.sharing and gpu.caps == {1: None, 2: None}
    # b runs out of memory beside a: it waits until the GPU is its alone
    assert b.try_admit("new", 2, alone=True) is None
    a.release()
    assert b.try_admit("new", 2, alone=True) is not None and not b.sharing


# --- the runner: a shared out-of-memory is re-run alone, an alone one is INFEASIBLE ---------


class OutOfMemoryAfter:
    """trainer.fit on the CPU (the worker was told "cuda"), raising CUDA's out-of-memory
    after the first epoch of the calls listed in ``oom_calls``, and noting each call's
    hold: shared or alone."""

    def __init__(self, packer: Packer, oom_calls: set[int], neighbour: Packer) -> None:
        import trainer

        self.packer, self.oom_calls, self.neighbour = packer, oom_calls, neighbour
        self.fit = trainer.fit  # the real one
        self.holds: list[bool] = []  # per call: alone?
        self.epochs: list[int] = []

    def __call__(self, config, on_epoch):
        import dataclasses

        import torch

        call = len(self.holds)
        self.holds.append(bool(self.packer.hold and self.packer.hold.alone))
        train = dataclasses.replace(config.train, precision="fp32")
        cpu = dataclasses.replace(config, device="cpu", train=train)

        def epoch(metrics):
            self.epochs.append(metrics.epoch)
            on_epoch(metrics)
            if call in self.oom_calls:
                self.neighbour.release()  # the neighbour's trial ends meanwhile
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return self.fit(cpu, on_epoch=epoch)


def packed_trial(pg_url: str, tmp_path: Path, monkeypatch, live: set[int], oom_calls: set[int]):
    from sqlalchemy import select

    from samsweep.core.db import Trial, session_factory
    from samsweep.core.migrate import migrate
    from samsweep.core.settings import Settings
    from samsweep.core.spec import StudySpec
    from service.studies import insert_study
    from tests.support.specs import digits_spec
    from worker import runner

    settings = Settings(
        database_url=pg_url, state_dir=tmp_path, device="cuda", slots_per_gpu="auto"
    )
    migrate(settings)
    spec = StudySpec.model_validate(digits_spec(rho=(0.05,), batch_size=(64,), epochs=3))
    with session_factory(pg_url)() as s:
        study, _ = insert_study(s, settings, spec)
        trial = s.scalars(select(Trial).where(Trial.study_id == study.id)).one()
    gpu = FakeGpu(16 * GIB)
    me, neighbour = slots(tmp_path / "gpus", gpu, live, 2)
    monkeypatch.setattr(runner, "packer_for", lambda settings, device: me)
    real_admit = me.try_admit

    def admit_known(key, trial_id, *, alone=False):
        with me.ledger.locked() as state:  # this configuration is known: it is packed
            state["peaks"].setdefault(key, 2 * GIB)
        return real_admit(key, trial_id, alone=alone)

    monkeypatch.setattr(me, "try_admit", admit_known)
    monkeypatch.setattr(packing, "POLL_SECONDS", 0.01)
    with neighbour.ledger.locked() as state:
        state["peaks"]["other"] = 4 * GIB
    assert neighbour.try_admit("other", 99) is not None  # another slot's trial runs beside
    fake = OutOfMemoryAfter(me, oom_calls, neighbour)
    monkeypatch.setattr(runner.trainer, "fit", fake)
    return runner.run_trial(trial.id, settings), fake, me, trial.id, session_factory(pg_url)


# docs/deploy.md "Packing": a trial that runs out of memory while sharing its GPU is re-run
# alone, from its last checkpoint (no epoch trained or recorded twice), and completes
def test_a_shared_out_of_memory_is_rerun_alone_from_its_checkpoint(
    pg_url, tmp_path: Path, monkeypatch, live
) -> None:
    from samsweep.core.db import Trial, TrialEpoch
    from samsweep.core.states import TrialState
    from worker.outcome import Outcome

    outcome, fake, me, trial_id, sessions = packed_trial(pg_url, tmp_path, monkeypatch, live, {0})
    assert outcome is Outcome.COMPLETE
    assert fake.holds == [False, True]  # shared, then alone
    assert fake.epochs == [1, 2, 3]  # epoch 1 once, resumed at 2
    assert me.hold is None  # released at the end
    with sessions() as s:
        row = s.get(Trial, trial_id)
        assert row.state == TrialState.COMPLETE and row.attempts == 1
        epochs = s.query(TrialEpoch).filter(TrialEpoch.trial_id == trial_id).all()
        assert sorted(e.epoch for e in epochs) == [1, 2, 3]


# docs/deploy.md "Packing": only a trial that runs out of memory alone is INFEASIBLE
def test_an_out_of_memory_alone_is_infeasible(pg_url, tmp_path: Path, monkeypatch, live) -> None:
    from samsweep.core.db import Trial
    from samsweep.core.states import TrialState
    from worker.outcome import Outcome

    outcome, fake, _, trial_id, sessions = packed_trial(pg_url, tmp_path, monkeypatch, live, {0, 1})
    assert outcome is Outcome.INFEASIBLE and fake.holds == [False, True]
    with sessions() as s:
        row = s.get(Trial, trial_id)
        assert row.state == TrialState.INFEASIBLE and "out of memory" in row.error
