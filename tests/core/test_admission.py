"""The API's training-set sizes (no torch, no unpickling) against what the trainer loads:
exact for built-in datasets, a certain upper bound for file datasets."""

from __future__ import annotations

import pytest

import trainer
from samsweep.core.admission import (
    ROW_BYTES,
    AdmissionError,
    check_admission,
    contained_dataset_dir,
    train_size,
)
from samsweep.core.spec import StudySpec
from tests.support.paths import SHARED_DATA
from tests.support.specs import digits_spec

SUBSET = SHARED_DATA / "cifar10-subset"
needs_subset = pytest.mark.skipif(not SUBSET.is_dir(), reason="shared CIFAR-10 subset absent")


# docs/spec.md "Refused specs": batch size larger than the training set: exact for built-ins
@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25])
@pytest.mark.parametrize(
    "name,path", [("digits", None), ("synthetic", None), ("cifar10", "cifar10-subset")]
)
def test_train_size_matches_trainer(name, path, val_fraction):
    if path and not (SHARED_DATA / path).is_dir():
        pytest.skip("shared CIFAR-10 subset absent")
    spec = StudySpec.model_validate(
        digits_spec(dataset={"name": name, "path": path, "val_fraction": val_fraction})
    )
    size = train_size(spec, SHARED_DATA)
    full_path = str(contained_dataset_dir(SHARED_DATA, name, path)) if path else None
    n = len(trainer.load_dataset(name, full_path, val_fraction=val_fraction).train_y)
    if size.exact:
        assert size.n == n
    else:  # a bound from file sizes: never below the real count, and tight in practice
        assert not size.exact and n <= size.n <= 1.01 * n + 1


def test_check_spec_names_the_field():
    spec = StudySpec.model_validate(digits_spec(batch_size=(16, 1438)))
    with pytest.raises(AdmissionError) as e:
        check_admission(spec, SHARED_DATA, max_grid_trials=100)
    assert e.value.field == "search.batch_size.1"
    assert "larger than the training set (1437 examples)" in e.value.message
    check_admission(StudySpec.model_validate(digits_spec(batch_size=(1437,))), SHARED_DATA, 100)


