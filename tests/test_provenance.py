"""rc3.provenance: the commit stamp that benchmark figures carry."""
from __future__ import annotations

from pathlib import Path

from procs import run_bounded

from rc3.provenance import git_commit


def _git(repo: Path, *args: str) -> str:
    return run_bounded(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], timeout=120,
                       waiting_for=f"git {args[0]} in the test repository", cwd=repo, check=True).stdout.strip()


def test_git_commit_names_only_the_changed_watched_files(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "b.py").write_text("b = 1\n")
    _git(tmp_path, "add", "a.py", "b.py")
    _git(tmp_path, "commit", "-q", "-m", "x")
    sha = _git(tmp_path, "rev-parse", "--short=12", "HEAD")
    assert git_commit(["a.py", "b.py"], repo=tmp_path) == sha
    (tmp_path / "b.py").write_text("b = 2\n")
    assert git_commit(["a.py", "b.py"], repo=tmp_path) == f"{sha} (modified: b.py)"
    assert git_commit(["a.py"], repo=tmp_path) == sha  # changes outside the watched paths do not mark it
    assert git_commit(repo=tmp_path) == sha


def test_git_commit_without_a_checkout_uses_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RC3_GIT_COMMIT", "abc123")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(["a.py"], repo=tmp_path) == "abc123"
