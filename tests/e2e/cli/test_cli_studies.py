"""The commands on existing studies through the real entry point (`python -m samsweep.cli`)
against a running API and worker: `studies`, `status` (`--watch`), `report`, `best`,
`trials`, `export`, `cancel`, `submit`; an API error is one line and exit 1, a spec
error exit 2, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import re

import httpx
import pytest

from tests.support.processes import Deployment, FinishedStudy
from tests.support.specs import digits_spec


def _run(f: FinishedStudy, *args: str, timeout: float = 120):
    result = f.deployment.run(*args, "--server", f.api, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _ok(f: FinishedStudy, *args: str, timeout: float = 120) -> str:
    result = _run(f, *args, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# docs/cli.md "Existing studies, from the terminal": `samsweep studies` lists them, newest first
def test_studies_lists_the_study(finished_study):
    out = _ok(finished_study, "studies")
    line = next(line for line in out.splitlines() if finished_study.study_id in line)
    assert "digits-test" in line and "complete" in line and " 8 " in line, out


# docs/cli.md "Existing studies, from the terminal": `samsweep status ID`: status, counts and the
# page URL
def test_status_of_a_finished_study(finished_study):
    f = finished_study
    out = _ok(f, "status", f.study_id)
    assert f"study {f.study_id} (digits-test): complete" in out, out
    assert "8/8 trials finished (100%" in out and "complete 8" in out, out
    assert f"page: {f.api}/studies/{f.study_id}/page" in out, out


# docs/cli.md "Existing studies, from the terminal": `samsweep report ID`: per group baseline and
# each rho, mean ± std, the selected rho, SAM's gain with its interval, the large-batch table, what
# selected
def test_report_prints_the_tables(finished_study):
    f = finished_study
    out = _ok(f, "report", f.study_id)
    report = httpx.get(f"{f.api}/studies/{f.study_id}/report").json()
    assert "report: 8 trials (8 complete)" in out, out
    for g in report["groups"]:
        assert f"sgd, batch {g['batch_size']}, sam" in out, out
        base = g["rows"][0]["metrics"]["test_accuracy"]
        # the baseline's row: rho 0, 2 seeds, train, test (mean ± std in %)
        row = next(line for line in out.splitlines() if f"{100 * base['mean']:.2f} ± " in line)
        assert re.match(r"\s*0\s+baseline\s+2\s", row), row
        gain = g["gain"]
        head = (
            f"SAM's gain at rho {g['selected_rho']:g} (test accuracy, paired over 2 seeds):"
            f" {100 * gain['mean']:+.2f} pp"
        )
        if gain["ci_low"] is None:  # both seeds moved by the same step of 1/N: no spread
            assert f"{head} (every pair differs alike: no interval)" in out, out
        else:
            ci = f", 95% CI [{100 * gain['ci_low']:+.2f}, {100 * gain['ci_high']:+.2f}]"
            assert head + ci in out, out
    selected = [line for line in out.splitlines() if "selected" in line and "0.05" in line]
    assert len(selected) == 2, out  # one selected rho per batch size
    assert "val %" in out  # the spec holds out a split
    assert "large batches" in out and "recovered" in out, out
    assert "rho selected per group by the mean val_accuracy over seeds" in out
    assert "warning" not in out  # selected on validation, not the test set
    assert f"page: {f.api}/studies/{f.study_id}/page" in out


# docs/cli.md "Existing studies, from the terminal": `samsweep best ID`: the best cell by its mean
# over seeds
def test_best_prints_the_cell_and_the_trial(finished_study):
    f = finished_study
    out = _ok(f, "best", f.study_id)
    best = httpx.get(f"{f.api}/studies/{f.study_id}/best").json()
    cell = best["cell"]
    assert f"best cell by mean val_accuracy over 2 seeds: sgd batch {cell['batch_size']}" in out
    assert f"{100 * cell['objective']['mean']:.2f} ± " in out, out
    assert "(the single best trial)" in out and "warning" not in out


# docs/cli.md "Existing studies, from the terminal": `samsweep trials ID`: one row per trial
def test_trials_lists_every_trial(finished_study):
    f = finished_study
    out = _ok(f, "trials", f.study_id)
    assert out.count("COMPLETE") == 8, out
    assert "sam 0.05" in out and "rho 0" in out


# docs/cli.md "Existing studies, from the terminal": `samsweep export ID --format csv|json` is the
# API's /report
def test_export_csv_and_json_match_the_report(finished_study, tmp_path):
    f = finished_study
    report = httpx.get(f"{f.api}/studies/{f.study_id}/report").json()
    out = _ok(f, "export", f.study_id, "--format", "csv")
    assert out == httpx.get(f"{f.api}/studies/{f.study_id}/report?format=csv").text
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = [(g["batch_size"], r["rho"]) for g in report["groups"] for r in g["rows"]]
    assert [(int(r["batch_size"]), float(r["rho"])) for r in rows] == expected
    first = report["groups"][0]["rows"][0]["metrics"]["test_accuracy"]
    assert float(rows[0]["test_accuracy_mean"]) == pytest.approx(first["mean"])
    assert float(rows[0]["test_accuracy_std"]) == pytest.approx(first["std"])

    path = tmp_path / "report.json"
    result = _run(f, "export", f.study_id, "--format", "json", "-o", str(path))
    assert result.returncode == 0 and result.stdout == "", result.stderr
    assert json.loads(path.read_text()) == report


# docs/cli.md "Existing studies, from the terminal": an unknown id is the API's own message on one
# line, exit 1
@pytest.mark.parametrize("command", ["status", "report", "best", "trials", "export", "cancel"])
def test_an_unknown_study_is_one_line_and_exit_1(finished_study, command):
    f = finished_study
    unknown = "0" * 32
    result = _run(f, command, unknown)
    message = httpx.get(f"{f.api}/studies/{unknown}").json()["error"]["message"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"samsweep: the API at {f.api} answered 404 not_found: {message}"
    ), result.stderr
    assert result.stdout == ""
    # not an id at all (it would reach another path): refused before any request
    result = _run(f, command, "../../x")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "samsweep: not a study id (32 hex digits): '../../x'"


def test_no_server_is_one_line_and_exit_1(finished_study):
    result = finished_study.deployment.run("studies", "--server", "http://127.0.0.1:9")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("samsweep: cannot reach the samsweep API at http://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# docs/cli.md "Existing studies, from the terminal": `submit` checks the spec locally (exit 2); the
# API's 422 is exit 1
def test_submit_refusals(finished_study, tmp_path):
    f = finished_study
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ntyop: 1\n")
    result = _run(f, "submit", str(bad))
    assert result.returncode == 2 and result.stderr.startswith(f"samsweep: {bad}: invalid spec")
    # valid locally, refused by the API: over its grid limit (SAMSWEEP_MAX_GRID_TRIALS)
    big = tmp_path / "big.json"
    big.write_text(json.dumps(digits_spec(rho=[0.001 * i for i in range(50)], seeds=range(30))))
    result = _run(f, "submit", str(big))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"samsweep: the API at {f.api} answered 422 "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# docs/cli.md "Existing studies, from the terminal": `submit` returns at once with the id and the
# page; `status --watch` follows it to the end; `cancel` cancels one
def test_submit_watch_and_cancel(finished_study, tmp_path):
    f = finished_study
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(digits_spec(batch_size=(128,), epochs=1, seeds=(5,))))
    result = _run(f, "submit", str(path))
    assert result.returncode == 0, result.stderr
    study_id = result.stdout.strip()
    assert re.fullmatch(r"[\w-]+", study_id), result.stdout
    assert f"page: {f.api}/studies/{study_id}/page" in result.stderr

    watch = _run(f, "status", study_id, "--watch", timeout=240)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    # not a terminal: a plain progress line per change, ending at 2/2
    lines = [line for line in watch.stderr.splitlines() if " trials  running " in line]
    assert lines and "2/2 trials" in lines[-1] and "complete" in lines[-1], watch.stderr
    assert "\x1b[" not in watch.stderr + watch.stdout  # no terminal codes in a log
    assert httpx.get(f"{f.api}/studies/{study_id}").json()["status"] == "complete"
    assert f"study {study_id} (digits-test): complete" in watch.stdout

    # A study with nothing running yet (a second, larger one) is cancelled at once.
    path.write_text(json.dumps(digits_spec(batch_size=(16,), rho=(0.0, 0.1, 0.2), seeds=(7, 8))))
    study_id = _ok(f, "submit", str(path)).strip()
    out = _ok(f, "cancel", study_id)
    assert out.startswith(f"cancelled study {study_id}"), out
    detail = httpx.get(f"{f.api}/studies/{study_id}").json()
    assert detail["counts"]["QUEUED"] == 0


# docs/cli.md "Existing studies, from the terminal": --token (or SAMSWEEP_API_TOKEN) for an API with
# tokens; without one a write is the API's 401, one line, exit 1
def test_token_flag_and_env(finished_study, tmp_path):
    f = finished_study
    token = "t" * 24
    d = Deployment(env={**f.deployment.env, "SAMSWEEP_API_TOKENS": f"alice:{token}"}, tmp=tmp_path)
    try:
        api = d.start_api()
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(digits_spec()))
        result = d.run("submit", str(path), "--server", api)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "answered 401 unauthorized" in result.stderr, result.stderr
        result = d.run("submit", str(path), "--server", api, "--token", token)
        assert result.returncode == 0, result.stderr
        study_id = result.stdout.strip()
        d.env.update(SAMSWEEP_API_URL=api, SAMSWEEP_API_TOKEN=token)
        result = d.run("cancel", study_id)  # both from the environment
        assert result.returncode == 0, result.stderr
    finally:
        d.stop()


# docs/cli.md "Existing studies, from the terminal": user text (a study's name) is printed as text,
# never as rich markup; a name like "[/b]" once raised MarkupError (a traceback) in `samsweep
# studies`
def test_a_study_name_that_looks_like_markup_is_printed_verbatim(finished_study, tmp_path):
    f = finished_study
    name = "x [/b] y [red]z"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**digits_spec(batch_size=(16,), seeds=(9,)), "name": name}))
    study_id = _ok(f, "submit", str(path)).strip()
    try:
        assert name in _ok(f, "studies")
        assert f"study {study_id} ({name}):" in _ok(f, "status", study_id)
    finally:
        _ok(f, "cancel", study_id)
