"""The study spec's grid: cells, their order, keys and the rho = 0 baseline."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from samsweep.core.spec import Cell, StudySpec
from tests.support.specs import digits_spec


def _spec(**search) -> StudySpec:
    spec = digits_spec()
    spec["search"].update(search)
    return StudySpec.model_validate(spec)


# docs/spec.md "The study spec": the grid is the product of the lists, times `seeds`
def test_grid_is_the_product_times_seeds_in_a_fixed_order():
    spec = StudySpec.model_validate(digits_spec(rho=(0.05, 0.1), batch_size=(16, 64), seeds=(0, 1)))
    trials = spec.trials()
    assert spec.n_trials == len(trials) == 8
    assert [(c.batch_size, c.rho, c.seed) for c in trials[:4]] == [
        (16, 0.05, 0), (16, 0.05, 1), (16, 0.1, 0), (16, 0.1, 1)
    ]  # fmt: skip
    assert len({(c.cell_key, c.seed) for c in trials}) == 8


# docs/spec.md "The study spec": rho = 0 appears once per optimizer and batch size
def test_baseline_is_one_cell_whatever_the_sam_variants_and_m():
    spec = _spec(rho=[0.0, 0.05], batch_size=[16], sam_variant=["sam", "asam"], m=[None, 8])
    trials = spec.trials()
    baseline = [c for c in trials if c.rho == 0]
    assert len(baseline) == 1 and baseline[0].sam_variant is None and baseline[0].m is None
    assert {(c.sam_variant, c.m) for c in trials if c.rho > 0} == {
        ("sam", None), ("sam", 8), ("asam", None), ("asam", 8)
    }  # fmt: skip
    assert spec.n_trials == 5


def test_spec_round_trips_through_json():
    spec = _spec(sam_variant=["asam"], m=[4])
    again = StudySpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.trials() == spec.trials()


# docs/spec.md "Refused specs": negative or non-finite rho is refused
@pytest.mark.parametrize("rho", [float("nan"), float("inf"), -0.01, 10.5])
def test_rho_must_be_finite_and_in_range(rho):
    with pytest.raises(ValidationError, match="search.rho.0|rho"):
        _spec(rho=[rho])


# docs/spec.md "The study spec": the grid's size is computed from the list lengths
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    rho=st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.5]), min_size=1, unique=True),
    batch=st.lists(st.sampled_from([8, 16, 32]), min_size=1, unique=True),
    variants=st.lists(st.sampled_from(["sam", "asam"]), min_size=1, unique=True),
    ms=st.lists(st.sampled_from([None, 4, 8]), min_size=1, unique=True),
    seeds=st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True),
)
def test_n_trials_from_list_lengths_equals_the_built_grid(rho, batch, variants, ms, seeds):
    """n_trials is arithmetic on the list lengths (a hostile grid is refused before any
    cell is built); it must always equal the number trials() builds."""
    spec = _spec(rho=rho, batch_size=batch, sam_variant=variants, m=ms)
    spec = spec.model_copy(update={"seeds": seeds})
    assert spec.n_trials == len(spec.trials())


# docs/spec.md "The study spec": ... before anything is built
def test_a_huge_grid_is_counted_without_being_built():
    spec = _spec(rho=[0.001 * i for i in range(100)], batch_size=list(range(1, 101)))
    spec = spec.model_copy(update={"seeds": list(range(100))})
    # (99 SAM rhos + rho 0 once) x 100 batch sizes x 100 seeds; trials() would build 10^6
    assert spec.n_trials == 100 * 100 * 100


# docs/spec.md "The study spec": JSON's `1` is a valid float; every list holds at most 100 values.
def test_a_json_integer_is_a_float_and_a_list_holds_at_most_100_values():
    body = digits_spec()
    body["train"]["lr"] = 1
    assert StudySpec.model_validate_json(json.dumps(body)).train.lr == 1.0
    _spec(batch_size=list(range(1, 101)))
    with pytest.raises(ValidationError, match="search.batch_size"):
        _spec(batch_size=list(range(1, 102)))


# docs/spec.md "The study spec": the objective defaults to val_accuracy when there is a split
def test_the_objective_defaults_to_validation_when_there_is_a_split():
    raw = digits_spec()
    del raw["objective"]
    assert StudySpec.model_validate(raw).objective == "test_accuracy"
    raw["dataset"]["val_fraction"] = 0.2
    assert StudySpec.model_validate(raw).objective == "val_accuracy"
    raw["objective"] = "test_accuracy"  # still possible, and then said plainly (report)
    assert StudySpec.model_validate(raw).objective == "test_accuracy"


# A grid cell is one type (samsweep.core.spec.Cell): its key is what the trials table
# stores (it must never change for existing rows), its label and method are how the
# report's tables, the plots and the dashboard name it.
def test_a_cell_keys_and_names_itself_once():
    spec = StudySpec.model_validate(digits_spec(rho=[0.0, 0.05], batch_size=[128], seeds=[0, 1]))
    base, sam = spec.trials()[0].cell, spec.trials()[2].cell
    assert base.key == "rho=0.0|batch_size=128|base_optimizer=sgd|sam_variant=None|m=None"
    assert sam.key == "rho=0.05|batch_size=128|base_optimizer=sgd|sam_variant=sam|m=None"
    assert {t.cell for t in spec.trials()} == {base, sam}  # the seeds share their cell
    assert (base.label, base.method) == ("ρ=0, batch 128, sgd", "rho 0")
    assert (sam.label, sam.method) == ("ρ=0.05, batch 128, sgd, sam", "sam 0.05")
    msam = Cell(rho=1.0, batch_size=512, base_optimizer="adamw", sam_variant="asam", m=32)
    assert (msam.label, msam.method) == ("ρ=1, batch 512, adamw, asam m=32", "asam 1 m=32")
    # as the API serves a trial's params: the seed and a newer API's fields are not axes
    served = {**spec.trials()[3].stored(), "future_axis": 0.5}
    assert Cell.from_params(served) == sam


def _searched(**sampler):
    raw = digits_spec(rho=(0.0,), batch_size=(16, 32), seeds=(0, 1))
    raw["search"]["rho"] = {"low": 0.01, "high": 0.5, "log": True}
    raw["train"]["lr"] = {"low": 1e-3, "high": 0.3, "log": True}
    raw["sampler"] = {"name": "tpe", "n_trials": 4, **sampler}
    return raw


# docs/spec.md "Search": a sampler draws n_trials configurations, each once per seed
def test_a_sampler_study_counts_configurations_times_seeds_and_builds_no_grid():
    spec = StudySpec.model_validate(_searched())
    assert spec.n_trials == 8 and spec.trials() == []
    assert spec.search.rho.log and spec.train.lr.high == 0.3


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"sampler": {"name": "grid"}}, "sampler", "a range needs a sampler"),
        ({"sampler": {"name": "tpe"}}, "sampler", "needs n_trials"),
        ({"sampler": {"name": "cmaes", "n_trials": 4}}, "sampler.name", "Input should be"),
        ({"sampler": {"name": "tpe", "n_trials": 0}}, "sampler.n_trials", "greater than"),
        ({"search_rho": {"low": 0.5, "high": 0.1}}, "search.rho", "must be below high"),
        ({"search_rho": {"low": 0.0, "high": 0.1, "log": True}}, "search.rho", "low > 0"),
        ({"search_rho": {"low": 0.1, "high": 11}}, "search.rho", "high: Input should be less"),
        ({"search_rho": 0.1}, "search.rho", "a list of values"),
        ({"search_rho": {"low": 0.1, "high": 0.2, "step": 1}}, "search.rho", "Extra inputs"),
        ({"lr": {"low": 0, "high": 0.1}}, "train.lr", "low: Input should be greater than 0"),
    ],
)
def test_a_bad_search_is_refused_naming_the_field(change, field, words):
    raw = _searched()
    if "sampler" in change:
        raw["sampler"] = change["sampler"]
    if "search_rho" in change:
        raw["search"]["rho"] = change["search_rho"]
    if "lr" in change:
        raw["train"]["lr"] = change["lr"]
    with pytest.raises(ValidationError) as e:
        StudySpec.model_validate(raw)
    first = e.value.errors()[0]
    assert ".".join(map(str, first["loc"])) == field and words in first["msg"], e.value.errors()


def test_a_grid_draws_nothing_so_takes_no_budget_or_seed():
    raw = digits_spec()
    raw["sampler"] = {"name": "grid", "n_trials": 3}
    with pytest.raises(ValidationError, match="draws nothing"):
        StudySpec.model_validate(raw)
