"""Debian's Chromium for the browser tests, installed on first use; never a downloaded browser.

Playwright drives ``/usr/bin/chromium`` through its bundled driver (``executable_path``); its own
browser downloads stay off (``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD``). When Chromium is missing and
this process is root with apt-get, ``apt-get install -y chromium`` installs it (after an
``apt-get update`` if the first try fails); otherwise the test is skipped, saying exactly why.
A Chinese font (``fonts-wqy-microhei``, 5 MB) comes along when none is installed, so holders'
names and the legal terms show in the screenshots as a duty officer's screen shows them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_or_skip"]

_CJK_FONT = "fonts-wqy-microhei"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
"""Headless on a machine without network: no sandbox (root), nothing that phones home."""


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


def chromium_or_skip() -> Path:
    """The Chromium binary, installing Debian's package if need be; skips the test otherwise."""
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    if CHROMIUM.exists():
        _chinese_font()
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and there is no apt-get here to install Debian's chromium")
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root: run `apt-get install -y chromium`")
    installed = _apt("install", "-y", "chromium")
    if installed.returncode != 0:
        _apt("update")
        installed = _apt("install", "-y", "chromium")
    if installed.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(f"`apt-get install -y chromium` failed: {installed.stderr.strip()[-500:]}")
    _chinese_font()
    return CHROMIUM


def _chinese_font() -> None:
    """Best effort: without it the pages still work, Chinese text shows as boxes."""
    fc_list = shutil.which("fc-list")
    if fc_list is None or shutil.which("apt-get") is None or os.geteuid() != 0:
        return
    found = subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True, check=False)
    if not found.stdout.strip():
        _apt("install", "-y", _CJK_FONT)
