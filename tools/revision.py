"""A git revision of this repository checked out beside it, for tools that compare it with
the working tree (`compare_sources.py`, `step_time_ab.py`).

Example:
    >>> from revision import ROOT
    >>> (ROOT / "symnet").is_dir()
    True
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolve(rev: str) -> str:
    """The commit ``rev`` names (a branch, tag or hash), in full."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"],
                          capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def checked_out(rev: str) -> Iterator[tuple[Path, Path]]:
    """``(tree, scratch)``: ``rev`` checked out (a detached worktree) and a scratch folder
    beside it; both removed on exit."""
    scratch = Path(tempfile.mkdtemp(prefix="symnet-rev-"))
    tree = scratch / "base"
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet",
                        str(tree), resolve(rev)], check=True)
        yield tree, scratch
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False)
        shutil.rmtree(scratch, ignore_errors=True)
