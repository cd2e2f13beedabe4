"""Datasets: sizes, normalization, the fixed validation split, seeded label noise; the
official CIFAR files read by a restricted unpickler and checked, naming the file."""

from __future__ import annotations

import pickle
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data import (
    CIFAR_FILES,
    DatasetError,
    _load_raw,
    _read_cifar_batch,
    flip_labels,
    load_dataset,
    train_size,
)
from trainer.unpickle import restricted_load

CIFAR_SUBSET = Path("/work/shared/data/cifar10-subset")
needs_cifar = pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason="shared CIFAR-10 subset absent")


# docs/spec.md "The study spec": digits: fixed split 1437 train / 360 test
def test_digits_split_and_normalization() -> None:
    data = load_dataset("digits")
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.train_y.dtype == torch.int64 and data.num_classes == 10
    assert abs(data.train_x.mean().item()) < 1e-4
    assert abs(data.train_x.std(correction=0).item() - 1) < 1e-4
    assert data.val_x is None and train_size("digits") == 1437


def test_synthetic_is_fixed() -> None:
    a, b = load_dataset("synthetic", seed=0), load_dataset("synthetic", seed=9)
    assert a.train_x.shape == (512, 1, 8, 8) and a.test_x.shape == (128, 1, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert set(a.train_y.tolist()) == set(range(10))


# docs/spec.md "The study spec": val_fraction: stratified hold-out, the same split for every trial
def test_validation_split_is_stratified_sized_and_fixed_across_seeds() -> None:
    clean = load_dataset("digits")
    a = load_dataset("digits", val_fraction=0.1, seed=0)
    b = load_dataset("digits", val_fraction=0.1, seed=7, label_noise=0.3)
    n_val = round(0.1 * 1437)  # 144
    assert len(a.val_y) == n_val and len(a.train_y) == 1437 - n_val
    assert train_size("digits", None, 0.1) == len(a.train_y)
    assert train_size("synthetic", None, 0.25) == 512 - 128
    assert torch.equal(a.val_y, b.val_y)  # same examples, clean labels, any seed
    all_counts = Counter(clean.train_y.tolist())
    val_counts = Counter(a.val_y.tolist())
    for label, count in all_counts.items():
        assert abs(val_counts[label] - 0.1 * count) < 1
    assert torch.equal(a.test_x, clean.test_x) is False  # normalized with train-part stats
    assert torch.equal(a.test_y, clean.test_y)


# docs/spec.md "The study spec": label_noise flips exactly round(p*n) training labels to a
# different class, seeded; validation and test labels untouched
@pytest.mark.parametrize("val_fraction", [0.0, 0.2])
def test_label_noise_flips_exact_count_to_other_classes(val_fraction: float) -> None:
    clean = load_dataset("synthetic", val_fraction=val_fraction)
    noisy = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=3)
    changed = (clean.train_y != noisy.train_y).sum().item()
    assert changed == round(0.3 * len(clean.train_y))  # every flip moves to another class
    assert torch.equal(clean.test_y, noisy.test_y)
    if val_fraction:
        assert torch.equal(clean.val_y, noisy.val_y)
    again = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=3)
    other = load_dataset("synthetic", val_fraction=val_fraction, label_noise=0.3, seed=4)
    assert torch.equal(noisy.train_y, again.train_y)
    assert not torch.equal(noisy.train_y, other.train_y)


def test_flip_labels_reaches_every_other_class() -> None:
    labels = np.zeros(1000, dtype=np.int64)
    flipped = flip_labels(labels, 0.5, 10, seed=0)
    assert (flipped != 0).sum() == 500
    assert set(flipped[flipped != 0].tolist()) == set(range(1, 10))
    assert (labels == 0).all()  # input untouched


def test_loaded_tensors_are_copies() -> None:
    data = load_dataset("synthetic", label_noise=0.0)
    data.train_y[:] = 0
    assert load_dataset("synthetic").train_y.sum().item() > 0


@pytest.mark.parametrize(
    "bad", [{"label_noise": 1.0}, {"val_fraction": 1.0}, {"val_fraction": 1e-6}]
)
def test_out_of_range_fractions_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        load_dataset("synthetic", **bad)


def test_unknown_dataset_is_named() -> None:
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")


