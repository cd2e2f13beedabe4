"""The `samsweep` command: the embedded default (`up`, `run`) and the production parts
(`api`, `worker`, `migrate`). Heavy modules are imported inside each command."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from samsweep.settings import get_settings, reveal


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

    if args.parent_pid:
        _stop_after_parent(args.parent_pid, WORKER_STOP_GRACE)
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


# How long a stopping process waits for what it started before killing it: `up` gives its
# worker's warm shutdown (the running trial finishes its epoch) this long, and `run` gives
# `up` its uvicorn shutdown plus that. A child whose parent died allows itself the same.
WORKER_STOP_GRACE = 15.0
UP_STOP_GRACE = 30.0
# `run` interrupted: how long it waits for the cancelled study's running trials to stop.
CANCEL_WAIT = 60.0


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
        f"--parent-pid={os.getpid()}",
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
        worker = subprocess.Popen(worker_cmd, preexec_fn=_terminate_with_parent())
        if args.parent_pid:  # started by `samsweep run` (a thread: started after the fork)
            _stop_after_parent(args.parent_pid, UP_STOP_GRACE)
        uvicorn.run(create_app(settings), host=args.host, port=args.port)
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
    url = (args.url or settings.api_url).rstrip("/")
    run = _Run(url, reveal(settings.api_token), settings.state_dir)
    with _Signals() as signals:
        try:
            return run.submit_and_follow(
                spec, follow=not args.no_follow, signals=signals, url_given=bool(args.url)
            )
        except _Interrupted as e:
            run.interrupted(signals)
            return 128 + (signals.first or e.signum)
        finally:
            run.stop_server(signals)


class _Interrupted(BaseException):
    """SIGINT (Ctrl-C), SIGTERM or SIGHUP during `samsweep run`. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Signals:
    """While active, each stop signal raises _Interrupted in the main thread, except inside
    `deferred()`: there the first one waits for the block to end (a request in flight is
    answered, so its effect is known) and only a further one raises at once."""

    def __init__(self) -> None:
        self.first: int | None = None
        self._deferring = False
        self._pending: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in _STOP_SIGNALS}
        return self

    def __exit__(self, *_: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: object) -> None:
        if self.first is None:
            self.first = signum
        if self._deferring and self._pending is None:
            self._pending = signum
            return
        raise _Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring, self._pending = True, None
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            raise _Interrupted(self._pending)

    def ignore(self) -> None:
        """The last step of a cleanup: further signals have nothing left to hurry."""
        if self._previous:
            for s in _STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)


def _say(message: str) -> None:
    print(f"samsweep: {message}", file=sys.stderr, flush=True)


