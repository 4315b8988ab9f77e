"""Analyses stream: their peak memory does not grow with the number of clips (issue 17).

Each measurement runs in a fresh subprocess (tests/memory_probe.py) and reads the kernel's
resident high-water mark, so torch's allocations count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def peak_growth_mib(function: str, n_clips: int) -> float:
    out = subprocess.run([sys.executable, "-m", "tests.memory_probe", function, str(n_clips)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1])


@needs_proc
@pytest.mark.parametrize("function", ["head_scores", "encoder_lens", "attention_window_sweep"])
def test_peak_memory_does_not_grow_with_the_number_of_clips(function):
    # 8 clips fill one batch of every function's default size, so both runs use the same batches
    few, many = peak_growth_mib(function, 8), peak_growth_mib(function, 24)
    # 16 more clips held at once would add at least 16 windows' buffers: over 500 MB here. The
    # allocator's fragmentation moves a peak by tens of MB from run to run (head_scores: 180-255).
    assert many <= 1.5 * few + 50, f"{function}: +{few:.0f} MiB on 8 clips, +{many:.0f} MiB on 24"
