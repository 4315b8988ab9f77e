from whisper_lens.model import HookedWhisper

__all__ = ["HookedWhisper"]
