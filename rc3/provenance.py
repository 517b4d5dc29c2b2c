"""Which code produced a figure: the git commit of the checkout, marked when the given files differ from it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def git_commit(watched: Sequence[str] = (), repo: Path = REPO) -> str:
    """Short commit of `repo`, plus " (modified: <files>)" naming the files under `watched` with local changes.

    A copy of the tree without .git (e.g. shipped to another machine) passes the commit in RC3_GIT_COMMIT.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", *watched], cwd=repo, capture_output=True,
                                 text=True, check=True).stdout.split() if watched else []
        return sha + (f" (modified: {', '.join(changed)})" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("RC3_GIT_COMMIT", "unknown (no git checkout)")
