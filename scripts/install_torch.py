"""Install the CPU build of the pinned torch into the running interpreter's environment.

    python scripts/install_torch.py --index https://download.pytorch.org/whl/cpu --constraints constraints.txt

PyPI's Linux wheel of a torch version is its CUDA build (several GB with the nvidia-* packages);
PyTorch's CPU index serves the same version without them. The index is probed once with a short
timeout: pip itself retries an unreachable index for every package it looks up, which adds minutes
on machines that reach PyPI only. Without the index, the pinned version is taken from pip's own
configuration (PyPI, a local wheel folder) only when that gives a CPU build; a CUDA build is refused
with a message, unless `--index pypi` says that is wanted (a GPU machine).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

PROBE_SECONDS = 3


def pinned_version(constraints: Path) -> str:
    for _number, line in enumerate(constraints.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.fullmatch(r"torch==([\w.]+)", line.split("#")[0].strip())
        if match:
            return match.group(1)
    raise SystemExit(f"{constraints}: no line 'torch==<version>' (the torch version the kit is tested with)")


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def reachable(index: str) -> bool:
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=PROBE_SECONDS) as response:
            return response.status == 200
    except Exception:  # DNS failure, refused or timed-out connection, HTTP error: all mean "not usable"
        return False


def pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    return subprocess.run(command, check=True, text=True, capture_output=capture)


def is_cuda_build(requirement: str) -> bool:
    """What pip would install for `requirement` from its configured indexes: a CUDA build needs nvidia-* packages."""
    report = pip(
        "install",
        "--dry-run",
        "--no-deps",
        "--ignore-installed",
        "--quiet",
        "--report",
        "-",
        requirement,
        capture=True,
    )
    install = json.loads(report.stdout)["install"]
    requires = install[0]["metadata"].get("requires_dist") or []
    return "+cpu" not in install[0]["metadata"]["version"] and any(r.startswith("nvidia-") for r in requires)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--index", required=True, help="PyTorch's CPU wheel index URL, or 'pypi' for pip's own indexes"
    )
    parser.add_argument("--constraints", type=Path, required=True, help="the file pinning torch==<version>")
    args = parser.parse_args()
    version = pinned_version(args.constraints)
    have = installed_version()
    if have and have.split("+")[0] == version:
        return
    requirement = f"torch=={version}"
    if args.index != "pypi":
        if reachable(args.index):
            print(f"torch: installing {requirement} from {args.index}")
            pip("install", "-q", "--no-deps", requirement, "--index-url", args.index)
            return
        print(
            f"torch: {args.index} not reachable within {PROBE_SECONDS} s; looking for a CPU build of {requirement} "
            "through pip's configured indexes"
        )
        if is_cuda_build(requirement):
            raise SystemExit(
                f"torch: pip's configured indexes offer only the CUDA build of {requirement} (several GB). Reach "
                f"{args.index}, or point TORCH_INDEX at a mirror of it (make TORCH_INDEX=<url>), or put the CPU "
                "wheel in a pip find-links folder; on a CUDA machine, make TORCH_INDEX=pypi takes the CUDA build."
            )
    print(f"torch: installing {requirement} through pip's configured indexes")
    pip("install", "-q", "--no-deps", requirement)


if __name__ == "__main__":
    main()
