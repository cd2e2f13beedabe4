"""The pruner (docs/spec.md "Pruning"): built alike by every worker from the spec, fed
each epoch's validation accuracy, never before its grace epoch, and comparing a trial
only with the trials of its own group (batch size, base optimizer, SAM setting)."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from samsweep.core import optuna_store
from samsweep.core.spec import StudySpec, TrialParams
from tests.support.specs import digits_spec

EPOCHS = 10


def spec(pruner: dict | None = None, **train) -> StudySpec:
    raw = digits_spec(
        rho=(0.0, 0.05), batch_size=(16, 64), epochs=EPOCHS, dataset={"name": "digits",
        "val_fraction": 0.2}, pruner=pruner or {"name": "median", "startup_trials": 2},
    )  # fmt: skip
    raw["train"].update(train)
    raw["search"]["sam_start"] = [0.0, 0.5]
    return StudySpec.model_validate(raw)


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    optuna.storages.RDBStorage(url).engine.dispose()
    return url


def run(url: str, s: StudySpec, params: TrialParams, curve: list[float], ident: int,
        complete: bool = True) -> int:  # fmt: skip
    """An Optuna trial of `params` that reported `curve` (one value an epoch), asking the
    pruner after each as a worker does (Hyperband records each rung a trial reaches)."""
    trial_id, _ = optuna_store.start_trial(url, "s", s, params, ident)
    for epoch, value in enumerate(curve, start=1):
        optuna_store.report(url, trial_id, epoch, value)
        optuna_store.should_prune(url, "s", s, trial_id, EPOCHS)
    if complete:
        optuna_store.complete_trial(url, trial_id, curve[-1], {})
    return trial_id


def point(rho=0.05, batch_size=16, seed=0, sam_start=None) -> TrialParams:
    variant = "sam" if rho else None
    return TrialParams(rho=rho, batch_size=batch_size, base_optimizer="sgd",
                       sam_variant=variant, seed=seed, sam_start=sam_start)  # fmt: skip


GOOD = [0.5 + 0.04 * e for e in range(EPOCHS)]
BAD = [0.1] * EPOCHS


# docs/spec.md "Pruning": a trial worse than its group's median is pruned, from its grace epoch
def test_a_trial_below_its_groups_median_is_pruned_from_the_grace_epoch_on(url):
    s = spec()
    optuna_store.create_optuna_study(url, "s", "id", s)
    for i in (0, 1):  # two configurations' seed 0 (the pruner pairs by seed)
        run(url, s, point(), GOOD, i)
    grace = s.pruner.grace(EPOCHS, 0.0)
    assert grace == 5  # half the epochs
    early = run(url, s, point(), BAD[: grace - 1], 2, complete=False)
    assert not optuna_store.should_prune(url, "s", s, early, EPOCHS)
    bad = run(url, s, point(), BAD[:grace], 3, complete=False)
    assert optuna_store.should_prune(url, "s", s, bad, EPOCHS)
    good = run(url, s, point(), GOOD[:grace], 4, complete=False)
    assert not optuna_store.should_prune(url, "s", s, good, EPOCHS)


# docs/spec.md "Pruning": a trial is compared only with trials of the same batch size, base
# optimizer and SAM setting: a large-batch, baseline or SAM-late run is never cut against them
@pytest.mark.parametrize("name", ["median", "hyperband"])
@pytest.mark.parametrize(
    "other", [point(batch_size=64), point(rho=0.0), point(sam_start=0.5), point(rho=0.2)]
)
def test_a_trial_is_judged_only_within_its_group(url, name, other):
    s = spec({"name": name, "startup_trials": 2, "min_epochs": 2})
    optuna_store.create_optuna_study(url, "s", "id", s)
    for i in range(6):  # six configurations' seed 0, as `other` (the pruner pairs by seed)
        run(url, s, point(), GOOD, i)
    same_group = other.rho == 0.2  # another rho: the same batch size, optimizer and SAM
    slow = run(url, s, other, [], 10, complete=False)
    decisions = []  # Hyperband decides at its rungs only: ask at every epoch
    for epoch, value in enumerate(BAD, start=1):
        optuna_store.report(url, slow, epoch, value)
        decisions.append(optuna_store.should_prune(url, "s", s, slow, EPOCHS))
    assert any(decisions) is same_group
    assert not any(decisions[:1])  # min_epochs: 2


def test_a_pruned_trial_keeps_its_last_value(url):
    s = spec()
    optuna_store.create_optuna_study(url, "s", "id", s)
    trial_id = run(url, s, point(), BAD[:3], 0, complete=False)
    optuna_store.prune_trial(url, trial_id)
    frozen = optuna_store.get_storage(url).get_trial(trial_id)
    assert frozen.state == optuna.trial.TrialState.PRUNED and frozen.value == 0.1
    assert frozen.intermediate_values == {1: 0.1, 2: 0.1, 3: 0.1}


def test_the_grace_defaults_to_the_warmup_plus_half_the_epochs_and_min_epochs_rules():
    assert spec(warmup_epochs=2.5).pruner.grace(EPOCHS, 2.5) == 8  # ceil(2.5 + 5)
    explicit = spec({"name": "median", "min_epochs": 1}, warmup_epochs=2.5)
    assert explicit.pruner.grace(EPOCHS, 2.5) == 1  # honoured as given
    # a doubled baseline's grace is over its own epochs
    assert spec().pruner.grace(2 * EPOCHS, 0.0) == EPOCHS
    assert spec().intermediate == "val_accuracy"
    assert StudySpec.model_validate(digits_spec()).intermediate == "test_accuracy"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dataset": {"name": "digits"}}, "needs dataset.val_fraction > 0"),
        ({"pruner": {"name": "median", "min_epochs": EPOCHS + 1}}, "past train.epochs"),
        ({"pruner": {"name": "asha"}}, "pruner.name"),
        ({"pruner": {"name": "median", "min_epochs": 0}}, "pruner.min_epochs"),
    ],
)
def test_a_pruner_without_held_out_data_or_with_a_bad_setting_is_refused(change, message):
    raw = digits_spec(epochs=EPOCHS, dataset={"name": "digits", "val_fraction": 0.2},
                      pruner={"name": "median"}, objective="val_accuracy")  # fmt: skip
    raw.update(change)
    if "val_fraction" not in raw["dataset"]:
        raw["objective"] = "test_accuracy"
    with pytest.raises(ValidationError) as e:
        StudySpec.model_validate(raw)
    text = str(e.value)
    assert message in text or message.replace(".", "\n  ", 1) in text


# docs/spec.md "Pruning": a trial is judged against the same seed's trials of its group (the
# same initialization and data order: a paired comparison), never another seed's
def test_a_trial_is_judged_only_against_its_own_seed(url):
    s = spec()
    optuna_store.create_optuna_study(url, "s", "id", s)
    for i in range(3):  # seed 0 of three good configurations
        run(url, s, point(seed=0), GOOD, i)
    other_seed = run(url, s, point(seed=1), BAD[:6], 10, complete=False)
    assert not optuna_store.should_prune(url, "s", s, other_seed, EPOCHS)  # nothing to pair
    same_seed = run(url, s, point(seed=0), BAD[:6], 11, complete=False)
    assert optuna_store.should_prune(url, "s", s, same_seed, EPOCHS)


# docs/report.md "Pruned trials": a configuration with a pruned seed is never selected, nor the
# best cell: the mean of the seeds the pruner left would be the lucky ones'
def test_a_configuration_with_a_pruned_seed_is_never_selected():
    from samsweep.core.report import TrialRecord, best_cell, build_report
    from samsweep.core.states import TrialState

    s = spec()
    records = []
    for n, p in enumerate(t for t in s.trials() if t.batch_size == 16):
        lucky = p.rho == 0.05 and p.sam_start is None
        state = TrialState.PRUNED if lucky and p.seed == 0 else TrialState.COMPLETE
        value = 0.99 if lucky else 0.5 + 0.1 * p.rho
        metrics = {k: value for k in ("val_accuracy", "test_accuracy", "train_accuracy")}
        records.append(TrialRecord(p, state, None if state == TrialState.PRUNED else metrics,
                                   number=n))  # fmt: skip
    report = build_report(s, records)
    plain = next(g for g in report.groups if g.sam_start is None)
    assert plain.selected_rho is None  # its one SAM cell lost a seed to the pruner
    _, row = best_cell(report, "val_accuracy")
    assert not row.counts.get("PRUNED") and row.metrics["val_accuracy"].mean < 0.99
