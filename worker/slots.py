"""A worker's slots: one trial per visible GPU by default, each slot's process pinned to
its GPU; on the CPU, the host's cores split between the slots (docs/deploy.md "Slots").

`samsweep worker` plans the slots in its main process, which never imports torch: the
GPUs are counted from `CUDA_VISIBLE_DEVICES` or `nvidia-smi -L`. The plan reaches the
pool's processes through the environment (`SAMSWEEP_SLOT_GPUS`, `SAMSWEEP_SLOTS`), and
each pool process, before it imports torch, makes its own GPU the only one it sees
(`CUDA_VISIBLE_DEVICES`, `pin`): a slot's trials can never land on another slot's GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

SLOT_GPUS = "SAMSWEEP_SLOT_GPUS"  # the GPU of each slot, by the slot's index: "0,2"
SLOTS = "SAMSWEEP_SLOTS"


def visible_gpus() -> list[str]:
    """The GPUs this host lets the worker use, by the ids CUDA_VISIBLE_DEVICES takes: that
    variable's list where it is set, else one per line of `nvidia-smi -L`; none on a
    host without NVIDIA's driver."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


@dataclass(frozen=True)
class Plan:
    gpus: list[str]  # the GPU of each slot (repeated for several slots per GPU); [] = CPU
    slots: int

    def env(self) -> dict[str, str]:
        return {SLOT_GPUS: ",".join(self.gpus), SLOTS: str(self.slots)}


class PlanError(ValueError):
    pass


def plan(gpus: str, concurrency: int | None, visible: list[str], per_gpu: int = 1) -> Plan:
    """The slots for `--gpus` (all | none | a list of ids) and `--concurrency` (default: one
    slot per chosen GPU, times `per_gpu`; one on the CPU)."""
    if gpus == "all":
        chosen = list(visible)
    elif gpus in ("none", ""):
        chosen = []
    else:
        chosen = [g.strip() for g in gpus.split(",") if g.strip()]
        unknown = [g for g in chosen if g not in visible]
        if unknown:
            raise PlanError(f"--gpus {gpus}: no GPU {', '.join(unknown)} on this host "
                            f"(visible: {', '.join(visible) or 'none'})")  # fmt: skip
    if concurrency is not None and concurrency < 1:
        raise PlanError("--concurrency must be at least 1")
    per_slot = [g for g in chosen for _ in range(per_gpu)]
    return Plan(per_slot, concurrency or len(per_slot) or 1)


def slot_gpu(index: int, env: dict[str, str] | None = None) -> str | None:
    """The GPU of the pool process with this index (slots share GPUs round robin when there
    are more slots than GPUs); None on the CPU."""
    listed = (env if env is not None else os.environ).get(SLOT_GPUS, "")
    gpus = [g for g in listed.split(",") if g]
    return gpus[index % len(gpus)] if gpus else None


def pin(index: int) -> str | None:
    """In a pool process, before torch is imported: see only this slot's GPU."""
    gpu = slot_gpu(index)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    return gpu


def mps_active(env: dict[str, str] | None = None) -> bool:
    """Whether NVIDIA's Multi-Process Service runs for this worker: its control pipe in
    `CUDA_MPS_PIPE_DIRECTORY` (default /tmp/nvidia-mps), where CUDA's clients look for it."""
    pipes = (os.environ if env is None else env).get("CUDA_MPS_PIPE_DIRECTORY")
    pipe = os.path.join(pipes or "/tmp/nvidia-mps", "control")
    return os.path.exists(pipe)


def cpu_threads(slots: int, cores: int | None = None) -> int:
    """Threads for one slot's trial on the CPU: the host's cores split between the slots
    (two slots on two cores each taking both run several times slower than one)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    return max(1, cores // max(1, slots))


def threads_for_this_slot(configured: int) -> int:
    """SAMSWEEP_TORCH_THREADS where set (> 0), else this worker's share of the cores."""
    return configured or cpu_threads(int(os.environ.get(SLOTS, "1") or 1))
