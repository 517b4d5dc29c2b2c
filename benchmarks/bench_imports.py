#!/usr/bin/env python
"""Start-up of RC3's front doors: `import rc3`, `import rc3.config` and every console script's `--help`
(pyproject.toml [project.scripts], run as the installed script runs it: `from MODULE import FUNC; FUNC()`),
side by side with `python -c "import torch"` and `python -c "pass"`, in fresh processes.

With `--before DIR` (a checkout of an earlier commit, e.g. `git worktree add /tmp/before main`), the
same commands also run on that tree (PYTHONPATH=DIR), interleaved with this tree's, so that both see
the same load. Each repeat runs every command once, in the same order; the table gives the median
wall seconds of the repeats. The machine's load (`uptime`) is printed before and after.

    python benchmarks/bench_imports.py [--repeats 5] [--before /tmp/before] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def script_commands(tree: Path) -> list[tuple[str, str]]:
    """(label, python statement) of each console script's `--help` in `tree`'s pyproject."""
    scripts = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]
    out = []
    for name, target in scripts.items():
        module, func = target.split(":")
        out.append((f"{name} --help", f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {func}; {func}()"))
    return out


def timed(statement: str, tree: Path) -> float:
    """Wall seconds of `python -c STATEMENT` with `tree` on PYTHONPATH (a `--help` exits 0)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", statement], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{statement}` in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def commit_of(tree: Path) -> str:
    proc = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + ("+uncommitted" if dirty else "")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", type=Path, help="a checkout of an earlier commit, timed in the same run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.before is not None and not (args.before / "rc3" / "__init__.py").is_file():
        ap.error(f"--before {args.before}: not a checkout of this repository (no rc3/__init__.py)")

    baseline = [("python -c \"pass\"", "pass"), ("python -c \"import torch\"", "import torch")]
    ours = [("import rc3", "import rc3"), ("import rc3.config", "import rc3.config"), *script_commands(ROOT)]
    plan = [(label, stmt, ROOT, "") for label, stmt in baseline + ours]
    if args.before is not None:
        before_cmds = [("import rc3", "import rc3"), ("import rc3.config", "import rc3.config"),
                       *script_commands(args.before)]
        plan += [(label, stmt, args.before, "before") for label, stmt in before_cmds]

    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "commit": commit_of(ROOT),
            "before_commit": commit_of(args.before) if args.before is not None else None,
            "uptime_start": uptime(), "repeats": args.repeats}
    print(f"{info['date']}, {info['cpus']} CPUs {info['machine']}, Python {info['python']}, commit {info['commit']}"
          + (f", before = {args.before} at {info['before_commit']}" if args.before is not None else ""))
    print(f"load at start: {info['uptime_start']}")
    walls: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for label, stmt, tree, which in plan:
            walls.setdefault((label, which), []).append(timed(stmt, tree))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    info["uptime_end"] = uptime()
    print(f"load at end: {info['uptime_end']}")

    rows = []
    for label, _, _, which in plan:
        if which:
            continue
        before = walls.get((label, "before"))
        rows.append({"command": label, "median_s": statistics.median(walls[(label, "")]),
                     "before_median_s": statistics.median(before) if before else None})
    for label, _, _, which in plan:  # commands only the earlier tree has
        if which and (label, "") not in walls:
            rows.append({"command": label, "median_s": None,
                         "before_median_s": statistics.median(walls[(label, "before")])})
    print(f"\n| command | this tree: median wall (s) | {'before: median wall (s) |' if args.before else ''}")
    print("| --- | ---: |" + (" ---: |" if args.before else ""))
    for row in rows:
        now = "-" if row["median_s"] is None else f"{row['median_s']:.2f}"
        then = "" if not args.before else (" - |" if row["before_median_s"] is None else f" {row['before_median_s']:.2f} |")
        print(f"| `{row['command']}` | {now} |{then}")
    info["rows"] = rows
    if args.json is not None:
        args.json.write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    main()
