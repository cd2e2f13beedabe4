"""Optuna's RDB storage, kept apart from the service's tables (docs/DESIGN.md §4, §7).

Grid cells are recorded by creating each Optuna trial directly with its params
(`create_new_trial` with a RUNNING template): `enqueue_trial` + `ask()` can hand
one cell to two processes on SQLite and cannot choose a cell (docs/DESIGN.md §7).
Everything Optuna sees (params, per-epoch values, final value, metrics as user
attributes) is therefore what optuna-dashboard shows.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any, cast

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState
from sqlalchemy import text

from samsweep.core.db import engine_for
from samsweep.core.settings import OPTUNA_SCHEMA, Settings
from samsweep.core.spec import (
    LR_MAX,
    MAX_BATCH,
    RHO_MAX,
    SAM_EVERY_MAX,
    SCHEDULE_AXES,
    SCHEDULE_DEFAULTS,
    TRAIN_AXES,
    WEIGHT_DECAY_MAX,
    Range,
    SamplerSpec,
    StudySpec,
    TrialParams,
    axis_choices,
    sam_every_value,
    sam_start_value,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True}


@lru_cache
def get_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage for a URL, created once per process. Tables must already exist."""
    return optuna.storages.RDBStorage(
        url, engine_kwargs=_engine_kwargs(url), skip_table_creation=True
    )


def prepare_storage(settings: Settings) -> None:
    """Create Optuna's schema (PostgreSQL) and tables; `samsweep migrate` calls this."""
    url = settings.resolved_optuna_url
    db_url = settings.resolved_database_url
    if url.startswith("postgresql") and settings.optuna_url is None:
        with engine_for(db_url).begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{OPTUNA_SCHEMA}"'))
    storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    storage.engine.dispose()
    if (
        url.startswith("postgresql")
        and settings.optuna_url is None
        and settings.dashboard_db_password
    ):
        password = settings.dashboard_db_password.get_secret_value()
        grant_read_only(db_url, settings.dashboard_db_role, password)


def grant_read_only(db_url: str, role: str, password: str) -> None:
    """A login role that can read Optuna's schema and change nothing, for optuna-dashboard:
    it has no authentication and can DELETE a study, which must not reach the storage
    (its DELETE then fails; tests/core/test_migrations.py). Idempotent: every migrate
    re-applies the password and the grants, including to tables added since. An
    existing role is reused only if it is a plain login role (no superuser, createdb,
    createrole, replication or bypassrls, member of nothing) and not the role migrate
    itself runs as; anything else is refused rather than silently reset."""
    import psycopg
    from psycopg import sql

    with engine_for(db_url).begin() as conn:
        raw = conn.connection.dbapi_connection
        if not isinstance(raw, psycopg.Connection):  # prepare_storage checks postgresql first
            raise RuntimeError(f"the read-only role needs PostgreSQL through psycopg, not {raw!r}")
        with raw.cursor() as cur:
            cur.execute(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls"
                " OR EXISTS (SELECT 1 FROM pg_auth_members WHERE member = r.oid),"
                " rolname = current_user FROM pg_roles r WHERE rolname = %s",
                (role,),
            )
            found = cur.fetchone()
            if found is not None and any(found):
                raise RuntimeError(
                    f"SAMSWEEP_DASHBOARD_DB_ROLE={role!r} names an existing role that is not a "
                    "plain login role (or is the one migrate runs as): choose another name"
                )
            verb = "CREATE" if found is None else "ALTER"
            for statement in (
                f"{verb} ROLE {{role}} LOGIN PASSWORD {{pw}}",
                "REVOKE ALL ON DATABASE {db} FROM {role}",
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE ON SCHEMA {schema} TO {role}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            ):
                cur.execute(
                    sql.SQL(statement).format(
                        role=sql.Identifier(role),
                        pw=sql.Literal(password),
                        db=sql.Identifier(raw.info.dbname),
                        schema=sql.Identifier(OPTUNA_SCHEMA),
                    )
                )


# The grid axes are Optuna params. The seed is not a hyperparameter (optuna-dashboard's
# importance would rank it beside batch size): it is a user attribute.
AXES = ("rho", "batch_size", "base_optimizer", "sam_variant", "m")
# How a study's axes are recorded, kept on the Optuna study (user attribute): 2 = the
# ranges any spec allows, so a study that grows (PATCH) keeps one distribution per param
# (Optuna refuses a categorical whose choices change: "does not support dynamic value
# space"); absent = 1, studies created before: each axis a categorical of its values.
PARAM_SPACE = "samsweep_param_space"
GROWABLE = 2
SEARCHED = 3  # a sampler's study: the spec's own space (`search_space`)


