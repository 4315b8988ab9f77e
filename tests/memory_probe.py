"""Run one analysis on N clips in this process and print how far its peak resident memory rose
above the memory held before the call (MiB). Used by tests/test_memory.py in a subprocess:

    python tests/memory_probe.py FUNCTION N
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch

from whisper_lens import HookedWhisper
from whisper_lens.config import WhisperDims
from whisper_lens.data import AudioExample

# Real-length windows (1500 encoder positions, so a pattern is 36 MB per window and layer) with
# narrow layers, so the run is quick but every per-window buffer is full size.
DIMS = WhisperDims(80, 1500, 64, 4, 1, 51864, 448, 64, 4, 1)


def _mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def main(function: str, n: int) -> None:
    torch.manual_seed(0)
    from tests.conftest import random_openai

    model = HookedWhisper.from_state_dict(DIMS, random_openai(DIMS).state_dict())
    rng = np.random.default_rng(0)
    clips = [AudioExample(f"c{i}", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000,
                          "the birch canoe slid") for i in range(n)]
    from whisper_lens import analysis

    calls = {
        "head_scores": lambda: analysis.head_scores(model, clips),
        "encoder_lens": lambda: analysis.encoder_lens(model, clips, max_new_tokens=2),
        "attention_window_sweep": lambda: analysis.attention_window_sweep(model, clips, windows=[5],
                                                                          max_new_tokens=2),
    }
    calls[function]()  # warm-up on the same inputs: first-call allocations are not growth
    model.release_buffers()
    before = _mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    calls[function]()
    print(f"{_mib('VmHWM') - before:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