# docs/spec.md "The study spec": cifar10 in the official python format
@needs_cifar
@pytest.mark.parametrize("where", [CIFAR_SUBSET, CIFAR_SUBSET / "cifar-10-batches-py"])
def test_cifar10_subset(where: Path) -> None:
    data = load_dataset("cifar10", str(where))
    assert data.train_x.shape == (5085, 3, 32, 32) and data.test_x.shape == (1017, 3, 32, 32)
    assert data.train_y[:8].tolist() == [6, 9, 9, 4, 1, 1, 2, 7]
    assert data.num_classes == 10 and data.train_y.dtype == torch.int64
    channel_means = data.train_x.mean(dim=(0, 2, 3))
    assert channel_means.abs().max().item() < 1e-3
    assert train_size("cifar10", str(where), 0.1) == 5085 - round(508.5)


def test_cifar10_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("cifar10", str(missing))


@needs_cifar
def test_cifar10_missing_batch_is_an_error(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(CIFAR_SUBSET / "cifar-10-batches-py" / "test_batch", partial / "test_batch")
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_dataset("cifar10", str(partial))


# docs/spec.md "The study spec": cifar100 in the official python format
@pytest.mark.parametrize("inner", [False, True])
def test_cifar100_official_python_format(fake_cifar100: Path, inner: bool) -> None:
    where = fake_cifar100 / "cifar-100-python" if inner else fake_cifar100
    data = load_dataset("cifar100", str(where))
    assert data.train_x.shape == (96, 3, 32, 32) and data.test_x.shape == (40, 3, 32, 32)
    assert data.num_classes == 100  # fine labels, not the 20 superclasses
    assert data.train_y[:3].tolist() == [0, 7, 14] and data.train_y.dtype == torch.int64
    assert data.train_x.mean(dim=(0, 2, 3)).abs().max().item() < 1e-4
    assert train_size("cifar100", str(where)) == 96
    assert (
        train_size("cifar100", str(where), 0.25)
        == 72
        == len(load_dataset("cifar100", str(where), val_fraction=0.25).train_y)
    )


def test_cifar100_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train, test"):
        load_dataset("cifar100", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset_path"):
        load_dataset("cifar100")


def test_prepared_tensors_are_cached_per_device_and_noise_goes_on_a_copy() -> None:
    clean = load_dataset("synthetic", val_fraction=0.25)
    noisy = load_dataset("synthetic", val_fraction=0.25, label_noise=0.3, seed=1)
    # Images are uploaded once and shared read-only; labels are per trial.
    assert noisy.train_x is clean.train_x and noisy.test_x is clean.test_x
    assert noisy.train_y.data_ptr() != clean.train_y.data_ptr()
    assert clean.train_y_clean is None
    assert torch.equal(noisy.train_y_clean, clean.train_y)
    assert (noisy.train_y != clean.train_y).sum().item() == round(0.3 * 384)
    assert torch.equal(load_dataset("synthetic", val_fraction=0.25).train_y, clean.train_y)
    other_split = load_dataset("synthetic", val_fraction=0.5)
    assert other_split.train_x is not clean.train_x


# -- the restricted unpickler and the batch checks --------------------------------


def _batch(rows: int = 4, seed: int = 0, **overrides: object) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"a batch",
        b"labels": [int(v) for v in rng.integers(0, 10, rows)],
        b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(rows)],
    }
    batch.update({k.encode(): v for k, v in overrides.items()})
    return batch


def write_cifar10(directory: Path, bad: str | None = None, content: bytes = b"") -> Path:
    """A tiny official-format CIFAR-10 in `directory`; file `bad` holds `content`."""
    directory.mkdir(parents=True)
    for i, name in enumerate(CIFAR_FILES):
        data = content if name == bad else pickle.dumps(_batch(seed=i))
        (directory / name).write_bytes(data)
    return directory


@needs_cifar
def test_the_real_subset_loads_as_plain_pickle_reads_it() -> None:
    batches = CIFAR_SUBSET / "cifar-10-batches-py"
    plain = []
    for name in CIFAR_FILES:
        with open(batches / name, "rb") as f:
            plain.append(pickle.load(f, encoding="bytes"))  # trusted: the shared subset
        restricted = restricted_load(batches / name)
        assert restricted.keys() == plain[-1].keys()
        assert np.array_equal(restricted[b"data"], plain[-1][b"data"])
        for key in (b"labels", b"filenames", b"batch_label"):
            assert restricted[key] == plain[-1][key]
    raw = _load_raw("cifar10", str(batches))
    images = np.concatenate([b[b"data"] for b in plain[:5]]).reshape(-1, 3, 32, 32)
    assert np.array_equal(raw.train_x, images) and raw.train_x.dtype == np.uint8
    assert raw.train_y.tolist() == sum((b[b"labels"] for b in plain[:5]), [])
    assert np.array_equal(raw.test_x, plain[5][b"data"].reshape(-1, 3, 32, 32))
    assert raw.test_y.tolist() == plain[5][b"labels"]


