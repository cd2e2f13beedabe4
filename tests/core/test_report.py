"""The generalization-gap report on trials that really trained (tiny digits runs, in
process, through the worker's own spec -> trainer mapping), checked against numbers
computed here independently with numpy and scipy's t distribution."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import trainer
from samsweep.core.report import TrialRecord, best_cell, build_report, to_rows
from samsweep.core.spec import StudySpec
from samsweep.core.states import TrialState
from tests.support.specs import digits_spec
from worker.trial_config import trial_config

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def trained():
    """rho {0, 0.05, 0.2} x batch {16, 128} x 3 seeds on digits with a validation split,
    2 epochs each: 18 real trainings (~20 s on one core)."""
    import torch

    torch.set_num_threads(1)
    raw = digits_spec(rho=(0.0, 0.05, 0.2), batch_size=(16, 128), epochs=2, seeds=SEEDS)
    raw["dataset"]["val_fraction"] = 0.2
    raw["objective"] = "val_accuracy"
    spec = StudySpec.model_validate(raw)
    return spec, train_all(spec)


def train_all(spec: StudySpec) -> list[TrialRecord]:
    """Every trial of the grid, trained for real through the worker's mapping."""
    records = []
    for params in spec.trials():
        result = trainer.fit(trial_config(spec, params))
        metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
        records.append(TrialRecord(params, TrialState.COMPLETE, metrics))
    return records


def values(records, rho, batch, metric):
    return {
        r.params.seed: r.metrics[metric]
        for r in records
        if r.params.rho == rho and r.params.batch_size == batch
    }


def test_rows_are_mean_and_sample_std_over_seeds(trained):
    spec, records = trained
    report = build_report(spec, records)
    assert [(g.batch_size, [r.rho for r in g.rows]) for g in report.groups] == [
        (16, [0.0, 0.05, 0.2]),
        (128, [0.0, 0.05, 0.2]),
    ]
    for g in report.groups:
        for row in g.rows:
            for metric in ("train_accuracy", "test_accuracy", "val_accuracy", "gap"):
                v = np.array(list(values(records, row.rho, g.batch_size, metric).values()))
                s = row.metrics[metric]
                assert s.n == len(SEEDS) and row.seeds == list(SEEDS)
                assert s.mean == pytest.approx(v.mean(), abs=1e-12)
                assert s.std == pytest.approx(v.std(ddof=1), abs=1e-12)
            assert row.counts == {"COMPLETE": len(SEEDS)} and row.baseline == (row.rho == 0)


