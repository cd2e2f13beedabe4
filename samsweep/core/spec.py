"""The study spec (docs/DESIGN.md §2): one pydantic model shared by the API and the workers.

This module imports pydantic and the standard library only. Checks that need the
deployment (data root, training-set size, grid maximum) live in `samsweep.core.admission`.
Unknown fields are refused rather than ignored, and types are strict (a boolean or a
string is never a number, a float never an integer; JSON's 1 is a valid float), so a
typo never silently changes a study. Every list and string is bounded, and the grid's
size is computed from the list lengths (`n_trials`) without building it, so a hostile
spec is refused in microseconds (tests/core/test_spec.py, tests/e2e/service/test_hostile.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapSerializer,
    WrapValidator,
    create_model,
    field_validator,
    model_validator,
)

# The longest grid axis and seed list. The grid is their product, refused above the
# deployment's SAMSWEEP_MAX_GRID_TRIALS (samsweep.core.admission) before anything is built.
MAX_AXIS = 100
MAX_BATCH = 1_000_000
SAM_EVERY_MAX = 1000


def _printable(text: str) -> str:
    """Printable text only (str.isprintable: no NUL, control, format or separator
    characters but the space, so no newline, no U+2028, no bidi override). PostgreSQL
    text cannot hold NUL, and such a name or path is never intended."""
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        raise ValueError(f"must be printable text; found U+{ord(bad):04X}")
    return text


Printable = Annotated[str, AfterValidator(_printable)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
# SAM's useful rho is 0.01-0.5; ASAM's is 10-40x larger (0.5-2.0): 10 bounds both.
RHO_MAX = 10.0
Rho = Annotated[
    float,
    Field(ge=0.0, le=RHO_MAX, allow_inf_nan=False),
    AfterValidator(lambda rho: rho + 0.0),  # -0.0 (>= 0) is the baseline's 0.0
]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]
LR_MAX, WEIGHT_DECAY_MAX = 10.0, 1.0
LearningRate = Annotated[float, Field(gt=0.0, le=LR_MAX, allow_inf_nan=False)]
WeightDecay = Annotated[float, Field(ge=0.0, le=WEIGHT_DECAY_MAX, allow_inf_nan=False)]

Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
BaseOptimizer = Literal["sgd", "adam", "adamw"]
SamVariant = Literal["sam", "asam"]
FILE_DATASETS = ("cifar10", "cifar100")
FLIP_SAFE_DATASETS = FILE_DATASETS  # natural images: a mirror image keeps its class


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _unique(values: list[Any]) -> list[Any]:
    """Each value once; linear time (values are numbers, strings or None: hashable)."""
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate value {v!r}: each grid value must appear once")
        seen.add(v)
    return values


T = TypeVar("T")
# The train settings that may be grid axes (a list in the spec); a trial carries its value.
TRAIN_AXES = ("lr", "weight_decay")
# SAM's schedule within a run (search axes of SAM trials) and its plain-SAM values: a
# trial carries them only where they differ (None otherwise), so plain SAM trials keep
# their params and cell keys.
SCHEDULE_DEFAULTS: dict[str, float | int] = {"sam_start": 0.0, "sam_every": 1}
SCHEDULE_AXES = tuple(SCHEDULE_DEFAULTS)
# A train setting given as a list: a grid axis, each value once.
Axis = Annotated[list[T], Field(min_length=1, max_length=MAX_AXIS), AfterValidator(_unique)]


class Range(_Strict):
    """A continuous range a sampler draws from (not the grid's): [low, high], on a log
    scale with `log` (then low > 0)."""

    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    def within(self, item: Any) -> Range:
        """Itself, if both ends are values `item` allows (ValueError naming the end if not)."""
        check = TypeAdapter(item)
        for end in ("low", "high"):
            try:
                check.validate_python(getattr(self, end))
            except ValidationError as e:
                raise ValueError(f"{end}: {e.errors()[0]['msg']}") from None
        return self


def _as_range(value: Any, item: Any) -> Range:
    """`value` as a Range whose ends `item` allows; ValueError naming what is wrong."""
    try:
        return TypeAdapter(Range).validate_python(value, strict=True).within(item)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{where}: {message}" if where else message) from None


def _number_or_axis(item: Any) -> BeforeValidator:
    """One number, a list (an axis) or a range ({low, high, log}: for samplers): validated
    as whichever it is, so an error is about that one (a plain union would report all),
    at the field itself."""
    number, listed = TypeAdapter(item), TypeAdapter(Axis[item])

    def check(value: Any) -> Any:
        if isinstance(value, dict | Range):
            return _as_range(value, item)
        try:
            return (listed if isinstance(value, list) else number).validate_python(
                value, strict=True
            )
        except ValidationError as e:
            first = e.errors()[0]
            at, message = "".join(f"[{p}]" for p in first["loc"]), first["msg"]
            message = message.removeprefix("Value error, ")
            raise ValueError(f"item {at}: {message}" if at else message) from None

    return BeforeValidator(check)


def axis(value: float | list[float] | Range) -> list[float | None]:
    """A train setting's values as a grid axis: its list, or [None] when it is one
    number (then not an axis: every trial takes the spec's value)."""
    return list(value) if isinstance(value, list) else [None]  # a range: the sampler's


def _rho_list_or_range(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """search.rho: a range (for a sampler) is validated as one; a list as the grid's axis,
    its errors at the item (`search.rho.1`), as they always were."""
    if isinstance(value, dict | Range):
        return _as_range(value, Rho)
    if not isinstance(value, list):
        raise ValueError("a list of values (the grid's axis), or a range {low, high, log}")
    return handler(value)


if TYPE_CHECKING:
    RhoSetting = list[float] | Range
else:  # validated as a list, unless it is a range (then never through the list's checks)
    RhoSetting = Annotated[
        Axis[Rho],
        WrapValidator(_rho_list_or_range),
        WrapSerializer(lambda v, nxt: v.model_dump() if isinstance(v, Range) else nxt(v)),
        WithJsonSchema({"anyOf": [
            TypeAdapter(Axis[Rho]).json_schema(),
            Range.model_json_schema(),
        ]}),
    ]  # fmt: skip


class DatasetSpec(_Strict):
    name: Literal["digits", "cifar10", "cifar100", "synthetic"]
    path: Printable | None = Field(
        None,
        validate_default=True,
        min_length=1,
        max_length=1024,
        description="directory under the data root (cifar10/100)",
    )
    val_fraction: float = Field(
        0.0, ge=0.0, lt=0.5, allow_inf_nan=False, description="stratified hold-out, same split"
    )
    label_noise: Fraction = Field(
        0.0, description="fraction of training labels flipped to another class (seeded)"
    )
    augment: Literal["none", "crop_flip", "crop_flip_cutout"] = Field(
        "none", description="training batches only, tensor ops on the training device"
    )

    @field_validator("path")
    @classmethod
    def _path_matches_dataset(cls, path: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if name in FILE_DATASETS and not path:
            raise ValueError(f"required for {name}: a directory under the data root")
        if name in ("digits", "synthetic") and path is not None:
            raise ValueError(f"dataset {name!r} is built in: omit dataset.path")
        return path

    @field_validator("augment")
    @classmethod
    def _flips_on_natural_images_only(cls, augment: str, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if augment != "none" and name is not None and name not in FLIP_SAFE_DATASETS:
            raise ValueError(
                f"{augment} flips images, which changes the class on {name!r} "
                f"(a flipped digit is another symbol); allowed on {', '.join(FLIP_SAFE_DATASETS)}"
            )
        return augment


class ModelSpec(_Strict):
    name: Literal["cnn", "resnet18", "wrn"]
    depth: int | None = Field(None, ge=10, le=100, description="wrn: 6n+4, e.g. 16, 28")
    width: int | None = Field(None, ge=1, le=20, description="wrn: widen factor k, e.g. 8, 10")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, allow_inf_nan=False, description="wrn only")

    @field_validator("depth")
    @classmethod
    def _wrn_depth(cls, depth: int | None) -> int | None:
        if depth is not None and (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        return depth


class SearchSpec(_Strict):
    """The grid: every combination is one trial per seed (rho = 0 once, see trials())."""

    rho: RhoSetting = Field(
        description="SAM neighbourhood sizes; 0 = base optimizer. A sampler also takes a "
        "range {low, high, log}"
    )
    batch_size: list[BatchSize] = Field(min_length=1, max_length=MAX_AXIS)
    base_optimizer: list[BaseOptimizer] = Field(min_length=1, max_length=3)
    sam_variant: list[SamVariant] = Field(
        ["sam"], min_length=1, max_length=2, description="asam scales the perturbation by |w|"
    )
    m: list[Annotated[int, Field(ge=1, le=MAX_BATCH)] | None] = Field(
        [None],
        min_length=1,
        max_length=MAX_AXIS,
        description="m-sharpness micro-batch size; null = whole batch",
    )
    sam_start: list[Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]] = Field(
        [0.0], min_length=1, max_length=MAX_AXIS,
        description="SAM late: the fraction of training the base optimizer runs alone before "
        "SAM takes over (0 = SAM throughout; 1.0 = the baseline exactly)",
    )  # fmt: skip
    sam_every: list[Annotated[int, Field(ge=1, le=SAM_EVERY_MAX)]] = Field(
        [1], min_length=1, max_length=MAX_AXIS,
        description="a SAM step every k-th step, base-optimizer steps between (1 = every step)",
    )  # fmt: skip

    _unique_bs = field_validator("batch_size")(_unique)
    _unique_opt = field_validator("base_optimizer")(_unique)
    _unique_variant = field_validator("sam_variant")(_unique)
    _unique_m = field_validator("m")(_unique)
    _unique_start = field_validator("sam_start")(_unique)
    _unique_every = field_validator("sam_every")(_unique)

    @field_validator("m")
    @classmethod
    def _m_divides_batches(cls, ms: list[int | None], info: ValidationInfo) -> list[int | None]:
        for m in ms:
            for b in info.data.get("batch_size") or []:
                if m is not None and b % m:
                    raise ValueError(f"m = {m} does not divide batch size {b}")
        return ms


def axis_choices(axis: Literal["base_optimizer", "sam_variant"]) -> tuple[str, ...]:
    """Every value a spec allows on a categorical axis."""
    return get_args({"base_optimizer": BaseOptimizer, "sam_variant": SamVariant}[axis])


class TrainSpec(_Strict):
    epochs: int = Field(ge=1, le=10_000)
    lr: LearningRate | Axis[LearningRate] | Range = Field(
        description="learning rate at base_batch_size; a list is a grid axis; a sampler also "
        "takes a range {low, high, log}"
    )
    base_batch_size: int | None = Field(
        None, ge=1, le=MAX_BATCH, description="batch size `lr` is given for"
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr follows the batch size: none, linear (lr*B/B0), sqrt"
    )
    warmup_epochs: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="linear warmup")
    schedule: Literal["constant", "cosine", "step"] = Field(
        "cosine", description="decay after warmup; step = x0.1 at 50% and 75% of training"
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, allow_inf_nan=False)
    nesterov: bool = False
    weight_decay: WeightDecay | Axis[WeightDecay] | Range = Field(
        0.0,
        description="applied by the base optimizer; a list is a grid axis; a sampler "
        "also takes a range {low, high, log}",
    )
    grad_clip: float | None = Field(
        None,
        gt=0.0,
        le=1e6,
        allow_inf_nan=False,
        description="max L2 norm of the (second) gradient",
    )
    label_smoothing: Fraction = 0.0
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on the CPU"
    )
    baseline_epochs: Literal["same", "double"] = Field(
        "same", description="double: the baseline (rho = 0) trains 2 x epochs, SAM's compute"
    )
    compile: bool = Field(
        False, description="torch.compile the training step (evaluation stays eager)"
    )

    _lr_number_or_axis = field_validator("lr", mode="before")(_number_or_axis(LearningRate).func)
    _wd_number_or_axis = field_validator("weight_decay", mode="before")(
        _number_or_axis(WeightDecay).func
    )

    @field_validator("lr_scaling")
    @classmethod
    def _scaling_needs_base(cls, scaling: str, info: ValidationInfo) -> str:
        if scaling != "none" and info.data.get("base_batch_size") is None:
            raise ValueError(f"{scaling} scaling needs train.base_batch_size")
        return scaling

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_training(cls, warmup: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")
        if epochs is not None and warmup >= epochs:
            raise ValueError(f"must be shorter than train.epochs ({epochs})")
        return warmup

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0:
            raise ValueError("nesterov needs train.momentum > 0")
        return nesterov


class SharpnessSpec(_Strict):
    """Sharpness of the final weights, on a fixed training subset shared by all trials."""

    samples: int = Field(512, ge=0, le=100_000, description="0 turns both measurements off")
    rho: float = Field(0.05, gt=0.0, le=10.0, allow_inf_nan=False, description="same for all")
    ascent_steps: int = Field(5, ge=1, le=100)
    hessian_iters: int = Field(20, ge=1, le=1000)


SAMPLERS = ("grid", "random", "tpe", "gp")


class SamplerSpec(_Strict):
    """How the study's configurations are chosen: every cell of the grid (the default), or
    `n_trials` configurations drawn by one of Optuna's samplers, each asked when a worker
    frees a slot, so it sees the results in by then (docs/spec.md "Search")."""

    name: Literal["grid", "random", "tpe", "gp"] = "grid"
    n_trials: int | None = Field(
        None, ge=1, le=10_000, description="configurations to run (each once per seed)"
    )
    seed: Seed | None = Field(None, description="reproducible suggestions, given the order")

    @property
    def searches(self) -> bool:
        return self.name != "grid"


class PrunerSpec(_Strict):
    """Stopping hopeless trials early (docs/spec.md "Pruning"): each epoch's validation
    accuracy is compared only with trials of the same batch size, base optimizer, SAM
    setting and seed, and never before `min_epochs` (SAM's benefit shows late in
    training)."""

    name: Literal["none", "median", "hyperband"] = "none"
    min_epochs: int | None = Field(
        None, ge=1, le=10_000, description="no trial is pruned before this epoch; default: "
        "the warm-up plus half the epochs (rounded up)"
    )  # fmt: skip
    startup_trials: int = Field(
        5, ge=1, le=10_000, description="median: finished trials of the same group and seed "
        "before any of them is pruned"
    )  # fmt: skip

    @property
    def prunes(self) -> bool:
        return self.name != "none"

    def grace(self, epochs: int, warmup_epochs: float) -> int:
        """The first epoch a trial of `epochs` epochs may be pruned at."""
        if self.min_epochs is not None:
            return self.min_epochs
        return max(1, math.ceil(warmup_epochs + epochs / 2))


class StudySpec(_Strict):
    name: Printable = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec
    search: SearchSpec
    train: TrainSpec
    seeds: list[Seed] = Field([0], min_length=1, max_length=MAX_AXIS)
    objective: Literal["test_accuracy", "val_accuracy"] = Field(
        "test_accuracy",
        description="what Optuna maximizes and `best` selects on; default: val_accuracy "
        "when dataset.val_fraction > 0 (select on held-out data), else test_accuracy",
    )
    sharpness: SharpnessSpec = SharpnessSpec()
    # How the dispatcher shares the workers (service/dispatch.py): the study's place
    # among those with work, and a bound on its trials running at once.
    priority: int = Field(
        0, ge=-1000, le=1000, description="studies of higher priority are sent trials first; "
        "equal priorities share the workers round robin"
    )  # fmt: skip
    max_concurrent_trials: int | None = Field(
        None, ge=1, le=100_000,
        description="at most this many of the study's trials running at once (default: no bound)",
    )  # fmt: skip
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()

    _unique_seeds = field_validator("seeds")(_unique)

    @model_validator(mode="before")
    @classmethod
    def _select_on_validation_by_default(cls, data: Any) -> Any:
        """With a validation split and no objective given, the objective is validation
        accuracy: choosing hyperparameters on the test set overstates the result."""
        if isinstance(data, dict) and "objective" not in data:
            dataset = data.get("dataset")
            split = dataset.get("val_fraction") if isinstance(dataset, dict) else None
            held_out = isinstance(split, int | float) and not isinstance(split, bool) and split > 0
            data = {**data, "objective": "val_accuracy" if held_out else "test_accuracy"}
        return data

    @field_validator("objective")
    @classmethod
    def _objective_has_data(cls, objective: str, info: ValidationInfo) -> str:
        dataset = info.data.get("dataset")
        if objective == "val_accuracy" and dataset is not None and dataset.val_fraction <= 0:
            raise ValueError("val_accuracy needs dataset.val_fraction > 0")
        return objective

    @field_validator("sampler")
    @classmethod
    def _sampler_fits_the_space(cls, sampler: SamplerSpec, info: ValidationInfo) -> SamplerSpec:
        """A grid takes lists only and runs every cell; a sampler needs its budget."""
        search, train = info.data.get("search"), info.data.get("train")
        ranges = [name for name, value in (("search.rho", search and search.rho),
                  ("train.lr", train and train.lr),
                  ("train.weight_decay", train and train.weight_decay))
                  if isinstance(value, Range)]  # fmt: skip
        if not sampler.searches:
            if ranges:
                raise ValueError(
                    f"{ranges[0]} is a range: a range needs a sampler (random, tpe or gp) to draw "
                    "from it; the grid takes lists"
                )
            if sampler.n_trials is not None or sampler.seed is not None:
                raise ValueError("the grid runs every cell and draws nothing: n_trials and "
                                 "seed are for a sampler (random, tpe or gp)")  # fmt: skip
        elif sampler.n_trials is None:
            raise ValueError(f"{sampler.name} needs n_trials: how many configurations to run")
        return sampler

    @field_validator("pruner")
    @classmethod
    def _pruner_sees_held_out_data(cls, pruner: PrunerSpec, info: ValidationInfo) -> PrunerSpec:
        """Pruning decides on each epoch's validation accuracy, never the test set's."""
        dataset, train = info.data.get("dataset"), info.data.get("train")
        if not pruner.prunes:
            return pruner
        if dataset is not None and dataset.val_fraction <= 0:
            raise ValueError(f"the {pruner.name} pruner decides on validation accuracy: it "
                             "needs dataset.val_fraction > 0 (a held-out split)")  # fmt: skip
        if train is not None and pruner.min_epochs is not None and pruner.min_epochs > train.epochs:
            raise ValueError(f"min_epochs ({pruner.min_epochs}) is past train.epochs "
                             f"({train.epochs}): nothing would ever be pruned")  # fmt: skip
        return pruner

    def epochs_for(self, rho: float) -> int:
        """The epochs a trial at `rho` trains: train.epochs, twice that for the baseline
        (rho = 0) when train.baseline_epochs is "double" (trainer.TrialConfig.epochs)."""
        double = rho == 0 and self.train.baseline_epochs == "double"
        return self.train.epochs * (2 if double else 1)

    @property
    def intermediate(self) -> str:
        """The metric each epoch reports to Optuna: validation accuracy when the study
        prunes (the pruner's input), else the objective."""
        return "val_accuracy" if self.pruner.prunes else self.objective

    @property
    def n_trials(self) -> int:
        """len(trials()), computed from the list lengths without building the grid; for a
        sampler, its configurations times the seeds."""
        if self.sampler.searches:
            return (self.sampler.n_trials or 0) * len(self.seeds)
        s = self.search
        assert isinstance(s.rho, list)  # a grid's (the sampler's validator)
        sam_rhos = sum(1 for r in s.rho if r > 0)
        sam_settings = len(s.sam_variant) * len(s.m) * len(s.sam_start) * len(s.sam_every)
        per_pair = sam_rhos * sam_settings + (len(s.rho) - sam_rhos)
        settings = len(axis(self.train.lr)) * len(axis(self.train.weight_decay))
        return len(s.base_optimizer) * len(s.batch_size) * settings * len(self.seeds) * per_pair

    def trials(self) -> list[TrialParams]:
        """Every trial's grid point and seed, in a fixed order: trial numbers follow it.

        rho = 0 is the base optimizer alone: SAM's variant and m do not apply to it,
        so it is one grid cell per (optimizer, batch size) with sam_variant and m None,
        not one identical run per variant and m. `train.lr` and `train.weight_decay` are
        axes when they are lists (then each trial carries its value; None otherwise).
        """
        s, trials, seen = self.search, [], set()
        if self.sampler.searches:  # configurations are drawn one at a time (the dispatcher)
            return []
        assert isinstance(s.rho, list)  # a grid's (the sampler's validator)
        grid = itertools.product(
            s.base_optimizer, s.batch_size, axis(self.train.lr), axis(self.train.weight_decay),
            s.rho, s.sam_variant, s.m, s.sam_start, s.sam_every, self.seeds,
        )  # fmt: skip
        for opt, batch, lr, wd, rho, variant, m, start, every, seed in grid:
            sam = rho != 0
            params = TrialParams(
                rho=rho,
                batch_size=batch,
                base_optimizer=opt,
                sam_variant=variant if sam else None,
                m=m if sam else None,
                lr=lr,
                weight_decay=wd,
                sam_start=sam_start_value(start) if sam else None,
                sam_every=sam_every_value(every) if sam else None,
                seed=seed,
            )
            if (params.cell_key, seed) not in seen:
                seen.add((params.cell_key, seed))
                trials.append(params)
        return trials


class Cell(_Strict):
    """A grid cell: one value per search axis, without the seed. Its trials, one per
    seed, are the samples the report's mean and std are taken over. rho = 0 is the base
    optimizer alone: its sam_variant and m are None.

    `key` identifies it in the trials table (unique with the seed per study); `label`
    and `method` are how the report's tables, the plots and the dashboard name it.
    """

    rho: float
    batch_size: int
    base_optimizer: str
    sam_variant: str | None = None
    m: int | None = None
    lr: float | None = None  # when train.lr is an axis; None: the spec's one value
    weight_decay: float | None = None  # likewise for train.weight_decay
    sam_start: float | None = None  # SAM late: None = SAM throughout (0)
    sam_every: int | None = None  # SAM every k-th step: None = every step (1)

    @model_validator(mode="before")
    @classmethod
    def _baseline_has_no_sam_setting(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("rho") == 0:
            data = {**data, "sam_variant": None, "m": None, "sam_start": None, "sam_every": None}
        return data

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Cell:
        """The cell of a trial's params as the API serves them (a dict that may hold
        more than the grid axes: a newer API's, or the seed)."""
        return cls.model_validate({k: params.get(k) for k in _CELL_AXES}, strict=False)

    @property
    def key(self) -> str:
        """The cell's identity in the trials table; a train setting that is an axis is
        appended, so the keys of cells without one are as they always were."""
        key = (
            f"rho={self.rho + 0.0!r}|batch_size={self.batch_size}"
            f"|base_optimizer={self.base_optimizer}"
            f"|sam_variant={self.sam_variant}|m={self.m}"
        )
        key += "".join(f"|{name}={v!r}" for name, v in self.settings)
        return key + "".join(
            f"|{name}={v!r}" for name in SCHEDULE_AXES if (v := getattr(self, name)) is not None
        )

    @property
    def settings(self) -> list[tuple[str, float]]:
        """The train settings that are axes, with this cell's values: [("lr", 0.1)]."""
        return [(n, v) for n in TRAIN_AXES if (v := getattr(self, n)) is not None]

    @property
    def baseline(self) -> bool:
        return self.rho == 0

    @property
    def method(self) -> str:
        """Within its (optimizer, batch size): 'rho 0' for the base optimizer alone, else
        e.g. 'sam 0.05', 'asam 1 m=32'."""
        if self.baseline:
            return "rho 0"
        text = f"{self.sam_variant or 'sam'} {self.rho:g}" + sam_setting(None, self.m)
        return text + sam_schedule(self.sam_start, self.sam_every)

    @property
    def label(self) -> str:
        """The whole cell: 'ρ=0.05, batch 128, sgd, sam m=32' ('ρ=0, batch 128, sgd')."""
        text = f"ρ={self.rho:g}, batch {self.batch_size}, {self.base_optimizer}"
        text += train_setting(self.lr, self.weight_decay)
        if not self.baseline and self.sam_variant:
            text += ", " + sam_setting(self.sam_variant, self.m)
            text += sam_schedule(self.sam_start, self.sam_every)
        return text


def sam_setting(variant: str | None, m: int | None) -> str:
    """SAM's variant and m-sharpness as labels name them: 'sam', 'asam m=32' (without a
    variant, only ' m=32' or '')."""
    return (variant or "") + (f" m={m}" if m else "")


def sam_schedule(sam_start: float | None, sam_every: int | None) -> str:
    """SAM late and every k as labels name them: ' from 50%', ' every 2' ('' for SAM
    throughout at every step)."""
    return (f" from {sam_start:.0%}" if sam_start else "") + (
        f" every {sam_every}" if sam_every and sam_every > 1 else ""
    )


def sam_start_value(start: float) -> float | None:
    """A trial's sam_start as it carries it: None for 0 (SAM throughout), so plain SAM
    cells keep the params and keys they always had."""
    return None if start == SCHEDULE_DEFAULTS["sam_start"] else start


def sam_every_value(every: int) -> int | None:
    """A trial's sam_every as it carries it: None for 1 (every step is SAM's)."""
    return None if every == SCHEDULE_DEFAULTS["sam_every"] else every


def train_setting(lr: float | None, weight_decay: float | None) -> str:
    """The train settings that are axes, as labels name them: ', lr 0.1, wd 0.0005'
    ('' when neither is)."""
    return (f", lr {lr:g}" if lr is not None else "") + (
        f", wd {weight_decay:g}" if weight_decay is not None else ""
    )


_CELL_AXES = tuple(Cell.model_fields)


class TrialParams(_Strict):
    """One trial's point in the grid (one value per search axis) and its seed; its
    `cell` is the same point without the seed."""

    rho: float
    batch_size: int
    base_optimizer: str
    sam_variant: str | None = "sam"  # None for rho = 0
    m: int | None = None
    lr: float | None = None  # when train.lr is an axis
    weight_decay: float | None = None  # when train.weight_decay is an axis
    sam_start: float | None = None  # SAM late (a fraction of training); None = 0
    sam_every: int | None = None  # SAM every k-th step; None = 1
    seed: int

    def stored(self) -> dict[str, Any]:
        """As the trials table stores it: the train settings only where they are axes,
        SAM's schedule only where it is not plain SAM (a grid without them stores exactly
        what it always has)."""
        return self.model_dump(
            exclude={n for n in (*TRAIN_AXES, *SCHEDULE_AXES) if getattr(self, n) is None}
        )

    @property
    def cell(self) -> Cell:
        return Cell(
            rho=self.rho,
            batch_size=self.batch_size,
            base_optimizer=self.base_optimizer,
            sam_variant=self.sam_variant,
            m=self.m,
            lr=self.lr,
            weight_decay=self.weight_decay,
            sam_start=self.sam_start,
            sam_every=self.sam_every,
        )

    @property
    def cell_key(self) -> str:
        """Identifies the grid cell (without the seed); unique with the seed per study."""
        return self.cell.key


class StudyPatch(_Strict):
    """What a PATCH may change (docs/api.md "Studies that grow"): a grid's seeds and axes
    grow, each list given whole; a sampler's study's n_trials grows; the dispatcher's
    fields are set. Anything else would change trials that ran. `patched` applies one;
    this model documents it."""

    seeds: list[Seed] | None = None
    search: SearchPatch | None = None
    max_concurrent_trials: int | None = Field(None, description="null removes the bound")
    priority: int | None = None
    sampler: SamplerPatch | None = Field(None, description="a sampler's study: its n_trials")


class SamplerPatch(_Strict):
    n_trials: int = Field(ge=1, le=10_000)


_optional_axes: dict[str, Any] = {  # every axis of the grid, each optional
    name: (cast(Any, f.annotation) | None, None) for name, f in SearchSpec.model_fields.items()
}
SearchPatch = create_model("SearchPatch", __base__=_Strict, **_optional_axes)
StudyPatch.model_rebuild()
PATCHABLE = tuple(StudyPatch.model_fields)


def _patched_search(spec: StudySpec, patch: Mapping[str, Any]) -> StudySpec:
    """A sampler's study grows by a larger `sampler.n_trials` (its search space and seeds
    stay: the configurations drawn so far were drawn from them)."""
    for key in ("seeds", "search"):
        if key in patch:
            raise PatchError(f"a sampler's study keeps its {key}: it grows by a larger "
                             "sampler.n_trials", key)  # fmt: skip
    sampler = patch.get("sampler", {})
    if not isinstance(sampler, Mapping) or set(sampler) - {"n_trials"}:
        raise PatchError('only n_trials can change: {"sampler": {"n_trials": N}}', "sampler")
    data = spec.model_dump(mode="json")
    data["sampler"].update(sampler)
    data.update({k: v for k, v in patch.items() if k != "sampler"})
    new = StudySpec.model_validate(data)
    before, after = spec.sampler.n_trials or 0, new.sampler.n_trials or 0
    if after < before:
        raise PatchError(f"{after} would take configurations away, and a patch never deletes "
                         f"results: give {before} or more", "sampler.n_trials")  # fmt: skip
    return new


class PatchError(ValueError):
    """A patch that cannot apply: `field` names what is at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def patched(spec: StudySpec, patch: Mapping[str, Any]) -> StudySpec:
    """`spec` with `patch` applied: a body in the spec's own shape holding only what
    changes, each list given whole (`{"seeds": [0, 1, 2]}`, `{"search": {"rho": [...]}}`,
    `{"max_concurrent_trials": 2}`; null there removes the bound).

    Raises PatchError for a field a patch cannot change, or a list that loses a value (a
    patch never deletes results), and pydantic's ValidationError if the patched spec is
    not a valid spec (the same rules as a new study's)."""
    if not patch:
        raise PatchError(f"an empty patch changes nothing; give one of {', '.join(PATCHABLE)}",
                         "body")  # fmt: skip
    for key in patch:
        if key not in PATCHABLE:
            raise PatchError(
                f"{key[:80]!r} cannot be changed: it would change the trials that ran. A patch "
                f"adds seeds or grid values, raises a sampler's n_trials, or sets "
                f"{' or '.join(PATCHABLE[2:4])}; post a new study for anything else",
                key[:80],
            )
    if spec.sampler.searches:
        return _patched_search(spec, patch)
    if "sampler" in patch:
        raise PatchError("a grid runs every cell: it grows by new values on its axes or "
                         "new seeds, and cannot become a sampler's study", "sampler")  # fmt: skip
    data = spec.model_dump(mode="json")
    search = patch.get("search", {})
    if not isinstance(search, Mapping):
        raise PatchError("must be an object: the axes that grow, each list given whole", "search")
    data["search"].update(search)
    data.update({k: v for k, v in patch.items() if k != "search"})
    new = StudySpec.model_validate(data)
    lists = [("seeds", spec.seeds, new.seeds)] + [
        (f"search.{axis}", getattr(spec.search, axis), getattr(new.search, axis))
        for axis in SearchSpec.model_fields
    ]
    for field, before, after in lists:
        kept = set(after)
        gone = [v for v in before if v not in kept]  # a grid's axes are lists
        if gone:
            raise PatchError(
                f"{', '.join(map(repr, gone[:10]))} would be taken away, and a patch never "
                f"deletes results: give the whole list, the current values {before} and the "
                "new ones",
                field,
            )
    return new
