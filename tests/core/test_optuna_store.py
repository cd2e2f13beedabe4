"""How a study's grid axes are recorded in Optuna (samsweep.core.optuna_store): in ranges
any spec allows, so a study that grows keeps one distribution per param; studies created
before keep their categoricals."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from samsweep.core import optuna_store
from samsweep.core.spec import StudySpec, TrialParams
from tests.support.specs import digits_spec


def _spec(m=(None,), **kw) -> StudySpec:
    spec = digits_spec(**kw)
    spec["search"]["m"] = list(m)
    return StudySpec.model_validate(spec)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(url).engine.dispose()  # create the tables
    return url


def _frozen(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=optuna_store.get_storage(url)).trials


# docs/api.md "Studies that grow": the Optuna study takes the new values' trials
def test_a_grown_grid_is_recorded_in_the_same_optuna_study(url):
    before = _spec(rho=(0.0, 0.05), batch_size=(16,))
    optuna_store.create_optuna_study(url, "s", "id1", before)
    for i, t in enumerate(before.trials()):
        optuna_store.start_trial(url, "s", before, t, i)
    # grown: a new rho, a new batch size and an m; the categoricals of old would refuse it
    after = _spec(rho=(0.0, 0.05, 0.2), batch_size=(16, 32), m=(None, 8))
    new = [t for t in after.trials() if t not in before.trials()]
    for i, t in enumerate(new, start=10):
        optuna_store.start_trial(url, "s", after, t, i)
    frozen = _frozen(url, "s")
    assert len(frozen) == len(before.trials()) + len(new) == after.n_trials
    by_id = {f.user_attrs["samsweep_trial_id"]: f for f in frozen}
    assert by_id[0].params == {"rho": 0.0, "batch_size": 16, "base_optimizer": "sgd"}
    assert by_id[1].params == {
        "rho": 0.05, "batch_size": 16, "base_optimizer": "sgd", "sam_variant": "sam"
    }  # fmt: skip
    with_m = [f for f in frozen if "m" in f.params]
    assert with_m and all(f.params["m"] == 8 for f in with_m)
    dists = by_id[1].distributions
    assert isinstance(dists["rho"], FloatDistribution)
    assert isinstance(dists["batch_size"], IntDistribution) and dists["batch_size"].log
    assert dists["base_optimizer"] == CategoricalDistribution(("sgd", "adam", "adamw"))
    assert optuna_store.param_space(url, "s") == optuna_store.GROWABLE


# docs/spec.md "The study spec": lr and weight decay as grid axes are Optuna params too
def test_train_settings_that_are_axes_are_recorded_as_params(url):
    raw = digits_spec(rho=(0.05,), batch_size=(16,))
    raw["train"].update(lr=[0.1, 0.01], weight_decay=[0.0, 5e-4])
    spec = StudySpec.model_validate(raw)
    optuna_store.create_optuna_study(url, "s", "id1", spec)
    for i, t in enumerate(spec.trials()):
        optuna_store.start_trial(url, "s", spec, t, i)
    frozen = _frozen(url, "s")
    assert {(f.params["lr"], f.params["weight_decay"]) for f in frozen} == {
        (0.1, 0.0), (0.1, 5e-4), (0.01, 0.0), (0.01, 5e-4)
    }  # fmt: skip
    assert isinstance(frozen[0].distributions["lr"], FloatDistribution)
    fixed = _spec(rho=(0.05,), batch_size=(16,))  # a fixed lr is no param
    values, _ = optuna_store.recorded_params(fixed, fixed.trials()[0])
    assert "lr" not in values and "weight_decay" not in values


def test_a_study_created_before_keeps_its_categoricals(url):
    spec = _spec(rho=(0.0, 0.05), batch_size=(16,))
    optuna.create_study(storage=optuna_store.get_storage(url), study_name="old")  # no attr
    assert optuna_store.param_space(url, "old") == 1
    for i, t in enumerate(spec.trials()):
        optuna_store.start_trial(url, "old", spec, t, i)
    frozen = _frozen(url, "old")
    assert {f.params["rho"] for f in frozen} == {0.0, 0.05}
    assert all(isinstance(d, CategoricalDistribution) for d in frozen[0].distributions.values())
    assert frozen[0].params["sam_variant"] is None  # as recorded before: every axis, always
    # why such a study cannot take new axis values: Optuna refuses the changed choices
    grown = _spec(rho=(0.0, 0.05, 0.2), batch_size=(16,))
    extra = TrialParams(rho=0.2, batch_size=16, base_optimizer="sgd", seed=0)
    with pytest.raises(ValueError, match="dynamic value space"):
        optuna_store.start_trial(url, "old", grown, extra, 99)
