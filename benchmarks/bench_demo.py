"""Each stage of `whisper-lens demo`: its seconds and its peak resident memory, in one run.

    uv run python benchmarks/bench_demo.py [--quick] [--out DIR]

Runs the demo exactly as the CLI does (same defaults, same allocator settings) and prints a table
of stage, seconds and peak MiB, then the whole run's peak. Each stage's peak is the process's
resident high-water mark while that stage ran (Linux: /proc/self/status VmHWM, reset between
stages through /proc/self/clear_refs), so it includes whatever earlier stages still hold.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path


def _status_mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


class StageMeter:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []
        self._name: str | None = None
        self._start = 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.rows.append((self._name, now - self._start, _status_mib("VmHWM")))
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        self._name, self._start = (None if name == "done" else name), now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from whisper_lens.demo import DemoOptions, run_demo
    from whisper_lens.runtime import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    meter = StageMeter()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_demo_"))
    started = time.perf_counter()
    run_demo(DemoOptions(device="cpu", out=out, quick=args.quick), on_stage=meter)
    total = time.perf_counter() - started
    print(f"\n{'stage':<28}{'seconds':>9}{'peak MiB':>10}")
    for name, seconds, peak in meter.rows:
        print(f"{name:<28}{seconds:>9.1f}{peak:>10.0f}")
    peak = max(row[2] for row in meter.rows)  # VmHWM resets per stage, so the run's peak is the largest
    print(f"{'whole demo':<28}{total:>9.1f}{peak:>10.0f}")


if __name__ == "__main__":
    main()