class _Run:
    """One `samsweep run`: what it started and submitted, so an interrupt can undo it."""

    def __init__(self, url: str, token: str | None, state_dir: Path) -> None:
        self.url, self.token, self.state_dir = url, token, state_dir
        self.server: subprocess.Popen | None = None
        self.study_id: str | None = None
        self.finished = False

    def submit_and_follow(
        self, spec: dict, follow: bool, signals: _Signals, url_given: bool
    ) -> int:
        import httpx

        from samsweep import client

        try:
            if not client.is_up(self.url):
                if url_given:
                    _say(f"no samsweep API answers at {self.url}")
                    return 1
                if not follow:  # the server would stop at once, leaving the study for later
                    _say(
                        f"no samsweep API answers at {self.url}, and --no-follow needs one that"
                        " outlives this command: start `samsweep up` first"
                    )
                    return 1
                self.start_server()
            with client.connect(self.url, self.token) as http:
                # A Ctrl-C during the POST waits for its answer: the study's id is then
                # known, so the study can be cancelled (or named) rather than lost.
                with signals.deferred():
                    self.study_id = client.submit(http, spec)
                if not follow:
                    print(self.study_id)
                    return 0
                started = time.monotonic()
                client.follow(http, self.study_id)
                self.finished = True
                return client.results(http, self.study_id, time.monotonic() - started)
        except client.Refused as e:
            _say(str(e))
            return 1
        except httpx.HTTPStatusError as e:
            r = e.response
            _say(f"the API answered {r.status_code} to {e.request.url.path}: {r.text[:300]}")
            return 1
        except httpx.HTTPError as e:
            _say(f"lost the API at {self.url}: {type(e).__name__}: {e}")
            return 1

    def start_server(self) -> None:
        from samsweep import client

        parts = urlsplit(self.url)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "up.log"
        _say(f"starting the embedded samsweep at {self.url} (log: {log_path})")
        with open(log_path, "ab") as log:
            self.server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "samsweep.cli",
                    "up",
                    f"--host={parts.hostname}",
                    f"--port={parts.port or 80}",
                    f"--parent-pid={os.getpid()}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C at the terminal reaches this process only, which
                # then cancels the study while the server still answers, and stops it.
                start_new_session=True,
                # Killed without cleaning up (SIGKILL), this process still stops it.
                preexec_fn=_terminate_with_parent(),
            )
        try:
            client.wait_until_up(self.url, timeout=120, process=self.server, poll=0.5)
        except (client.ServerExited, TimeoutError):
            raise SystemExit(
                f"samsweep: the embedded server did not start; see {log_path}"
            ) from None

    def interrupted(self, signals: _Signals) -> None:
        """After the first stop signal: cancel what only this command would have run."""
        import httpx

        from samsweep import client

        if sys.stderr.isatty():
            print(file=sys.stderr)  # end the progress bar's line
        sid = self.study_id
        if sid is None:
            _say("interrupted before the study was submitted")
            return
        if self.finished:
            _say(f"interrupted; study {sid} had finished")
            return
        hint = client.cancel_command(self.url, sid, token=bool(self.token))
        if self.server is None:
            _say(f"interrupted; study {sid} keeps running on {self.url}. To cancel it:\n  {hint}")
            return
        _say(f"interrupted; cancelling study {sid} (this command started the server it runs on)")
        cancelled = False
        try:
            with client.connect(self.url, self.token) as http:
                with signals.deferred():
                    detail = client.cancel(http, sid)
                    cancelled = True
                running = detail["counts"]["RUNNING"]
                if not running:
                    _say(f"cancelled study {sid}")
                    return
                _say(
                    f"cancelled study {sid}; waiting up to {CANCEL_WAIT:.0f}s for its {running}"
                    " running trial(s) to stop at the end of their epoch (Ctrl-C again: stop now)"
                )
                if not client.wait_stopped(http, sid, CANCEL_WAIT):
                    _say(
                        "a trial is still running; it stops at its next epoch boundary when"
                        " `samsweep up` runs again"
                    )
        except _Interrupted:
            _say(f"{'cancelled study ' + sid + '; ' if cancelled else ''}not waiting any longer")
        except (httpx.HTTPError, KeyError) as e:
            _say(
                f"could not cancel study {sid} ({e}); cancel it with `samsweep up` running:"
                f"\n  {hint}"
            )

    def stop_server(self, signals: _Signals) -> None:
        server = self.server
        if server is None or server.poll() is not None:
            return
        if signals.first is not None:
            _say("stopping the embedded server (Ctrl-C again: kill it)")
        try:
            server.terminate()  # `up` stops uvicorn, then its worker (warm shutdown)
            server.wait(timeout=UP_STOP_GRACE + 5)
        except (_Interrupted, subprocess.TimeoutExpired):
            signals.ignore()
            server.kill()  # the kernel then sends its worker SIGTERM (PR_SET_PDEATHSIG)
            server.wait()


PR_SET_PDEATHSIG = 1


@lru_cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl


def _terminate_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux send the child SIGTERM when this process dies, however
    it dies (SIGKILL included). The death is that of the thread that forks: call Popen
    from the main thread. Elsewhere None; the child's --parent-pid watch still applies."""
    prctl = _prctl()  # looked up here: the child, between fork and exec, only calls it
    if prctl is None:
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), sigterm)

    return preexec


def _stop_after_parent(parent_pid: int, grace: float) -> None:
    """For a process started by another samsweep process: once that parent is gone (the
    kernel has sent SIGTERM here, PR_SET_PDEATHSIG, and a graceful stop has begun), allow
    `grace` seconds, then SIGKILL this process, as the parent would have. Bounds how long
    an orphan lives even if its graceful stop waits on a long epoch or a stuck request."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        if _prctl() is None:  # no PR_SET_PDEATHSIG here: begin the graceful stop ourselves
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="stop-after-parent", daemon=True).start()


def cmd_optuna_url(args: argparse.Namespace) -> int:
    """The storage URL for Optuna's own tools (optuna-dashboard, optuna.load_study)."""
    _use_state_dir(args.state_dir)
    settings = get_settings()
    try:
        url = settings.resolved_optuna_url
    except ValueError as e:
        _say(str(e))
        return 2
    shown = url if args.show_password else _redact(url)
    print(shown)
    if shown != url:
        _say(
            "the password is hidden: --show-password prints it (or give it to libpq"
            " as PGPASSWORD and drop the ':***')"
        )
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        _say("that file does not exist yet: `samsweep up` or `samsweep migrate` creates it")
    return 0


def _redact(url: str) -> str:
    """The URL with its password (if any) shown as ***."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or not password:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samsweep", description="Hyperparameter search for SAM.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + local worker; SQLite and an embedded broker by default")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--state-dir", type=Path, help="where the embedded default keeps its files")
    up.add_argument("--concurrency", type=int, default=1, help="trials trained at once")
    up.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by `samsweep run`
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
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # set by `samsweep up`
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C in `up`, `api`, `migrate`: what they started is stopped
        return 130
    except _Interrupted as e:  # a signal in the last moments of `run`
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main())
