"""The data root holds: containment is judged on the fully resolved path of every
directory and file read (symlinks at every level), hostile paths are a AdmissionError naming
`dataset.path` (never another exception), and a crafted pickle executes in no process:
not the API (which never unpickles), not the worker (a restricted unpickler)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from samsweep.core.admission import (
    DATA_ROOT_UNUSABLE,
    NOT_A_DIRECTORY,
    NOT_A_FILE,
    AdmissionError,
    check_admission,
    check_files,
    contained_dataset_dir,
    dataset_files,
)
from samsweep.core.spec import StudySpec
from tests.support.datasets import (
    BATCHES,
    SUBSET,
    crafted_batch,
    needs_subset,
    write_cifar10,
)
from tests.support.specs import digits_spec
from trainer.data import DatasetError, load_dataset


def cifar_spec(path: str, batch_size: int = 2, **dataset) -> StudySpec:
    return StudySpec.model_validate(
        digits_spec(
            dataset={"name": "cifar10", "path": path, **dataset},
            rho=(0.0,),
            batch_size=(batch_size,),
            epochs=1,
        )
    )


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(data root, a directory outside it), with every layout the tests name.

    Inside the root: `good/cifar-10-batches-py` (real), `flat` (files directly in
    it), and symlinks that stay inside. Outside: `outside/cifar-10-batches-py`.
    """
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_cifar10(root / "good" / BATCHES)
    write_cifar10(root / "flat")
    write_cifar10(outside / BATCHES)
    # Escapes, one level each.
    (root / "linked-dir").symlink_to(outside)  # the path itself
    (root / "linked-sub").mkdir()  # a real directory holding a symlinked batches dir
    (root / "linked-sub" / BATCHES).symlink_to(outside / BATCHES)
    for f in ("data_batch_3", "test_batch"):  # a real batches dir, one batch file linked
        write_cifar10(root / f"linked-{f}" / BATCHES)
        (root / f"linked-{f}" / BATCHES / f).unlink()
        (root / f"linked-{f}" / BATCHES / f).symlink_to(outside / BATCHES / f)
    (root / "hop1").symlink_to(root / "hop2")  # a chain that leaves on its second hop
    (root / "hop2").symlink_to(outside)
    # Symlinks that stay inside the root: fine at every level.
    (root / "inside-dir").symlink_to(root / "good")
    (root / "inside-sub").mkdir()
    (root / "inside-sub" / BATCHES).symlink_to(root / "good" / BATCHES)
    write_cifar10(root / "inside-file" / BATCHES)
    (root / "inside-file" / BATCHES / "data_batch_2").unlink()
    (root / "inside-file" / BATCHES / "data_batch_2").symlink_to(
        Path("..") / ".." / "good" / BATCHES / "data_batch_2"
    )
    return root, outside


def refusal(call, *args) -> AdmissionError:
    """The AdmissionError `call` raises (any other exception, or none, fails the test)."""
    with pytest.raises(AdmissionError) as e:
        call(*args)
    assert e.value.field == "dataset.path", e.value
    return e.value


ESCAPES = [
    ("linked-dir", NOT_A_DIRECTORY),
    ("linked-sub", f"{BATCHES}: {NOT_A_DIRECTORY}"),
    ("linked-data_batch_3", f"{BATCHES}/data_batch_3: {NOT_A_FILE}"),
    ("linked-test_batch", f"{BATCHES}/test_batch: {NOT_A_FILE}"),
    ("hop1", NOT_A_DIRECTORY),
    ("../outside", NOT_A_DIRECTORY),
    ("good/../../outside", NOT_A_DIRECTORY),
    ("good/../linked-sub", f"{BATCHES}: {NOT_A_DIRECTORY}"),
]


