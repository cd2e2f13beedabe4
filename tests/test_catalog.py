"""The API's training-set sizes (no torch) equal what the trainer loads."""

from __future__ import annotations

import pytest

import trainer
from samsweep.catalog import SpecError, check_spec, resolve_data_path, train_size
from samsweep.spec import StudySpec
from tests.conftest import SHARED_DATA, digits_spec


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.25])
@pytest.mark.parametrize(
    "name,path", [("digits", None), ("synthetic", None), ("cifar10", "cifar10-subset")]
)
def test_train_size_matches_trainer(name, path, val_fraction):
    spec = StudySpec.model_validate(
        digits_spec(dataset={"name": name, "path": path, "val_fraction": val_fraction})
    )
    expected = train_size(spec, SHARED_DATA)
    full_path = str(resolve_data_path(SHARED_DATA, path)) if path else None
    ds = trainer.load_dataset(name, full_path, val_fraction=val_fraction)
    assert len(ds.train_y) == expected


def test_check_spec_names_the_field():
    spec = StudySpec.model_validate(digits_spec(batch_size=(16, 1438)))
    with pytest.raises(SpecError) as e:
        check_spec(spec, SHARED_DATA, max_grid_trials=100)
    assert e.value.field == "search.batch_size.1"
    check_spec(StudySpec.model_validate(digits_spec(batch_size=(1437,))), SHARED_DATA, 100)
