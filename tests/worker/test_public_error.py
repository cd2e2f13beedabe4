"""A failed trial's `error` is returned by the API to anyone who may read the study: it
says what went wrong with the trial, never where things are on the worker's host."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

import trainer
from samsweep.core.spec import StudySpec
from tests.support.datasets import BATCHES, write_cifar10
from tests.support.specs import digits_spec
from worker.outcome import public_error, public_text
from worker.trial_config import trial_config


def test_a_dataset_error_names_the_file_relative_to_the_data_root(tmp_path):
    """Trained for real: a test batch whose labels are out of range fails in the trainer
    with a DatasetError naming the resolved file; the error a client reads names it as
    the user does (under the data root), without the server's absolute path."""
    import pickle

    import numpy as np

    root = tmp_path / "srv" / "data"
    write_cifar10(root / "mine" / BATCHES)
    bad = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 99]}
    (root / "mine" / BATCHES / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    spec = StudySpec.model_validate(
        digits_spec(dataset={"name": "cifar10", "path": "mine"}, rho=(0.0,), batch_size=(2,))
    )
    config = trial_config(spec, spec.trials()[0], data_dir=root)
    with pytest.raises(Exception) as raised:
        trainer.fit(config)
    assert str(root) in str(raised.value)  # what the worker's log keeps
    error = public_error(raised.value, root)
    assert error.startswith(f"DatasetError: mine/{BATCHES}/test_batch: "), error
    assert str(tmp_path) not in error and "labels outside [0, 10)" in error


@pytest.mark.parametrize(
    "text,public",
    [
        (
            "[Errno 28] No space left on device: '/var/lib/samsweep/checkpoints/a/trial-1.pt'",
            "[Errno 28] No space left on device: '<server path>'",
        ),
        (
            "checkpoint /state/ck/x.pt has version 1, not 2",
            "checkpoint <server path> has version 1, not 2",
        ),
        (
            "cannot open /usr/lib/python3/site-packages/sklearn/x.csv.gz",
            "cannot open <server path>",
        ),
        ("lr*B/B0 = 1/2 at 50% of a/b", "lr*B/B0 = 1/2 at 50% of a/b"),  # no path: unchanged
        (
            "training loss is nan at epoch 3, step 2 (lr=0.1)",
            "training loss is nan at epoch 3, step 2 (lr=0.1)",
        ),
    ],
)
def test_server_paths_are_hidden_and_the_rest_kept(text, public):
    assert public_text(text) == public


def test_a_path_under_the_data_root_is_relative_as_written_and_resolved(tmp_path):
    """SAMSWEEP_DATA_DIR may be a symlink: the trainer names resolved paths, messages may
    name it as configured; both become relative."""
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "link-root").symlink_to(real)
    text = f"no CIFAR files at '{real}/x': expected them in '{tmp_path / 'link-root'}/x/y'"
    assert public_text(text, tmp_path / "link-root") == (
        "no CIFAR files at 'x': expected them in 'x/y'"
    )


def test_database_and_broker_errors_say_their_type_only():
    e = OperationalError(
        "SELECT secret FROM t", {}, Exception('connection to "db.internal" port 5432 failed')
    )
    assert public_error(e) == "OperationalError (details in the worker's log)"
