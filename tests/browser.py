"""Headless Chromium for tests that open a page: Debian's ``chromium`` (``make test`` installs it when it can).

``chromium()`` is its path or None; ``render(page, png=...)`` loads a local file with the flags this machine
needs (no sandbox as root, no GPU, no background networking: the machine's network is closed and Chromium's
own connections would be refused), lets its JavaScript run, and returns the DOM as it stands after that.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["chromium", "render", "SKIP_REASON"]

SKIP_REASON = ("no chromium on this machine (Debian package 'chromium'; `make test` installs it with apt-get "
               "when run as root) — the report's in-browser check needs it")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000", "--window-size=1000,3600", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(page: Path, png: Path | None = None, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran; with ``png``, also a screenshot of it."""
    exe = chromium()
    assert exe, SKIP_REASON
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url], capture_output=True,
                             text=True, timeout=timeout)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if png is not None:
        with tempfile.TemporaryDirectory() as profile:
            shot = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", url],
                                  capture_output=True, text=True, timeout=timeout)
        assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    return dom.stdout
