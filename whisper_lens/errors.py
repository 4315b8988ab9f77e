"""The kinds of mistake whisper_lens reports, one error type each.

Every message names the argument, what was wrong with it and the fix; `docs/errors.md` lists the
bad inputs tried and the message each gets. Each type subclasses the built-in error code written
before it would catch (`ValueError`, and `KeyError` for hook names).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class AudioInputError(ValueError):
    """Audio that cannot be Whisper's input: empty, NaN, the wrong shape, rate or scale."""


class CheckpointError(ValueError):
    """Weights that cannot be loaded: a missing, truncated, corrupted or mislabelled checkpoint."""


class HookOutputError(ValueError):
    """A hook returned a tensor of another shape than the activation it was given."""


class UnknownHookError(ValueError, KeyError):
    """A hook name that is not on the model (a typo, or a TransformerLens `blocks.{l}` name)."""

    def __init__(self, name: str, known: Sequence[str]):
        close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
        if name.startswith("blocks."):
            close = [f"encoder_{name}", f"decoder_{name}"] + close
            hint = ("TransformerLens's `blocks.{l}` names are the decoder view's: use `model.with_audio(audio)` "
                    "for a HookedTransformer over the decoder, or name a stack here")
        else:
            hint = "see `model.hook_dict` or docs/hook_names.md"
        matches = [c for c in dict.fromkeys(close) if c in known]
        super().__init__(f"{name!r} is not a hook of this model; close matches: {matches or 'none'} ({hint})")

    def __str__(self) -> str:
        return str(self.args[0])
