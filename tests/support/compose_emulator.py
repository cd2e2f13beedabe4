"""Run what a docker-compose.yml describes as local processes, without a Docker engine.

The compose file is data. This module reads it the way `docker compose up` would and
starts every service's command as a local process, with that service's environment
and only its declared volumes:

- interpolation: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
  `${VAR?message}`, `${VAR:+replacement}`, `${VAR+replacement}`, nested
  (`${VAR:-${OTHER}}`), `$VAR` and `$$`, from the environment a test passes (what a
  user's `.env` would hold); never from this process's own environment. A `$` that
  starts none of these is an error, as in `docker compose`.
- images: a service that is built (`build:`), or that names an image another service
  builds, runs its `command` (or its Dockerfile stage's `CMD`) with the stage's `ENV`
  and `WORKDIR` (`ENV` in both its forms, `$VAR` in it substituted from the stage's
  earlier `ENV`, as Docker does). Its executables come from this Python's bin
  directory, which stands for the image's PATH. A service on an external image is
  provided by a local server: `postgres:*` by a fresh database on the local
  PostgreSQL (and the role the image would create from POSTGRES_USER /
  POSTGRES_PASSWORD), `redis:*` by a dedicated database index on the local Redis,
  flushed at the end. Any other external image is an error: the emulation never
  pretends.
- service hostnames: a URL in an environment value or command argument whose host is
  a service becomes 127.0.0.1 and the port where that service really listens here
  (for PostgreSQL also the fresh database's name; for Redis the dedicated index).
  The credentials in the URL must be the ones the postgres image was given.
- volumes: each container gets a private, empty root directory (its writable layer).
  Named volumes are directories shared by every service that mounts them; bind
  mounts are their host path (relative to the project directory). Every environment
  value that is an absolute container path is rewritten to the host directory of the
  volume mounted there, or, with no volume there, to the same path inside the
  container's private root: a service reading data that is not mounted sees nothing,
  and what it writes there is lost when the container is recreated. `:ro` is checked
  after the fact: nothing under a read-only mount may change
  (`assert_read_only_mounts_untouched`). The working directory is the stage's WORKDIR
  inside the private root, so relative paths land in the writable layer too.
- ports: `[HOST_IP:]HOST:CONTAINER`. A command that listens (`--host`, `--port`)
  on a published container port listens here on the published host IP (0.0.0.0 when
  none, as Docker publishes) and a free host port chosen for it. A command listening
  on loopback inside its container behind a published port is an error, because
  Docker's port forwarding would reach nothing.
- depends_on: services start in dependency order; `service_started`,
  `service_healthy` (the service's own healthcheck, run here with its container port
  mapped to where it listens; the local server's readiness for a provided service)
  and `service_completed_successfully` (exit status 0) are waited for.
- GPUs: the emulated host has `gpus` fake NVIDIA GPUs (default 2). A service that
  reserves nvidia devices sees the ones it reserved (`count: all`, or `count: N`) as
  Docker's NVIDIA runtime shows them: through an `nvidia-smi` on its PATH that lists
  them (`nvidia-smi -L`). No GPU computes here, so it gets SAMSWEEP_DEVICE=cpu and
  SAMSWEEP_TORCH_THREADS=1: the only compose values overridden; test speed-ups
  (`extra_env`) are added only where the service sets nothing.
- not emulated: restart policies (a test restarts a service by calling `start`),
  networks (every service reaches every other by its name, as on Compose's one
  default network), resource limits, the volumes of provided services (the local
  servers keep their own data). A service key or top-level key this module does not
  know is an error (`x-` extensions, `name` and `version` aside), as is a depends_on
  naming no service, so a new compose feature is never silently ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

KNOWN_SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "environment",
    "volumes",
    "ports",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "stop_grace_period",
}
KNOWN_TOP_LEVEL_KEYS = {"services", "volumes", "name", "version"}
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_GRACE_SECONDS = 20.0  # stop_grace_period is capped so teardown stays bounded


class EmulationError(Exception):
    """The file describes something this emulation cannot run faithfully, or that
    `docker compose` itself would refuse."""


# --- interpolation ------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution on one string."""
    out, i = [], 0
    while i < len(value):
        if value[i] != "$":
            out.append(value[i])
            i += 1
            continue
        text, i = _substitute(value, i, env)
        out.append(text)
    return "".join(out)


