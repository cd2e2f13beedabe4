"""Each trial's learning curves as an optuna-dashboard figure (worker/dashboard.py):
train, validation and test accuracy per epoch, bounded in size however long the trial."""

from __future__ import annotations

import json

from samsweep.core.spec import TrialParams
from worker.dashboard import MAX_POINTS, learning_curves, sampled

PARAMS = TrialParams(rho=0.05, batch_size=16, base_optimizer="sgd", seed=3)


def curves(n: int, val: bool = True) -> list[dict]:
    return [
        {"epoch": e, "train_accuracy": e / n, "test_accuracy": e / (2 * n),
         "val_accuracy": e / (3 * n) if val else None, "train_loss": 1.0}
        for e in range(1, n + 1)
    ]  # fmt: skip


def test_three_lines_per_epoch_named_train_validation_test():
    fig = json.loads(learning_curves(7, PARAMS, "val_accuracy", curves(3)).to_json())
    lines = {t["name"]: t for t in fig["data"]}
    assert list(lines) == ["train", "validation", "test"]
    assert lines["train"]["x"] == [1, 2, 3] and lines["train"]["y"] == [1 / 3, 2 / 3, 1.0]
    assert lines["validation"]["y"] == [1 / 9, 2 / 9, 3 / 9]
    assert lines["test"]["y"] == [1 / 6, 2 / 6, 3 / 6]
    title = fig["layout"]["title"]["text"]
    assert title.startswith("Trial 7: ρ=0.05, batch 16, sgd, sam") and "seed 3" in title
    assert fig["layout"]["xaxis"]["title"]["text"] == "epoch"


def test_no_validation_line_without_a_split():
    fig = learning_curves(0, PARAMS, "test_accuracy", curves(2, val=False))
    assert [t.name for t in fig.data] == ["train", "test"]


def test_a_long_trial_is_sampled_to_a_bounded_figure():
    long = curves(10_000)
    kept = sampled(long)
    assert len(kept) == MAX_POINTS and kept[0] is long[0] and kept[-1] is long[-1]
    assert [e["epoch"] for e in kept] == sorted({e["epoch"] for e in kept})  # no repeats
    fig = learning_curves(0, PARAMS, "val_accuracy", long)
    assert f"({MAX_POINTS} of 10000 epochs)" in fig.layout.title.text
    assert len(fig.to_json()) < 80_000  # written once, when the trial ends
    assert sampled(curves(5)) == curves(5)


# docs/report.md "optuna-dashboard, side by side": figures for the study's first MAX_FIGURES Optuna
# trials only (every save reads all of the study's figures back)
def test_only_the_first_trials_get_a_figure(monkeypatch):
    import worker.dashboard as dashboard

    saved: list[str] = []

    class Storage:
        def get_trial_number_from_id(self, trial_id: int) -> int:
            return trial_id  # the test's ids are the trial numbers

    monkeypatch.setattr(dashboard.optuna_store, "get_storage", lambda url: Storage())
    monkeypatch.setattr(dashboard.optuna, "load_study", lambda **kw: object())
    monkeypatch.setattr(
        dashboard,
        "save_plotly_graph_object",
        lambda study, fig, graph_object_id: saved.append(graph_object_id),
    )
    for number in (0, dashboard.MAX_FIGURES - 1, dashboard.MAX_FIGURES, 10 * dashboard.MAX_FIGURES):
        dashboard.save_learning_curves("url", "study", number, PARAMS, "val_accuracy", curves(2))
    assert saved == ["trial-0", f"trial-{dashboard.MAX_FIGURES - 1}"]
