"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose
schema, the services and their wiring, that every command they run exists, and that
what each service reads or writes on disk, its credentials and its published ports
are what a deployment needs (tests/e2e/compose/test_compose_deploy.py then runs the file)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from sqlalchemy.engine import make_url

from samsweep.cli import build_parser
from samsweep.core.settings import Settings
from tests.support.compose_emulator import EmulationError, interpolate, interpolate_tree, parse_port

ROOT = Path(__file__).resolve().parents[1]
# what a user's .env holds (compose interpolates the file from it)
DOTENV = {
    "POSTGRES_PASSWORD": "s3cret-s3cret",
    "SAMSWEEP_DASHBOARD_DB_PASSWORD": "d4sh-d4sh",
    "SAMSWEEP_API_TOKENS": "alice:alice-token-0123456789",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    """The file as `docker compose config` would show it with DOTENV as the .env."""
    return interpolate_tree(compose, DOTENV)


# docs/deploy.md "How the compose file is tested": tests/test_compose.py checks the Compose schema
def test_valid_against_compose_schema(compose):
    schema = json.loads((ROOT / "tests/data/compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)


# docs/deploy.md "Production": the six services; every one has a healthcheck or a depends_on
# condition
def test_services_and_dependencies(compose):
    s = compose["services"]
    assert set(s) == {"postgres", "redis", "migrate", "api", "worker", "dashboard"}
    for name in ("postgres", "redis", "api"):
        assert s[name]["healthcheck"]["test"], name
    assert "--appendonly" in s["redis"]["command"] and "yes" in s["redis"]["command"]
    assert s["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert s["migrate"]["restart"] == "no"
    for name in ("api", "worker", "dashboard"):
        assert s[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker"):
        assert s[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(p.endswith(":8000") for p in s["api"]["ports"])
    assert "8000/health" in " ".join(s["api"]["healthcheck"]["test"])


# docs/deploy.md "Production": every NVIDIA GPU reserved, one slot per GPU (the worker's default)
def test_worker_gets_every_gpu_and_a_slot_each(compose):
    w = compose["services"]["worker"]
    (device,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all"
    assert "gpu" in device["capabilities"]
    assert w["command"] == ["samsweep", "worker"]  # --gpus all, a slot each: worker/slots.py
    assert w["environment"]["SAMSWEEP_DEVICE"] == "cuda"


# docs/deploy.md "Production": POSTGRES_PASSWORD and SAMSWEEP_DASHBOARD_DB_PASSWORD are required:
# nothing ships a default secret; the dashboard reads the workers' storage
def test_no_default_secret_and_shared_settings(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    # every use of the password must fail loudly when it is unset
    assert re.findall(r"\$\{POSTGRES_PASSWORD[^}]*\}", text)
    assert all(":?" in m for m in re.findall(r"\$\{POSTGRES_PASSWORD[^}]*\}", text))
    s = compose["services"]
    db_url = s["api"]["environment"]["SAMSWEEP_DATABASE_URL"]
    for name in ("migrate", "worker"):
        assert s[name]["environment"]["SAMSWEEP_DATABASE_URL"] == db_url
        assert (
            s[name]["environment"]["SAMSWEEP_BROKER_URL"]
            == s["api"]["environment"]["SAMSWEEP_BROKER_URL"]
        )

    # optuna-dashboard reads exactly the storage the workers write, as the read-only
    # role that migrate makes with the password it is given
    def interpolate(value: str) -> str:
        value = re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", "s3cret", value)
        return re.sub(r"\$\{SAMSWEEP_DASHBOARD_DB_PASSWORD[^}]*\}", "d4sh", value)

    settings = Settings(database_url=interpolate(db_url))
    expected = make_url(settings.resolved_optuna_url).set(
        username=settings.dashboard_db_role, password="d4sh"
    )
    shown = make_url(interpolate(s["dashboard"]["command"][-1]))
    assert shown.render_as_string(False) == expected.render_as_string(False)
    made = s["migrate"]["environment"]["SAMSWEEP_DASHBOARD_DB_PASSWORD"]
    assert interpolate(made) == "d4sh" and ":?" in made  # required, no default secret


def _dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\w+)$", (ROOT / "Dockerfile").read_text(), re.M))


def test_build_targets_exist(compose):
    targets = _dockerfile_targets()
    built = [s["build"]["target"] for s in compose["services"].values() if "build" in s]
    assert set(built) <= targets and {"api", "worker", "dashboard"} <= targets


def _samsweep_commands(compose) -> list[list[str]]:
    cmds = [
        s["command"] for s in compose["services"].values() if isinstance(s.get("command"), list)
    ]
    for line in re.findall(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M):
        cmds.append(json.loads(line))
    return [c for c in cmds if c[0] == "samsweep"]


# docs/deploy.md "How the compose file is tested": every command parses
def test_every_samsweep_command_parses(compose):
    cmds = _samsweep_commands(compose)
    assert {c[1] for c in cmds} == {"migrate", "api", "worker"}
    parser = build_parser()
    for cmd in cmds:
        args = parser.parse_args(cmd[1:])  # exits (fails the test) on an unknown flag
        assert args.func.__name__ == f"cmd_{cmd[1]}", shlex.join(cmd)


# docs/deploy.md "Production": the API image has no torch
def test_api_image_never_installs_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("FROM base AS api", 1)[1].split("FROM ", 1)[0]
    assert "torch" not in api_stage and "[worker]" not in api_stage
    deps = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("torch") for d in deps["dependencies"])


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == (
        "x d d  d"
    )
    assert interpolate("$SET $$SET ${SET:?m} ${EMPTY?m}", env) == "x $SET x "
    with pytest.raises(EmulationError, match="m1"):
        interpolate("${EMPTY:?m1}", env)
    with pytest.raises(EmulationError, match="m2"):
        interpolate("${UNSET?m2}", env)


# The paths each samsweep command reads or writes, from its settings. With server URLs
# (PostgreSQL, Redis) nothing else touches the disk: migrate nothing, the API the data
# root (it checks a study's files before accepting it) and the checkpoints (it removes a
# deleted study's), a worker the data root and the checkpoints a re-run trial resumes from.
DISK = {
    "migrate": lambda s: {},
    "api": lambda s: {"data_dir": s.data_dir, "checkpoint_dir": s.resolved_checkpoint_dir},
    "worker": lambda s: {"data_dir": s.data_dir, "checkpoint_dir": s.resolved_checkpoint_dir},
}


def _settings(env: dict[str, str]) -> Settings:
    fields = {k.removeprefix("SAMSWEEP_").lower(): v for k, v in env.items()}
    return Settings(_env_file=None, **fields)


def _mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of the service's short-syntax volumes."""
    out = []
    for v in service.get("volumes", []):
        source, target, *options = v.split(":")
        out.append((source, target, "ro" in ",".join(options).split(",")))
    return out


def _volume_at(service: dict, path: Path) -> tuple[str, str, bool] | None:
    under = [m for m in _mounts(service) if path == Path(m[1]) or Path(m[1]) in path.parents]
    return max(under, key=lambda m: len(m[1]), default=None)


def _on_volume(service: dict, path: Path, what: str) -> tuple[tuple[str, str], bool]:
    """((volume source, path within it), read-only) of a path a service uses."""
    mount = _volume_at(service, path)
    assert mount, f"{what}: {path} is on no volume"
    source, target, read_only = mount
    return (source, str(path.relative_to(target))), read_only


# docs/deploy.md "How the compose file is tested": every path a service reads is on a declared
# volume
def test_every_path_a_service_uses_is_on_a_declared_volume(resolved):
    """Finding 7's class: a path setting with no volume is the container's own layer,
    empty in a new container and invisible to every other one."""
    services = resolved["services"]
    commands = {
        n: s["command"] for n, s in services.items() if s.get("command", [""])[0] == "samsweep"
    }
    assert set(c[1] for c in commands.values()) == set(DISK)
    for name, cmd in commands.items():
        env = services[name]["environment"]
        paths = {k: Path(v) for k, v in env.items() if k.startswith("SAMSWEEP_") and v[:1] == "/"}
        paths.update(DISK[cmd[1]](_settings(env)))  # defaults included (relative = the layer)
        for what, path in paths.items():
            assert path.is_absolute() and _volume_at(services[name], path), (name, what, path)
        for source, _, _ in _mounts(services[name]):
            named = not source.startswith(("/", ".", "~"))
            assert not named or source in resolved["volumes"], (name, source)


# docs/deploy.md "Production": SAMSWEEP_DATA_HOST_DIR is mounted read-only at /data in the API and
# the workers
def test_api_and_workers_read_the_same_data_read_only(resolved):
    s = resolved["services"]
    seen = set()
    for name in ("api", "worker"):
        data_dir = _settings(s[name]["environment"]).data_dir
        where, read_only = _on_volume(s[name], data_dir, f"{name}'s data root")
        assert read_only, name  # nothing in the service writes datasets
        seen.add(where)
    assert len(seen) == 1  # the API accepts exactly what the workers will train on


# docs/deploy.md "Production": checkpoints on the named volume `checkpoints` outlive the container;
# the API sees the workers' checkpoints (a DELETE removes a study's)
def test_checkpoints_outlive_the_worker_container_and_can_be_shared(compose):
    for env in (DOTENV, {**DOTENV, "SAMSWEEP_CHECKPOINTS": "/mnt/nfs/samsweep-checkpoints"}):
        services = interpolate_tree(compose, env)["services"]
        seen = set()
        for name in ("worker", "api"):
            ckpt = _settings(services[name]["environment"]).resolved_checkpoint_dir
            where, read_only = _on_volume(services[name], ckpt, f"{name}'s checkpoints")
            assert not read_only, name
            seen.add(where)
        ((source, _),) = seen  # one directory for all
        if "SAMSWEEP_CHECKPOINTS" in env:  # several hosts: one shared filesystem
            assert source == "/mnt/nfs/samsweep-checkpoints"
        else:
            assert source in compose["volumes"]  # a named volume by default


# docs/deploy.md "Production": SAMSWEEP_API_TOKENS unset -> compose refuses to start; set empty on
# purpose -> the API runs open
def test_tokens_in_dotenv_reach_the_api(compose):
    api = interpolate_tree(compose, DOTENV)["services"]["api"]["environment"]
    assert api["SAMSWEEP_API_TOKENS"] == DOTENV["SAMSWEEP_API_TOKENS"]
    assert api["SAMSWEEP_PRIVATE_STUDIES"] == "false"
    private = {**DOTENV, "SAMSWEEP_PRIVATE_STUDIES": "true"}
    assert (
        interpolate_tree(compose, private)["services"]["api"]["environment"][
            "SAMSWEEP_PRIVATE_STUDIES"
        ]
        == "true"
    )
    # no silent open API: unset is refused; an open API is an explicit empty value
    unset = {k: v for k, v in DOTENV.items() if k != "SAMSWEEP_API_TOKENS"}
    with pytest.raises(EmulationError, match="SAMSWEEP_API_TOKENS"):
        interpolate_tree(compose, unset)
    open_api = {**DOTENV, "SAMSWEEP_API_TOKENS": ""}
    assert (
        interpolate_tree(compose, open_api)["services"]["api"]["environment"]["SAMSWEEP_API_TOKENS"]
        == ""
    )
    assert Settings(_env_file=None, api_tokens=api["SAMSWEEP_API_TOKENS"]).tokens()


# docs/deploy.md "Production": optuna-dashboard is published on 127.0.0.1:8080 only
def test_only_the_api_is_published_beyond_loopback(compose, resolved):
    """The dashboard has no authentication and can delete studies: loopback only."""
    published = {
        name: [parse_port(p) for p in s.get("ports", [])]
        for name, s in resolved["services"].items()
    }
    everywhere = {n for n, ports in published.items() if any(p.host_ip is None for p in ports)}
    assert everywhere == {"api"}
    (dashboard,) = published["dashboard"]
    assert (dashboard.host_ip, dashboard.host_port, dashboard.container_port) == (
        "127.0.0.1",
        8080,
        8080,
    )
    moved = interpolate_tree(compose, {**DOTENV, "SAMSWEEP_DASHBOARD_PORT": "9999"})
    assert moved["services"]["dashboard"]["ports"] == ["127.0.0.1:9999:8080"]
    # inside its container it must listen on every interface, or the port forward
    # from the host's loopback reaches nothing
    cmd = compose["services"]["dashboard"]["command"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