# Hand-assembled pickle opcodes, to write what Python 2 wrote and what an attacker would.
def _str2(b: bytes) -> bytes:  # a Python 2 str: bytes under encoding="bytes"
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + _tuple(*args) + b"R"


def py2_official_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """What the official CIFAR-10 download holds: Python 2 cPickle, protocol 2."""
    array = _call(
        _global("numpy.core.multiarray", "_reconstruct"),
        _global("numpy", "ndarray"),
        _tuple(_int(0)),
        _str2(b"b"),
    )
    dtype = _call(_global("numpy", "dtype"), _str2(b"u1"), _int(0), _int(1))
    dtype += _tuple(_int(3), _str2(b"|"), b"NNN", _int(-1), _int(-1), _int(0)) + b"b"
    state = _tuple(_int(1), _tuple(*map(_int, data.shape)), dtype, b"\x89", _str2(data.tobytes()))
    items = _str2(b"data") + array + state + b"b"
    items += _str2(b"labels") + b"](" + b"".join(map(_int, labels)) + b"e"
    return b"\x80\x02}(" + items + b"u."


def test_the_official_python2_format_loads(tmp_path: Path) -> None:
    directory = tmp_path / "py2"
    directory.mkdir()
    for i, name in enumerate(CIFAR_FILES):
        batch = _batch(seed=i)
        (directory / name).write_bytes(py2_official_batch(batch[b"data"], batch[b"labels"]))
    raw = _load_raw("cifar10", str(directory))
    first = _batch(seed=0)
    assert np.array_equal(raw.train_x[:4], first[b"data"].reshape(-1, 3, 32, 32))
    assert raw.train_y[:4].tolist() == first[b"labels"] and len(raw.train_y) == 20


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_of_numpy_arrays_loads(tmp_path: Path, protocol: int) -> None:
    batch = _batch(labels=np.array([1, 2, 3, 4]))  # labels as an int array are fine too
    file = tmp_path / "data_batch_1"
    file.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded = restricted_load(file)
    assert np.array_equal(loaded[b"data"], batch[b"data"])
    assert loaded[b"labels"].tolist() == [1, 2, 3, 4]
    assert _read_cifar_batch(file)[1].tolist() == [1, 2, 3, 4]


