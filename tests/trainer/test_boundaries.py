"""The trainer's layering contract (docs/DESIGN.md §6): torch and numpy only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
FORBIDDEN = (
    "optuna",
    "celery",
    "fastapi",
    "sqlalchemy",
    "pydantic",
    "samsweep",
    "service",
    "worker",
)

PROBE = """
import sys
import torch
import trainer
torch.set_num_threads(1)  # see conftest.one_torch_thread
assert "sklearn" not in sys.modules, "sklearn imported eagerly"
config = trainer.TrialConfig(
    dataset=trainer.DatasetConfig(name="synthetic"),
    train=trainer.TrainConfig(epochs=1),
    sharpness=trainer.SharpnessConfig(samples=64),
)
trainer.fit(config)
print(sorted({name.split(".")[0] for name in sys.modules}))
"""


def test_import_and_fit_load_no_service_side_packages() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=TRAINER.parent,
    ).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)


def test_trainer_reads_no_environment() -> None:
    for file in TRAINER.glob("*.py"):
        source = file.read_text()
        assert not re.search(r"os\.environ|getenv", source), file.name
        for name in FORBIDDEN:
            assert not re.search(rf"^\s*(from|import)\s+{name}\b", source, re.M), (file.name, name)
