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
    few, many = peak_growth_mib(function, 8), peak_growth_mib(function, 40)
    # Holding all 40 clips at once (encoder_lens with batch_size=len(clips)) grows 77 -> 533 MiB;
    # streaming grows by at most about 50, and the allocator moves a peak by up to ~75 run to run.
    assert many - few <= 150, f"{function}: +{few:.0f} MiB on 8 clips, +{many:.0f} MiB on 40"
