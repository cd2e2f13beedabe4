"""The commands on a running API: `studies`, `status`, `report`, `best`, `trials`,
`export`, `cancel`, `submit`, `extend`, `retry`, `delete`. Each talks to the API through
`samsweep.Client` at --server (default SAMSWEEP_API_URL) with --token (default
SAMSWEEP_API_TOKEN).

Exit codes, as for `run` (docs/cli.md "Exit codes"): 0 done; 1 the API refused, could not be
reached or did not answer as samsweep does (one line: its code and message, or why); 2 a
usage or spec-file error; 130 (128 + the signal) interrupted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samsweep.cli.run import say
from samsweep.core.settings import get_settings, reveal

if TYPE_CHECKING:
    from samsweep.client import Client

# The client (httpx, pydantic models) and rich are imported where used: `samsweep
# worker` and `api` never need them.


def add_connection(p: argparse.ArgumentParser) -> None:
    """--server and --token: the one way every command that calls the API is told where."""
    p.add_argument(
        "--server",
        "--url",
        dest="server",
        metavar="URL",
        help="the samsweep API (default SAMSWEEP_API_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token", help="bearer token for an API with tokens (default SAMSWEEP_API_TOKEN)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for each answer (default 30)",
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds, got {text!r}")
    return value


def server_and_token(args: argparse.Namespace) -> tuple[str, str | None]:
    settings = get_settings()
    url = (args.server or settings.api_url).rstrip("/")
    return url, args.token or reveal(settings.api_token)


def _calling(command: Callable[..., int]) -> Callable[..., int]:
    """Run `command(args, client)`; the API's errors are one line and exit 1."""

    def run(args: argparse.Namespace, *extra: object) -> int:
        from samsweep.client import ApiError, Client, ClientError

        url, token = server_and_token(args)
        try:
            with Client(url, token, timeout=args.timeout) as client:
                return command(args, client, *extra)
        except ApiError as e:
            say(f"the API at {url} answered {e}")
            return 1
        except ClientError as e:  # no answer, or an id refused before asking
            say(str(e))
            return 1

    run.__doc__ = command.__doc__
    return run


def _print(*renderables: Any) -> None:
    from samsweep.cli.tables import console

    out = console()
    for r in renderables:
        out.print(r)


@_calling
def cmd_studies(args: argparse.Namespace, client: Client) -> int:
    """The studies, newest first."""
    from samsweep.cli.tables import studies_table

    studies = client.studies()
    if not studies:
        say(f"no studies at {client.url}")
        return 0
    _print(studies_table(studies))
    return 0


@_calling
def cmd_status(args: argparse.Namespace, client: Client) -> int:
    """A study's status and counts; with --watch a live progress bar until it finishes."""
    from samsweep.cli.tables import ProgressView, study_lines

    if args.watch:
        with ProgressView() as view:
            detail = client.wait(args.study_id, poll=args.poll, on_progress=view.update)
    else:
        detail = client.study(args.study_id)
    _print(*study_lines(detail, client.page_url(detail.id)))
    return 0


@_calling
def cmd_report(args: argparse.Namespace, client: Client) -> int:
    """The generalization-gap report as tables."""
    from samsweep.cli.tables import report_renderables

    _print(*report_renderables(client.report(args.study_id)))
    _print(f"page: {client.page_url(args.study_id)}")
    return 0


@_calling
def cmd_best(args: argparse.Namespace, client: Client) -> int:
    """The best cell by its mean over seeds, and the single best trial."""
    from samsweep.cli.tables import best_lines

    best = client.best(args.study_id)
    _print(*best_lines(best))
    return 0 if best.cell is not None else 1


@_calling
def cmd_trials(args: argparse.Namespace, client: Client) -> int:
    """Every trial of a study."""
    from samsweep.cli.tables import trials_table

    _print(trials_table(client.trials(args.study_id, curves=False)))
    return 0


