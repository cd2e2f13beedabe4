"""The `samsweep` command: the embedded default (`up`, `run`), the production parts
(`api`, `worker`, `migrate`), and the commands on existing studies (cli/studies.py).
The composition root: the one place that starts the API
(`service.app`) and the worker (`worker.app`). Heavy modules are imported inside each
command, so `samsweep worker` never loads the API, nor `samsweep api` the worker."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from samsweep.cli.data import add_commands as add_data_commands
from samsweep.cli.processes import (
    UP_STOP_GRACE,
    WORKER_STOP_GRACE,
    stop_after_parent,
    terminate_with_parent,
)
from samsweep.cli.run import Interrupted, Run, Signals, say
from samsweep.cli.studies import add_commands, add_connection, server_and_token
from samsweep.core.settings import get_settings, redact


def _use_state_dir(state_dir: Path | None) -> None:
    if state_dir is not None:
        os.environ["SAMSWEEP_STATE_DIR"] = str(state_dir)
        get_settings.cache_clear()


def cmd_migrate(_: argparse.Namespace) -> int:
    from samsweep.core.migrate import migrate

    settings = get_settings()
    migrate(settings)
    print(f"migrated {redact(settings.resolved_database_url)}; Optuna storage ready")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from service.server import uvicorn_options

    workers = args.workers or len(os.sched_getaffinity(0))
    print(f"samsweep api: {workers} process(es) on {args.host}:{args.port}", flush=True)
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics sums the processes' series from here (service/metrics.py); fresh each
        # start, set before any process imports prometheus_client
        metrics_dir = tempfile.mkdtemp(prefix="samsweep-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=workers,
            **uvicorn_options(get_settings()),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    metrics_dir = None
    if args.metrics_port:  # before anything loads prometheus_client (worker/metrics.py)
        metrics_dir = tempfile.mkdtemp(prefix="samsweep-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return _run_worker(args, metrics_dir)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_worker(args: argparse.Namespace, metrics_dir: str | None) -> int:
    from worker.app import app
    from worker.drawer import Drawer
    from worker.slots import PlanError, mps_active, plan, visible_gpus

    try:  # the slots: one per visible GPU (counted without torch), or one on the CPU
        slots = plan(args.gpus, args.concurrency, visible_gpus(), get_settings().gpu_slots)
    except PlanError as e:
        print(f"samsweep: {e}", file=sys.stderr)
        return 2
    os.environ.update(slots.env())  # the pool's processes pin themselves (worker/slots.py)
    print(f"samsweep worker: {slots.slots} slot(s) on "
          f"{'GPU ' + ', '.join(slots.gpus) if slots.gpus else 'the CPU'}", flush=True)  # fmt: skip
    if slots.gpus:  # processes sharing a GPU run their kernels at once only under MPS
        print(f"samsweep worker: CUDA MPS: {'on' if mps_active() else 'off'}", flush=True)
    if args.draw:  # GP's configurations: drawn beside the workers, never in the API
        Drawer(get_settings()).start()
    if metrics_dir is not None:
        from worker.metrics import serve

        serve(args.metrics_port, args.metrics_host, slots.slots, metrics_dir)
        print(f"samsweep worker: metrics on {args.metrics_host}:{args.metrics_port}", flush=True)
    if args.parent_pid:
        stop_after_parent(args.parent_pid, WORKER_STOP_GRACE)
    argv = [
        "worker",
        f"--loglevel={args.loglevel}",
        f"--concurrency={slots.slots}",
        f"--queues={get_settings().queue}",
        f"--pool={args.pool}",
        f"--hostname=samsweep-{os.getpid()}@%h",
    ]
    if args.pool == "prefork":
        argv.append("--pool-start-method=spawn")  # pool children never inherit a forked torch
    app.worker_main(argv)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """API + one local worker on the embedded default (or whatever SAMSWEEP_* says)."""
    import uvicorn

    from samsweep.core.migrate import migrate
    from samsweep.core.queue import declare_queue, make_celery
    from service.app import create_app
    from service.server import uvicorn_options

    _use_state_dir(args.state_dir)
    settings = get_settings()
    migrate(settings)
    declare_queue(make_celery(settings), settings.queue)
    worker_cmd = [
        sys.executable,
        "-m",
        "samsweep.cli",
        "worker",
        f"--parent-pid={os.getpid()}",
        # the worker's own default otherwise: one slot per GPU (SAMSWEEP_SLOTS_PER_GPU each)
        *([f"--concurrency={args.concurrency}"] if args.concurrency else []),
    ]
    # uvicorn shuts down on SIGTERM, then re-raises it into the handler that was there
    # before it started. With the default handler that kills this process before the
    # `finally` below, orphaning the worker; this handler turns it into SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    worker = None
    try:
        # If this process dies without running the `finally` (SIGKILL, OOM killer), the
        # kernel sends the worker SIGTERM (PR_SET_PDEATHSIG) and --parent-pid makes it
        # give itself WORKER_STOP_GRACE seconds, as the `finally` would.
        worker = subprocess.Popen(worker_cmd, preexec_fn=terminate_with_parent())
        if args.parent_pid:  # started by `samsweep run` (a thread: started after the fork)
            stop_after_parent(args.parent_pid, UP_STOP_GRACE)
        uvicorn.run(
            create_app(settings), host=args.host, port=args.port, **uvicorn_options(settings)
        )
    finally:
        if worker is not None:
            worker.terminate()  # warm shutdown: the running trial finishes its epoch or is re-run
            try:
                worker.wait(timeout=WORKER_STOP_GRACE)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Submit a spec to a running API, or start `samsweep up` for the duration."""
    from samsweep import client

    _use_state_dir(args.state_dir)
    settings = get_settings()
    try:
        spec = client.load_spec(args.spec)
    except client.SpecError as e:
        print(f"samsweep: {e}", file=sys.stderr)
        return 2
    url, token = server_and_token(args)
    run = Run(url, token, settings.state_dir, timeout=args.timeout)
    with Signals() as signals:
        try:
            return run.submit_and_follow(
                spec, follow=not args.no_follow, signals=signals, url_given=bool(args.server)
            )
        except Interrupted as e:
            run.interrupted(signals)
            return 128 + (signals.first or e.signum)
        finally:
            run.stop_server(signals)


