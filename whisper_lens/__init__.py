"""whisper_lens: TransformerLens-style hooks, SAELens training and analysis for OpenAI's Whisper."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["HookedWhisper", "WhisperActivationCache", "get_act_name", "load_checkpoint"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from whisper_lens.cache import WhisperActivationCache
    from whisper_lens.loading import load_checkpoint
    from whisper_lens.model import HookedWhisper
    from whisper_lens.names import get_act_name


def __getattr__(name: str) -> Any:
    # Lazy, so `import whisper_lens` (and `python -m whisper_lens.names`) does not pull in torch.
    if name == "HookedWhisper":
        from whisper_lens.model import HookedWhisper

        return HookedWhisper
    if name == "WhisperActivationCache":
        from whisper_lens.cache import WhisperActivationCache

        return WhisperActivationCache
    if name == "get_act_name":
        from whisper_lens.names import get_act_name

        return get_act_name
    if name == "load_checkpoint":
        from whisper_lens.loading import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'whisper_lens' has no attribute {name!r}")