def test_rho_is_selected_on_validation_and_the_gain_is_paired_by_seed(trained):
    spec, records = trained
    report = build_report(spec, records)
    assert report.selection_metric == "val_accuracy" and not report.selected_on_test
    for g in report.groups:
        val = {r: np.mean(list(values(records, r, g.batch_size, "val_accuracy").values()))
               for r in (0.05, 0.2)}  # fmt: skip
        assert g.selected_rho == max(val, key=val.get)
        sam = values(records, g.selected_rho, g.batch_size, "test_accuracy")
        base = values(records, 0.0, g.batch_size, "test_accuracy")
        d = np.array([sam[s] - base[s] for s in SEEDS])
        half = stats.t.ppf(0.975, df=len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        assert g.gain.mean == pytest.approx(d.mean(), abs=1e-12)
        assert (g.gain.ci_low, g.gain.ci_high) == pytest.approx(
            (d.mean() - half, d.mean() + half), abs=1e-12
        )
        assert g.gain.excludes_zero == (not (d.mean() - half <= 0 <= d.mean() + half))
        assert g.gain.n_pairs == 3 and g.gain.seeds == list(SEEDS)


def test_the_large_batch_drop_and_the_fraction_sam_recovers(trained):
    spec, records = trained
    report = build_report(spec, records)
    (lb,) = report.large_batch
    big = next(g for g in report.groups if g.batch_size == 128)

    def mean(rho, batch):
        return np.mean(list(values(records, rho, batch, "test_accuracy").values()))

    drop = mean(0.0, 16) - mean(0.0, 128)
    assert (lb.small_batch_size, lb.batch_size, lb.selected_rho) == (16, 128, big.selected_rho)
    assert lb.baseline_drop == pytest.approx(drop, abs=1e-12)
    if drop > 0:
        expected = (mean(big.selected_rho, 128) - mean(0.0, 128)) / drop
        assert lb.recovered_fraction == pytest.approx(expected, abs=1e-12)
    else:
        assert lb.recovered_fraction is None


def test_unfinished_and_failed_cells_are_counted_never_dropped(trained):
    spec, records = trained
    changed = []
    for r in records:
        if r.params.rho == 0.2 and r.params.batch_size == 16:
            if r.params.seed == 0:
                r = TrialRecord(r.params, TrialState.FAILED, None, "diverged: loss is nan")
            elif r.params.seed == 1:
                r = TrialRecord(r.params, TrialState.RUNNING)
        changed.append(r)
    report = build_report(spec, changed)
    row = next(r for r in report.groups[0].rows if r.rho == 0.2)
    assert row.counts == {"COMPLETE": 1, "FAILED": 1, "RUNNING": 1}
    assert row.errors == ["diverged: loss is nan"] and row.seeds == [2]
    assert row.metrics["test_accuracy"].n == 1 and row.metrics["test_accuracy"].std is None
    assert report.counts == {"COMPLETE": 16, "FAILED": 1, "RUNNING": 1}


def test_selecting_on_test_is_said_plainly():
    spec = StudySpec.model_validate(digits_spec())
    assert build_report(spec, []).selected_on_test


def _record(rho: float, batch: int, seed: int, test: float) -> TrialRecord:
    from samsweep.core.spec import TrialParams

    params = TrialParams(
        rho=rho, batch_size=batch, base_optimizer="sgd",
        sam_variant="sam" if rho else None, seed=seed,
    )  # fmt: skip
    metrics = {"test_accuracy": test, "train_accuracy": test, "gap": 0.0}
    return TrialRecord(params, TrialState.COMPLETE, metrics)


def test_identical_paired_differences_give_no_interval_not_a_zero_width_one():
    """Accuracy moves in steps of 1/N: two seeds can differ by exactly the same amount.
    A zero-width "interval" would claim significance from two samples."""
    spec = StudySpec.model_validate(digits_spec(rho=(0.0, 0.05), batch_size=(16,), seeds=(0, 1)))
    records = [_record(0.0, 16, s, 0.90 + s / 100) for s in (0, 1)]
    records += [_record(0.05, 16, s, 0.92 + s / 100) for s in (0, 1)]
    gain = build_report(spec, records).groups[0].gain
    assert gain.mean == pytest.approx(0.02) and gain.std == 0.0
    assert (gain.ci_low, gain.ci_high, gain.excludes_zero) == (None, None, None)


def test_rows_and_groups_are_in_rho_and_batch_order_whatever_the_spec_order():
    spec = StudySpec.model_validate(
        digits_spec(rho=(0.0, 0.2, 0.05, 0.1), batch_size=(64, 16), seeds=(0,))
    )
    records = [_record(p.rho, p.batch_size, 0, 0.9) for p in spec.trials()]
    report = build_report(spec, records)
    assert [g.batch_size for g in report.groups] == [16, 64]
    assert all([r.rho for r in g.rows] == [0.0, 0.05, 0.1, 0.2] for g in report.groups)


def test_a_negative_zero_rho_is_the_baseline():
    spec = StudySpec.model_validate(digits_spec(rho=(-0.0, 0.05), batch_size=(16,)))
    assert spec.search.rho[0] == 0.0 and str(spec.search.rho[0]) == "0.0"
    records = [_record(p.rho, p.batch_size, p.seed, 0.9) for p in spec.trials()]
    (group,) = build_report(spec, records).groups
    assert [(r.rho, r.baseline) for r in group.rows] == [(0.0, True), (0.05, False)]


# A group and a large-batch row name their SAM setting once (Group.title, .sam, in the
# report's JSON too): the CLI tables, the plots' legends and the study page use them
def test_groups_name_themselves_in_the_report_and_its_json():
    spec = StudySpec.model_validate(digits_spec(rho=(0.0, 0.05), batch_size=(16, 64)))
    report = build_report(spec, [_record(p.rho, p.batch_size, 0, 0.9) for p in spec.trials()])
    assert [g.title for g in report.groups] == ["sgd, batch 16, sam", "sgd, batch 64, sam"]
    data = report.model_dump(mode="json")
    assert data["groups"][0]["title"] == "sgd, batch 16, sam" and data["groups"][0]["sam"] == "sam"
    assert data["large_batch"][0]["sam"] == "sam"
    baselines = StudySpec.model_validate(digits_spec(rho=(0.0,), batch_size=(16,)))
    (alone,) = build_report(baselines, [_record(0.0, 16, 0, 0.9)]).groups
    assert (alone.title, alone.sam) == ("sgd, batch 16", "")  # no SAM in this study


def test_a_baseline_trial_stored_with_a_sam_setting_is_in_the_baseline_cell():
    """rho = 0 is the base optimizer alone whatever its params say of SAM (Cell)."""
    from samsweep.core.report import best_cell, complete_trials
    from samsweep.core.spec import TrialParams

    spec = StudySpec.model_validate(digits_spec(rho=(0.0, 0.05), batch_size=(16,)))
    odd = TrialParams(rho=0.0, batch_size=16, base_optimizer="sgd", sam_variant="sam", seed=0)
    base = TrialRecord(odd, TrialState.COMPLETE, {"test_accuracy": 0.95, "gap": 0.0})
    report = build_report(spec, [base, _record(0.05, 16, 0, 0.9)])
    group, row = best_cell(report, "test_accuracy")
    assert row.baseline and complete_trials(group.cell(row), [base]) == [base]


# docs/report.md "The report": with train.lr (or weight_decay) a grid axis, each value is its own
# group: its baseline, its selected rho and SAM's gain over the baseline at the same lr
def test_a_learning_rate_axis_gives_each_value_its_own_group():
    from dataclasses import replace

    raw = digits_spec(rho=(0.0, 0.05), batch_size=(16, 64), seeds=(0, 1))
    raw["train"]["lr"] = [0.1, 0.01]
    spec = StudySpec.model_validate(raw)
    accuracy = {0.1: 0.90, 0.01: 0.80}  # SAM adds 0.03 at lr 0.1, 0.01 at lr 0.01
    records = [
        replace(
            _record(p.rho, p.batch_size, p.seed, accuracy[p.lr] + p.seed / 100
                    + (0.03 if p.lr == 0.1 else 0.01) * (p.rho > 0)),
            params=p,
        )
        for p in spec.trials()
    ]  # fmt: skip
    report = build_report(spec, records)
    assert [g.title for g in report.groups] == [
        "sgd, batch 16, lr 0.1, sam", "sgd, batch 16, lr 0.01, sam",
        "sgd, batch 64, lr 0.1, sam", "sgd, batch 64, lr 0.01, sam",
    ]  # fmt: skip
    gains = {(g.batch_size, g.lr): round(g.gain.mean, 6) for g in report.groups}
    assert gains == {(16, 0.1): 0.03, (16, 0.01): 0.01, (64, 0.1): 0.03, (64, 0.01): 0.01}
    assert {(lb.lr, lb.train) for lb in report.large_batch} == {(0.1, "lr 0.1"), (0.01, "lr 0.01")}
    assert all(r["lr"] in (0.1, 0.01) for r in to_rows(report))
    group, row = best_cell(report, "test_accuracy")
    assert (group.lr, row.rho) == (0.1, 0.05) and group.cell(row).key.endswith("|lr=0.1")


# docs/report.md "Compute": SAM late is a group of its own against the same baseline; the
# gain comes with SAM's compute over the baseline's (real trainings' passes) and per compute
def test_cheaper_sam_groups_and_the_gain_per_compute_at_equal_compute():
    import torch

    torch.set_num_threads(1)
    raw = digits_spec(rho=(0.0, 0.05), batch_size=(64,), epochs=2, seeds=(0, 1))
    raw["search"]["sam_start"] = [0.0, 0.5]
    raw["train"]["baseline_epochs"] = "double"
    spec = StudySpec.model_validate(raw)
    records = train_all(spec)
    report = build_report(spec, records)
    assert report.comparison == "equal compute"
    assert [g.title for g in report.groups] == ["sgd, batch 64, sam", "sgd, batch 64, sam from 50%"]
    steps = -(-1437 // 64)  # per epoch: 23
    base_passes = {r.metrics["passes"] for r in records if r.params.rho == 0}
    assert base_passes == {4 * steps}  # doubled: 4 epochs at one pass a step
    plain, late = report.groups
    assert plain.gain.compute_ratio == pytest.approx(1.0)  # 2 epochs x 2 passes
    assert late.gain.compute_ratio == pytest.approx((2 * steps + steps) / (4 * steps))
    for g in (plain, late):
        assert g.gain.per_compute == pytest.approx(g.gain.mean / g.gain.compute_ratio)
        assert g.baseline_row() == plain.baseline_row()  # the same baseline for both
    rows = to_rows(report)
    assert [r["sam_start"] for r in rows if not r["baseline"]] == [None, 0.5]
    assert rows[-1]["gain_compute_ratio"] == late.gain.compute_ratio
    equal_epochs = StudySpec.model_validate(digits_spec())
    assert build_report(equal_epochs, []).comparison == "equal epochs"
