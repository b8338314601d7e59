"""Print each direct requirement of pyproject.toml (with the [test] and [ray] extras) beside the
version installed in this environment: the record of what `scripts/test_floors.sh` tested."""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


def main() -> int:
    floors = (sys.argv[1:] or ["lowest-direct"])[0] == "lowest-direct"  # the resolution the environment was built with
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    print(f"python {sys.version.split()[0]}" + ("" if floors else "  (newest releases)"))
    for req in project["dependencies"] + extras["test"] + extras["ray"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0)
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = "not installed"
        bound = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", req)
        note = ""
        if floors and bound and version != "not installed" and Version(version.split("+")[0]) != Version(bound.group(1)):
            note = ("  (test_floors.sh's TORCH: by default the CPU wheel `make setup` installs)" if name == "torch"
                    else "  (above the bound: another requirement needs it)")
        print(f"{req:28s} {version}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
