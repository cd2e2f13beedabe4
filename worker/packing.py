"""Several trials on one GPU where they fit (`SAMSWEEP_SLOTS_PER_GPU=auto|N`, docs/deploy.md
"Packing").

The slots of one GPU share a ledger (a JSON file under the state directory, read and
written under an exclusive `flock`): what each slot's trial holds of the GPU's memory, and
who waits, first come first served. A trial runs only once the ledger admits it:

- **auto**: a configuration's memory is learned. Its first trial runs *alone* for its first
  epoch; then the slot records the process's peak (`torch.cuda.max_memory_reserved`, the
  caching allocator's high-water mark) plus a margin for that configuration (`peaks.json`),
  and its hold shrinks to that, which lets others in. A configuration seen before is
  admitted with its recorded peak while the holds sum to at most the budget (95 % of the
  GPU, less a CUDA context per slot), and each slot's allocator is capped at its hold
  (`torch.cuda.set_per_process_memory_fraction`): a trial that outgrows its hold runs out
  of memory itself and never pushes a neighbour over. The whole trial's peak is recorded
  when it ends, so the final evaluation and sharpness measurement count too.
- **N**: N slots share the GPU with no accounting (the user vouches that N fit).

Either way, a trial that runs out of memory while it shares the GPU is re-run *alone*, from
its last checkpoint, and only one that runs out of memory alone is INFEASIBLE
(worker/runner.py). Between trials a slot empties the allocator's cache and the trainer's
dataset cache, so an idle slot holds no more than its CUDA context. A slot that dies leaves
a hold behind; the next reader of the ledger drops holds of processes that are gone.

The planner (`admits`) is pure and the device is behind `MemoryProbe`, so the tests run
both on the CPU with a fake probe (tests/worker/test_packing.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from samsweep.core.pids import alive

log = logging.getLogger(__name__)

MIB = 2**20
CONTEXT_BYTES = 512 * MIB  # a CUDA context and cuDNN's workspace, outside the allocator
MARGIN = 0.10  # over a measured peak
BUDGET_FRACTION = 0.95  # of the GPU's memory, for every slot together
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Hold:
    """What one slot's trial holds of its GPU: ``bytes``, or the whole GPU (``alone``)."""

    pid: int
    trial: int
    bytes: int = 0
    alone: bool = False


def admits(holds: list[Hold], want: Hold, budget: int) -> bool:
    """Whether ``want`` may join the ``holds`` of other slots on a GPU of ``budget`` bytes:
    alone only on an idle GPU, never beside a trial that runs alone, and never past the
    budget."""
    others = [h for h in holds if h.pid != want.pid]
    if want.alone:
        return not others
    if any(h.alone for h in others):
        return False
    return sum(h.bytes for h in others) + want.bytes <= budget


def budget(total: int, slots: int) -> int:
    """The bytes the trials of ``slots`` slots may hold together on a GPU of ``total``."""
    return int(total * BUDGET_FRACTION) - slots * CONTEXT_BYTES


def with_margin(peak: int) -> int:
    return int(peak * (1 + MARGIN))


class MemoryProbe(Protocol):
    """The device side: CudaProbe on a GPU, a fake in the tests."""

    def total(self) -> int: ...
    def peak(self) -> int: ...
    def reset_peak(self) -> None: ...
    def cap(self, nbytes: int | None) -> None: ...
    def free(self) -> None: ...


