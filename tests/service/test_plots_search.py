"""The plots of a sampler's study (docs/report.md "Plots"): ρ as a scatter at each trial's
own continuous ρ, the optimization history, and Optuna's param importances, drawn from
the report and the trials as the API draws them (service/plots.py)."""

from __future__ import annotations

import random

import pytest

from samsweep.core.report import TrialRecord, build_report
from samsweep.core.spec import StudySpec, TrialParams
from samsweep.core.states import TrialState
from service import plots
from tests.support.specs import digits_spec


def searched_study(n: int = 12) -> tuple[StudySpec, list[TrialRecord]]:
    """A TPE study's trials as they end: continuous ρ and lr, test accuracy driven by the
    learning rate (best near 0.05) and barely by ρ, two seeds, one trial pruned."""
    raw = digits_spec(rho=(0.0,), batch_size=(32,), seeds=(0, 1),
                      dataset={"name": "digits", "val_fraction": 0.2})  # fmt: skip
    raw["search"]["rho"] = {"low": 0.01, "high": 0.5, "log": True}
    raw["train"]["lr"] = {"low": 0.001, "high": 0.3, "log": True}
    raw["sampler"] = {"name": "tpe", "n_trials": n, "seed": 0}
    raw["objective"] = "val_accuracy"
    spec = StudySpec.model_validate(raw)
    rng = random.Random(0)
    records, number = [], 0
    for config in range(n):
        baseline = config % 2 == 1
        rho = 0.0 if baseline else 10 ** rng.uniform(-2, -0.3)
        lr = 10 ** rng.uniform(-3, -0.5)
        for seed in (0, 1):
            p = TrialParams(rho=rho, batch_size=32, base_optimizer="sgd",
                            sam_variant=None if baseline else "sam", lr=lr, seed=seed)  # fmt: skip
            acc = 0.95 - 0.3 * abs(lr - 0.05) - 0.002 * rho + 0.003 * seed
            metrics = {
                "test_accuracy": acc,
                "val_accuracy": acc,
                "train_accuracy": acc + 0.02,
                "gap": 0.02,
                "passes": 100 if baseline else 200,
                "wall_seconds": 1.0,
            }
            state = TrialState.PRUNED if number == 5 else TrialState.COMPLETE
            records.append(TrialRecord(p, state, None if state == TrialState.PRUNED else metrics,
                                       number=number))  # fmt: skip
            number += 1
    return spec, records


def svg(kind: str, spec: StudySpec, records: list[TrialRecord]) -> str:
    report = build_report(spec, records)
    return plots.render(kind, "svg", report, records, report.objective).decode()


def test_rho_in_a_sampler_study_is_a_scatter_at_each_trials_own_rho():
    spec, records = searched_study()
    out = svg("rho", spec, records)
    assert "one point per complete SAM trial" in out and "tuned baseline" in out


def test_the_history_orders_trials_as_drawn_and_counts_the_pruned():
    spec, records = searched_study()
    out = svg("history", spec, records)
    assert "Optimization history (23 complete trials; 1 pruned)" in out
    assert "best so far" in out


# docs/report.md "Plots": Optuna's own importances over the SAM trials: what drives the
# objective (the learning rate here) ranks first
def test_importances_rank_what_drives_the_objective_first():
    spec, records = searched_study(n=20)
    found = plots.importances(records, "val_accuracy")
    assert list(found)[0] == "lr" and set(found) == {"lr", "rho"}, found
    assert found["lr"] > found["rho"]
    assert "Param importances" in svg("importance", spec, records)


def test_too_few_trials_for_importances_is_said_in_the_figure():
    spec, records = searched_study(n=2)
    assert plots.importances(records, "val_accuracy") == {}
    assert "param importances need 4 complete SAM trials" in svg("importance", spec, records)


@pytest.mark.parametrize("kind", plots.KINDS)
def test_every_kind_draws_a_sampler_study(kind):
    spec, records = searched_study()
    assert svg(kind, spec, records).startswith("<?xml")


# docs/cli.md: the CLI's report table of a sampler's study gives each configuration's lr and
# marks the tuned baseline and the selected SAM configuration
def test_the_cli_report_table_shows_each_configurations_lr():
    import io

    from rich.console import Console

    from samsweep.cli.tables import group_table

    spec, records = searched_study()
    report = build_report(spec, records)
    (group,) = report.groups
    out = io.StringIO()
    Console(file=out, width=200).print(group_table(report, group))
    text = out.getvalue()
    assert " lr " in text and "baseline selected" in text
    sam = group.sam_row()
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{sam.rho:.3g}"))
    assert f"{sam.lr:.3g}" in line and "selected" in line, line
