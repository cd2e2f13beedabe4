"""`samsweep data fetch cifar10|cifar100`: the official archive, downloaded with a
progress bar (resumed where an earlier download stopped), checked against its published
checksum, and unpacked under the data root, refusing any member that is not a plain file
or directory inside the target (docs/deploy.md "Datasets").

What it leaves: `DIR/cifar-10-batches-py/` (or `cifar-100-python/`), which a spec names
as `dataset.path: cifar10` (the default DIR is `$SAMSWEEP_DATA_DIR/cifar10`). While it
downloads, `DIR/.<archive>.part` holds what has arrived; a run that is interrupted keeps
it and the next resumes from it (an HTTP Range request). A run that refuses (a wrong
checksum, a hostile or oversized archive) removes everything it wrote, the partial
download included, and exits 1 naming the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from samsweep.core.settings import get_settings


@dataclass(frozen=True)
class Archive:
    url: str
    digest: str  # hex
    algorithm: str  # "md5" (what the dataset's page publishes) or "sha256"
    top: str  # the one directory the archive holds
    max_bytes: int  # the unpacked size it may reach


# The official archives and the MD5 sums published on https://www.cs.toronto.edu/~kriz/cifar.html
ARCHIVES = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a", "md5", "cifar-10-batches-py", 400 * 2**20,
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85", "md5", "cifar-100-python", 400 * 2**20,
    ),
}  # fmt: skip
CHUNK = 1 << 20


class Refused(Exception):
    """The download or the archive is not what it should be; nothing is left behind."""


def fetch(name: str, to: Path, url: str | None = None, sha256: str | None = None,
          progress: bool = True, timeout: float = 60.0) -> Path:  # fmt: skip
    """Download, check and unpack dataset `name` into `to`; the directory it unpacked."""
    known = ARCHIVES[name]
    algorithm = "sha256" if sha256 else known.algorithm
    archive = Archive(url or known.url, sha256 or known.digest, algorithm, known.top,
                      known.max_bytes)  # fmt: skip
    if url and not sha256:
        raise Refused("--url needs --sha256: a mirror's archive is checked against it")
    target = to / archive.top
    if target.exists():
        return target  # fetched before; delete it to fetch again
    created = not to.exists()
    to.mkdir(parents=True, exist_ok=True)
    part = to / f".{PurePosixPath(httpx.URL(archive.url).path).name or name}.part"
    try:
        _download(archive.url, part, progress, timeout)
        _verify(part, archive)
        _unpack(part, to, archive)
    except (Refused, httpx.HTTPStatusError):  # nothing to resume from: leave nothing
        part.unlink(missing_ok=True)
        if created:
            shutil.rmtree(to, ignore_errors=True)
        raise
    part.unlink()
    return target


def _download(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append what is missing to `part` (Range from its size); raises httpx errors on a
    broken connection, leaving `part` for the next run to resume."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416:  # nothing left to send: the file is whole
            return
        r.raise_for_status()
        if have and r.status_code != 206:  # the server ignored the Range: start over
            have = 0
        total = int(r.headers.get("content-length", 0)) + have or None
        columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar, \
                part.open("ab" if have else "wb") as out:  # fmt: skip
            task = bar.add_task("download", total=total, completed=have)
            for chunk in r.iter_bytes():  # as it arrives: a broken connection keeps it
                out.write(chunk)
                bar.update(task, advance=len(chunk))


def _verify(part: Path, archive: Archive) -> None:
    h = hashlib.new(archive.algorithm)
    with part.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != archive.digest.lower():
        raise Refused(f"{archive.algorithm} of the download is {h.hexdigest()}, "
                      f"not the published {archive.digest}: refused and removed")  # fmt: skip


def _unpack(part: Path, to: Path, archive: Archive) -> None:
    """Every member a plain file or directory under `archive.top`, the total bounded,
    checked before anything is written; unpacked into a temporary directory beside the
    target and moved into place whole."""
    try:
        with tarfile.open(part, "r:*") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                path = PurePosixPath(m.name)
                if path.is_absolute() or ".." in path.parts or not path.parts:
                    raise Refused(f"archive member {m.name!r} is outside the target")
                if path.parts[0] != archive.top:
                    raise Refused(f"archive member {m.name!r} is not under {archive.top}/")
                if not (m.isfile() or m.isdir()):
                    raise Refused(f"archive member {m.name!r} is not a plain file or directory")
                total += m.size
                if total > archive.max_bytes:
                    raise Refused(f"the archive unpacks to over {archive.max_bytes} bytes")
            with tempfile.TemporaryDirectory(dir=to, prefix=".unpack-") as tmp:
                tar.extractall(tmp, members=members, filter="data")
                (Path(tmp) / archive.top).rename(to / archive.top)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise Refused(f"the archive cannot be unpacked: {e}") from None


def cmd_data_fetch(args: argparse.Namespace) -> int:
    to = args.to or get_settings().data_dir / args.dataset
    try:
        target = fetch(args.dataset, to, args.url, args.sha256, progress=sys.stderr.isatty())
    except Refused as e:
        print(f"samsweep: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPStatusError as e:
        print(f"samsweep: {e.request.url} answered {e.response.status_code}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"samsweep: the download stopped ({type(e).__name__}: {e}); run the same "
              "command again to resume it", file=sys.stderr)  # fmt: skip
        return 1
    print(f"{args.dataset}: {target} (dataset.path: {_spec_path(target)})")
    return 0


def _spec_path(target: Path) -> str:
    """What a spec names: the directory relative to the data root, where it is under it."""
    root = get_settings().data_dir
    try:
        return str(target.parent.resolve().relative_to(root.resolve()))
    except ValueError:
        return f"{target.parent} (outside SAMSWEEP_DATA_DIR)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets: fetch the official archives")
    verbs = data.add_subparsers(dest="verb", required=True)
    f = verbs.add_parser("fetch", help="download, check and unpack a dataset")
    f.add_argument("dataset", choices=sorted(ARCHIVES))
    f.add_argument("--to", type=Path, help="directory (default: $SAMSWEEP_DATA_DIR/DATASET)")
    f.add_argument("--url", help="a mirror of the archive (needs --sha256)")
    f.add_argument("--sha256", help="the archive's SHA-256, for --url")
    f.set_defaults(func=cmd_data_fetch)
