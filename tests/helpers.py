"""Helpers every test folder may import: where the headless browser is, if anywhere."""

from __future__ import annotations

import shutil

__all__ = ["CHROMEDRIVER", "CHROMIUM"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
