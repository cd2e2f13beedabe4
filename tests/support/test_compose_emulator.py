"""The compose emulator's own rules (tests/support/compose_emulator.py), on small
hand-written compose files, in process: nothing is started. What a container would get
(environment, mounts, command, working directory) is read from `Emulation.prepare`."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from tests.support.compose_emulator import (
    Emulation,
    EmulationError,
    _to_listen_address,
    interpolate,
    interpolate_tree,
    parse_dockerfile,
    parse_duration,
    parse_port,
)

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
DOCKERFILE = """\
FROM python:3.11-slim AS base
ENV A=1 B="two words"
ENV PATH=/venv/bin:$PATH
WORKDIR /app

FROM base AS api
ENV LEGACY value with spaces
CMD ["samsweep", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS tool
WORKDIR sub
CMD samsweep migrate
"""
API = "samsweep api --host 0.0.0.0 --port 8000"


def emulate(tmp_path: Path, services: dict, env: dict | None = None, **top) -> Emulation:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "Dockerfile").write_text(DOCKERFILE)
    return Emulation(
        project / "docker-compose.yml",
        env or {},
        tmp_path / "run",
        admin_postgres=PG,
        admin_redis=REDIS,
        raw={"services": services, **top},
    )


def built(command: str | list = "samsweep migrate", **spec) -> dict:
    return {"build": {"context": ".", "target": "api"}, "command": command, **spec}


# --- interpolation ---------------------------------------------------------------------


ENV = {"SET": "x", "EMPTY": ""}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("${SET}", "x"),
        ("${UNSET}", ""),  # a missing variable is the empty string (compose warns)
        ("$SET/$UNSET.", "x/."),
        ("${SET:-d}|${UNSET:-d}|${EMPTY:-d}", "x|d|d"),
        ("${SET-d}|${UNSET-d}|${EMPTY-d}", "x|d|"),  # without ':' only unset counts
        ("${SET:+r}|${UNSET:+r}|${EMPTY:+r}", "r||"),
        ("${SET+r}|${UNSET+r}|${EMPTY+r}", "r||r"),
        ("${UNSET:-${SET}}|${UNSET:-a${UNSET:-b}c}", "x|abc"),  # nested
        ("${UNSET:-a:b/c d}", "a:b/c d"),
        ("$$SET $${SET} $$", "$SET ${SET} $"),  # $$ is a literal $
        ("${SET:?m}${EMPTY?m}", "x"),
    ],
)
def test_interpolation(text, expected):
    assert interpolate(text, ENV) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("${UNSET:?set UNSET in .env}", "UNSET is missing a value: set UNSET in .env"),
        ("${EMPTY:?empty}", "EMPTY is missing a value: empty"),
        ("${UNSET?unset}", "UNSET is missing a value: unset"),
        ("cost $5", "invalid interpolation format"),
        ("${SET", "invalid interpolation format"),
        ("${UNSET:-no end", "no closing brace"),
        ("${1X}", "invalid interpolation format"),
    ],
)
def test_interpolation_errors(text, message):
    with pytest.raises(EmulationError, match=message.replace("$", r"\$")):
        interpolate(text, ENV)


def test_interpolation_reaches_every_value_never_keys_or_the_process_env(monkeypatch):
    monkeypatch.setenv("FROM_PROCESS", "leak")
    tree = {"${SET}": ["${SET}", {"k": "${FROM_PROCESS:-none}"}, 5, True, None]}
    assert interpolate_tree(tree, ENV) == {"${SET}": ["x", {"k": "none"}, 5, True, None]}


def test_the_file_is_interpolated_before_it_is_read(tmp_path):
    emu = emulate(
        tmp_path,
        {"app": built(environment={"PORT": "${PORT:-1}", "NAME": "${NAME}"})},
        env={"NAME": "n"},
    )
    assert {k: emu.prepare("app").env[k] for k in ("PORT", "NAME")} == {"PORT": "1", "NAME": "n"}


# --- the file's parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,seconds",
    [(None, 7.0), (3, 3.0), ("5s", 5.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0)],
)
def test_durations(value, seconds):
    assert parse_duration(value, 7.0) == seconds


def test_a_duration_that_is_not_one_is_an_error():
    with pytest.raises(EmulationError, match="unparsable duration"):
        parse_duration("5 seconds", 1)


@pytest.mark.parametrize(
    "spec,host_ip,host,container",
    [
        ("8000:80", None, 8000, 80),
        ("127.0.0.1:8080:8080", "127.0.0.1", 8080, 8080),
        ("[::1]:9000:90", "::1", 9000, 90),
        ("8000:80/tcp", None, 8000, 80),
        ({"target": 80, "published": "8000", "host_ip": "127.0.0.1"}, "127.0.0.1", 8000, 80),
    ],
)
def test_ports(spec, host_ip, host, container):
    p = parse_port(spec)
    assert (p.host_ip, p.host_port, p.container_port) == (host_ip, host, container)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("80", "random port"),
        ("53:53/udp", "only tcp"),
        ({"target": 53, "published": 53, "protocol": "udp"}, "only tcp"),
    ],
)
def test_ports_the_emulation_refuses(spec, message):
    with pytest.raises(EmulationError, match=message):
        parse_port(spec)


def test_dockerfile_stages_inherit_env_workdir_and_cmd(tmp_path):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    stages = parse_dockerfile(tmp_path / "Dockerfile")
    assert set(stages) == {"base", "api", "tool"}
    api, tool = stages["api"], stages["tool"]
    assert api.env == {
        "A": "1",
        "B": "two words",
        "PATH": "/venv/bin:",  # $PATH: the stage set none (the base image's is not known)
        "LEGACY": "value with spaces",  # ENV KEY value: the rest of the line
    }
    assert "LEGACY" not in tool.env and tool.env["B"] == "two words"
    assert (api.workdir, tool.workdir) == ("/app", "/app/sub")
    assert api.cmd == ["samsweep", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert tool.cmd == ["sh", "-c", "samsweep migrate"]


def test_env_substitution_sees_only_earlier_instructions(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x AS s\nENV A=1\nENV A=2 B=$A\nENV C=${A}3\n")
    assert parse_dockerfile(tmp_path / "Dockerfile")["s"].env == {"A": "2", "B": "1", "C": "23"}


# --- what the emulation refuses to pretend ------------------------------------------------


@pytest.mark.parametrize(
    "services,top,message",
    [
        ({"app": built(networks=["back"])}, {}, r"does not model \['networks'\]"),
        ({"app": built()}, {"networks": {"back": {}}}, r"top-level \['networks'\]"),
        ({"app": built(depends_on=["db"])}, {}, "depends on undefined service 'db'"),
        ({"app": {"image": "nginx:1"}}, {}, "no local stand-in for image 'nginx:1'"),
        ({"app": {"build": {"target": "nope"}}}, {}, "no Dockerfile stage 'nope'"),
        ({"db": {"image": "postgres:16"}}, {}, "without POSTGRES_PASSWORD"),
        ({"app": built(volumes=["data:/data"])}, {}, "undefined volume 'data'"),
        ({"app": built(volumes=["/scratch"])}, {}, "anonymous volume"),
        ({"app": built()}, {"volumes": {"v": {"driver": "nfs"}}}, "only plain named volumes"),
        ({"app": built(ports=["8000:8000"])}, {}, "publishes ports it does not listen on"),
        (
            {"app": built("samsweep api --host 127.0.0.1 --port 8000", ports=["8000:8000"])},
            {},
            "listens on 127.0.0.1 inside its container",
        ),
    ],
)
def test_what_the_emulation_refuses(tmp_path, services, top, message):
    with pytest.raises(EmulationError, match=message):
        emulate(tmp_path, services, **top)


def test_extension_fields_and_the_project_name_are_allowed(tmp_path):
    emu = emulate(tmp_path, {"app": built()}, **{"x-anchor": {"a": 1}, "name": "p"})
    assert set(emu.services) == {"app"}


# --- environment -------------------------------------------------------------------------


def test_environment_merges_image_compose_and_test_settings(tmp_path):
    services = {
        "app": built(
            environment={"A": "from-compose", "FLAG": True, "OFF": False, "N": 3, "S": "x"}
        ),
        "other": built(environment=["S=list form", "EMPTY="]),
    }
    emu = emulate(tmp_path, services)
    emu.extra_env = {"S": "test", "SPEEDUP": "1"}
    app = emu.prepare("app")
    env = app.env
    # the image's ENV, overridden by compose's environment; YAML scalars become strings
    assert (env["A"], env["B"], env["FLAG"], env["OFF"], env["N"]) == (
        "from-compose",
        "two words",
        "true",
        "false",
        "3",
    )
    assert env["S"] == "x" and env["SPEEDUP"] == "1"  # test settings only where unset
    assert env["HOME"] == str(app.root / "root")  # /root, in its own writable layer
    other = emu.prepare("other").env
    assert (other["S"], other["EMPTY"], other["A"]) == ("list form", "", "1")


def test_a_variable_passed_through_from_the_shell_is_refused(tmp_path):
    emu = emulate(tmp_path, {"app": built(environment=["FROM_SHELL"])})
    with pytest.raises(EmulationError, match="passed through from the shell"):
        emu.prepare("app")


def test_a_gpu_reservation_becomes_one_cpu_thread(tmp_path):
    gpu = {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1}]}}}
    emu = emulate(
        tmp_path,
        {
            "gpu": built(deploy=gpu, environment={"SAMSWEEP_DEVICE": "cuda"}),
            "cpu": built(environment={"SAMSWEEP_DEVICE": "cuda"}),
            "limited": built(deploy={"resources": {"limits": {"cpus": "1"}}}),
        },
    )
    env = emu.prepare("gpu").env
    assert (env["SAMSWEEP_DEVICE"], env["SAMSWEEP_TORCH_THREADS"]) == ("cpu", "1")
    assert emu.prepare("cpu").env["SAMSWEEP_DEVICE"] == "cuda"
    with pytest.raises(EmulationError, match="only deploy.resources.reservations"):
        emu.prepare("limited")


# --- volumes -----------------------------------------------------------------------------


def test_named_volumes_are_shared_and_everything_else_is_private(tmp_path):
    (tmp_path / "project" / "data").mkdir(parents=True)
    mounts = ["shared:/var/lib/x", "./data:/data:ro"]
    env = {"STATE": "/var/lib/x/state", "DATA": "/data/set", "TMP": "/tmp/t", "REL": "rel"}
    emu = emulate(
        tmp_path,
        {"a": built(volumes=mounts, environment=env), "b": built(volumes=mounts, environment=env)},
        volumes={"shared": None},
    )
    a, b = emu.prepare("a"), emu.prepare("b")
    shared = tmp_path / "run" / "volumes" / "shared"
    data = (tmp_path / "project" / "data").resolve()
    for c in (a, b):
        assert c.env["STATE"] == str(shared / "state")  # the named volume: one directory
        assert c.env["DATA"] == str(data / "set")  # the bind mount: the host path
        assert c.env["REL"] == "rel"  # not a path: left alone
        assert [(m.target, m.read_only, m.volume) for m in c.mounts] == [
            (PurePosixPath("/var/lib/x"), False, "shared"),
            (PurePosixPath("/data"), True, None),
        ]
    # an unmounted path is in each container's own writable layer: not shared
    assert a.env["TMP"] != b.env["TMP"] and a.env["TMP"].startswith(str(a.root))
    assert a.cwd == a.root / "app"  # the stage's WORKDIR, in the writable layer
    # a second container of the same service gets a fresh layer and the same volumes
    a2 = emu.prepare("a")
    assert a2.root != a.root and a2.env["STATE"] == a.env["STATE"]


def test_the_longest_mount_wins_and_long_syntax_is_read(tmp_path):
    (tmp_path / "project" / "host").mkdir(parents=True)
    volumes = [
        "outer:/srv",
        {"type": "volume", "source": "inner", "target": "/srv/inner", "read_only": True},
        {"type": "bind", "source": "./host", "target": "/srv/host"},
    ]
    emu = emulate(tmp_path, {"app": built(volumes=volumes)}, volumes={"outer": None, "inner": None})
    c = emu.prepare("app")
    run = tmp_path / "run" / "volumes"
    assert c.host_path("/srv/x") == run / "outer" / "x"
    assert c.host_path("/srv/inner/y") == run / "inner" / "y"
    assert c.host_path("/srv/host/z") == (tmp_path / "project" / "host").resolve() / "z"
    assert [m.read_only for m in c.mounts] == [False, True, False]


def test_a_missing_bind_source_and_other_volume_types_are_refused(tmp_path):
    with pytest.raises(EmulationError, match="bind mount source .* is missing"):
        emulate(tmp_path, {"app": built(volumes=["./missing:/m"])})
    with pytest.raises(EmulationError, match="volume type 'tmpfs'"):
        emulate(tmp_path, {"app": built(volumes=[{"type": "tmpfs", "target": "/t"}])})


def test_read_only_mounts_are_checked_after_the_fact(tmp_path):
    (tmp_path / "project" / "data").mkdir(parents=True)
    emu = emulate(tmp_path, {"app": built(volumes=["./data:/data:ro"])})
    emu.assert_read_only_mounts_untouched()
    (tmp_path / "project" / "data" / "written").write_text("x")
    with pytest.raises(AssertionError, match="wrote into the read-only mount"):
        emu.assert_read_only_mounts_untouched()


# --- service names, ports and the network ----------------------------------------------


def test_service_names_in_urls_become_where_the_service_listens_here(tmp_path):
    emu = emulate(
        tmp_path,
        {
            "api": built(API, ports=["127.0.0.1:9000:8000"]),
            "hidden": built("samsweep api --host 0.0.0.0 --port 7000"),
            "client": built(
                ["samsweep", "studies", "--server", "http://api:8000/x"],
                environment={"HIDDEN": "http://user:pw@hidden:7000/p?q=1", "OUT": "http://e:1"},
            ),
        },
    )
    api_ip, api_port = emu.listen_address("api", 8000)
    hidden_ip, hidden_port = emu.listen_address("hidden", 7000)
    assert api_ip == "127.0.0.1" and hidden_ip == "127.0.0.1"  # unpublished: loopback only
    assert emu.url("api", 8000) == f"http://127.0.0.1:{api_port}"
    client = emu.prepare("client")
    assert client.argv[-1] == f"http://127.0.0.1:{api_port}/x"
    assert client.env["HIDDEN"] == f"http://user:pw@127.0.0.1:{hidden_port}/p?q=1"
    assert client.env["OUT"] == "http://e:1"  # not a service: left alone
    # the listening command is told where to listen here
    assert emu.prepare("api").argv[-4:] == ["--host", "127.0.0.1", "--port", str(api_port)]


def test_a_published_port_without_a_host_ip_listens_on_every_interface(tmp_path):
    emu = emulate(tmp_path, {"api": built(API, ports=["9000:8000"])})
    ip, port = emu.listen_address("api", 8000)
    assert ip == "0.0.0.0" and emu.url("api", 8000) == f"http://127.0.0.1:{port}"


def test_a_url_to_a_port_the_service_does_not_listen_on_is_refused(tmp_path):
    emu = emulate(
        tmp_path, {"api": built(API), "client": built(environment={"U": "http://api:9999"})}
    )
    with pytest.raises(EmulationError, match="api does not listen on 9999"):
        emu.prepare("client")


def test_postgres_urls_need_the_images_role_password_and_database(tmp_path):
    db = {"image": "postgres:16", "environment": {"POSTGRES_PASSWORD": "pw", "POSTGRES_DB": "d"}}
    good = "postgresql+psycopg://postgres:pw@db:5432/d"
    for url, message in [
        (good.replace(":pw@", ":other@"), "not the role and password"),
        (good.replace("/d", "/other"), "creates 'd' only"),
        (good.replace(":5432", ":5433"), "listens on 5432 only"),
    ]:
        emu = emulate(tmp_path, {"db": db, "app": built(environment={"URL": url})})
        with pytest.raises(EmulationError, match=message):
            emu.prepare("app")
    emu = emulate(tmp_path, {"db": db, "app": built(environment={"URL": good})})
    url = emu.prepare("app").env["URL"]
    fresh = emu.services["db"].provider.fresh  # type: ignore[union-attr]
    assert url == f"postgresql+psycopg://postgres:pw@127.0.0.1:5432/{fresh}"


def test_a_healthcheck_reaches_its_own_port_where_the_service_listens_here():
    listens = {8000: ("0.0.0.0", 41000), 9000: ("127.0.0.1", 42000)}
    assert _to_listen_address("curl http://localhost:8000/health", listens) == (
        "curl http://127.0.0.1:41000/health"
    )
    assert _to_listen_address("http://127.0.0.1:9000 http://127.0.0.1:90001", listens) == (
        "http://127.0.0.1:42000 http://127.0.0.1:90001"
    )


# --- depends_on and healthchecks ---------------------------------------------------------


DONE = "service_completed_successfully"


def test_services_start_after_what_they_depend_on(tmp_path):
    emu = emulate(
        tmp_path,
        {
            "api": built(
                API, depends_on={"migrate": {"condition": "service_completed_successfully"}}
            ),
            "migrate": built(depends_on=["db"]),
            "db": built(),
            "worker": built(depends_on={"migrate": None, "db": {"condition": "service_healthy"}}),
        },
    )
    assert emu.start_order("api") == ["db", "migrate", "api"]
    assert emu.start_order("worker", "api") == ["db", "migrate", "worker", "api"]


def test_a_dependency_cycle_is_refused(tmp_path):
    emu = emulate(tmp_path, {"a": built(depends_on=["b"]), "b": built(depends_on=["a"])})
    with pytest.raises(EmulationError, match="dependency cycle: a -> b -> a"):
        emu.start_order("a")


def test_the_conditions_that_need_nothing_running(tmp_path):
    emu = emulate(tmp_path, {"app": built(), "open": built(healthcheck={"disable": True})})
    emu.wait_for("app", "service_started", timeout=0)  # met at once
    with pytest.raises(EmulationError, match="unknown depends_on condition"):
        emu.wait_for("app", "service_ready", timeout=0)
    with pytest.raises(EmulationError, match="app was never started"):
        emu.wait_for("app", "service_completed_successfully", timeout=0)
    for name in ("app", "open"):  # service_healthy needs a healthcheck
        with pytest.raises(EmulationError, match="has no healthcheck"):
            emu.healthy(name)


def test_a_healthcheck_of_a_service_not_running_is_not_healthy(tmp_path):
    check = {"test": "exit 0"}  # a string: CMD-SHELL
    emu = emulate(tmp_path, {"app": built(healthcheck=check)})
    assert emu.healthy("app") is False
    emu = emulate(tmp_path, {"app": built(healthcheck={"test": ["NONE"]})})
    with pytest.raises(EmulationError, match="healthcheck disabled"):
        emu.healthy("app")
