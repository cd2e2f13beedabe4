"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the compose
schema, the services and their wiring, and that every command they run exists."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from samsweep.cli import build_parser
from samsweep.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_valid_against_compose_schema(compose):
    schema = json.loads((ROOT / "tests/data/compose_spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)


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


def test_worker_gets_one_gpu_and_one_slot(compose):
    w = compose["services"]["worker"]
    (device,) = w["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    assert w["command"][-2:] == ["--concurrency", "1"]
    assert w["environment"]["SAMSWEEP_DEVICE"] == "cuda"


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

    # optuna-dashboard reads exactly the storage the workers write
    def interpolate(value: str) -> str:
        return re.sub(r"\$\{POSTGRES_PASSWORD[^}]*\}", "s3cret", value)

    expected = Settings(database_url=interpolate(db_url)).resolved_optuna_url
    assert interpolate(s["dashboard"]["command"][-1]) == expected


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


def test_every_samsweep_command_parses(compose):
    cmds = _samsweep_commands(compose)
    assert {c[1] for c in cmds} == {"migrate", "api", "worker"}
    parser = build_parser()
    for cmd in cmds:
        args = parser.parse_args(cmd[1:])  # exits (fails the test) on an unknown flag
        assert args.func.__name__ == f"cmd_{cmd[1]}", shlex.join(cmd)


def test_api_image_never_installs_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    api_stage = dockerfile.split("FROM base AS api", 1)[1].split("FROM ", 1)[0]
    assert "torch" not in api_stage and "[worker]" not in api_stage
    deps = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("torch") for d in deps["dependencies"])
