"""Study specs the tests submit."""

from __future__ import annotations


def digits_spec(rho=(0.0, 0.05), batch_size=(16, 64), epochs=2, seeds=(0,), **extra) -> dict:
    spec = {
        "name": "digits-test",
        "dataset": {"name": "digits"},
        "model": {"name": "cnn"},
        "search": {"rho": list(rho), "batch_size": list(batch_size), "base_optimizer": ["sgd"]},
        "train": {"epochs": epochs, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "seeds": list(seeds),
        "objective": "test_accuracy",
        "sharpness": {"samples": 0},  # ~2 s per trial on a CPU; tests that check it turn it on
    }
    spec.update(extra)
    return spec


# ρ 0 and 0.05 at two batch sizes, two seeds (paired gains have an interval), a validation
# split (ρ is selected on it): 8 tiny trainings, a few seconds each on a CPU.
FINISHED_SPEC = digits_spec(
    batch_size=(32, 128),
    seeds=(0, 1),
    dataset={"name": "digits", "val_fraction": 0.2},
    objective="val_accuracy",
)
