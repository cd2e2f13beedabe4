"""A sampler's configurations, drawn one at a time (docs/spec.md "Search"): the budget
each sampler study has left (`budgets`) and the draw itself (`draw`), which the API's
dispatcher (random, tpe) and the workers' drawer (gp: it needs torch) share."""

from __future__ import annotations

import logging

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from samsweep.core import optuna_store
from samsweep.core.db import Study, Trial
from samsweep.core.spec import Range, StudySpec, TrialParams

log = logging.getLogger(__name__)

# Samplers whose draws need torch: never in the API (worker/drawer.py draws them).
DRAWN_BY_WORKERS = ("gp",)


def budgets(session: Session, which: ColumnElement[bool]) -> list[tuple[str, int]]:
    """(study, trials still to draw) of the sampler studies matching `which` that have
    some left: the one definition the dispatcher, the quotas and the sweep use."""
    drawn = func.count(Trial.id)
    rows = session.execute(
        select(Study.id, Study.n_trials - drawn)
        .outerjoin(Trial, Trial.study_id == Study.id)
        .where(which, Study.sampler.is_not(None), Study.cancelled_at.is_(None))
        .group_by(Study.id, Study.n_trials)
        .having(drawn < Study.n_trials)
    ).all()
    return [(sid, room) for sid, room in rows]


DRAWS = 20  # draws of one configuration before a sampler's space counts as exhausted


def draw(session: Session, url: str, study: Study, n: int) -> list[int]:
    """New trials of a sampler's study, at least `n` where its budget allows: each
    configuration drawn (optuna_store.suggest) becomes one trial per seed, numbered after
    the last, the first seed's holding the configuration's Optuna trial. A configuration
    it has already run is drawn again (its Optuna trial FAILed), by a sampler seeded anew;
    after DRAWS in a row the space counts as exhausted and the study's budget shrinks to
    what it has. The caller holds the study's row (a write lock on SQLite), so two
    drawers never draw for one study at once."""
    if study.sampler is None:
        return []
    study_id, spec = study.id, StudySpec.model_validate(study.spec)
    seeds = spec.seeds
    have = session.scalar(select(func.count()).where(Trial.study_id == study_id)) or 0
    baselines = session.scalar(
        select(func.count()).where(Trial.study_id == study_id, Trial.cell_key.like("rho=0.0|%"))
    ) or 0  # fmt: skip
    has_sam = isinstance(spec.search.rho, Range) or any(r > 0 for r in spec.search.rho)
    made: list[int] = []
    while len(made) < n and have + len(seeds) <= study.n_trials:
        index = have // len(seeds)
        base_configs, sam_configs = baselines // len(seeds), index - baselines // len(seeds)
        baseline = not has_sam or base_configs < sam_configs  # SAM first, then in turns
        for attempt in range(DRAWS):
            params, optuna_id, optuna_number = optuna_store.suggest(
                url, study.optuna_study_name, spec, index, baseline, attempt
            )
            trials = [TrialParams(**params, seed=seed) for seed in seeds]
            taken = session.scalar(
                select(func.count()).where(
                    Trial.study_id == study_id, Trial.cell_key == trials[0].cell_key
                )
            )
            if not taken:
                break
            optuna_store.fail_trial(url, optuna_id, "a configuration this study already ran")
        else:
            log.warning("study %s: %d draws in a row were configurations it already ran: "
                        "its space is exhausted at %d trials", study_id, DRAWS, have)  # fmt: skip
            study.n_trials = have
            break
        rows = [Trial(study_id=study_id, number=have + i, cell_key=t.cell_key, seed=t.seed,
                      params=t.stored()) for i, t in enumerate(trials)]  # fmt: skip
        rows[0].optuna_trial_id, rows[0].optuna_trial_number = optuna_id, optuna_number
        session.add_all(rows)
        session.flush()
        optuna_store.tag(url, optuna_id, rows[0].id, seeds[0])
        made += [r.id for r in rows]
        have += len(seeds)
        baselines += len(seeds) if baseline else 0
    return made