@_calling
def cmd_export(args: argparse.Namespace, client: Client) -> int:
    """The report as CSV or JSON, to stdout or -o FILE."""
    import json

    if args.format == "csv":
        text = client.report_csv(args.study_id)
    else:
        text = json.dumps(client.report_json(args.study_id), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        say(f"wrote {args.output}")
    return 0


@_calling
def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    """Cancel: queued trials now, running ones at their next epoch boundary."""
    detail = client.cancel(args.study_id)
    running = detail.counts.get("RUNNING", 0)
    tail = f"; {running} running trial(s) stop at their next epoch" if running else ""
    print(f"cancelled study {detail.id} ({detail.status}){tail}")
    return 0


@_calling
def cmd_extend(args: argparse.Namespace, client: Client) -> int:
    """Grow a study: more seeds or grid values (added to what it has), a new bound or
    priority. Only the new cells' trials run."""
    axes = {
        axis: values
        for axis in ("rho", "batch_size", "base_optimizer", "sam_variant", "m")
        if (values := getattr(args, axis)) is not None
    }
    if not (axes or args.seeds or args.max_concurrent_trials or args.unbounded
            or args.priority is not None):  # fmt: skip
        say("nothing to change: give --seeds, a grid axis, --max-concurrent-trials, "
            "--unbounded or --priority")  # fmt: skip
        return 2
    detail = client.extend(
        args.study_id,
        seeds=args.seeds,
        max_concurrent_trials=args.max_concurrent_trials,
        unbounded=args.unbounded,
        priority=args.priority,
        idempotency_key=args.idempotency_key,
        **axes,
    )
    print(f"study {detail.id}: {detail.added} new trial(s), {detail.n_trials} in all "
          f"({detail.status}); page: {client.page_url(detail.id)}")  # fmt: skip
    return 0


@_calling
def cmd_retry(args: argparse.Namespace, client: Client) -> int:
    """Queue a study's failed and cancelled trials again; a cancelled study resumes."""
    detail = client.retry(args.study_id, infeasible=args.infeasible)
    print(f"study {detail.id}: {detail.retried} trial(s) queued again ({detail.status})")
    return 0


@_calling
def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    """Delete a study: its trials, results, Optuna study and checkpoints."""
    if not args.yes:
        detail = client.study(args.study_id)
        if not sys.stdin.isatty():
            say(f"delete study {detail.id} ({detail.name!r}, {detail.n_trials} trials) and "
                "every result it has? Not a terminal to ask on: add --yes")  # fmt: skip
            return 2
        answer = input(f"delete study {detail.id} ({detail.name!r}, {detail.n_trials} trials) "
                       "and every result it has? [y/N] ")  # fmt: skip
        if answer.strip().lower() not in ("y", "yes"):
            say("not deleted")
            return 1
    client.delete(args.study_id)
    print(f"deleted study {args.study_id}")
    return 0


def _listed(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values of `kind` ("3,4")."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    return parse


def _m(text: str) -> int | None:
    return None if text.lower() in ("none", "null", "whole") else int(text)


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a spec and return: prints the study's id (stdout) and its page (stderr)."""
    from samsweep.client import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        say(str(e))
        return 2
    return _submit(args, spec)


@_calling
def _submit(args: argparse.Namespace, client: Client, spec: dict[str, Any]) -> int:
    created = client.submit(spec, idempotency_key=args.idempotency_key)
    again = " (already submitted with this key)" if created.replayed else ""
    page = client.page_url(created.id)
    say(f"study {created.id}: {created.n_trials} trials{again}; page: {page}")
    print(created.id)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def command(
        name: str, func: Callable[..., int], help: str, study: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if study:
            p.add_argument("study_id", metavar="ID", help="the study's id")
        add_connection(p)
        p.set_defaults(func=func)
        return p

    command("studies", cmd_studies, "list the studies, newest first", study=False)
    status = command("status", cmd_status, "a study's status and progress")
    status.add_argument("--watch", action="store_true", help="a live progress bar until it ends")
    status.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    command("report", cmd_report, "the report: per batch size, baseline and each rho")
    command("best", cmd_best, "the best cell (mean over seeds) and the best single trial")
    command("trials", cmd_trials, "every trial of a study")
    export = command("export", cmd_export, "the report as CSV or JSON")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("-o", "--output", type=Path, help="write to FILE, not stdout")
    command("cancel", cmd_cancel, "cancel a study (queued trials now, running at their epoch)")
    submit = command("submit", cmd_submit, "submit a spec (YAML/JSON) and return", study=False)
    submit.add_argument("spec", type=Path)
    submit.add_argument("--idempotency-key", help="resubmitting with the same key: one study")
    extend = command("extend", cmd_extend, "grow a study: more seeds or grid values, run the new")
    extend.add_argument("--seeds", type=_listed(int), metavar="S,...", help="seeds to add")
    extend.add_argument("--rho", type=_listed(float), metavar="R,...", help="ρ values to add")
    extend.add_argument("--batch-size", dest="batch_size", type=_listed(int), metavar="B,...")
    extend.add_argument("--base-optimizer", dest="base_optimizer", type=_listed(str),
                        metavar="NAME,...")  # fmt: skip
    extend.add_argument("--sam-variant", dest="sam_variant", type=_listed(str), metavar="V,...")
    extend.add_argument("--m", type=_listed(_m), metavar="M,...", help="m values (none: whole)")
    bound = extend.add_mutually_exclusive_group()
    bound.add_argument("--max-concurrent-trials", type=int, metavar="N")
    bound.add_argument("--unbounded", action="store_true", help="no max_concurrent_trials")
    extend.add_argument("--priority", type=int)
    extend.add_argument("--idempotency-key", help="repeating with the same key: one change")
    retry = command("retry", cmd_retry, "queue a study's failed and cancelled trials again")
    retry.add_argument("--infeasible", action="store_true", help="out-of-memory trials too")
    delete = command("delete", cmd_delete, "delete a study, its results and checkpoints")
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")
