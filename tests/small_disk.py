"""A real small disk for full-disk tests: a tmpfs mounted on a test's folder (needs root, as CI runs)."""

from __future__ import annotations

import os
import pathlib
import subprocess


def mount_tmpfs(path: pathlib.Path, size: str) -> str | None:
    """Mounts a ``size`` (e.g. ``"3m"``) tmpfs on ``path``; returns why it could not, or None."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}"


def unmount(path: pathlib.Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
