"""The demo's report as a person sees it: headless Chromium renders it, the CircuitsVis views
draw, no JavaScript error is logged, and every main section has content. A screenshot is saved
to tests/artifacts/report.png."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SECTIONS = ("transcripts", "heads", "attention", "encoder-lens", "logit-lens", "windows", "patching", "sae")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium: install Debian's `chromium` package (.ci/run does, as root with apt-get)")


def _run(browser: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--allow-file-access-from-files"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(demo_report):
    browser = _chromium()
    report, _ = demo_report
    url = (report / "index.html").resolve().as_uri()
    dom = _run(browser, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines()
              if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]
    assert not errors, "JavaScript errors:\n" + "\n".join(errors[:10])
    page = dom.stdout
    for section in SECTIONS:
        match = re.search(rf"<section id=\"{section}\">(.*?)</section>", page, re.S)
        assert match, f"section {section} missing"
        text = re.sub(r"<[^>]+>", " ", match.group(1))
        assert len(text.split()) > 5 or "<img" in match.group(1), f"section {section} is empty"
    # CircuitsVis rendered: each view's root div now has children drawn by its React code
    roots = re.findall(r"<div id=\"circuits-vis-[^\"]+\"[^>]*>(.*?)</div>", page, re.S)
    assert roots and all(r.strip() for r in roots), "a CircuitsVis view did not render"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    result = _run(browser, f"--screenshot={shot}", "--window-size=1280,3000", url)
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
