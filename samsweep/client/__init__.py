"""The client side of samsweep: `Client`, the API over HTTP (typed answers, typed
errors), and a spec file checked locally. The terminal's tables and progress bar are
`samsweep.cli.tables` (rich), imported by the CLI, not here.

Its answers are the API's own models (`samsweep.core.wire`, which keep fields they do not
name, so a newer API still parses); the report is `samsweep.core.report.Report`. It sits
above the core and below the CLI; importing it loads neither the API nor the worker,
nor torch, FastAPI or Celery (pyproject.toml's import-linter contracts,
tests/test_layering.py).
"""

from samsweep.client.api import (
    ApiError,
    BadAnswer,
    BadUrl,
    Client,
    ClientError,
    Conflict,
    InvalidRequest,
    NotAStudyId,
    NotFound,
    ServerError,
    ServerExited,
    Unauthorized,
    Unreachable,
    cancel_command,
    is_up,
    wait_until_up,
)
from samsweep.client.specfile import SpecError, load_spec
from samsweep.core.wire import (
    Best,
    BestCell,
    BestTrial,
    StudyCreated,
    StudyDetail,
    StudyExtended,
    StudyRetried,
    StudySummary,
    Trials,
)
from samsweep.core.wire import TrialPublic as Trial

__all__ = [
    "ApiError",
    "BadAnswer",
    "BadUrl",
    "Best",
    "BestCell",
    "BestTrial",
    "Client",
    "ClientError",
    "Conflict",
    "InvalidRequest",
    "NotAStudyId",
    "NotFound",
    "ServerError",
    "ServerExited",
    "SpecError",
    "StudyCreated",
    "StudyDetail",
    "StudyExtended",
    "StudyRetried",
    "StudySummary",
    "Trial",
    "Trials",
    "Unauthorized",
    "Unreachable",
    "cancel_command",
    "is_up",
    "load_spec",
    "wait_until_up",
]
