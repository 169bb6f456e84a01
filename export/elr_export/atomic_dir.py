"""Directories written atomically: filled in a staging directory, then renamed into place.

Checkpoints and bundles both use this, so an interrupted write never leaves a half-written
directory at the target and never destroys the one already there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """Return the process umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_staging_dir(target: Path, prefix: str) -> Path:
    """Create an empty directory beside `target` with the mode the umask gives new dirs.

    mkdtemp alone would make it private (0o700), and the renamed result would stay private.
    Raises OSError when the parent directory cannot be written.
    """
    parent = target.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{prefix}", dir=parent))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging


def replace_dir(staging: Path, target: Path) -> None:
    """Move the complete directory `staging` to `target`, replacing a directory there.

    NOTE: replacing takes two renames (old directory aside, new one in), so a crash between
    them leaves the old directory at ".<name>.old" and nothing at `target`.
    """
    if target.exists() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
