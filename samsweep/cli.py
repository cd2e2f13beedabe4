"""The `samsweep` command: the embedded default (`up`, `run`) and the production parts
(`api`, `worker`, `migrate`). Heavy modules are imported inside each command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from samsweep.settings import get_settings


def _use_state_dir(state_dir: Path | None) -> None:
    if state_dir is not None:
        os.environ["SAMSWEEP_STATE_DIR"] = str(state_dir)
        get_settings.cache_clear()


def cmd_migrate(_: argparse.Namespace) -> int:
    from samsweep.migrate import migrate

    settings = get_settings()
    migrate(settings)
    print(f"migrated {_redact(settings.resolved_database_url)}; Optuna storage ready")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.app import app

    argv = [
        "worker",
        f"--loglevel={args.loglevel}",
        f"--concurrency={args.concurrency}",
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

    from samsweep.migrate import migrate
    from samsweep.queue import declare_queue, make_celery
    from service.app import create_app

    _use_state_dir(args.state_dir)
    settings = get_settings()
    migrate(settings)
    declare_queue(make_celery(settings), settings.queue)
    worker_cmd = [
        sys.executable,
        "-m",
        "samsweep.cli",
        "worker",
        f"--concurrency={args.concurrency}",
    ]
    worker = subprocess.Popen(worker_cmd)
    # uvicorn shuts down on SIGTERM, then re-raises it into the handler that was there
    # before it started. With the default handler that kills this process before the
    # `finally` below, orphaning the worker; this handler turns it into SystemExit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port)
    finally:
        worker.terminate()  # warm shutdown: the running trial finishes its epoch or is re-run
        try:
            worker.wait(timeout=15)
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
    except (OSError, ValueError) as e:
        print(f"samsweep: {e}", file=sys.stderr)
        return 2
    url = (args.url or settings.api_url).rstrip("/")
    server = None
    if not client.is_up(url):
        if args.url:
            print(f"samsweep: no samsweep API answers at {url}", file=sys.stderr)
            return 1
        server = _start_embedded(url, settings.state_dir)
    try:
        return client.run_study(url, spec, follow=not args.no_follow, token=settings.api_token)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def _start_embedded(url: str, state_dir: Path) -> subprocess.Popen:
    from samsweep import client

    parts = urlsplit(url)
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "up.log"
    print(f"starting the embedded samsweep at {url} (log: {log_path})", file=sys.stderr)
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "samsweep.cli",
                "up",
                f"--host={parts.hostname}",
                f"--port={parts.port or 80}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not client.is_up(url):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"samsweep: the embedded server did not start; see {log_path}")
        time.sleep(0.5)
    return server


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samsweep", description="Hyperparameter search for SAM.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + local worker; SQLite and an embedded broker by default")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--state-dir", type=Path, help="where the embedded default keeps its files")
    up.add_argument("--concurrency", type=int, default=1, help="trials trained at once")
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="submit a study spec (YAML/JSON), follow it, print the best")
    run.add_argument("spec", type=Path)
    run.add_argument("--url", help="API to submit to (default SAMSWEEP_API_URL; started if down)")
    run.add_argument("--state-dir", type=Path)
    run.add_argument("--no-follow", action="store_true", help="print the study id and return")
    run.set_defaults(func=cmd_run)

    api = sub.add_parser("api", help="the HTTP API (uvicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="a Celery worker that trains trials")
    worker.add_argument("--concurrency", type=int, default=1, help="slots; one per GPU")
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    mig = sub.add_parser("migrate", help="the service's migrations and Optuna's schema")
    mig.set_defaults(func=cmd_migrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