class CudaProbe:
    """The slot's GPU as torch sees it (the slot process sees only its own GPU)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def total(self) -> int:
        return int(self.torch.cuda.mem_get_info()[1])

    def peak(self) -> int:
        return int(self.torch.cuda.max_memory_reserved())

    def reset_peak(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()

    def cap(self, nbytes: int | None) -> None:
        fraction = 1.0 if nbytes is None else min(1.0, max(nbytes, 1) / self.total())
        self.torch.cuda.set_per_process_memory_fraction(fraction)

    def free(self) -> None:
        from trainer.data import clear_cache

        clear_cache()  # an idle slot keeps no dataset on the GPU
        self.torch.cuda.empty_cache()


class Ledger:
    """One GPU's holds and queue, and the host's learned peaks, in ``directory``."""

    def __init__(self, directory: Path, gpu: str) -> None:
        self.directory = directory
        self.path = directory / f"gpu-{gpu}.json"
        self.peaks_path = directory / "peaks.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The ledger's state, written back when the block ends without an error."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = _read(self.path, {"holds": [], "queue": []})
                state["holds"] = [h for h in state["holds"] if alive(h["pid"])]
                state["queue"] = [p for p in state["queue"] if alive(p)]
                state["peaks"] = _read(self.peaks_path, {})
                yield state
                _write(self.peaks_path, state.pop("peaks"))
                _write(self.path, state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path, default: dict) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


class Packer:
    """One slot's side of the ledger: admit a trial, learn its peak, release it."""

    def __init__(
        self,
        ledger: Ledger,
        probe: MemoryProbe,
        mode: str | int,
        slots: int,
        pid: int | None = None,
    ) -> None:
        self.ledger, self.probe, self.mode = ledger, probe, mode
        self.pid = os.getpid() if pid is None else pid
        self.budget = budget(probe.total(), slots)
        self.hold: Hold | None = None
        self.key: str | None = None
        self.forced_alone = False  # a re-run after a shared OOM stays alone to its end

    @property
    def sharing(self) -> bool:
        """Whether the trial runs beside others (not alone): an OOM now is a shared one."""
        return self.hold is not None and not self.hold.alone

    def admit(
        self, key: str, trial: int, *, alone: bool = False, stop: Callable[[], bool] = bool
    ) -> Hold:
        """Wait for the ledger to admit this trial (first come, first served), then cap
        the allocator at the hold. ``stop()`` true gives up waiting (raises TimeoutError)."""
        while (hold := self.try_admit(key, trial, alone=alone)) is None:
            if stop():
                self.leave_queue()
                raise TimeoutError(f"trial {trial} gave up waiting for GPU memory")
            time.sleep(POLL_SECONDS)
        return hold

    def try_admit(self, key: str, trial: int, *, alone: bool = False) -> Hold | None:
        """One look at the ledger: the hold if admitted now, else None (and in the queue)."""
        self.key = key
        with self.ledger.locked() as state:
            want = self._want(state["peaks"].get(key), trial, alone)
            queue = state["queue"]
            first = not [p for p in queue if p != self.pid] or queue[0] == self.pid
            holds = [Hold(**h) for h in state["holds"]]
            if not (first and admits(holds, want, self.budget)):
                if self.pid not in queue:
                    state["queue"] = [*queue, self.pid]
                return None
            state["holds"] = [asdict(h) for h in holds if h.pid != self.pid] + [asdict(want)]
            state["queue"] = [p for p in queue if p != self.pid]
        self.hold = want
        self.probe.reset_peak()
        self.probe.cap(None if want.alone or self.mode != "auto" else want.bytes)
        log.info("trial %s admitted: %s", trial, "alone" if want.alone else f"{want.bytes} B")
        return want

    def _want(self, peak: int | None, trial: int, alone: bool) -> Hold:
        if alone or (self.mode == "auto" and peak is None):
            return Hold(self.pid, trial, alone=True)
        return Hold(self.pid, trial, bytes=(peak or 0) if self.mode == "auto" else 0)

    def measured(self) -> None:
        """After the first epoch: record the peak so far and, if alone only to learn it,
        shrink to it so that others may join."""
        if self.hold is None or self.key is None or self.mode != "auto":
            return
        peak = with_margin(self.probe.peak())
        with self.ledger.locked() as state:
            state["peaks"][self.key] = max(peak, state["peaks"].get(self.key, 0))
            if self.hold.alone and not self.forced_alone:
                shrunk = Hold(self.pid, self.hold.trial, bytes=peak)
                state["holds"] = [h for h in state["holds"] if h["pid"] != self.pid]
                state["holds"].append(asdict(shrunk))
                self.hold = shrunk
                self.probe.cap(peak)

    def rerun_alone(self, trial: int, stop: Callable[[], bool] = bool) -> Hold:
        """After an out-of-memory while sharing: release, then wait for the GPU alone."""
        assert self.key is not None
        key = self.key
        self.release(record=False)
        self.forced_alone = True
        return self.admit(key, trial, alone=True, stop=stop)

    def release(self, *, record: bool = True) -> None:
        """The trial is over: record its whole peak (auto), drop its hold, free the cache."""
        if self.hold is not None:
            with self.ledger.locked() as state:
                if record and self.mode == "auto" and self.key is not None:
                    peak = with_margin(self.probe.peak())
                    state["peaks"][self.key] = max(peak, state["peaks"].get(self.key, 0))
                state["holds"] = [h for h in state["holds"] if h["pid"] != self.pid]
            self.hold = None
        self.forced_alone = False
        self.probe.cap(None)
        self.probe.free()

    def leave_queue(self) -> None:
        with self.ledger.locked() as state:
            state["queue"] = [p for p in state["queue"] if p != self.pid]

    def watching(self, on_epoch: Callable[[Any], None]) -> Callable[[Any], None]:
        """``on_epoch`` that first records the peak after this process's first epoch."""
        first = True

        def wrapped(metrics: Any) -> None:
            nonlocal first
            if first:
                first = False
                self.measured()
            on_epoch(metrics)

        return wrapped


def memory_key(config: Any) -> str:
    """What a trial's GPU memory depends on: the data resident on the device, the model,
    the batch, SAM or not, precision, layout and compile (a trainer.TrialConfig)."""
    d, m = config.dataset, config.model
    parts = {
        "data": [d.name, d.path],
        "model": [m.name, m.depth, m.width],
        "batch": config.batch_size,
        "sam": None if config.rho == 0 else [config.sam_variant, config.m],
        "precision": config.precision,
        "channels_last": config.uses_channels_last,
        "compile": config.train.compile,
        "sharpness": config.sharpness.samples,
    }
    return json.dumps(parts, sort_keys=True)
