"""SAELens's private names that whisper_lens relies on, in one place so an upgrade touches one file.

- `HookedSAETransformer`'s splicing internals (`_SAEWrapper`, `_disable_hooks`, `set_deep_attr`):
  HookedWhisper binds SAELens's own `add_sae` / `run_with_saes` rather than reimplementing them.
- `CacheActivationsRunner._consolidate_shards`: the merge that makes shards one dataset in the
  layout `use_cached_activations=True` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def splicing_internals() -> tuple[Any, Any, Any, Any]:
    """(HookedSAETransformer, _SAEWrapper, set_deep_attr, _disable_hooks)."""
    from sae_lens.analysis.hooked_sae_transformer import HookedSAETransformer, _SAEWrapper, set_deep_attr
    from sae_lens.saes.sae import _disable_hooks

    return HookedSAETransformer, _SAEWrapper, set_deep_attr, _disable_hooks


def consolidate_shards(source_dir: Path, output_dir: Path) -> Any:
    """Move the shard datasets under `source_dir` into one dataset in `output_dir` (which may
    hold nothing but `.tmp_shards`); `source_dir` is removed."""
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    return CacheActivationsRunner._consolidate_shards(source_dir, output_dir, copy_files=False)