def _substitute(value: str, i: int, env: dict[str, str]) -> tuple[str, int]:
    """The text `$...` at value[i] stands for, and where the rest of value begins."""
    if value.startswith("$$", i):
        return "$", i + 2
    if not value.startswith("${", i):
        m = _NAME.match(value, i + 1)
        if m is None:
            raise EmulationError(f"invalid interpolation format in {value!r}")
        return env.get(m[0]) or "", m.end()
    m = _NAME.match(value, i + 2)
    if m is None:
        raise EmulationError(f"invalid interpolation format in {value!r}")
    name, j = m[0], m.end()
    op = next((o for o in _OPS if value.startswith(o, j)), None)
    if op is None:
        if not value.startswith("}", j):
            raise EmulationError(f"invalid interpolation format in {value!r}")
        return env.get(name) or "", j + 1
    # the argument runs to the matching brace; nested ${...} are substituted in it
    depth, k, j = 0, j + len(op), j + len(op)
    while k < len(value) and (value[k] != "}" or depth):
        if value.startswith("${", k):
            depth, k = depth + 1, k + 2
            continue
        depth -= value[k] == "}"
        k += 1
    if k == len(value):
        raise EmulationError(f"invalid interpolation format in {value!r}: no closing brace")
    current = env.get(name)
    unset = current is None or (op.startswith(":") and current == "")
    if op in (":-", "-"):
        return (interpolate(value[j:k], env) if unset else current), k + 1
    if op in (":+", "+"):
        return ("" if unset else interpolate(value[j:k], env)), k + 1
    if unset:
        message = interpolate(value[j:k], env)
        raise EmulationError(f"required variable {name} is missing a value: {message}")
    return current, k + 1  # type: ignore[return-value]


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def parse_duration(value: str | int | float | None, default: float) -> float:
    """Compose durations: 1m30s, 5s, 500ms, 2h; a bare number is seconds."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise EmulationError(f"unparsable duration {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- the file's parts ----------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    host_ip: str | None  # None: all interfaces, as Docker publishes by default
    host_port: int
    container_port: int


def parse_port(spec: str | int | dict) -> Port:
    if isinstance(spec, dict):  # long syntax
        if spec.get("protocol", "tcp") != "tcp":
            raise EmulationError(f"port {spec!r}: only tcp is emulated")
        return Port(spec.get("host_ip"), int(spec["published"]), int(spec["target"]))
    text = str(spec)
    if "/" in text:
        text, proto = text.split("/", 1)
        if proto != "tcp":
            raise EmulationError(f"port {spec!r}: only tcp is emulated")
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        raise EmulationError(f"port {spec!r}: a container port published on a random port")
    if len(parts) == 2:
        return Port(None, int(parts[0]), int(parts[1]))
    return Port(parts[0].strip("[]") or None, int(parts[1]), int(parts[2]))


@dataclass(frozen=True)
class Mount:
    source: Path  # the host directory
    target: PurePosixPath  # where the container sees it
    read_only: bool
    volume: str | None  # the named volume, None for a bind mount


@dataclass
class Stage:
    """One Dockerfile stage, with what it inherits from the stages it is built on."""

    env: dict[str, str]
    workdir: str
    cmd: list[str] | None


def parse_dockerfile(path: Path) -> dict[str, Stage]:
    lines = path.read_text().replace("\\\n", " ").splitlines()
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        inst, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if inst == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, line
            parent = stages.get(m[1])
            current = Stage(
                dict(parent.env) if parent else {},
                parent.workdir if parent else "/",
                parent.cmd if parent else None,
            )
            if m[2]:
                stages[m[2]] = current
        elif current is None:
            continue
        elif inst == "ENV":
            before = dict(current.env)  # one instruction's values see the env before it
            first = rest.split(None, 1)
            if "=" not in first[0]:  # the legacy form: ENV KEY the rest of the line
                pairs = [(first[0], first[1].strip() if len(first) > 1 else "")]
            else:
                pairs = [item.partition("=")[::2] for item in shlex.split(rest)]
            for key, value in pairs:
                current.env[key] = interpolate(value.replace("$$", "$$$$"), before)
        elif inst == "WORKDIR":
            current.workdir = str(PurePosixPath(current.workdir) / rest.strip())
        elif inst == "CMD":
            current.cmd = json.loads(rest) if rest.startswith("[") else ["sh", "-c", rest]
    return stages


def _is_path(value: str) -> bool:
    return value.startswith("/") and not value.startswith("//")


# --- local servers standing in for external images ---------------------------------


class LocalPostgres:
    """The postgres image: a role from POSTGRES_USER / POSTGRES_PASSWORD and a fresh
    database standing in for POSTGRES_DB, on the local server (admin URL given)."""

    container_port = 5432

    def __init__(self, env: dict[str, str], admin_url: str):
        from sqlalchemy.engine import make_url

        if "POSTGRES_PASSWORD" not in env:
            raise EmulationError("the postgres image refuses to start without POSTGRES_PASSWORD")
        self.user = env.get("POSTGRES_USER", "postgres")
        self.password = env["POSTGRES_PASSWORD"]
        self.database = env.get("POSTGRES_DB", self.user)
        self.admin = make_url(admin_url)
        self.fresh = f"compose_{secrets.token_hex(6)}"
        self.created_role = False
        self.started = False

    def _admin_engine(self):
        from sqlalchemy import create_engine

        return create_engine(self.admin, isolation_level="AUTOCOMMIT")

    def start(self) -> None:
        from sqlalchemy import text

        engine = self._admin_engine()
        with engine.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": self.user}
            )
            quoted = '"' + self.user.replace('"', '""') + '"'
            # the image's POSTGRES_USER is a superuser (its init script makes it so)
            password = self.password.replace("'", "''")
            verb = "ALTER" if exists else "CREATE"
            conn.execute(text(f"{verb} ROLE {quoted} LOGIN SUPERUSER PASSWORD '{password}'"))
            self.created_role = not exists
            conn.execute(text(f'CREATE DATABASE "{self.fresh}" OWNER {quoted}'))
        engine.dispose()
        self.started = True

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.port or self.container_port) != self.container_port:
            raise EmulationError(f"{url}: the postgres container listens on 5432 only")
        if (parts.username, parts.password) != (self.user, self.password) and not (
            self.started and self._role_created_by_a_service(parts.username)
        ):
            raise EmulationError(f"{url}: not the role and password the postgres image created")
        if parts.path.lstrip("/") != self.database:
            raise EmulationError(f"{url}: the postgres image creates {self.database!r} only")
        netloc = f"{parts.username}:{parts.password}@{self.admin.host}:{self.admin.port or 5432}"
        return urlunsplit(parts._replace(netloc=netloc, path=f"/{self.fresh}"))

    def _role_created_by_a_service(self, role: str | None) -> bool:
        """A role another service made (samsweep migrate's read-only dashboard role), by
        the time a service using it starts. Trust auth cannot check its password here."""
        from sqlalchemy import text

        engine = self._admin_engine()
        with engine.connect() as conn:
            found = conn.scalar(
                text("SELECT has_database_privilege(:r, :db, 'CONNECT') FROM pg_roles"
                     " WHERE rolname = :r AND rolcanlogin"),
                {"r": role or "", "db": self.fresh},
            )  # fmt: skip
        engine.dispose()
        return bool(found)

    def healthy(self) -> bool:
        from sqlalchemy import create_engine, text

        url = self.admin.set(username=self.user, password=self.password, database=self.fresh)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return conn.scalar(text("SELECT 1")) == 1
        except Exception:
            return False
        finally:
            engine.dispose()

    def close(self) -> None:
        from sqlalchemy import text

        if not self.started:
            return
        engine = self._admin_engine()
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.fresh}" WITH (FORCE)'))
            if self.created_role:
                quoted = '"' + self.user.replace('"', '""') + '"'
                # another database still belonging to it: leave it
                with contextlib.suppress(Exception):
                    conn.execute(text(f"DROP ROLE IF EXISTS {quoted}"))
        engine.dispose()


class LocalRedis:
    """The redis image: each database index a URL names becomes an empty index of the
    local server that no one else uses (claimed with a marker key), flushed at the end."""

    container_port = 6379
    MARKER = "samsweep-compose-emulator"

    def __init__(self, env: dict[str, str], admin_url: str):
        parts = urlsplit(admin_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.indexes: dict[int, int] = {}  # container index -> local index
        self.started = False

    def _client(self, db: int):
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        self.started = True

    def _claim(self) -> int:
        taken = set(self.indexes.values())
        for db in range(15, 0, -1):  # 0 belongs to the other tests (their own queues)
            if db in taken:
                continue
            client = self._client(db)
            if client.dbsize() == 0 and client.set(self.MARKER, "1", nx=True, ex=6 * 3600):
                return db
        raise EmulationError("no empty Redis database index to claim")

    def rewrite(self, url: str) -> str:
        parts = urlsplit(url)
        if (parts.port or self.container_port) != self.container_port:
            raise EmulationError(f"{url}: the redis container listens on 6379 only")
        index = int(parts.path.lstrip("/") or 0)
        if index not in self.indexes:
            self.indexes[index] = self._claim()
        netloc = f"{self.host}:{self.port}"
        if parts.password:
            netloc = f"{parts.username or ''}:{parts.password}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc, path=f"/{self.indexes[index]}"))

    def healthy(self) -> bool:
        try:
            return bool(self._client(0).ping())
        except Exception:
            return False

    def close(self) -> None:
        for db in self.indexes.values():
            self._client(db).flushdb()
        self.indexes.clear()


PROVIDERS = {"postgres": LocalPostgres, "redis": LocalRedis}


# --- containers ---------------------------------------------------------------------


@dataclass
class Container:
    """One run of a service: its process, private root, environment and mounts."""

    service: str
    number: int
    root: Path
    mounts: list[Mount]
    env: dict[str, str]
    argv: list[str]
    cwd: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    def host_path(self, container_path: str) -> Path:
        """Where this container's path lies on the host: on a volume, or in its root."""
        p = PurePosixPath(container_path)
        for m in sorted(self.mounts, key=lambda m: len(m.target.parts), reverse=True):
            if p == m.target or m.target in p.parents:
                return m.source / p.relative_to(m.target)
        return self.root / str(p).lstrip("/")

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class _Service:
    name: str
    spec: dict[str, Any]
    stage: Stage | None  # None for a provided (external image) service
    provider: LocalPostgres | LocalRedis | None = None
    listens: dict[int, tuple[str, int]] = field(default_factory=dict)  # cport -> (ip, port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


class Emulation:
    """A compose project run as local processes (see the module docstring).

    `env`: the variables compose would interpolate from (a user's `.env`).
    `extra_env`: added to every built service's environment where the file sets none
    of those keys (test speed-ups); `raw`: the parsed file, to run a modified copy.
    """

    def __init__(
        self,
        compose_file: Path,
        env: dict[str, str],
        workdir: Path,
        *,
        project_dir: Path | None = None,
        admin_postgres: str,
        admin_redis: str,
        extra_env: dict[str, str] | None = None,
        raw: dict[str, Any] | None = None,
        gpus: int = 2,
    ):
        self.project_dir = project_dir or compose_file.parent
        self.gpus = gpus
        self.workdir = workdir
        self.extra_env = dict(extra_env or {})
        raw = raw if raw is not None else yaml.safe_load(compose_file.read_text())
        unknown = {k for k in raw if not k.startswith("x-")} - KNOWN_TOP_LEVEL_KEYS
        if unknown:
            raise EmulationError(f"the emulation does not model top-level {sorted(unknown)}")
        self.file = interpolate_tree(raw, env)
        self.containers: dict[str, list[Container]] = {}
        self._closed = False
        self._snapshots: dict[Path, dict[str, tuple[int, int]]] = {}
        self.volumes = {name: workdir / "volumes" / name for name in self.file.get("volumes") or {}}
        for name, options in (self.file.get("volumes") or {}).items():
            if options:  # a driver, driver_opts, external...: not a local directory
                raise EmulationError(f"volume {name}: only plain named volumes are emulated")
            self.volumes[name].mkdir(parents=True, exist_ok=True)
        self.services = self._read_services(admin_postgres, admin_redis)
        self._assign_ports()
        mounts = [m for service in self.services.values() for m in self._mounts(service)]
        writable = {m.source for m in mounts if not m.read_only}
        for source in {m.source for m in mounts if m.read_only} - writable:
            self._snapshots[source] = _snapshot(source)

    # --- reading the file ------------------------------------------------------------
    def _read_services(self, admin_postgres: str, admin_redis: str) -> dict[str, _Service]:
        stages = {}
        dockerfiles: dict[str, dict[str, Stage]] = {}
        services = self.file["services"]
        built_images = {}
        for name, spec in services.items():
            unknown = set(spec) - KNOWN_SERVICE_KEYS
            if unknown:
                raise EmulationError(f"{name}: the emulation does not model {sorted(unknown)}")
            for dep in _depends_on(spec):
                if dep not in services:
                    raise EmulationError(f"{name} depends on undefined service {dep!r}")
            if "build" in spec:
                build = spec["build"]
                build = {"context": build} if isinstance(build, str) else build
                dockerfile = (
                    self.project_dir
                    / build.get("context", ".")
                    / build.get("dockerfile", "Dockerfile")
                )
                key = str(dockerfile)
                if key not in dockerfiles:
                    dockerfiles[key] = parse_dockerfile(dockerfile)
                target = build.get("target")
                if target not in dockerfiles[key]:
                    raise EmulationError(f"{name}: no Dockerfile stage {target!r}")
                stages[name] = dockerfiles[key][target]
                if "image" in spec:
                    built_images[spec["image"]] = stages[name]
        result = {}
        for name, spec in services.items():
            stage = stages.get(name) or built_images.get(spec.get("image"))
            service = _Service(name, spec, stage)
            if stage is None:
                image = spec.get("image", "")
                repo = image.split("/")[-1].split(":")[0]
                if repo not in PROVIDERS:
                    raise EmulationError(f"{name}: no local stand-in for image {image!r}")
                admin = admin_postgres if repo == "postgres" else admin_redis
                service.provider = PROVIDERS[repo](_environment(spec), admin)
            result[name] = service
        return result

    def _command(self, service: _Service) -> list[str]:
        cmd = service.spec.get("command", service.stage.cmd if service.stage else None)
        if cmd is None:
            raise EmulationError(f"{service.name}: no command and no CMD")
        return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]

    def _assign_ports(self) -> None:
        """Where each built service listens here, from its command and published ports."""
        for service in self.services.values():
            if service.provider is not None:
                continue
            published = {}
            for p in map(parse_port, service.spec.get("ports") or []):
                published[p.container_port] = p
            flags = _listen_flags(self._command(service))
            if "port" not in flags:
                if published:
                    raise EmulationError(f"{service.name}: publishes ports it does not listen on")
                continue
            cport, chost = int(flags["port"]), flags.get("host", "127.0.0.1")
            if cport in published:
                if chost not in WILDCARD_HOSTS:
                    raise EmulationError(
                        f"{service.name}: listens on {chost} inside its container; the "
                        f"published port {published[cport].host_port} would reach nothing"
                    )
                ip = published[cport].host_ip or "0.0.0.0"
                service.listens[cport] = (ip, free_port(ip))
            else:  # reachable by the other services only (the project's network)
                service.listens[cport] = ("127.0.0.1", free_port())
            if set(published) - {cport}:
                raise EmulationError(f"{service.name}: publishes ports it does not listen on")

    def _mounts(self, service: _Service) -> list[Mount]:
        if service.provider is not None:
            return []  # the local server keeps its own data
        mounts = []
        for v in service.spec.get("volumes") or []:
            if isinstance(v, dict):
                source, target = v.get("source", ""), v["target"]
                ro = bool(v.get("read_only"))
                if v.get("type", "volume") not in ("volume", "bind"):
                    raise EmulationError(f"{service.name}: volume type {v['type']!r}")
            else:
                parts = v.split(":")
                if len(parts) == 1:
                    raise EmulationError(f"{service.name}: anonymous volume {v!r}")
                source, target = parts[0], parts[1]
                options = parts[2].split(",") if len(parts) > 2 else []
                ro = "ro" in options
            if source.startswith(("/", ".", "~")):
                host = (self.project_dir / Path(source).expanduser()).resolve()
                if not host.exists():
                    raise EmulationError(f"{service.name}: bind mount source {host} is missing")
                mounts.append(Mount(host, PurePosixPath(target), ro, None))
            else:
                if source not in self.volumes:
                    raise EmulationError(f"{service.name}: undefined volume {source!r}")
                mounts.append(Mount(self.volumes[source], PurePosixPath(target), ro, source))
        return mounts

    def _gpu(self, service: _Service) -> int:
        """How many of the host's GPUs the service reserves (0: none)."""
        deploy = service.spec.get("deploy") or {}
        if set(deploy) - {"resources"} or set(deploy.get("resources", {})) - {"reservations"}:
            raise EmulationError(f"{service.name}: only deploy.resources.reservations is emulated")
        devices = deploy.get("resources", {}).get("reservations", {}).get("devices", [])
        reserved = 0
        for d in devices:
            if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", []):
                if "device_ids" in d:
                    raise EmulationError(f"{service.name}: device_ids are not emulated")
                count = d.get("count", "all")  # Docker's default for a device request
                reserved += self.gpus if count == "all" else min(int(count), self.gpus)
        return min(reserved, self.gpus)

    def _fake_nvidia_smi(self, c: Container, gpus: int) -> str:
        """A directory holding an `nvidia-smi` that lists the container's GPUs."""
        bin_dir = c.root / ".fake-nvidia"
        bin_dir.mkdir(exist_ok=True)
        lines = "\n".join(f"GPU {i}: Emulated GPU (UUID: GPU-emulated-{i})" for i in range(gpus))
        script = bin_dir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\nprintf '{lines}\\n'\n")
        script.chmod(0o755)
        return str(bin_dir)

    # --- rewriting values ------------------------------------------------------------
    def _rewrite_urls(self, value: str) -> str:
        def sub(m: re.Match) -> str:
            url = m[0]
            host = urlsplit(url).hostname
            service = self.services.get(host or "")
            if service is None:
                return url
            if service.provider is not None:  # not started yet: refused, as in Docker
                return service.provider.rewrite(url)
            parts = urlsplit(url)
            if parts.port not in service.listens:
                raise EmulationError(f"{url}: {host} does not listen on {parts.port}")
            ip, port = service.listens[parts.port]
            netloc = parts.netloc.rsplit("@", 1)
            userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
            addr = "127.0.0.1" if ip in WILDCARD_HOSTS else ip
            return urlunsplit(parts._replace(netloc=f"{userinfo}{addr}:{port}"))

        return _URL.sub(sub, value)

    def _rewrite(self, value: str, container: Container) -> str:
        value = self._rewrite_urls(value)
        return str(container.host_path(value)) if _is_path(value) else value

    # --- running ---------------------------------------------------------------------
    def prepare(self, name: str) -> Container:
        """The next container of built service `name` as `start` runs it: its fresh
        writable layer, mounts, environment, command and working directory; not started."""
        service = self.services[name]
        if service.stage is None:
            raise EmulationError(f"{name} is provided by a local server, not a container")
        number = len(self.containers.get(name) or []) + 1
        while (self.workdir / "containers" / f"{name}-{number}").exists():
            number += 1  # one prepared and never started keeps its number
        root = self.workdir / "containers" / f"{name}-{number}"
        root.mkdir(parents=True)
        log_path = self.workdir / "logs" / f"{name}-{number}.log"
        log_path.parent.mkdir(exist_ok=True)
        c = Container(name, number, root, self._mounts(service), {}, [], root, log_path)
        c.cwd = c.host_path(service.stage.workdir)
        c.cwd.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(c.host_path("/root")),  # created below
            "LANG": "C.UTF-8",
            **service.stage.env,
        }
        compose_env = {k: self._rewrite(v, c) for k, v in _environment(service.spec).items()}
        env.update(compose_env)
        env.update({k: v for k, v in self.extra_env.items() if k not in compose_env})
        if gpus := self._gpu(service):  # listed by nvidia-smi, computed on one CPU thread
            env["PATH"] = f"{self._fake_nvidia_smi(c, gpus)}:{env['PATH']}"
            env.update(SAMSWEEP_DEVICE="cpu", SAMSWEEP_TORCH_THREADS="1")
        c.env = env
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        argv = [self._rewrite(a, c) for a in self._command(service)]
        c.argv = _listen_here(argv, service.listens)
        return c

    def start(self, name: str) -> Container:
        """Start one container of `name` (a fresh writable layer, the same volumes)."""
        service = self.services[name]
        runs = self.containers.setdefault(name, [])
        if service.provider is not None:
            if not service.provider.started:
                service.provider.start()
            return None  # type: ignore[return-value]
        if any(c.running for c in runs):
            raise EmulationError(f"{name} is already running")
        c = self.prepare(name)
        env = c.env
        exe = shutil.which(c.argv[0], path=env["PATH"])
        if exe is None:
            raise EmulationError(f"{name}: {c.argv[0]} is not in the image's PATH")
        with open(c.log_path, "ab") as log:
            c.proc = subprocess.Popen(
                [exe, *c.argv[1:]],
                env=env,
                cwd=c.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # so the whole process group can be signalled
            )
        runs.append(c)
        return c

    def up(self, *names: str, timeout: float = 180) -> None:
        """Start `names` and what they depend on, honouring the depends_on conditions."""
        for name in self.start_order(*names):
            for dep, condition in _depends_on(self.services[name].spec).items():
                self.wait_for(dep, condition, timeout)
            provider = self.services[name].provider
            if provider is not None and not provider.started:
                self.start(name)
            elif provider is None and not self.containers.get(name):
                self.start(name)  # once: a one-shot that completed is not run again

    def start_order(self, *names: str) -> list[str]:
        """`names` and what they depend on, each after its dependencies."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in path:
                raise EmulationError(f"dependency cycle: {' -> '.join((*path, name))}")
            for dep in _depends_on(self.services[name].spec):
                visit(dep, (*path, name))
            if name not in order:
                order.append(name)

        for name in names:
            visit(name, ())
        return order

    def current(self, name: str) -> Container | None:
        runs = self.containers.get(name) or []
        return runs[-1] if runs else None

    def wait_for(self, name: str, condition: str, timeout: float = 180) -> None:
        service = self.services[name]
        deadline = time.monotonic() + timeout
        if condition == "service_started":
            return
        if condition == "service_completed_successfully":
            c = self.current(name)
            if c is None:
                raise EmulationError(f"{name} was never started")
            try:
                rc = c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise EmulationError(f"{name} did not finish in {timeout}s\n{c.log()}") from None
            if rc != 0:
                raise EmulationError(f"{name} exited with {rc}\n{c.log()}")
            return
        if condition != "service_healthy":
            raise EmulationError(f"unknown depends_on condition {condition!r}")
        while time.monotonic() < deadline:
            if self.healthy(name):
                return
            c = self.current(name)
            if service.provider is None and c is not None and not c.running:
                raise EmulationError(f"{name} exited with {c.proc.returncode}\n{c.log()}")
            time.sleep(0.3)  # the poll interval of compose's service_healthy wait
        raise EmulationError(f"{name} not healthy after {timeout}s\n{self.logs()}")

    def healthy(self, name: str) -> bool:
        service = self.services[name]
        if service.provider is not None:
            return service.provider.healthy()
        check = service.spec.get("healthcheck")
        if not check or check.get("disable"):
            raise EmulationError(f"{name} has no healthcheck; service_healthy cannot be met")
        test = check["test"]
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if test[0] == "NONE":
            raise EmulationError(f"{name}: healthcheck disabled")
        c = self.current(name)
        if c is None or not c.running:
            return False
        args = [_to_listen_address(str(a), service.listens) for a in test[1:]]
        argv = ["sh", "-c", args[0]] if test[0] == "CMD-SHELL" else args
        exe = shutil.which(argv[0], path=c.env["PATH"])
        if exe is None:
            raise EmulationError(f"{name}: healthcheck {argv[0]} is not in the image's PATH")
        try:
            result = subprocess.run(
                [exe, *argv[1:]],
                env=c.env,
                cwd=c.cwd,
                capture_output=True,
                timeout=parse_duration(check.get("timeout"), 30),
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def url(self, name: str, container_port: int, host: str | None = None) -> str:
        """http:// where a published port is reachable from this host."""
        ip, port = self.services[name].listens[container_port]
        return f"http://{host or ('127.0.0.1' if ip in WILDCARD_HOSTS else ip)}:{port}"

    def listen_address(self, name: str, container_port: int) -> tuple[str, int]:
        return self.services[name].listens[container_port]

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        c = self.current(name)
        if c is not None and c.running:
            os.killpg(c.proc.pid, sig)
            c.proc.wait(timeout=30)

    def stop(self, c: Container) -> None:
        """SIGTERM to the container's process group, SIGKILL after its grace period."""
        if c.proc is None:
            return
        spec = self.services[c.service].spec
        grace = min(parse_duration(spec.get("stop_grace_period"), 10.0), MAX_GRACE_SECONDS)
        if c.proc.poll() is None:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
                c.proc.wait(timeout=grace)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.proc.pid, signal.SIGKILL)  # whatever is left of the group
        c.proc.wait(timeout=30)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {c.service}-{c.number} (rc={c.proc.poll()})\n{c.log(tail)}"
            for runs in self.containers.values()
            for c in runs
            if c is not None
        )

    def assert_read_only_mounts_untouched(self) -> None:
        for source, before in self._snapshots.items():
            after = _snapshot(source)
            assert after == before, f"a process wrote into the read-only mount {source}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        started = [c for runs in self.containers.values() for c in runs if c is not None]
        for c in reversed(started):
            self.stop(c)
        for service in self.services.values():
            if service.provider is not None:
                service.provider.close()

    def __enter__(self) -> Emulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    missing = [k for k, v in env.items() if v is None]
    if missing:
        raise EmulationError(f"environment {missing} passed through from the shell: give values")
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in env.items()}


