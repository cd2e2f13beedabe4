"""Checks of a spec against the deployment: data root, training-set size, grid maximum.

The API runs these before creating anything, without importing torch and without
ever unpickling a dataset file (CIFAR's python format is pickle: loading one runs
whatever code it names). The worker resolves the dataset directory through the same
containment check before every trial. What is decided where:

- **Containment (API and worker, `contained_dataset_dir`).** The fully resolved path
  of the dataset directory, of the official subdirectory (`cifar-10-batches-py`,
  `cifar-100-python`) and of every file the trainer reads must lie under the
  resolved data root: a symlink at any level may point anywhere inside the root,
  never outside it. Each file must be a regular file (a FIFO or a device is
  refused before anyone opens it). Every OSError / ValueError of path handling (a
  NUL byte, a name too long, a symlink loop, a missing or unreadable file) becomes
  `AdmissionError("dataset.path", ...)`, never another exception, and what a refusal says
  never depends on anything outside the root: a directory that resolves outside,
  does not exist, cannot be read or is not a directory gets one text
  (`NOT_A_DIRECTORY`), a data file likewise (`NOT_A_FILE`), so the API cannot be
  used to map the host's files. Only what lies inside the root (which official file
  is missing, which is not a pickle) is described.
- **File structure (API, `check_admission`).** Each file is opened by its resolved path
  without following a final symlink, must still be the regular file that was
  checked and, where `/proc/self/fd` exists, must be open at a path under the root;
  then it is parsed with `pickletools.genops`, which reads opcodes and executes
  nothing: a truncated or malformed pickle is refused here. Which globals it names
  and what it would build (keys, shapes, labels) is NOT judged here.
- **Batch size (API, `check_admission`).** Built-in datasets: exactly, against their
  known sizes. File datasets: against a bound that is certain without executing
  anything: every image row is 3072 bytes of uint8 data that must be in the file
  (the worker's loader builds arrays only from bytes in the file), so a file of
  S bytes holds at most S // 3072 rows. A batch size above that bound, less the
  validation split, is refused with 422; anything at or below it is accepted.
- **Other certain failures (API, `check_admission`).** What the trainer would refuse in
  every trial, from the same sizes: a validation split of no example (round(f · n) is
  0, exact or for every n up to the bound), a file too small to hold one image, and
  resnet18 on 8×8 images with a training chunk of one example (BatchNorm on its 1×1
  last map; the chunks are cut as trainer/loop.py and trainer/steps.py cut them).
- **Contents (worker, trainer/unpickle.py, trainer/data.py).** A restricted unpickler
  that admits only numpy's array-reconstruction globals; then keys, `data` N×3072 uint8, labels in
  range and counts. Any failure is a `DatasetError` naming the file, and the trial
  fails with it; the exact row count, and so a batch size between the real size
  and the bound, is known only there.

`tests/core/test_admission.py` checks the sizes against what the trainer actually loads.
"""

from __future__ import annotations

import logging
import os
import pickletools
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, cast

from samsweep.core.spec import StudySpec

# Training examples before the validation split, and image sides; must match
# trainer/data.py (tests/core/test_admission.py checks both against what it loads).
BUILTIN_TRAIN_SIZES = {"digits": 1437, "synthetic": 512}
IMAGE_SIZES = {"digits": 8, "synthetic": 8, "cifar10": 32, "cifar100": 32}
# Models whose last feature map is 1x1 on images of this side: train-mode BatchNorm
# there cannot normalize a chunk of one example (torch raises "Expected more than 1
# value per channel when training"). resnet18 halves 8 three times (trainer/models.py).
ONE_BY_ONE = {("resnet18", 8)}
ROW_BYTES = 3 * 32 * 32  # one CIFAR image: R, G, B planes of 32×32 uint8
MAX_PATH_CHARS = 1024  # as samsweep.core.spec allows; refused before the OS sees it
# The official files take 2-4 opcodes per row (label, filename, memo); a file with
# far more for its size is not one, and parsing it must not take the API's CPU.
OPS_PER_ROW, OPS_BASE = 16, 10_000
_SHOWN_CHARS = 80  # how much of a refused path a message repeats
# The refusals whose cause may lie outside the data root: one text each, whatever the
# cause (outside, missing, unreadable, a loop, a FIFO...), so they map nothing there.
NOT_A_DIRECTORY = "not a directory under the data root"
NOT_A_FILE = "not a regular file under the data root"
DATA_ROOT_UNUSABLE = "this deployment's data root is unusable (its log says why)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileFormat:
    """The official CIFAR "python version" layout of one dataset."""

    dirname: str  # what the official archive unpacks to
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes


FILE_FORMATS = {
    "cifar10": FileFormat(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
    ),
    "cifar100": FileFormat("cifar-100-python", ("train",), "test", b"fine_labels"),
}


@dataclass
class AdmissionError(Exception):
    """A spec that is valid JSON but cannot run here; `field` is dotted (search.batch_size)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class DatasetFiles:
    """A file dataset's resolved directory and files, every one checked to be inside."""

    root: Path  # the resolved data root
    directory: Path
    files: tuple[Path, ...]  # train files, then the test file; resolved paths
    shown: tuple[str, ...]  # the same files as the user names them (for messages)
    stats: tuple[os.stat_result, ...]
    train_count: int  # how many of `files` are training files


def _shown(path: str) -> str:
    text = path if len(path) <= _SHOWN_CHARS else path[:_SHOWN_CHARS] + "..."
    return repr(text)


def _reason(e: BaseException) -> str:
    """An error's reason without a filename (a server path, maybe 5000 characters)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def _is_under(root: Path, path: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _inside(root: Path, candidate: Path) -> tuple[Path, os.stat_result] | None:
    """The fully resolved `candidate` and its stat, or None when it resolves outside
    `root` or cannot be stat-ed (missing, unreadable, a loop, a name too long).

    One answer for all of those, on purpose: a client must not learn whether a path
    outside the data root exists, is readable or is a directory. The containment test
    is lexical on the resolved path and comes first, so nothing outside the root is
    stat-ed (the resolution itself reads the links on the way, as any lookup does).
    """
    try:
        real = Path(os.path.realpath(candidate))  # not strict: never raises for a missing file
        if not _is_under(root, real):
            return None
        return real, os.stat(real)
    except (OSError, ValueError, RuntimeError):
        return None


def dataset_files(data_dir: Path, name: str, path: str) -> DatasetFiles:
    """Resolve a file dataset's directory and files; AdmissionError("dataset.path") if refused.

    `path` is relative to the data root (an absolute path must also lie under it). The
    directory is `path` itself, or `path/<official dirname>` when that is a directory.
    Reads directory entries and file metadata only; opens no file. Every refusal that
    could depend on something outside the root reads the same (`NOT_A_DIRECTORY`,
    `NOT_A_FILE`): what is outside is never described.
    """
    fmt = FILE_FORMATS[name]
    where = _shown(path)

    def refuse(message: str) -> AdmissionError:
        return AdmissionError("dataset.path", f"{where}: {message}")

    if not isinstance(path, str) or not path:
        raise refuse("a directory under the data root is required")
    if "\x00" in path:
        raise refuse("contains a NUL byte")
    if len(path) > MAX_PATH_CHARS:
        raise refuse(f"is {len(path)} characters long; at most {MAX_PATH_CHARS} are accepted")
    try:
        root = Path(os.path.realpath(data_dir, strict=True))
        if not root.is_dir():
            raise NotADirectoryError(20, "not a directory")
    except (OSError, ValueError) as e:
        # The deployment's fault, not the request's: the reason (a server path's state)
        # goes to the log, never to the client.
        log.error("the data root %r is unusable: %s", str(data_dir), _reason(e))
        raise refuse(DATA_ROOT_UNUSABLE) from None

    found = _inside(root, root / path)
    if found is None or not stat.S_ISDIR(found[1].st_mode):
        raise refuse(NOT_A_DIRECTORY)
    directory, prefix = found[0], ""
    official = directory / fmt.dirname
    if os.path.lexists(official):  # an escaping official subdirectory is refused, not skipped
        found = _inside(root, official)
        if found is None:
            raise refuse(f"{fmt.dirname}: {NOT_A_DIRECTORY}")
        if stat.S_ISDIR(found[1].st_mode):
            directory, prefix = found[0], f"{fmt.dirname}/"
    names = (*fmt.train_files, fmt.test_file)
    missing = [f for f in names if not os.path.lexists(directory / f)]
    if missing:
        raise refuse(f"is not a {name} python-format directory (missing {', '.join(missing)})")
    files, stats = [], []
    for f in names:
        found = _inside(root, directory / f)
        if found is None or not stat.S_ISREG(found[1].st_mode):
            raise refuse(f"{prefix}{f}: {NOT_A_FILE}")
        files.append(found[0])
        stats.append(found[1])
    return DatasetFiles(
        root,
        directory,
        tuple(files),
        tuple(f"{prefix}{f}" for f in names),
        tuple(stats),
        len(fmt.train_files),
    )


def contained_dataset_dir(data_dir: Path, name: str, path: str) -> Path:
    """The fully resolved directory of a file dataset, its every file checked to be a
    regular file inside the data root (see the module docstring); else AdmissionError."""
    return dataset_files(data_dir, name, path).directory


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _open_checked(root: Path, file: Path, identity: tuple[int, ...]) -> int:
    """An fd on `file` that is the checked regular file, unchanged since, and (where
    /proc tells) open at a path inside root."""
    # No final symlink (the path is resolved); nonblocking, so a FIFO swapped in cannot
    # hang the API (regular files ignore O_NONBLOCK).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(file, flags)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or _identity(now) != identity:
            raise ValueError("changed while it was being checked")
        proc = f"/proc/self/fd/{fd}"  # the path the kernel opened, whatever was swapped
        if os.path.exists(proc) and not _is_under(root, Path(os.readlink(proc))):
            raise ValueError("resolves outside the data root")
        return fd
    except BaseException:
        os.close(fd)
        raise


class _Bounded:
    """A file that never reads past `size` bytes: a length field in a hostile pickle
    cannot make `read(n)` allocate more than the file holds."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(self.left)
        self.left -= len(line)
        return line

    def tell(self) -> int:
        return self.f.tell()