def cmd_optuna_url(args: argparse.Namespace) -> int:
    """The storage URL for Optuna's own tools (optuna-dashboard, optuna.load_study)."""
    _use_state_dir(args.state_dir)
    settings = get_settings()
    try:
        url = settings.resolved_optuna_url
    except ValueError as e:
        say(str(e))
        return 2
    shown = url if args.show_password else redact(url)
    print(shown)
    if shown != url:
        say(
            "the password is hidden: --show-password prints it (or give it to libpq"
            " as PGPASSWORD and drop the ':***')"
        )
    database = make_url(url)
    if database.get_backend_name() == "sqlite" and not Path(database.database or "").exists():
        say("that file does not exist yet: `samsweep up` or `samsweep migrate` creates it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samsweep", description="Hyperparameter search for SAM.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + local worker; SQLite and an embedded broker by default")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--state-dir", type=Path, help="where the embedded default keeps its files")
    up.add_argument(
        "--concurrency", type=int, default=None,
        help="trials trained at once (default: the worker's, one slot per GPU; 1 on the CPU)",
    )  # fmt: skip
    up.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by `samsweep run`
    up.set_defaults(func=cmd_up)

    run = sub.add_parser(
        "run", help="submit a study spec (YAML/JSON), follow it, print the report and the best"
    )
    run.add_argument("spec", type=Path)
    add_connection(run)  # --server (alias --url): started if down unless given
    run.add_argument("--state-dir", type=Path)
    run.add_argument("--no-follow", action="store_true", help="print the study id and return")
    run.set_defaults(func=cmd_run)

    api = sub.add_parser("api", help="the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers", type=int, default=None,
        help="API processes behind the one port (default: the host's cores); one of them "
        "sweeps and dispatches",
    )  # fmt: skip
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="a Celery worker that trains trials")
    worker.add_argument(
        "--concurrency", type=int, default=None,
        help="slots (default: one per GPU of --gpus times SAMSWEEP_SLOTS_PER_GPU; 1 on the CPU)",
    )  # fmt: skip
    worker.add_argument(
        "--gpus", default="all", help="all (default), none, or ids as CUDA_VISIBLE_DEVICES takes "
        "them: 0,2; each slot's process sees only its GPU",
    )  # fmt: skip
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve the worker's Prometheus metrics on this port (default: none)",
    )  # fmt: skip
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of the metrics port (loopback)"
    )
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by `samsweep up`
    worker.add_argument(
        "--no-draw", dest="draw", action="store_false",
        help="do not draw GP studies' configurations on this host (another worker's does)",
    )  # fmt: skip
    worker.set_defaults(func=cmd_worker)

    mig = sub.add_parser("migrate", help="the service's migrations and Optuna's schema")
    mig.set_defaults(func=cmd_migrate)

    ou = sub.add_parser(
        "optuna-url",
        help="the storage URL for optuna-dashboard and optuna (schema included on PostgreSQL)",
    )
    ou.add_argument("--state-dir", type=Path)
    ou.add_argument("--show-password", action="store_true", help="print the password, not ***")
    ou.set_defaults(func=cmd_optuna_url)

    add_commands(sub)  # studies, status, ..., cancel, submit, extend, retry, delete
    add_data_commands(sub)  # data fetch
    return p


# Exit codes (docs/cli.md "Exit codes"): 0 done; 1 the API refused, could not be reached or did
# not answer as samsweep does, or (`run`, `best`) nothing completed; 2 bad input (usage,
# a spec file); 128 + N a signal (130: Ctrl-C); 70 a defect of samsweep itself.
EXIT_DEFECT = 70  # sysexits' EX_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C in `up`, `api`, `migrate`: what they started is stopped
        return 130
    except Interrupted as e:  # a signal in the last moments of `run`
        return 128 + e.signum
    except Exception as e:
        # Only a command that imported the client can have met the server (`worker` and
        # `api` never import it, so it is not imported here either).
        api = sys.modules.get("samsweep.client.api")
        if api is not None and isinstance(e, api.ClientError):
            say(api.one_line(str(e), 1000))  # the server, wherever a command met it
            return 1
        if os.environ.get("SAMSWEEP_TRACEBACK"):
            raise
        text = f"{type(e).__name__}: {e}".splitlines()[0][:500] if str(e) else type(e).__name__
        say(
            f"internal error: {text} (a samsweep defect: please report it;"
            " SAMSWEEP_TRACEBACK=1 shows the traceback)"
        )
        return EXIT_DEFECT
