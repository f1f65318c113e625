"""A writable matplotlib folder before matplotlib is imported (MONAI imports it), so that the package starts in a
read-only container even when neither the configured folder nor a temporary folder can be written."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

FALLBACK_ROOTS = (None, "/dev/shm")
"""Where a fresh folder is made when the configured one is unusable: the temporary folder, then /dev/shm (an
in-memory file system that Docker mounts writable even with --read-only)."""


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def matplotlib_folders() -> list[Path]:
    """The folders matplotlib writes: MPLCONFIGDIR when set, else its XDG config and cache folders."""
    if os.environ.get("MPLCONFIGDIR"):
        return [Path(os.environ["MPLCONFIGDIR"])]
    home = Path(os.path.expanduser("~"))
    return [Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
            Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"]


def ensure_matplotlib_folder() -> None:
    """Point MPLCONFIGDIR at a fresh folder (removed at exit) when a folder matplotlib would write is unusable;
    leave everything as it is when all are writable or no fallback root is."""
    if all(_writable(folder) for folder in matplotlib_folders()):
        return
    for root in FALLBACK_ROOTS:
        try:
            folder = tempfile.mkdtemp(prefix="matplotlib-", dir=root)
        except OSError:
            continue
        os.environ["MPLCONFIGDIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return