# docs/spec.md "Refused specs": for file datasets the API refuses a batch size that certainly
# exceeds the training set (3 072 bytes per image)
@needs_subset
@pytest.mark.parametrize("val_fraction", [0.0, 0.1])
def test_file_batch_size_is_refused_above_the_certain_bound_only(val_fraction):
    files = sorted((SUBSET / "cifar-10-batches-py").glob("data_batch_*"))
    rows = sum(f.stat().st_size // ROW_BYTES for f in files)  # 5 x 1026 for the subset
    bound = rows - round(val_fraction * rows)

    def spec(batch: int) -> StudySpec:
        dataset = {"name": "cifar10", "path": "cifar10-subset", "val_fraction": val_fraction}
        return StudySpec.model_validate(digits_spec(dataset=dataset, batch_size=(16, batch)))

    with pytest.raises(AdmissionError) as e:
        check_admission(spec(bound + 1), SHARED_DATA, 100)
    assert e.value.field == "search.batch_size.1"
    assert f"batch size {bound + 1} is larger" in e.value.message
    assert f"at most {bound} examples" in e.value.message
    # At the bound the API cannot be sure (the real set is 5085 before the split):
    # accepted here, decided by the worker with the real count.
    check_admission(spec(bound), SHARED_DATA, 100)


# docs/spec.md "The study spec": dataset.augment is refused for digits
@pytest.mark.parametrize("augment", ["crop_flip", "crop_flip_cutout"])
@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_flips_are_refused_where_the_trainer_refuses_them(dataset, augment):
    from pydantic import ValidationError

    spec = digits_spec()
    spec["dataset"] = {"name": dataset, "augment": augment}
    with pytest.raises(ValidationError, match="dataset.augment"):
        StudySpec.model_validate(spec)


# docs/spec.md "The spec as the trainer's config": what the trainer would refuse, the API refuses
# first -------


def _check(spec: dict, data_dir=SHARED_DATA) -> None:
    check_admission(StudySpec.model_validate(spec), data_dir, 100)


def _refused(spec: dict, data_dir=SHARED_DATA) -> AdmissionError:
    with pytest.raises(AdmissionError) as e:
        _check(spec, data_dir)
    return e.value


@pytest.mark.parametrize("name,n", [("digits", 1437), ("synthetic", 512)])
def test_an_empty_validation_split_is_refused_and_the_smallest_accepted_one_trains(name, n):
    """`val_fraction: 0.0003` on digits was accepted and every trial failed with `leaves
    an empty split`. The boundary is the trainer's own: refused exactly where its
    val_count raises; the smallest accepted fraction holds out one example and trains."""
    from trainer.data import val_count

    def spec(vf: float) -> dict:
        return digits_spec(dataset={"name": name, "val_fraction": vf}, rho=(0.0,), batch_size=(64,))

    refused, accepted = 0.5 / n, 0.5 / n * (1 + 1e-9)  # round(0.5) is 0: more than half
    for vf in (0.0003 if name == "digits" else 0.0009, refused):
        error = _refused(spec(vf))
        assert error.field == "dataset.val_fraction" and "validation split" in error.message
        assert "would be empty" in error.message, error.message
        with pytest.raises(ValueError, match="empty split"):
            val_count(n, vf)
    _check(spec(accepted))
    assert val_count(n, accepted) == 1
    config = trainer.TrialConfig(
        dataset=trainer.DatasetConfig(name, val_fraction=accepted),
        train=trainer.TrainConfig(epochs=1, lr=0.05),
        sharpness=trainer.SharpnessConfig(samples=0),
        rho=0.0,
        sam_variant=None,
        batch_size=256,
    )
    result = trainer.fit(config)
    assert result.val_accuracy is not None and result.epochs == 1


def _tiny_cifar(root, rows: int = 4) -> str:
    from tests.support.datasets import BATCHES, write_cifar10

    write_cifar10(root / "tiny" / BATCHES, rows=rows)
    return "tiny"


def test_an_empty_split_of_a_file_dataset_is_refused_when_certain(tmp_path):
    """Files: the bound on the rows (5 files x 4 rows = 20) decides only where it is
    certain: round(0.02 x 20) = 0 for every size up to the bound."""
    from trainer.data import val_count

    path = _tiny_cifar(tmp_path)

    def spec(vf: float) -> dict:
        dataset = {"name": "cifar10", "path": path, "val_fraction": vf}
        return digits_spec(dataset=dataset, rho=(0.0,), batch_size=(2,))

    error = _refused(spec(0.02), tmp_path)
    assert error.field == "dataset.val_fraction" and "at most 20 training examples" in error.message
    with pytest.raises(ValueError, match="empty split"):
        val_count(20, 0.02)  # what the worker would have said, on the real 20 rows
    _check(spec(0.05), tmp_path)
    full = str(contained_dataset_dir(tmp_path, "cifar10", path))
    assert len(trainer.load_dataset("cifar10", full, val_fraction=0.05).val_y) == 1


def test_a_data_file_too_small_to_hold_an_image_is_refused(tmp_path):
    """A complete pickle of no rows: the trainer refuses it (`holds no images`); its size
    (under 3 072 bytes) already says so."""
    import pickle

    import numpy as np

    from tests.support.datasets import BATCHES
    from trainer.data import DatasetError

    path = _tiny_cifar(tmp_path)
    empty = {b"data": np.zeros((0, ROW_BYTES), np.uint8), b"labels": []}
    for f in ("data_batch_4", "test_batch"):
        target = tmp_path / path / BATCHES / f
        saved = target.read_bytes()
        target.write_bytes(pickle.dumps(empty))
        spec = digits_spec(dataset={"name": "cifar10", "path": path}, rho=(0.0,), batch_size=(2,))
        error = _refused(spec, tmp_path)
        assert error.field == "dataset.path" and f"{BATCHES}/{f} holds no images" in error.message
        with pytest.raises(DatasetError, match="holds no images"):
            trainer.load_dataset("cifar10", str(tmp_path / path))
        trainer.data._load_raw.cache_clear()
        target.write_bytes(saved)
    _check(digits_spec(dataset={"name": "cifar10", "path": path}, batch_size=(2,)), tmp_path)


@pytest.mark.parametrize(
    "search,field,phrase",
    [
        ({"batch_size": [1]}, "search.batch_size.0", "batch size 1 trains on a chunk of one"),
        ({"batch_size": [32, 1436]}, "search.batch_size.1", "batch size 1436"),  # last batch 1
        ({"batch_size": [2]}, "search.batch_size.0", "batch size 2"),  # 1437 is odd
        ({"batch_size": [32], "m": [None, 4]}, "search.m.1", "with m = 4"),  # 29 = 7x4 + 1
        ({"batch_size": [64], "m": [1]}, "search.m.0", "with m = 1"),
    ],
)
def test_resnet18_on_8x8_images_never_trains_on_one_example(search, field, phrase):
    spec = digits_spec(**{k: tuple(v) for k, v in search.items() if k == "batch_size"})
    spec["model"] = {"name": "resnet18"}
    spec["search"].update({k: v for k, v in search.items() if k != "batch_size"})
    error = _refused(spec)
    assert error.field == field and phrase in error.message, error
    assert "1x1 feature map" in error.message
    # Not for the other models (their last map is 4x4 or 2x2), nor at 32x32:
    for model in ({"name": "cnn"}, {"name": "wrn", "depth": 10, "width": 1}):
        _check({**spec, "model": model})
    # ... and m applies only to SAM's trials: with rho = 0 alone, only whole batches.
    if field.startswith("search.m"):
        _check({**spec, "search": {**spec["search"], "rho": [0.0]}})


def test_the_one_example_refusal_agrees_with_the_trainer():
    """resnet18 on synthetic (8x8) with 282 training examples: batch 281 leaves a last
    batch of one and the trainer fails (BatchNorm); batch 282 trains. The API refuses
    the first and accepts the second."""

    def spec(batch: int) -> dict:
        s = digits_spec(dataset={"name": "synthetic", "val_fraction": 0.45}, rho=(0.0,))
        s["search"]["batch_size"] = [batch]
        s["model"] = {"name": "resnet18"}
        return s

    assert 512 - round(0.45 * 512) == 282
    assert _refused(spec(281)).field == "search.batch_size.0"
    _check(spec(282))

    def fit(batch: int) -> None:
        trainer.fit(
            trainer.TrialConfig(
                dataset=trainer.DatasetConfig("synthetic", val_fraction=0.45),
                model=trainer.ModelConfig("resnet18"),
                train=trainer.TrainConfig(epochs=1, lr=0.01),
                sharpness=trainer.SharpnessConfig(samples=0),
                rho=0.0,
                sam_variant=None,
                batch_size=batch,
            )
        )

    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fit(281)
    fit(282)
