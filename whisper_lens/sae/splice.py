"""Attaching SAELens SAEs to HookedWhisper, the way SAELens's `HookedSAETransformer` does.

`reset_saes`, `saes(...)`, `run_with_saes`, `run_with_cache_with_saes` and
`run_with_hooks_with_saes` are SAELens's own methods, bound to HookedWhisper. The SAE replaces the
hook point it reads (a SAELens `_SAEWrapper`), so its hooks appear in `run_with_cache` as
`<hook name>.hook_sae_acts_post` and so on.

One difference: with `use_error_term=True`, SAELens returns `sae_out + (x - sae_out_clean)`,
which differs from `x` by float rounding (about 3e-5 in tiny.en's logits). Here the output is
`x + (sae_out - sae_out_clean)`, which is `x` bit for bit until a hook edits the latents, and
has the same value and gradients as SAELens's otherwise.
"""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import torch
from torch import Tensor

# SAELens is imported on first use, so `import whisper_lens` does not pay for it (about 3 s).


@cache
def _saelens() -> tuple[Any, Any, Any]:
    from whisper_lens.sae._saelens_private import splicing_internals

    HookedSAETransformer, _SAEWrapper, set_deep_attr, _disable_hooks = splicing_internals()

    class _ExactSAEWrapper(_SAEWrapper):
        def forward(self, original_output: Tensor) -> Tensor:
            if not self.use_error_term:
                return super().forward(original_output)
            sae_out = self.sae.decode(self.sae.encode(original_output))
            with torch.no_grad():
                with _disable_hooks(self.sae):
                    sae_out_clean = self.sae.decode(self.sae.encode(original_output))
                error = original_output - sae_out_clean
                edited_error = self.hook_sae_error(error)
            out = original_output.detach() + (sae_out - sae_out_clean)
            if edited_error is not error:
                out = out + (edited_error - error)
            return self.hook_sae_output(out)

    return HookedSAETransformer, _ExactSAEWrapper, set_deep_attr


def _borrow(name: str) -> Any:
    """SAELens's `HookedSAETransformer.<name>`, called with a HookedWhisper as `self`."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(_saelens()[0], name)(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"SAELens's `HookedSAETransformer.{name}`, bound to HookedWhisper."
    return method


class SAESplicing:
    """Mixed into `HookedWhisper`; needs `_acts_to_saes` and `_transcoder_output_hooks` dicts."""

    _acts_to_saes: dict[str, Any]
    _transcoder_output_hooks: dict[str, str]

    _reset_sae = _borrow("_reset_sae")
    reset_saes = _borrow("reset_saes")
    saes = _borrow("saes")
    run_with_saes = _borrow("run_with_saes")
    run_with_cache_with_saes = _borrow("run_with_cache_with_saes")
    run_with_hooks_with_saes = _borrow("run_with_hooks_with_saes")

    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """Hook name -> attached SAE."""
        return {name: wrapper.sae for name, wrapper in self._acts_to_saes.items()}

    def add_sae(self, sae: Any, use_error_term: bool | None = None,
                exclude_special_tokens: bool | list[int] = False) -> None:
        """Splice `sae` in at `sae.cfg.metadata.hook_name` until `reset_saes()`; replaces any SAE
        already there. `use_error_term=True` adds back the reconstruction error, so outputs equal
        the clean model's exactly while the SAE's latents are readable and editable."""
        if exclude_special_tokens is not False:
            raise ValueError("exclude_special_tokens is for text models; HookedWhisper splices at every position "
                             "(whisper_lens.sae.evaluate splices at real frames only)")
        hook = sae.cfg.metadata.hook_name
        if hook is None:
            raise ValueError("the SAE has no cfg.metadata.hook_name; set it to the hook it was trained on")
        if (sae.cfg.metadata.hook_name_out or hook) != hook:
            raise NotImplementedError("transcoders (hook_name_out != hook_name) are not supported yet")
        if hook not in self._acts_to_saes and hook not in self.hook_dict:  # type: ignore[attr-defined]
            raise ValueError(f"this model has no hook {hook!r} for the SAE; see `model.hook_dict`")
        expected = self.hook_width(hook)  # type: ignore[attr-defined]
        if expected is not None and sae.cfg.d_in != expected:
            raise ValueError(f"the SAE reads {sae.cfg.d_in} numbers per position, but {hook} holds {expected} on "
                             f"this model; splice it at a hook of width {sae.cfg.d_in}, or load the SAE trained here")
        trained_on = sae.cfg.metadata.model_name
        if trained_on and trained_on != getattr(self, "model_name", trained_on):
            warnings.warn(f"the SAE was trained on {trained_on!r}; this model is {self.model_name!r}",  # type: ignore
                          stacklevel=2)
        _, wrapper_class, set_deep_attr = _saelens()
        wrapper = wrapper_class(sae, use_error_term=sae.use_error_term if use_error_term is None else use_error_term)
        self._acts_to_saes[hook] = wrapper
        set_deep_attr(self, hook, wrapper)
        self.setup()  # type: ignore[attr-defined]