@lru_cache(maxsize=64)
def _parse(root: Path, file: Path, identity: tuple[int, ...]) -> None:
    """Parse one pickle to its STOP without executing it; ValueError if it is not one.

    Cached by the file's identity (device, inode, size, mtime, ctime): a file replaced
    or rewritten is parsed again.
    """
    size = identity[2]
    budget = OPS_PER_ROW * (size // ROW_BYTES) + OPS_BASE
    with os.fdopen(_open_checked(root, file, identity), "rb") as f:
        # genops raises ValueError at a truncated argument or an end before STOP.
        # genops reads with read, readline and tell only; its stub asks for a whole IO.
        bounded = cast(IO[bytes], _Bounded(f, size))
        for count, _ in enumerate(pickletools.genops(bounded), 1):
            if count > budget:
                raise ValueError(f"more than {budget} pickle opcodes for its size")


def check_files(files: DatasetFiles, path: str) -> None:
    """Every file of the dataset is a complete pickle: parsed by pickletools, which
    executes nothing. AdmissionError("dataset.path") naming the file otherwise."""
    for file, shown, st in zip(files.files, files.shown, files.stats, strict=True):
        try:
            _parse(files.root, file, _identity(st))
        except Exception as e:  # hostile input: whatever the parser raises is a refusal
            raise AdmissionError(
                "dataset.path",
                f"{_shown(path)}: {shown} is not a complete pickle (the official python "
                f"format): {_reason(e)}",
            ) from e


@dataclass(frozen=True)
class TrainSize:
    """Training examples after the validation split: exact, or an upper bound."""

    n: int
    exact: bool
    data_bytes: int = 0  # file datasets: the training files' total size
    before_split: int = 0  # the same (exact or bound) before the validation split


def _after_split(n: int, val_fraction: float) -> int:
    # Non-decreasing in n for val_fraction < 1, so a bound on n bounds the result.
    return n - round(val_fraction * n)


def train_size(spec: StudySpec, data_dir: Path) -> TrainSize:
    """Training examples a trial sees, after the validation split: exact for built-in
    datasets; for file datasets an upper bound, after checking containment and that
    every file is a complete pickle (see the module docstring)."""
    ds = spec.dataset
    if ds.name in BUILTIN_TRAIN_SIZES:
        n = BUILTIN_TRAIN_SIZES[ds.name]
        return TrainSize(_after_split(n, ds.val_fraction), True, before_split=n)
    files = dataset_files(data_dir, ds.name, ds.path or "")
    check_files(files, ds.path or "")
    for shown, st in zip(files.shown, files.stats, strict=True):
        if st.st_size < ROW_BYTES:  # the trainer refuses a file that holds no images
            raise AdmissionError(
                "dataset.path",
                f"{_shown(ds.path or '')}: {shown} holds no images: it has {st.st_size} "
                f"bytes and one image takes {ROW_BYTES}",
            )
    sizes = [st.st_size for st in files.stats[: files.train_count]]
    rows = sum(s // ROW_BYTES for s in sizes)
    return TrainSize(_after_split(rows, ds.val_fraction), False, sum(sizes), rows)


def _chunks(n: int, batch: int, m: int | None) -> set[int]:
    """The sizes of the example chunks one training pass runs on, as trainer/loop.py
    and trainer/steps.py cut them: batches of `batch` (the last one the remainder) and,
    with m-sharpness, each batch in micro-batches of m (the last one the remainder)."""
    sizes: set[int] = set()
    for length in {min(batch, n), n % batch} - {0}:
        if m is None or m >= length:
            sizes.add(length)
        else:
            sizes |= {m, length % m} - {0}
    return sizes


def _check_split(spec: StudySpec, size: TrainSize) -> None:
    """The validation split holds at least one example (trainer/data.py's val_count)."""
    vf, n = spec.dataset.val_fraction, size.before_split
    if vf > 0 and round(vf * n) == 0:  # for a bound on n: certain for every n below it
        what = f"{n} training examples" if size.exact else f"at most {n} training examples"
        raise AdmissionError(
            "dataset.val_fraction",
            f"{vf} of {what} holds out none (round({vf} x {n}) = 0): the validation split "
            f"would be empty; hold out at least one example (more than {0.5 / n:.3g})",
        )


def _check_batchnorm(spec: StudySpec, size: TrainSize) -> None:
    """No training chunk of one example where the model ends on a 1x1 map (ONE_BY_ONE);
    built-in datasets only, whose exact size decides the last batch."""
    side = IMAGE_SIZES[spec.dataset.name]
    if (spec.model.name, side) not in ONE_BY_ONE or not size.exact:
        return
    s, n = spec.search, size.n

    def refuse(field: str, cut: str) -> AdmissionError:
        return AdmissionError(
            field,
            f"{cut} trains on a chunk of one example ({n} training examples): "
            f"{spec.model.name} on {side}x{side} images ends on a 1x1 feature map, where "
            "BatchNorm cannot train on one example",
        )

    # some trials step on whole batches (a sampler's study always has baseline trials)
    rhos = s.rho if isinstance(s.rho, list) else [0.0, s.rho.high]
    whole = 0.0 in rhos or None in s.m
    sam = any(r > 0 for r in rhos)  # m applies to SAM's trials only
    for i, b in enumerate(s.batch_size):
        if whole and 1 in _chunks(n, b, None):
            raise refuse(f"search.batch_size.{i}", f"batch size {b}")
        for j, m in enumerate(s.m):
            if sam and m is not None and 1 in _chunks(n, b, m):
                raise refuse(f"search.m.{j}", f"batch size {b} with m = {m}")


def check_admission(spec: StudySpec, data_dir: Path, max_grid_trials: int) -> None:
    """Raise AdmissionError naming the field if this spec cannot run on this deployment."""
    if spec.n_trials > max_grid_trials:
        raise AdmissionError(
            "search",
            f"the grid has {spec.n_trials} trials (cells x seeds); "
            f"this deployment accepts at most {max_grid_trials}",
        )
    size = train_size(spec, data_dir)
    _check_split(spec, size)
    for i, b in enumerate(spec.search.batch_size):
        if b > size.n:
            what = (
                f"{size.n} examples"
                if size.exact
                else f"at most {size.n} examples: its training files hold {size.data_bytes} "
                f"bytes, {ROW_BYTES} per image"
            )
            raise AdmissionError(
                f"search.batch_size.{i}",
                f"batch size {b} is larger than the training set ({what})",
            )
    _check_batchnorm(spec, size)