def study_name(name: str, samsweep_id: str) -> str:
    """The Optuna study's name: the spec's name (readable in optuna-dashboard), made
    unique by samsweep's id."""
    return f"{name[:60]}-{samsweep_id}"


def recorded_params(
    spec: StudySpec, params: TrialParams, space: int = GROWABLE
) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """A trial's params as Optuna records them, with their distributions.

    Param space 2: rho a float in [0, RHO_MAX], batch size and m integers (log scale),
    the optimizer and SAM's variant categoricals of every value a spec allows, and the
    learning rate and weight decay floats where they are axes of the grid. SAM's
    variant and m are conditional params, as Optuna records a search space that
    branches: a rho = 0 trial (the base optimizer) has neither, a whole-batch trial no m.
    Param space 1 (older studies): every axis a categorical of the values the study's
    trials take."""
    if space == SEARCHED:
        drawn = search_space(spec)
        values = {name: getattr(params, name) for name in drawn}
        if params.rho == 0:
            for name in ("rho", "sam_variant", "m", *SCHEDULE_AXES):
                values.pop(name, None)
        for name, plain in SCHEDULE_DEFAULTS.items():  # drawn as given: 0.0 and 1 included
            if name in values and values[name] is None:
                values[name] = plain
        for name in TRAIN_AXES:
            if values.get(name, 0.0) is None:
                del values[name]
        return values, {name: drawn[name] for name in values}
    if space < GROWABLE:
        trials = spec.trials()
        dists: dict[str, BaseDistribution] = {
            axis: CategoricalDistribution(tuple(dict.fromkeys(getattr(t, axis) for t in trials)))
            for axis in AXES
        }
        return {axis: getattr(params, axis) for axis in AXES}, dists
    dists = {
        "rho": FloatDistribution(0.0, RHO_MAX),
        "batch_size": IntDistribution(1, MAX_BATCH, log=True),
        "base_optimizer": CategoricalDistribution(axis_choices("base_optimizer")),
        "sam_variant": CategoricalDistribution(axis_choices("sam_variant")),
        "m": IntDistribution(1, MAX_BATCH, log=True),
        "lr": FloatDistribution(0.0, LR_MAX),
        "weight_decay": FloatDistribution(0.0, WEIGHT_DECAY_MAX),
        "sam_start": FloatDistribution(0.0, 1.0),
        "sam_every": IntDistribution(1, SAM_EVERY_MAX, log=True),
    }
    values = {axis: getattr(params, axis) for axis in (*AXES, *TRAIN_AXES, *SCHEDULE_AXES)}
    if params.rho == 0:
        del values["sam_variant"], values["m"]
    elif params.m is None:
        del values["m"]
    for name in (*TRAIN_AXES, *SCHEDULE_AXES):  # an axis of this study's grid; SAM late
        if values[name] is None:  # or every k only where it is not plain SAM
            del values[name]
    return values, {axis: dists[axis] for axis in values}


def search_space(spec: StudySpec) -> dict[str, BaseDistribution]:
    """A sampler's study's params and their distributions, as it draws them: a list is a
    categorical of its values, a range a float ({low, high, log}). ρ, SAM's variant and m
    are a SAM configuration's only (the baseline's own share has ρ = 0: docs/spec.md
    "Search"); lr and weight decay are params where the spec gives a list or a range."""
    s, t = spec.search, spec.train

    def dist(value: Any) -> BaseDistribution:
        if isinstance(value, Range):
            return FloatDistribution(value.low, value.high, log=value.log)
        return CategoricalDistribution(tuple(value))

    out = {
        "base_optimizer": dist(s.base_optimizer),
        "batch_size": dist(s.batch_size),
        "rho": dist(s.rho if isinstance(s.rho, Range) else [r for r in s.rho if r > 0] or [0.0]),
        "sam_variant": dist(s.sam_variant),
        "m": dist(s.m),
    }
    for name in TRAIN_AXES:
        value = getattr(t, name)
        if isinstance(value, list | Range):
            out[name] = dist(value)
    for name, plain in SCHEDULE_DEFAULTS.items():  # SAM late or every k, where searched
        if getattr(s, name) != [plain]:
            out[name] = dist(getattr(s, name))
    return out