def _depends_on(spec: dict[str, Any]) -> dict[str, str]:
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def _listen_flags(argv: list[str]) -> dict[str, str]:
    flags = {}
    for i, a in enumerate(argv):
        for flag in ("host", "port"):
            if a == f"--{flag}" and i + 1 < len(argv):
                flags[flag] = argv[i + 1]
            elif a.startswith(f"--{flag}="):
                flags[flag] = a.split("=", 1)[1]
    return flags


def _listen_here(argv: list[str], listens: dict[int, tuple[str, int]]) -> list[str]:
    """The command's --host/--port become where the published port lives here."""
    flags = _listen_flags(argv)
    if "port" not in flags:
        return argv
    ip, port = listens[int(flags["port"])]
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--host", "--port") and i + 1 < len(argv):
            out += [a, ip if a == "--host" else str(port)]
            skip = True
        elif a.startswith("--host="):
            out.append(f"--host={ip}")
        elif a.startswith("--port="):
            out.append(f"--port={port}")
        else:
            out.append(a)
    if "host" not in flags:
        out += ["--host", ip]
    return out


def _to_listen_address(arg: str, listens: dict[int, tuple[str, int]]) -> str:
    """A healthcheck reaches its own container's port on loopback: map it to here."""
    for cport, (ip, port) in listens.items():
        addr = "127.0.0.1" if ip in WILDCARD_HOSTS else ip
        arg = re.sub(rf"\b(?:127\.0\.0\.1|localhost):{cport}\b", f"{addr}:{port}", arg)
    return arg


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            result[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return result
