"""PATCH /studies/{id} (a study that grows), POST /studies/{id}/retry and DELETE
/studies/{id}, in process (no uvicorn, no worker), on the embedded default and on
PostgreSQL. With real workers: tests/e2e/test_grow_retry_delete.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from samsweep.core import optuna_store
from samsweep.core.db import Study, Trial, session_factory, utcnow
from samsweep.core.states import TrialState
from tests.support.specs import digits_spec

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210xx"
SPEC = digits_spec(rho=(0.0, 0.05), batch_size=(16,))  # 2 trials


@pytest.fixture(params=["embedded", "postgresql"])
def api(request, tmp_path):
    """(client, settings): an API in process, on SQLite or PostgreSQL, embedded broker."""
    from fastapi.testclient import TestClient

    from samsweep.core.migrate import migrate
    from samsweep.core.settings import Settings
    from service.app import create_app

    db = {} if request.param == "embedded" else {"database_url": request.getfixturevalue("pg_url")}
    settings = Settings(
        state_dir=tmp_path,
        api_tokens=f"alice:{ALICE},bob:{BOB}",
        max_grid_trials=40,
        max_pending_trials_per_owner=30,
        **db,
    )
    migrate(settings)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ALICE}"}) as c:
        yield c, settings


def _create(client, spec=SPEC) -> str:
    r = client.post("/studies", json=spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _rows(settings, study: str) -> list[tuple]:
    """Every trial as stored, in number order: what a patch must leave as it was."""
    with session_factory(settings.resolved_database_url)() as s:
        rows = s.execute(
            select(Trial.id, Trial.number, Trial.cell_key, Trial.seed, Trial.state, Trial.value)
            .where(Trial.study_id == study)
            .order_by(Trial.number)
        )
        return [tuple(r) for r in rows]


def _set(settings, study: str, **by_number: str) -> None:
    """Put trials in a state as a worker would have: {"n0": "COMPLETE", ...}."""
    with session_factory(settings.resolved_database_url)() as s:
        for key, state in by_number.items():
            values = {"state": state, "finished_at": utcnow(), "attempts": 1}
            if state == TrialState.COMPLETE:
                values["value"] = 0.5
            else:
                values["error"] = f"{state.lower()}: why"
            s.execute(
                update(Trial)
                .where(Trial.study_id == study, Trial.number == int(key[1:]))
                .values(**values)
            )
        s.commit()


# docs/api.md "Studies that grow": only the new cells are created; what exists stays
def test_a_patch_adds_only_the_new_trials_numbered_after_the_last(api):
    client, settings = api
    study = _create(client)
    _set(settings, study, n0=TrialState.COMPLETE)
    before = _rows(settings, study)
    r = client.patch(f"/studies/{study}", json={"seeds": [0, 1]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["added"], body["replayed"], body["n_trials"]) == (2, False, 4)
    assert body["spec"]["seeds"] == [0, 1] and body["progress"]["total"] == 4
    rows = _rows(settings, study)
    assert rows[:2] == before  # ids, numbers, states, values: unchanged
    assert [(n, seed) for _, n, _, seed, *_ in rows[2:]] == [(2, 1), (3, 1)]
    r = client.patch(f"/studies/{study}", json={"search": {"rho": [0.0, 0.05, 0.1]}})
    assert r.json()["added"] == 2 and r.json()["n_trials"] == 6, r.text
    new = _rows(settings, study)[4:]
    assert {(key.split("|")[0], seed) for _, _, key, seed, *_ in new} == {
        ("rho=0.1", 0), ("rho=0.1", 1)
    }  # fmt: skip
    assert [t["number"] for t in client.get(f"/studies/{study}/trials").json()["trials"]] == [
        0, 1, 2, 3, 4, 5
    ]  # fmt: skip
    report = client.get(f"/studies/{study}/report").json()
    assert report["n_trials"] == 6
    assert [row["rho"] for row in report["groups"][0]["rows"]] == [0.0, 0.05, 0.1]


# docs/api.md "Studies that grow": the same patch again adds nothing
def test_a_patch_applied_twice_adds_nothing_the_second_time(api):
    client, settings = api
    study = _create(client)
    assert client.patch(f"/studies/{study}", json={"seeds": [0, 3]}).json()["added"] == 2
    again = client.patch(f"/studies/{study}", json={"seeds": [0, 3]})
    assert again.status_code == 200 and again.json()["added"] == 0
    assert len(_rows(settings, study)) == 4


# docs/api.md "Studies that grow": the dispatcher's fields change with a patch
def test_a_patch_sets_max_concurrent_trials_and_priority(api):
    client, settings = api
    study = _create(client)
    r = client.patch(f"/studies/{study}", json={"max_concurrent_trials": 1, "priority": 7})
    assert r.status_code == 200 and r.json()["added"] == 0, r.text
    with session_factory(settings.resolved_database_url)() as s:
        row = s.get(Study, study)
        assert (row.max_concurrent_trials, row.priority) == (1, 7)
        assert (row.spec["max_concurrent_trials"], row.spec["priority"]) == (1, 7)
    client.patch(f"/studies/{study}", json={"max_concurrent_trials": None})
    with session_factory(settings.resolved_database_url)() as s:
        assert s.get(Study, study).max_concurrent_trials is None


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"seeds": [1]}, "seeds", "would be taken away"),
        ({"search": {"rho": [0.05, 0.1]}}, "search.rho", "never deletes results"),
        ({"search": {"batch_size": [32]}}, "search.batch_size", "would be taken away"),
        ({"train": {"epochs": 5, "lr": 0.1}}, "train", "cannot be changed"),
        ({"name": "renamed"}, "name", "cannot be changed"),
        ({}, "body", "an empty patch"),
        ({"search": [0.1]}, "search", "must be an object"),
        ({"search": {"rho": [0.0, 0.05, 0.05]}}, "search.rho", "duplicate value"),
        ({"search": {"rho": [0.0, 0.05, 11]}}, "search.rho.2", "less than or equal to 10"),
        ({"search": {"lr": [0.1]}}, "search.lr", "Extra inputs"),
        ({"seeds": ["1"]}, "seeds.0", "valid integer"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials", "greater than or equal to 1"),
        ({"search": {"rho": [0.0, 0.05, *[i / 100 + 0.1 for i in range(40)]]}}, "search", "grid"),
    ],  # fmt: skip
)
# docs/api.md "Studies that grow": taking values away, or anything malformed, is a 422 naming
# the field, and changes nothing
def test_a_bad_patch_is_422_naming_the_field_and_changes_nothing(api, patch, field, words):
    client, settings = api
    study = _create(client)
    before = (client.get(f"/studies/{study}").json()["spec"], _rows(settings, study))
    r = client.patch(f"/studies/{study}", json=patch)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert (client.get(f"/studies/{study}").json()["spec"], _rows(settings, study)) == before


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'{"seeds": [0, 1], "seeds": [0]}',  # a key twice: never "the last one wins"
        b"{not json",
        "\udcff".encode(errors="surrogatepass"),
        b'{"seeds": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested past the parser
        ("{" + ",".join(f'"k{i}": 0' for i in range(100)) + "}").encode(),  # 100 keys
    ],
    ids=["array", "duplicate-key", "not-json", "not-utf8", "deep", "many-keys"],
)
# docs/api.md "Studies that grow": a malformed body is 422, as a POST's (service/api/body.py)
def test_a_malformed_patch_body_is_422(api, body):
    client, _ = api
    study = _create(client)
    r = client.patch(
        f"/studies/{study}", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "body", r.text


# docs/api.md "Studies that grow": the same owner rules as a create
def test_only_the_owner_patches_retries_or_deletes(api):
    client, settings = api
    study = _create(client)
    bob = {"Authorization": f"Bearer {BOB}"}
    for method, path, kw in [
        ("PATCH", f"/studies/{study}", {"json": {"seeds": [0, 1]}}),
        ("POST", f"/studies/{study}/retry", {}),
        ("DELETE", f"/studies/{study}", {}),
    ]:
        assert client.request(method, path, headers=bob, **kw).status_code == 404
        anonymous = {"Authorization": ""}
        assert client.request(method, path, headers=anonymous, **kw).status_code == 401
    assert len(_rows(settings, study)) == 2 and client.get(f"/studies/{study}").status_code == 200


# docs/api.md "Studies that grow": Idempotency-Key honoured
def test_a_patch_with_an_idempotency_key_is_applied_once(api):
    client, settings = api
    study = _create(client)
    key = {"Idempotency-Key": "grow-1"}
    first = client.patch(f"/studies/{study}", json={"seeds": [0, 1]}, headers=key)
    assert first.status_code == 200 and first.json()["added"] == 2
    replay = client.patch(f"/studies/{study}", json={"seeds": [0, 1]}, headers=key)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert replay.json()["added"] == 0 and replay.json()["n_trials"] == 4
    other = client.patch(f"/studies/{study}", json={"seeds": [0, 1, 2]}, headers=key)
    assert other.status_code == 422 and other.json()["error"]["field"] == "idempotency-key"
    assert len(_rows(settings, study)) == 4


# docs/api.md "Studies that grow": past the owner's queued-trial quota is a 429, no change
def test_a_patch_past_the_owners_quota_is_429(api):
    client, settings = api
    study = _create(client, digits_spec(rho=(0.0, 0.05), batch_size=(16, 32), seeds=(0, 1, 2)))
    r = client.patch(f"/studies/{study}", json={"seeds": [0, 1, 2, 3, 4, 5, 6]})  # 12 -> 28
    assert r.status_code == 200, r.text
    r = client.patch(f"/studies/{study}", json={"seeds": list(range(9))})  # 28 + 8 > 30
    assert r.status_code == 429 and "SAMSWEEP_MAX_PENDING_TRIALS_PER_OWNER" in r.text, r.text
    assert len(_rows(settings, study)) == 28


# docs/api.md "Studies that grow": a complete study that grows runs again
def test_a_complete_study_that_grows_runs_again(api):
    client, settings = api
    study = _create(client)
    _set(settings, study, n0=TrialState.COMPLETE, n1=TrialState.COMPLETE)
    assert client.get(f"/studies/{study}").json()["status"] == "complete"
    client.patch(f"/studies/{study}", json={"seeds": [0, 1]})
    assert client.get(f"/studies/{study}").json()["status"] == "running"


def test_a_cancelled_study_is_resumed_before_it_grows(api):
    client, _ = api
    study = _create(client)
    client.post(f"/studies/{study}/cancel")
    r = client.patch(f"/studies/{study}", json={"seeds": [0, 1]})
    assert r.status_code == 409 and "retry" in r.json()["error"]["message"], r.text
    client.post(f"/studies/{study}/retry")
    assert client.patch(f"/studies/{study}", json={"seeds": [0, 1]}).json()["added"] == 2


# optuna_store.PARAM_SPACE: a study whose Optuna study records fixed choices takes seeds only
def test_a_study_created_before_growable_grids_takes_more_seeds_only(api):
    client, settings = api
    study = _create(client)
    name = client.get(f"/studies/{study}").json()["optuna_study_name"]
    storage = optuna_store.get_storage(settings.resolved_optuna_url)
    with storage.engine.begin() as conn:  # as a study created before param space 2
        from sqlalchemy import text

        conn.execute(text("DELETE FROM study_user_attributes WHERE key = :k"),
                     {"k": optuna_store.PARAM_SPACE})  # fmt: skip
    r = client.patch(f"/studies/{study}", json={"search": {"rho": [0.0, 0.05, 0.1]}})
    assert r.status_code == 409 and r.json()["error"]["field"] == "search", r.text
    assert client.patch(f"/studies/{study}", json={"seeds": [0, 1]}).json()["added"] == 2
    assert optuna_store.param_space(settings.resolved_optuna_url, name) == 1


# docs/api.md "Retry": FAILED and CANCELLED trials get a fresh attempt; INFEASIBLE only when
# asked; what finished stays
def test_retry_queues_failed_and_cancelled_trials_again(api):
    client, settings = api
    study = _create(client, digits_spec(rho=(0.0, 0.05), batch_size=(16, 32)))  # 4 trials
    _set(settings, study, n0=TrialState.COMPLETE, n1=TrialState.FAILED,
         n2=TrialState.CANCELLED, n3=TrialState.INFEASIBLE)  # fmt: skip
    r = client.post(f"/studies/{study}/retry")
    assert r.status_code == 200 and r.json()["retried"] == 2, r.text
    states = [row[4] for row in _rows(settings, study)]
    assert states == ["COMPLETE", "QUEUED", "QUEUED", "INFEASIBLE"]
    with session_factory(settings.resolved_database_url)() as s:
        t = s.scalar(select(Trial).where(Trial.study_id == study, Trial.number == 1))
        assert t.error is None and t.finished_at is None and t.attempts == 1  # +1 when claimed
    r = client.post(f"/studies/{study}/retry", params={"infeasible": "true"})
    assert r.json()["retried"] == 1
    assert [row[4] for row in _rows(settings, study)][3] == "QUEUED"
    assert _rows(settings, study)[0][5] == 0.5  # the complete trial's value stays


# docs/api.md "Retry": a cancelled study can be resumed
def test_retry_resumes_a_cancelled_study(api):
    client, settings = api
    study = _create(client)
    assert client.post(f"/studies/{study}/cancel").json()["status"] == "cancelled"
    r = client.post(f"/studies/{study}/retry")
    assert r.json()["retried"] == 2 and r.json()["status"] == "queued", r.text
    with session_factory(settings.resolved_database_url)() as s:
        assert s.get(Study, study).cancelled_at is None


# docs/api.md "Delete": rows, Optuna study and checkpoints removed; 404 afterwards, twice
def test_delete_removes_the_rows_the_optuna_study_and_the_checkpoints(api):
    client, settings = api
    study, other = _create(client), _create(client)
    name = client.get(f"/studies/{study}").json()["optuna_study_name"]
    checkpoints = settings.resolved_checkpoint_dir / study
    checkpoints.mkdir(parents=True)
    (checkpoints / "trial-1.pt").write_bytes(b"weights")
    client.patch(f"/studies/{study}", json={"seeds": [0, 1]}, headers={"Idempotency-Key": "k"})
    r = client.delete(f"/studies/{study}")
    assert r.status_code == 204 and r.content == b"", r.text
    assert client.get(f"/studies/{study}").status_code == 404
    assert client.delete(f"/studies/{study}").status_code == 404
    assert client.post(f"/studies/{study}/retry").status_code == 404
    assert client.patch(f"/studies/{study}", json={"seeds": [0, 1, 2]}).status_code == 404
    assert _rows(settings, study) == [] and not checkpoints.exists()
    names = {
        s.study_name
        for s in optuna_store.get_storage(settings.resolved_optuna_url).get_all_studies()
    }
    assert name not in names
    assert client.get(f"/studies/{other}").status_code == 200 and len(_rows(settings, other)) == 2
    listed = [s["id"] for s in client.get("/studies").json()["items"]]
    assert listed == [other]


def test_a_delete_that_failed_after_the_optuna_study_went_completes_on_retry(api, monkeypatch):
    client, settings = api
    study = _create(client)
    name = client.get(f"/studies/{study}").json()["optuna_study_name"]
    optuna_store.delete_study(settings.resolved_optuna_url, name)  # as a first DELETE did
    assert client.delete(f"/studies/{study}").status_code == 204
    assert client.get(f"/studies/{study}").status_code == 404
