"""/studies: create a study, list them, read one, its trials and its best trial."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from samsweep.db import FINISHED_STATES, Study, Trial
from samsweep.spec import StudySpec
from service import studies
from service.api.deps import CeleryDep, ReaderDep, SessionDep, SettingsDep, WriterDep
from service.models import (
    Best,
    BestTrial,
    Links,
    Progress,
    StudyCreated,
    StudyDetail,
    StudyPage,
    StudySummary,
    Timings,
    TrialList,
    TrialPublic,
)

router = APIRouter(prefix="/studies", tags=["studies"])


def _links(study_id: str) -> Links:
    base = f"/studies/{study_id}"
    return Links(self=base, trials=f"{base}/trials", best=f"{base}/best")


def _summary(study: Study, counts: dict[str, int]) -> StudySummary:
    return StudySummary(
        id=study.id,
        name=study.name,
        status=studies.study_status(study, counts),
        n_trials=study.n_trials,
        created_at=study.created_at,
        links=_links(study.id),
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyCreated)
def create_study(
    spec: StudySpec,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    owner: WriterDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> StudyCreated:
    """Create a study: one trial per grid cell and seed, queued for the workers."""
    study, created = studies.create_study(
        session, settings, celery, spec, owner=owner, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/studies/{study.id}"
    return StudyCreated(
        id=study.id, name=study.name, n_trials=study.n_trials, links=_links(study.id)
    )


@router.get("", response_model=StudyPage)
def list_studies(
    session: SessionDep,
    owner: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> StudyPage:
    """The studies, newest first."""
    rows, total = studies.list_studies(session, limit, offset, owner)
    counts = studies.state_counts_many(session, [s.id for s in rows])
    return StudyPage(
        items=[_summary(s, counts[s.id]) for s in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{study_id}", response_model=StudyDetail)
def get_study(study_id: str, session: SessionDep, owner: ReaderDep) -> StudyDetail:
    """Status, counts per trial state, progress, timings and the spec."""
    return _detail(session, studies.get_study(session, study_id, owner))


@router.post("/{study_id}/cancel", response_model=StudyDetail)
def cancel_study(study_id: str, session: SessionDep, owner: WriterDep) -> StudyDetail:
    """Cancel: queued trials now, running ones at their next epoch; results stay."""
    study = studies.get_study(session, study_id, owner)
    studies.cancel_study(session, study)
    return _detail(session, study)


def _detail(session, study: Study) -> StudyDetail:
    counts = studies.state_counts(session, study.id)
    finished = sum(counts[s] for s in FINISHED_STATES)
    t = studies.timings(session, study)
    end = t["last_finished_at"] if finished == study.n_trials else None
    return StudyDetail(
        **_summary(study, counts).model_dump(),
        counts=counts,
        progress=Progress(
            total=study.n_trials, finished=finished, fraction=finished / study.n_trials
        ),
        timings=Timings(**t, elapsed_seconds=studies.elapsed_seconds(t["started_at"], end)),
        spec=study.spec,
    )


def _trial_public(t: Trial) -> TrialPublic:
    return TrialPublic.model_validate(t, from_attributes=True)


@router.get("/{study_id}/trials", response_model=TrialList)
def list_trials(study_id: str, session: SessionDep, owner: ReaderDep) -> TrialList:
    """Every trial: params, state, metrics and per-epoch curves."""
    study = studies.get_study(session, study_id, owner)
    return TrialList(study_id=study.id, trials=[_trial_public(t) for t in study.trials])


@router.get("/{study_id}/best", response_model=Best)
def best(study_id: str, session: SessionDep, owner: ReaderDep) -> Best:
    """The best complete trial by the study's objective, and how complete the study is."""
    study = studies.get_study(session, study_id, owner)
    counts = studies.state_counts(session, study.id)
    status_ = studies.study_status(study, counts)
    top = studies.best_trial(session, study.id)
    return Best(
        study_id=study.id,
        objective=study.spec["objective"],
        status=status_,
        counts=counts,
        complete=status_ == "complete",
        best=None
        if top is None
        else BestTrial(
            number=top.number,
            params=top.params,
            value=top.value,
            metrics=top.metrics or {},
            optuna_trial_number=top.optuna_trial_number,
        ),
    )