BAD_BATCHES = [
    ("label out of range", _batch(labels=[0, 10, 1, 2]), "outside [0, 10), the first 10 at row 1"),
    ("negative label", _batch(labels=[0, 1, -1, 2]), "outside [0, 10)"),
    ("huge label", _batch(labels=[0, 1, 2**80, 2]), "outside [0, 10)"),
    ("array label out of range", _batch(labels=np.array([0, 1, 2, 12])), "outside [0, 10)"),
    ("bool labels", _batch(labels=[True, False, True, False]), "must be a list of ints"),
    ("float labels", _batch(labels=[0.0, 1.0, 2.0, 3.0]), "must be a list of ints"),
    ("row of 3071", _batch(data=np.zeros((4, 3071), np.uint8)), "shape (4, 3071)"),
    ("flat data", _batch(data=np.zeros(4 * 3072, np.uint8)), "shape (12288,)"),
    ("float data", _batch(data=np.zeros((4, 3072), np.float32)), "float32 array"),
    ("list data", _batch(data=[[0] * 3072] * 4), "a list"),
    ("too few labels", _batch(labels=[0, 1, 2]), "3 labels for 4 images"),
    ("too many labels", _batch(labels=[0, 1, 2, 3, 4]), "5 labels for 4 images"),
    ("no rows", _batch(rows=0), "holds no images"),
    ("not a dict", [1, 2, 3], "a list, expected a dict"),
    ("no labels", {b"data": np.zeros((1, 3072), np.uint8)}, "no b'labels' key"),
    ("str keys", {"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, "no b'data' key"),
]


# docs/spec.md "Dataset files are never trusted": wrong row lengths or mismatched counts fail
# naming the file
@pytest.mark.parametrize("case,batch,reason", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
def test_a_bad_batch_fails_naming_the_file(tmp_path: Path, case, batch, reason) -> None:
    directory = write_cifar10(tmp_path / "c", bad="data_batch_3", content=pickle.dumps(batch))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", str(directory))
    assert str(directory / "data_batch_3") in str(e.value) and reason in str(e.value)


# docs/spec.md "Dataset files are never trusted": labels out of range fail naming the file
def test_a_cifar100_fine_label_of_100_fails_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99]}
    (directory / "train").write_bytes(pickle.dumps(good))
    (directory / "test").write_bytes(pickle.dumps({**good, b"fine_labels": [99, 100]}))
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar100", str(directory))
    assert f"{directory / 'test'}: b'fine_labels' holds 1 labels outside [0, 100)" in str(e.value)


EVIL = [
    ("os.system", b"\x80\x02" + _call(_global("os", "system"), _text("true")) + b"."),
    ("posix.system", b"\x80\x02" + _call(_global("posix", "system"), _text("true")) + b"."),
    ("builtins.eval", b"\x80\x02" + _call(_global("builtins", "eval"), _text("1")) + b"."),
    ("py2 __builtin__", b"\x80\x02" + _call(_global("__builtin__", "eval"), _text("1")) + b"."),
    ("subprocess.Popen", b"\x80\x02" + _call(_global("subprocess", "Popen"), _text("x")) + b"."),
    ("numpy.load", b"\x80\x02" + _call(_global("numpy", "load"), _text("x")) + b"."),
    ("pickle.loads", b"\x80\x02" + _call(_global("pickle", "loads"), _str2(b"N.")) + b"."),
    ("numpy scalar", b"\x80\x02" + _global("numpy.core.multiarray", "scalar") + b"."),
    ("STACK_GLOBAL", b"\x80\x04" + _text("os") + _text("system") + b"\x93."),
    ("INST", b"\x80\x02(ios\nsystem\n" + _text("true") + b"."),
]
ABUSED = [
    ("ndarray called", _call(_global("numpy", "ndarray"), _tuple(_int(10))), "only be named"),
    (
        "uninitialised huge array",  # no bytes in the file behind its rows
        _call(
            _global("numpy._core.multiarray", "_reconstruct"),
            _global("numpy", "ndarray"),
            _tuple(_int(10**6), _int(3072)),
            _str2(b"B"),
        ),
        "empty numpy.ndarray only",
    ),
    (
        "_reconstruct of another type",
        _call(
            _global("numpy.core.multiarray", "_reconstruct"),
            _global("numpy", "dtype"),
            _tuple(_int(0)),
            _str2(b"b"),
        ),
        "empty numpy.ndarray only",
    ),
    ("another codec", _call(_global("_codecs", "encode"), _text("x"), _text("rot13")), "latin1"),
    (
        "_frombuffer of text",
        _call(_global("numpy._core.numeric", "_frombuffer"), _text("x"), b"N", b"N", _text("C")),
        "in-file bytes only",
    ),
    (
        "BUILD patching an admitted callable",
        _global("numpy", "dtype") + b"N}" + _text("_call") + _text("x") + b"s\x86b",
        "cannot set attributes",
    ),
    ("a persistent id", b"Pid\n", "persistent"),
    ("an out-of-band buffer", b"\x97", "out-of-band"),
]


# docs/spec.md "Dataset files are never trusted": a file that names anything else fails the
# trial with `DatasetError: <file>: ...`
@pytest.mark.parametrize("case,content", EVIL, ids=[e[0] for e in EVIL])
def test_refused_globals_fail_naming_the_file(tmp_path: Path, case: str, content: bytes) -> None:
    directory = write_cifar10(tmp_path / "c", bad="data_batch_1", content=content)
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", str(directory))
    assert str(directory / "data_batch_1") in str(e.value) and "refused global" in str(e.value)


# docs/spec.md "Dataset files are never trusted": the unpickler builds nothing but dicts, lists,
# bytes, str, ints and numpy arrays
@pytest.mark.parametrize("case,ops,reason", ABUSED, ids=[a[0] for a in ABUSED])
def test_admitted_globals_cannot_be_abused(tmp_path: Path, case: str, ops: bytes, reason) -> None:
    file = tmp_path / "data_batch_1"
    file.write_bytes(b"\x80\x05" + ops + b".")
    with pytest.raises(DatasetError) as e:
        restricted_load(file)
    assert str(file) in str(e.value) and reason in str(e.value)
    # Whatever the attempt, the next load still works as before.
    file.write_bytes(pickle.dumps(_batch()))
    assert restricted_load(file)[b"labels"] == _batch()[b"labels"]


@needs_cifar
def test_a_truncated_real_batch_fails_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    shutil.copytree(CIFAR_SUBSET / "cifar-10-batches-py", directory)
    file = directory / "data_batch_4"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="data_batch_4: not a CIFAR python-format batch"):
        load_dataset("cifar10", str(tmp_path))