# docs/spec.md "Refused specs": a dataset path whose directory, official subdirectory or any
# data file resolves outside the data root is refused (a symlink at any level)
@pytest.mark.parametrize("path,reason", ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escaping_symlinks_are_refused_at_every_level(tree, path, reason):
    root, _ = tree
    # The worker's check and the API's check refuse alike.
    error = refusal(contained_dataset_dir, root, "cifar10", path)
    assert reason in error.message and repr(path) in error.message
    error = refusal(check_admission, cifar_spec(path), root, 100)
    assert reason in error.message


def test_an_absolute_path_outside_is_refused_and_one_inside_accepted(tree):
    root, outside = tree
    error = refusal(contained_dataset_dir, root, "cifar10", str(outside))
    assert NOT_A_DIRECTORY in error.message
    good = contained_dataset_dir(root, "cifar10", str(root / "good"))
    assert good == (root / "good" / BATCHES).resolve()


@pytest.mark.parametrize(
    "path,real",
    [
        ("good", f"good/{BATCHES}"),
        (f"good/{BATCHES}", f"good/{BATCHES}"),
        ("flat", "flat"),
        ("inside-dir", f"good/{BATCHES}"),
        ("inside-sub", f"good/{BATCHES}"),
        ("inside-file", f"inside-file/{BATCHES}"),
        ("./good/../good", f"good/{BATCHES}"),
    ],
)
def test_symlinks_that_stay_inside_are_fine(tree, path, real):
    root, _ = tree
    directory = contained_dataset_dir(root, "cifar10", path)
    assert directory == (root / real).resolve()
    check_admission(cifar_spec(path), root, 100)
    if path == "inside-file":  # the linked file resolves to the good copy, inside
        files = dataset_files(root, "cifar10", path)
        assert files.files[1] == (root / "good" / BATCHES / "data_batch_2").resolve()


def test_a_data_root_behind_a_symlink_is_resolved_first(tree, tmp_path):
    root, _ = tree
    (tmp_path / "root-link").symlink_to(root)
    assert (
        contained_dataset_dir(tmp_path / "root-link", "cifar10", "good")
        == (root / "good" / BATCHES).resolve()
    )
    refusal(contained_dataset_dir, tmp_path / "root-link", "cifar10", "linked-sub")


HOSTILE = [
    ("nul", "good\x00/etc", "NUL byte"),
    ("nul-only", "\x00", "NUL byte"),
    ("5000 chars", "a" * 5000, "5000 characters"),
    ("5000 chars of dirs", "a/" * 2500, "5000 characters"),
    ("component over NAME_MAX", "b" * 300, NOT_A_DIRECTORY),
    ("missing", "nowhere", NOT_A_DIRECTORY),
    ("empty", "", "required"),
]


@pytest.mark.parametrize("case,path,reason", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_paths_are_a_spec_error_never_another_exception(tree, case, path, reason):
    root, _ = tree
    error = refusal(contained_dataset_dir, root, "cifar10", path)
    assert reason in error.message
    assert len(str(error)) < 300  # a 5000-character path is not echoed back whole
    assert str(root) not in str(error)  # nor the server's own paths


# docs/spec.md "Refused specs": a data file that is not a regular file is refused
def test_loops_files_fifos_and_missing_files_are_refused(tree):
    root, _ = tree
    (root / "loop").symlink_to(root / "loop")
    assert NOT_A_DIRECTORY in refusal(contained_dataset_dir, root, "cifar10", "loop").message
    (root / "a-file").write_bytes(b"x")
    assert NOT_A_DIRECTORY in refusal(contained_dataset_dir, root, "cifar10", "a-file").message
    write_cifar10(root / "fifo")
    (root / "fifo" / "data_batch_4").unlink()
    os.mkfifo(root / "fifo" / "data_batch_4")  # opening it would hang: refused unopened
    message = refusal(check_admission, cifar_spec("fifo"), root, 100).message
    assert f"data_batch_4: {NOT_A_FILE}" in message
    write_cifar10(root / "dir-as-file")
    (root / "dir-as-file" / "test_batch").unlink()
    (root / "dir-as-file" / "test_batch").mkdir()
    assert (
        f"test_batch: {NOT_A_FILE}"
        in refusal(contained_dataset_dir, root, "cifar10", "dir-as-file").message
    )
    write_cifar10(root / "partial")
    (root / "partial" / "data_batch_5").unlink()
    (root / "partial" / "test_batch").unlink()
    (root / "partial" / "test_batch").symlink_to(root / "nowhere")  # dangling
    message = refusal(contained_dataset_dir, root, "cifar10", "partial").message
    assert "missing data_batch_5" in message
    (root / "partial" / "data_batch_5").write_bytes(b"")
    message = refusal(contained_dataset_dir, root, "cifar10", "partial").message
    assert f"test_batch: {NOT_A_FILE}" in message


def test_a_missing_data_root_is_a_spec_error(tmp_path):
    error = refusal(contained_dataset_dir, tmp_path / "no-root", "cifar10", "x")
    assert "data root" in error.message


# docs/spec.md "Refused specs": nothing about the host leaks. One table of what may lie
# outside the data root: every entry gives the same refusal, byte for byte.
def _outside_states(tmp_path: Path) -> dict[str, Path]:
    """Targets outside the root, each in another state; /proc and /dev where present."""
    out = tmp_path / "outside-states"
    (out / "dir").mkdir(parents=True)
    (out / "file").write_bytes(b"secret")
    os.mkfifo(out / "fifo")
    write_cifar10(out / "cifar")  # a real dataset: usable, but outside
    (out / "loop").symlink_to(out / "loop")
    targets = {
        "existing directory": out / "dir",
        "existing file": out / "file",
        "nonexistent": out / "nowhere",
        "under a nonexistent directory": out / "nowhere" / "deeper",
        "a FIFO": out / "fifo",
        "a usable dataset": out / "cifar",
        "a symlink loop": out / "loop",
        "/etc": Path("/etc"),
        "/etc/passwd": Path("/etc/passwd"),
        "/proc/self/environ": Path("/proc/self/environ"),
        "/proc/1/cwd (refused even to root here)": Path("/proc/1/cwd"),
        "/dev/null": Path("/dev/null"),
        "/root": Path("/root"),
    }
    return targets


def test_outside_the_root_every_state_gets_the_same_refusal(tree, tmp_path):
    """Through an escaping symlink (the same path string, so the same message must come
    back byte for byte) and as an absolute path (the message differs only by the path
    it repeats): existing, missing, unreadable, FIFO, loop, /proc, /dev alike. Before,
    the answers were `resolves outside the data root`, `no such file or directory`,
    `permission denied`, `too many levels of symbolic links`: a map of the host."""
    root, _ = tree
    messages, absolute = set(), set()
    for target in _outside_states(tmp_path).values():
        link = root / "escape"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        messages.add(str(refusal(contained_dataset_dir, root, "cifar10", "escape")))
        messages.add(str(refusal(check_admission, cifar_spec("escape"), root, 100)))
        error = refusal(check_admission, cifar_spec(str(target)), root, 100)
        shown = str(target) if len(str(target)) <= 80 else str(target)[:80] + "..."
        absolute.add(str(error).replace(repr(shown), "PATH"))
        # The official subdirectory and a data file, escaping the same ways.
        sub = root / "sub-escape"
        shutil.rmtree(sub, ignore_errors=True)
        write_cifar10(sub / BATCHES)
        shutil.rmtree(sub / BATCHES)
        (sub / BATCHES).symlink_to(target)
        messages.add(str(refusal(check_admission, cifar_spec("sub-escape"), root, 100)))
        (sub / BATCHES).unlink()
        write_cifar10(sub / BATCHES)
        (sub / BATCHES / "test_batch").unlink()
        (sub / BATCHES / "test_batch").symlink_to(target)
        messages.add(str(refusal(check_admission, cifar_spec("sub-escape"), root, 100)))
    assert messages == {
        f"dataset.path: 'escape': {NOT_A_DIRECTORY}",
        f"dataset.path: 'sub-escape': {BATCHES}: {NOT_A_DIRECTORY}",
        f"dataset.path: 'sub-escape': {BATCHES}/test_batch: {NOT_A_FILE}",
    }
    assert absolute == {f"dataset.path: PATH: {NOT_A_DIRECTORY}"}


def test_an_unusable_data_root_says_so_and_nothing_more(tmp_path, caplog):
    (tmp_path / "a-file").write_bytes(b"x")
    for data_dir in (tmp_path / "no-root", tmp_path / "a-file", Path("/proc/1/cwd/x")):
        error = refusal(contained_dataset_dir, data_dir, "cifar10", "x")
        assert error.message == f"'x': {DATA_ROOT_UNUSABLE}"  # no reason, no server path
    assert "no-root" in caplog.text  # the reason is in the API's log


# docs/spec.md "Refused specs": a data file that is not a complete pickle is refused
@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda b: b[: len(b) // 2], "not a complete pickle"),
        (lambda b: b[:-1], "exhausted before seeing STOP"),  # only the STOP opcode gone
        (lambda b: b"", "exhausted before seeing STOP"),
        (lambda b: b"\xff" * 100, "not a complete pickle"),
        (lambda b: b"\x80\x04" + b"N" * 20_000 + b".", "more than"),  # an opcode flood
    ],
    ids=["half", "no STOP", "empty", "garbage", "opcode flood"],
)
def test_truncated_or_malformed_batch_files_are_refused_by_the_api(tree, damage, reason):
    root, _ = tree
    file = root / "good" / BATCHES / "data_batch_2"
    file.write_bytes(damage(file.read_bytes()))
    error = refusal(check_admission, cifar_spec("good"), root, 100)
    assert f"{BATCHES}/data_batch_2" in error.message and reason in error.message


@needs_subset
def test_a_truncated_real_batch_is_refused(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(SUBSET, root / "cifar" / BATCHES)
    file = root / "cifar" / BATCHES / "test_batch"
    file.write_bytes(file.read_bytes()[:1_000_000])
    error = refusal(check_admission, cifar_spec("cifar"), root, 100)
    assert "test_batch is not a complete pickle" in error.message


def test_a_file_swapped_after_the_check_is_refused_when_read(tree, tmp_path):
    root, outside = tree
    files = dataset_files(root, "cifar10", "good")
    target = root / "good" / BATCHES / "data_batch_1"
    target.unlink()
    target.symlink_to(outside / BATCHES / "data_batch_1")  # swapped in after the check
    error = refusal(check_files, files, "good")
    assert "data_batch_1" in error.message
    target.unlink()
    shutil.copy(outside / BATCHES / "data_batch_1", target)  # another inode, inside
    assert "changed" in refusal(check_files, files, "good").message


# docs/spec.md "Dataset files are never trusted": workers check containment again on the
# resolved path of every file just before training
def test_the_worker_refuses_a_file_swapped_after_the_api_accepted(tree):
    """trial_config resolves through the same check: an escape made later is refused."""
    from worker.trial_config import trial_config

    root, outside = tree
    spec = cifar_spec("good")
    check_admission(spec, root, 100)  # what the API did
    params = spec.trials()[0]
    config = trial_config(spec, params, data_dir=root)
    assert config.dataset.path == str((root / "good" / BATCHES).resolve())
    target = root / "good" / BATCHES / "data_batch_1"
    target.unlink()
    target.symlink_to(outside / BATCHES / "data_batch_1")
    error = refusal(lambda: trial_config(spec, params, data_dir=root))
    assert f"{BATCHES}/data_batch_1: {NOT_A_FILE}" in error.message


# -- a crafted pickle executes nowhere ---------------------------------------


CRAFTED = [
    (how, where)
    for how in ("os.system", "builtins.exec", "builtins.open")
    for where in ("data", "top", "object array")
]


def _plain_load_in_a_subprocess(file: Path) -> None:
    code = "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'), encoding='bytes')"
    subprocess.run([sys.executable, "-c", code, str(file)], capture_output=True, timeout=60)


# docs/spec.md "Dataset files are never trusted": the API never unpickles (pickletools only);
# workers use a restricted unpickler
@pytest.mark.parametrize("how,where", CRAFTED)
def test_a_crafted_pickle_runs_in_neither_the_catalog_nor_the_trainer(tree, tmp_path, how, where):
    root, _ = tree
    marker = tmp_path / "marker"
    batch = root / "good" / BATCHES / "data_batch_1"
    batch.write_bytes(crafted_batch(marker, how, where))
    # The payload is live: a plain pickle.load (what the API used to do) runs it.
    _plain_load_in_a_subprocess(batch)
    assert marker.exists(), "the crafted pickle does not work: the test proves nothing"
    marker.unlink()
    # (a) The API's checks parse it without executing anything; it is a complete
    # pickle, so they accept it: its contents are the worker's to judge.
    check_admission(cifar_spec("good"), root, 100)
    assert not marker.exists()
    # (b) The trainer's loader refuses it, naming the file.
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", str(contained_dataset_dir(root, "cifar10", "good")))
    assert "data_batch_1" in str(e.value) and "refused global" in str(e.value)
    assert not marker.exists()
