"""Build the wheelhouse the Ansible role copies to nodes that have no internet access.

    python infra/wheelhouse.py --out build/wheelhouse [--python-version 3.11] \\
        [--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64]

The directory ends up holding exactly:

    raftkv-<version>-py3-none-any.whl   built from this checkout, reproducibly: the product
                                        only (raftkv.core, .server, .rpc, .client); the tools
                                        (tools/, raftkv-tools: the benchmark and its peers, the
                                        log review, certs...) are never copied to the nodes
    <dependency wheels>                 `pip download` for the target Python and platform
    requirements.txt                    `raftkv==<version>`: what the node installs with
                                        `pip install --no-index --find-links DIR -r ...`

The project wheel is built from a copy of the sources with a fixed SOURCE_DATE_EPOCH, so the
same checkout gives the same bytes and Ansible's copy reports no change on a re-run. The
dependency download is skipped while the dependency list and the target are those of the last
run (recorded in `.wheelhouse-stamp`). The last line printed is `wheelhouse changed` or
`wheelhouse unchanged`. Exit status 0, or 1 when a build or download fails (pip's output shown).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STAMP = ".wheelhouse-stamp"
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold
DEFAULT_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
SOURCE_PATTERNS = ("pyproject.toml", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".mypy_cache")


class WheelhouseError(RuntimeError):
    pass


def project_metadata(project: Path) -> tuple[str, str, list[str], list[str]]:
    """(name, version, dependencies, package directories) from pyproject.toml."""
    body = tomllib.loads((project / "pyproject.toml").read_text())
    meta = body["project"]
    includes = body.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    patterns = includes.get("include", [meta["name"] + "*"])
    packages = sorted({p.rstrip("*").rstrip(".") for p in patterns})
    return meta["name"], meta["version"], list(meta.get("dependencies", [])), packages


def _pip(args: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise WheelhouseError(f"pip {' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")


def build_project_wheel(project: Path, scratch: Path) -> Path:
    source = scratch / "src"
    source.mkdir()
    _, _, _, packages = project_metadata(project)
    for name in SOURCE_PATTERNS:
        if (project / name).exists():
            shutil.copy2(project / name, source / name)
    for package in packages:
        shutil.copytree(project / package, source / package, ignore=IGNORED)
    env = dict(os.environ, SOURCE_DATE_EPOCH=REPRODUCIBLE_EPOCH, PYTHONHASHSEED="0")
    dist = scratch / "dist"
    _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(source)], env)
    wheels = list(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelhouseError(f"expected one project wheel, found {wheels}")
    return wheels[0]


def download_dependencies(
    dependencies: list[str], python_version: str, platforms: list[str], into: Path
) -> None:
    if not dependencies:
        return
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        target += ["--platform", platform]
    _pip(["download", "-q", "-d", str(into), *target, *dependencies])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sync(out: Path, wanted: dict[str, Path], keep: set[str]) -> list[str]:
    """Make `out` hold `wanted` (name → file) plus `keep`; returns what changed."""
    changes = []
    out.mkdir(parents=True, exist_ok=True)
    for name, path in sorted(wanted.items()):
        target = out / name
        if not target.exists() or _digest(target) != _digest(path):
            shutil.copyfile(path, target)
            changes.append(f"wrote {name}")
    for stale in sorted(out.iterdir()):
        if stale.name not in wanted and stale.name not in keep and stale.name != STAMP:
            stale.unlink()
            changes.append(f"removed {stale.name}")
    return changes


def build(out: Path, project: Path, python_version: str, platforms: list[str]) -> list[str]:
    name, version, dependencies, _ = project_metadata(project)
    stamp = json.dumps(
        {"dependencies": dependencies, "python": python_version, "platforms": platforms},
        sort_keys=True,
    )
    stamp_path = out / STAMP
    with tempfile.TemporaryDirectory(prefix="raftkv-wheelhouse-") as scratch_name:
        scratch = Path(scratch_name)
        own = build_project_wheel(project, scratch)
        requirements = scratch / "requirements.txt"
        requirements.write_text(f"{name}=={version}\n")
        wanted = {own.name: own, requirements.name: requirements}
        current = stamp_path.exists() and stamp_path.read_text() == stamp
        keep: set[str] = set()
        if current:
            keep = {p.name for p in out.glob("*.whl") if p.name != own.name}
        else:
            deps = scratch / "deps"
            download_dependencies(dependencies, python_version, platforms, deps)
            wanted.update({p.name: p for p in deps.glob("*.whl")})
        changes = sync(out, wanted, keep)
    stamp_path.write_text(stamp)
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python infra/wheelhouse.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--project", type=Path, default=REPO_ROOT)
    parser.add_argument("--python-version", default="3.11", help="the nodes' Python (X.Y)")
    parser.add_argument("--platform", action="append", help="wheel platform tags of the nodes")
    args = parser.parse_args(argv)
    platforms = args.platform or list(DEFAULT_PLATFORMS)
    try:
        changes = build(args.out.resolve(), args.project.resolve(), args.python_version, platforms)
    except (WheelhouseError, OSError, KeyError, tomllib.TOMLDecodeError) as error:
        print(f"wheelhouse: {error}", file=sys.stderr)
        return 1
    for change in changes:
        print(change)
    print("wheelhouse changed" if changes else "wheelhouse unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
