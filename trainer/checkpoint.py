"""Checkpoints that let a trial continue exactly where it stopped.

A checkpoint is written after every epoch (atomically: a temporary file in the
same directory, fsync, then ``os.replace``, so a crash leaves the old or the new
file, never half of one), from a copy of the state, by a background thread while the
next epoch trains (:class:`CheckpointWriter`), and holds everything the next epoch
depends on:

- the model's state dict (weights and BatchNorm running statistics);
- the *base* optimizer's state (momentum buffers, Adam moments; SAM itself keeps
  no state between steps) and the LR scheduler's step count;
- every random generator the loop draws from: torch's global CPU generator
  (dropout), the device's CUDA generator when training on CUDA, the shuffle and
  augmentation generators, numpy's and Python's global ones;
- the epoch, the history so far, the seconds spent, and the config (as a dict).

On the CPU, a run stopped after epoch k and resumed gives bitwise the same
weights and metrics as an uninterrupted one. A checkpoint made with a different
config (anything but ``checkpoint_path`` and ``device``) is refused: resuming it
would silently mix two experiments. Files are read with ``weights_only=True``,
so loading one cannot run code; everything in them is tensors and plain values.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import TrialConfig

VERSION = 2  # 2: the config has the spec's sections (train.lr, ...)
MAY_DIFFER = ("checkpoint_path", "device")  # where a run is stored and executed


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def snapshot(state: Any, buffers: list[torch.Tensor] | None = None) -> Any:
    """A copy of ``state`` on the CPU that training may not change: every tensor copied
    (from a GPU into pinned memory, one sync for all), everything else as it is.

    ``buffers``, the tensors of an earlier snapshot no one reads any more, are reused
    where shape and dtype match (the same trial's state each epoch): fresh memory costs
    page faults on the CPU, and pinned memory is slow to allocate on a GPU host. The
    snapshot's tensors are appended to ``buffers`` in place of the old ones.
    """
    old, new, synced = list(buffers or ()), list[torch.Tensor](), set[torch.device]()

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            source = value.detach()
            reuse = old[len(new)] if len(new) < len(old) else None
            if reuse is None or reuse.shape != source.shape or reuse.dtype != source.dtype:
                pinned = source.device.type == "cuda"
                reuse = torch.empty(source.shape, dtype=source.dtype, pin_memory=pinned)
            reuse.copy_(source, non_blocking=source.device.type == "cuda")
            if source.device.type == "cuda":
                synced.add(source.device)
            new.append(reuse)
            return reuse
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(copy(v) for v in value)
        return value

    out = copy(state)
    for device in synced:
        torch.cuda.synchronize(device)
    if buffers is not None:
        buffers[:] = new
    return out


class CheckpointWriter:
    """Writes checkpoints in a background thread, so the next epoch trains meanwhile.

    ``save`` waits for the previous write, copies the state (``snapshot``: milliseconds,
    against the hundreds a fsynced ``torch.save`` of a ResNet-18 trial takes on the
    training thread), and writes the copy with :func:`save_checkpoint`. ``wait`` joins the
    write in flight and raises its error, if any: ``fit`` calls it before it returns or
    raises, so a checkpoint is on disk whenever ``fit`` is done, however it ends.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: list[torch.Tensor] = []  # the last snapshot's, written: reused

    def save(self, path: str | os.PathLike, state: dict[str, Any]) -> None:
        self.wait()
        copied = snapshot(state, self._buffers)

        def write() -> None:
            try:
                save_checkpoint(path, copied)
            except BaseException as e:  # raised again by wait(), on the training thread
                self._error = e

        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def load_checkpoint(path: str | os.PathLike, config: TrialConfig) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (on the CPU), None if there is none.

    Raises ValueError if it was made by another config or checkpoint version.
    """
    if not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {state.get('version')}, not {VERSION}")
    saved, current = state["config"], config.flat()
    differ = sorted(
        key
        for key in saved.keys() | current.keys()
        if key not in MAY_DIFFER and saved.get(key, "<absent>") != current.get(key, "<absent>")
    )
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise ValueError(f"checkpoint {path} was made with a different config ({changes})")
    return state


def capture_rng_state(generators: dict[str, torch.Generator | None], device: str) -> dict[str, Any]:
    """The state of every generator a training epoch draws from."""
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # the legacy form: numpy's global generator is MT19937
    _, keys, pos, has_gauss, cached = state
    device_type = torch.device(device).type
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device_type == "cuda" else None,
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
        "generators": {
            name: None if g is None else {"device": g.device.type, "state": g.get_state()}
            for name, g in generators.items()
        },
    }


def restore_rng_state(
    states: dict[str, Any], generators: dict[str, torch.Generator | None], device: str
) -> None:
    """Put every generator back where :func:`capture_rng_state` found it.

    A generator saved on another device type (a CPU checkpoint resumed on CUDA)
    cannot take that state; it keeps its fresh seeding. Runs on different device
    types never agree bitwise anyway.
    """
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    np_state = states["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    random.setstate(_as_tuples(states["python"]))
    for name, generator in generators.items():
        saved = states["generators"].get(name)
        if generator is not None and saved and saved["device"] == generator.device.type:
            generator.set_state(saved["state"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a round trip through a file may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
