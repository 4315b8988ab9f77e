"""Acceptance tier: the example scripts run as written (so they cannot rot)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from tests.conftest import needs_tiny_en

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("[0-9][0-9]_*.py"))


@needs_tiny_en
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, capsys):
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out.strip(), f"{script.name} printed nothing"


@needs_tiny_en
def test_cli_demo_quick_writes_the_report(demo_report):
    report, out = demo_report
    assert "word error rate" in out and "Open" in out and "[5/5]" in out
    page = (report / "index.html").read_text()
    for section in ("transcripts", "heads", "attention", "encoder-lens", "logit-lens", "windows", "patching", "sae"):
        assert f"id='{section}'" in page, section
    assert (report / "features" / "index.html").is_file()
    assert list((report / "features" / "audio").glob("*.wav"))


def test_cli_rejects_bad_arguments(capsys):
    from whisper_lens.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--limit", "0"])
    assert "--limit" in capsys.readouterr().err
    assert main(["info", "no-such-model"]) == 2
    assert "cannot load Whisper weights" in capsys.readouterr().err


@needs_tiny_en
def test_cli_analyze_own_audio(tmp_path, capsys):
    from whisper_lens.cli import main
    from whisper_lens.data import SAMPLES_DIR

    files = [str(SAMPLES_DIR / "harvard_01_01.flac"), str(SAMPLES_DIR / "harvard_01_02.flac")]
    texts = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."]
    assert main(["analyze", *files, "--text", *texts, "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert all(f"id='{s}'" in page for s in ("transcripts", "heads", "attention", "encoder-lens", "windows"))
    assert "id='sae'" not in page and "id='patching'" not in page  # only with --sae / --corrupted
    assert main(["analyze", *files, "--text", texts[0]]) == 2
    assert "--text" in capsys.readouterr().err
