"""A worker's slots (worker/slots.py; docs/deploy.md "Slots"): one per visible GPU by
default, counted without torch; each pool process pinned to its GPU; the CPU's cores
split between slots."""

from __future__ import annotations

import os
import stat

import pytest

from worker import slots
from worker.slots import PlanError, cpu_threads, plan, slot_gpu, visible_gpus


def test_one_slot_per_visible_gpu_by_default_and_one_on_the_cpu():
    assert plan("all", None, ["0", "1", "2", "3"]) == slots.Plan(["0", "1", "2", "3"], 4)
    assert plan("0,2", None, ["0", "1", "2"]) == slots.Plan(["0", "2"], 2)
    assert plan("all", None, []) == slots.Plan([], 1)  # a CPU host
    assert plan("none", 3, ["0"]) == slots.Plan([], 3)
    assert plan("all", None, ["0", "1"], per_gpu=2) == slots.Plan(["0", "0", "1", "1"], 4)


def test_an_unknown_gpu_or_no_slot_is_refused_naming_it():
    with pytest.raises(PlanError, match="no GPU 5 on this host"):
        plan("0,5", None, ["0", "1"])
    with pytest.raises(PlanError, match="at least 1"):
        plan("all", 0, ["0"])


def test_each_slot_process_sees_only_its_gpu(monkeypatch):
    env = slots.Plan(["0", "2"], 2).env()
    assert [slot_gpu(i, env) for i in range(4)] == ["0", "2", "0", "2"]  # round robin
    assert slot_gpu(0, slots.Plan([], 2).env()) is None
    monkeypatch.setenv(slots.SLOT_GPUS, "3,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert slots.pin(1) == "1" and os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_gpus_are_counted_from_the_environment_or_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "nvidia-smi"  # what the driver's tool prints on a 2-GPU host
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\n"
                    "echo 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")  # fmt: skip
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert visible_gpus() == []


# docs/deploy.md "Slots": on the CPU each slot gets the cores divided by the slots
def test_the_cpu_cores_are_split_between_slots(monkeypatch):
    assert cpu_threads(2, cores=2) == 1 and cpu_threads(1, cores=16) == 16
    assert cpu_threads(3, cores=16) == 5 and cpu_threads(32, cores=16) == 1
    monkeypatch.setenv(slots.SLOTS, "2")
    assert slots.threads_for_this_slot(0) == cpu_threads(2)
    assert slots.threads_for_this_slot(3) == 3  # SAMSWEEP_TORCH_THREADS wins


# docs/deploy.md "CUDA MPS": the worker says whether MPS runs, from its control pipe
def test_mps_is_on_where_its_control_pipe_is(tmp_path):
    assert not slots.mps_active({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})
    (tmp_path / "control").touch()
    assert slots.mps_active({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})
