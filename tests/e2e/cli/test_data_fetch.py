"""`samsweep data fetch` through the real entry point against a local HTTP server that
serves archives this test builds (docs/deploy.md "Datasets"): a good archive unpacks
where a spec finds it; a wrong checksum, a hostile member path, a link and a truncated
download are refused or resumed, and a refusal leaves nothing behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

TOP = "cifar-10-batches-py"


def archive(members: dict[str, bytes], link: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return out.getvalue()


GOOD = archive({f"{TOP}/data_batch_1": b"x" * 300_000, f"{TOP}/batches.meta": b"meta"})


class Server:
    """Serves `files` by path, honouring Range; `cut` sends only that many bytes of a
    whole-file answer, then closes (a truncated download)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None
        self.ranges: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut is not None and not rng:
                    self.wfile.write(body[: server.cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the rest never arrives
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()


def fetch(tmp: Path, url: str, sha: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAMSWEEP_DATA_DIR": str(tmp / "data")}
    return subprocess.run(
        [sys.executable, "-m", "samsweep.cli", "data", "fetch", "cifar10", "--url", url,
         "--sha256", sha, *extra],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# docs/deploy.md "Datasets": a good archive lands where `dataset.path: cifar10` finds it
def test_a_good_archive_is_checked_and_unpacked_under_the_data_root(server, tmp_path):
    server.files["/c10.tar.gz"] = GOOD
    done = fetch(tmp_path, f"{server.url}/c10.tar.gz", sha(GOOD))
    assert done.returncode == 0, done.stderr
    target = tmp_path / "data" / "cifar10" / TOP
    assert (target / "data_batch_1").read_bytes() == b"x" * 300_000
    assert "dataset.path: cifar10" in done.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == [TOP]  # no .part, no temp dir
    again = fetch(tmp_path, f"{server.url}/c10.tar.gz", sha(GOOD))
    assert again.returncode == 0 and len(server.ranges) == 1  # already there: no download


@pytest.mark.parametrize(
    "data,reason",
    [
        (GOOD, "not the published"),  # served with another checksum
        (archive({f"{TOP}/../../evil": b"x"}), "outside the target"),
        (archive({"/etc/evil": b"x"}), "outside the target"),
        (archive({f"{TOP}/ok": b"x"}, link=f"{TOP}/passwd"), "not a plain file"),
        (archive({"elsewhere/file": b"x"}), f"not under {TOP}/"),
        (b"not a tar archive at all", "cannot be unpacked"),
    ],
)
def test_a_refused_archive_leaves_nothing_behind(server, tmp_path, data, reason):
    server.files["/c10.tar.gz"] = data
    checksum = sha(b"something else") if data is GOOD else sha(data)
    done = fetch(tmp_path, f"{server.url}/c10.tar.gz", checksum)
    assert done.returncode == 1 and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*"))
    assert not Path("/etc/evil").exists()


# docs/deploy.md "Datasets": an interrupted download resumes where it stopped (Range)
def test_a_truncated_download_resumes(server, tmp_path):
    server.files["/c10.tar.gz"] = GOOD
    server.cut = len(GOOD) // 2
    first = fetch(tmp_path, f"{server.url}/c10.tar.gz", sha(GOOD))
    assert first.returncode == 1 and "run the same command again" in first.stderr, first.stderr
    part = tmp_path / "data" / "cifar10" / ".c10.tar.gz.part"
    assert 0 < part.stat().st_size < len(GOOD)
    second = fetch(tmp_path, f"{server.url}/c10.tar.gz", sha(GOOD))
    assert second.returncode == 0, second.stderr
    assert server.ranges[-1] == f"bytes={len(GOOD) // 2}-"  # only the rest was asked for
    assert (tmp_path / "data" / "cifar10" / TOP / "batches.meta").read_bytes() == b"meta"
    assert not part.exists()


def test_a_mirror_without_its_checksum_and_a_missing_archive_are_refused(server, tmp_path):
    env = {**os.environ, "SAMSWEEP_DATA_DIR": str(tmp_path / "data")}
    no_sha = subprocess.run(
        [sys.executable, "-m", "samsweep.cli", "data", "fetch", "cifar10", "--url",
         f"{server.url}/x.tar.gz"], env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_sha.returncode == 1 and "--url needs --sha256" in no_sha.stderr
    missing = fetch(tmp_path, f"{server.url}/missing.tar.gz", sha(b""))
    assert missing.returncode == 1 and "answered 404" in missing.stderr, missing.stderr
    assert not (tmp_path / "data" / "cifar10").exists()
