"""Analyses that return plain data (tensors, dataclasses, pandas frames); `whisper_lens.views`
turns them into pictures.

    logit_lens, encoder_lens                        lens.py
    head_scores, find_alignment_heads, ...          heads.py
    restrict_attention, attention_window_sweep      windows.py
    patching_setup, patch_*, layer_ablation         patching.py
    feature_activations, feature_dashboard, steer   features.py
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "logit_lens": "lens", "encoder_lens": "lens", "LogitLens": "lens",
    "head_scores": "heads", "find_alignment_heads": "heads", "alignment_head_table": "heads",
    "compare_alignment_heads": "heads",
    "restrict_attention": "windows", "attention_window_sweep": "windows",
    "patching_setup": "patching", "generic_patch": "patching", "patch_resid": "patching",
    "patch_encoder_time": "patching", "patch_block_outputs": "patching", "patch_heads": "patching",
    "layer_ablation": "patching", "Patched": "patching", "PatchingSetup": "patching",
    "feature_activations": "features", "feature_dashboard": "features", "steer": "features", "ablate_latents": "features",
    "FeatureActivations": "features",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"whisper_lens.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'whisper_lens.analysis' has no attribute {name!r}")
