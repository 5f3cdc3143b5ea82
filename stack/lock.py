"""Pin every requirement of a lock file to the sha256 of each of its files on PyPI.

Usage (`make lock` runs it after freezing; standard library only):

    python3 -m stack.lock requirements.lock stack/superset/requirements.lock stack/pip.lock

Each `name==version` line becomes `name==version --hash=sha256:… …`, one hash per file PyPI
serves for that version (every wheel and the sdist, so any platform's pip finds its file's
hash). pip then installs with `--require-hashes`: a file that differs from what was locked, on
PyPI or on the way, fails the install instead of running. The hashes come from PyPI's simple
index (PEP 691 JSON). A line that already carries hashes is left as it is, so a rerun only
fetches what is new.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

INDEX = "https://pypi.org/simple/{name}/"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*$")


def canonical(name: str) -> str:
    """Return a project name as PyPI's simple index spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def file_version(filename: str) -> str | None:
    """Return the version in a wheel's or an sdist's file name, normalised for comparison."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return _norm(parts[1]) if len(parts) >= 5 else None
    for suffix in (".tar.gz", ".zip", ".tar.bz2"):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            return _norm(stem.rsplit("-", 1)[1]) if "-" in stem else None
    return None


def _norm(version: str) -> str:
    return version.lower().replace("_", "-").lstrip("v")


def hashes(name: str, version: str, timeout: float = 30) -> list[str]:
    """Return the sha256 of every file PyPI serves for `name==version`; raise LookupError if none."""
    request = urllib.request.Request(INDEX.format(name=canonical(name)),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        files = json.load(response)["files"]
    found = sorted({f["hashes"]["sha256"] for f in files
                    if file_version(f["filename"]) == _norm(version) and "sha256" in f.get("hashes", {})})
    if not found:
        raise LookupError(f"PyPI serves no file of {name}=={version}")
    return found


def pin_file(path: Path) -> int:
    """Rewrite `path` with hashes for every unhashed pin; return how many pins were hashed."""
    out, done = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if not match:
            out.append(line)
            continue
        name, version = match.groups()
        digests = hashes(name, version)
        out.append(f"{name}=={version} \\")
        out.extend(f"    --hash=sha256:{d}" + (" \\" if i < len(digests) - 1 else "") for i, d in enumerate(digests))
        done += 1
        print(f"{path.name}: {name}=={version}: {len(digests)} file(s)", file=sys.stderr)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return done


def main(argv: list[str] | None = None) -> int:
    """Pin the hashes of each lock file given; return the exit status."""
    parser = argparse.ArgumentParser(prog="python3 -m stack.lock", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lock_files", nargs="+", type=Path, help="requirements files of name==version lines")
    args = parser.parse_args(argv)
    for path in args.lock_files:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        for path in args.lock_files:
            print(f"{path}: {pin_file(path)} pins hashed", file=sys.stderr)
    except (OSError, LookupError) as exc:
        print(f"stack.lock: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