def make_sampler(sampler: SamplerSpec, index: int, attempt: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler that draws configuration `index`: seeded from the spec's seed and the
    index (a sampler is made per draw, and one seeded alike each time would repeat
    itself), so the draws are reproducible given the same order of results. TPE's
    constant liar counts the configurations still running as bad ones, so workers in
    parallel are not all sent near the same point. GP (Gaussian-process Bayesian
    optimization) draws its first 10 configurations at random, as Optuna's GPSampler
    does; it loads torch, so only worker/drawer.py makes one."""
    seed = None
    if sampler.seed is not None:  # a redraw (`attempt`: the last was a duplicate) varies it
        seed = (sampler.seed * 1_000_003 + index + attempt * 7_919_017) % 2**32
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.name == "tpe":
        with warnings.catch_warnings():  # constant_liar is stable, still flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if sampler.name == "gp":  # needs torch: only the workers' drawer makes it (never the API)
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"no sampler {sampler.name!r} draws configurations")


def suggest(
    url: str, study_name: str, spec: StudySpec, index: int, baseline: bool, attempt: int = 0
) -> tuple[dict[str, Any], int, int]:
    """Ask the study's sampler for configuration `index` (a baseline one: ρ = 0, else
    SAM's), seeing every result recorded so far. Returns its params (TrialParams without
    the seed), and its Optuna trial's id and number: RUNNING, the trial of the
    configuration's first seed."""
    storage = get_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=make_sampler(spec.sampler, index, attempt))  # fmt: skip
    trial = study.ask()
    space = search_space(spec)

    def draw(name: str) -> Any:
        d = space[name]
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, d.choices)
        assert isinstance(d, FloatDistribution)
        return trial.suggest_float(name, d.low, d.high, log=d.log)

    params: dict[str, Any] = {"base_optimizer": draw("base_optimizer"),
                              "batch_size": draw("batch_size")}  # fmt: skip
    if baseline:
        params.update(rho=0.0, sam_variant=None, m=None)
    else:
        params.update(rho=draw("rho"), sam_variant=draw("sam_variant"), m=draw("m"))
        if "sam_start" in space:
            params["sam_start"] = sam_start_value(draw("sam_start"))
        if "sam_every" in space:
            params["sam_every"] = sam_every_value(draw("sam_every"))
    for name in TRAIN_AXES:
        params[name] = draw(name) if name in space else None
    return params, trial._trial_id, trial.number


def tag(url: str, trial_id: int, samsweep_trial_id: int, seed: int) -> None:
    """Tag an asked Optuna trial with the samsweep trial it is the record of."""
    storage = get_storage(url)
    storage.set_trial_user_attr(trial_id, "samsweep_trial_id", samsweep_trial_id)
    storage.set_trial_user_attr(trial_id, "seed", seed)


def param_space(url: str, study_name: str) -> int:
    """How the Optuna study records its axes (`PARAM_SPACE`)."""
    storage = get_storage(url)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    return int(attrs.get(PARAM_SPACE, 1))


def create_optuna_study(url: str, name: str, samsweep_id: str, spec: StudySpec) -> None:
    study = optuna.create_study(storage=get_storage(url), study_name=name, direction="maximize")
    with warnings.catch_warnings():  # stable since Optuna 3.2, still flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.objective])
    study.set_user_attr("samsweep_study_id", samsweep_id)
    study.set_user_attr("objective", spec.objective)
    study.set_user_attr("spec_name", spec.name)
    study.set_user_attr(PARAM_SPACE, SEARCHED if spec.sampler.searches else GROWABLE)


def delete_study(url: str, name: str) -> None:
    optuna.delete_study(study_name=name, storage=get_storage(url))


# User attributes samsweep puts on an Optuna trial besides the trial's metrics.
BOOKKEEPING = frozenset({"samsweep_trial_id", "fail_reason", "seed"})


def start_trial(
    url: str, study_name: str, spec: StudySpec, params: TrialParams, samsweep_trial_id: int
) -> tuple[int, int]:
    """Create this trial's Optuna trial, RUNNING, with its params; returns (id, number).

    It is tagged with our trial id, so a later attempt can find it even if the worker
    died before recording the Optuna id on our row.
    """
    storage = get_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    space = int(storage.get_study_user_attrs(study_id).get(PARAM_SPACE, 1))
    values, dists = recorded_params(spec, params, space)
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING,
        params=values,
        distributions=dists,
        user_attrs={"samsweep_trial_id": samsweep_trial_id, "seed": params.seed},
    )
    trial_id = storage.create_new_trial(study_id, template)
    return trial_id, storage.get_trial_number_from_id(trial_id)


def settle_earlier_attempts(
    url: str, study_name: str, samsweep_trial_id: int
) -> optuna.trial.FrozenTrial | None:
    """Before an attempt: FAIL the Optuna trials that earlier attempts of this trial left
    RUNNING (their worker died), and return one that reached COMPLETE, if any (the
    worker died after telling Optuna but before recording it on our row)."""
    storage = get_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    complete = None
    states = (TrialState.RUNNING, TrialState.COMPLETE)
    for t in storage.get_all_trials(study_id, deepcopy=False, states=states):
        if t.user_attrs.get("samsweep_trial_id") != samsweep_trial_id:
            continue
        if t.state == TrialState.RUNNING:
            _fail(storage, t._trial_id, "worker lost; re-run")
        elif t.state == TrialState.COMPLETE:
            complete = t
    return complete


def running_trials(url: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's RUNNING trials; none if the study is gone."""
    storage = get_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))


def report(url: str, trial_id: int, step: int, value: float | None) -> None:
    """Intermediate value: optuna-dashboard's live curve of the objective."""
    if value is not None and math.isfinite(value):
        get_storage(url).set_trial_intermediate_value(trial_id, step, value)


def complete_trial(url: str, trial_id: int, value: float, attrs: dict[str, Any]) -> None:
    storage = get_storage(url)
    for key, v in attrs.items():
        storage.set_trial_user_attr(trial_id, key, v)
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])


def fail_trial(url: str, trial_id: int, reason: str) -> None:
    """FAIL a RUNNING trial; a trial that no longer exists (its study was deleted
    through optuna-dashboard, say) is left alone: there is nothing to record it in."""
    storage = get_storage(url)
    try:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            _fail(storage, trial_id, reason)
    except KeyError:
        pass


def _fail(storage: optuna.storages.RDBStorage, trial_id: int, reason: str) -> None:
    storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


# Pruning (docs/spec.md "Pruning"). Optuna keeps no pruner in its storage: every worker
# that decides builds the same one from the spec (`make_pruner`), and sees only the
# trials of the deciding trial's group (`_GroupStorage`).
def make_pruner(spec: StudySpec, epochs: int) -> optuna.pruners.BasePruner:
    """The spec's pruner for a trial of `epochs` epochs: nothing is pruned before the
    grace epoch; Hyperband's resource is the epoch, its maximum set explicitly (its
    "auto" would guess it from the trials finished so far, which differ per process)."""
    p = spec.pruner
    grace = p.grace(epochs, spec.train.warmup_epochs)
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials,
                                           n_warmup_steps=grace)  # fmt: skip
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=grace, max_resource=max(epochs, grace + 1), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def group_of(params: dict[str, Any]) -> tuple[Any, ...]:
    """A trial's pruning group, from its Optuna params: its batch size, base optimizer
    and SAM setting (the baseline, or SAM's variant and m), so a large-ρ or large-batch
    run is only compared with runs like it."""
    sam = bool(params.get("rho"))
    setting = (
        params.get("sam_variant"),
        params.get("m"),
        *(params.get(name) or plain for name, plain in SCHEDULE_DEFAULTS.items()),
    )
    return (params.get("batch_size"), params.get("base_optimizer"),
            setting if sam else "baseline")  # fmt: skip


def pruning_group(trial: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
    """The trials a trial is judged against: its group (`group_of`) and its seed. The same
    seed is the same initialization and data order, so the comparison is paired (as the
    report's gain is): a configuration is never cut for one unlucky seed against another
    configuration's lucky one."""
    return (*group_of(trial.params), trial.user_attrs.get("seed"))


class _GroupStorage:
    """A view of a storage whose studies hold only the trials of one pruning group: what
    the pruner reads through `study.get_trials` (Hyperband's bracket studies included)."""

    def __init__(self, storage: optuna.storages.BaseStorage, group: tuple[Any, ...]) -> None:
        self._storage, self._group = storage, group

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> Any:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if pruning_group(t) == self._group]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


def should_prune(url: str, study_name: str, spec: StudySpec, trial_id: int, epochs: int) -> bool:
    """Whether the spec's pruner stops Optuna trial `trial_id` at its last reported epoch,
    judged against the finished trials of its group and seed (`pruning_group`)."""
    if not spec.pruner.prunes:
        return False
    storage = get_storage(url)
    trial = storage.get_trial(trial_id)
    if trial.last_step is None:
        return False
    view = cast(optuna.storages.BaseStorage, _GroupStorage(storage, pruning_group(trial)))
    study = optuna.load_study(study_name=study_name, storage=view)
    return bool(make_pruner(spec, epochs).prune(study, trial))


def prune_trial(url: str, trial_id: int) -> None:
    """PRUNE a RUNNING trial, its value its last reported one (as Optuna's own `tell`)."""
    storage = get_storage(url)
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return
    values = None
    if trial.last_step is not None:
        values = [trial.intermediate_values[trial.last_step]]
    storage.set_trial_state_values(trial_id, TrialState.PRUNED, values)
