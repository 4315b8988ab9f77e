"""State-dict renaming between openai-whisper, HookedWhisper and Hugging Face layouts.

openai-whisper's names are the canonical form every loader produces; HookedWhisper renames them
(no transposes, no reshapes), so loading is exact.
"""

from __future__ import annotations

import re

from torch import Tensor

# (openai-whisper pattern, HookedWhisper replacement); `{b}` is a block's suffix
_OPENAI_TO_HOOKED_BLOCK = [
    ("attn_ln.weight", "ln1.w"),
    ("attn_ln.bias", "ln1.b"),
    ("cross_attn_ln.weight", "ln2.w"),
    ("cross_attn_ln.bias", "ln2.b"),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
]
_OPENAI_TO_HOOKED_FIXED = {
    "encoder.conv1.weight": "conv1.weight",
    "encoder.conv1.bias": "conv1.bias",
    "encoder.conv2.weight": "conv2.weight",
    "encoder.conv2.bias": "conv2.bias",
    "encoder.positional_embedding": "W_pos_audio",
    "encoder.ln_post.weight": "encoder_ln_final.w",
    "encoder.ln_post.bias": "encoder_ln_final.b",
    "decoder.token_embedding.weight": "W_E",
    "decoder.positional_embedding": "W_pos",
    "decoder.ln.weight": "decoder_ln_final.w",
    "decoder.ln.bias": "decoder_ln_final.b",
}
_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)$")


def openai_to_hooked(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """openai-whisper names -> HookedWhisper names."""
    out = {}
    for key, value in state_dict.items():
        if key in _OPENAI_TO_HOOKED_FIXED:
            out[_OPENAI_TO_HOOKED_FIXED[key]] = value
            continue
        match = _BLOCK.match(key)
        if match is None:
            raise KeyError(f"unexpected openai-whisper key {key!r}")
        stack, layer, rest = match.groups()
        if rest.startswith("mlp_ln."):  # the MLP's layer norm is ln2 (encoder) or ln3 (decoder)
            ln = "ln2" if stack == "encoder" else "ln3"
            rest = rest.replace("mlp_ln.weight", f"{ln}.w").replace("mlp_ln.bias", f"{ln}.b")
        else:
            for old, new in _OPENAI_TO_HOOKED_BLOCK:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
        out[f"{stack}_blocks.{layer}.{rest}"] = value
    return out


def hooked_to_openai(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """HookedWhisper names -> openai-whisper names (for saving a `.pt` openai-whisper loads)."""
    fixed = {v: k for k, v in _OPENAI_TO_HOOKED_FIXED.items()}
    out = {}
    for key, value in state_dict.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        match = re.match(r"^(encoder|decoder)_blocks\.(\d+)\.(.+)$", key)
        if match is None:
            raise KeyError(f"unexpected HookedWhisper key {key!r}")
        stack, layer, rest = match.groups()
        mlp_ln = "ln2" if stack == "encoder" else "ln3"
        if rest.startswith(f"{mlp_ln}."):
            rest = "mlp_ln." + {"w": "weight", "b": "bias"}[rest.split(".")[1]]
        else:
            for old, new in _OPENAI_TO_HOOKED_BLOCK:
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
        out[f"{stack}.blocks.{layer}.{rest}"] = value
    return out


# Hugging Face WhisperForConditionalGeneration -> openai-whisper (the inverse of transformers'
# convert_openai_to_hf.py). Applied as ordered substring replacements.
_HF_TO_OPENAI = [
    ("model.encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("model.decoder.embed_positions.weight", "decoder.positional_embedding"),
    ("model.decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
    ("model.encoder.layer_norm.", "encoder.ln_post."),
    ("model.decoder.layer_norm.", "decoder.ln."),
    ("model.encoder.layers.", "encoder.blocks."),
    ("model.decoder.layers.", "decoder.blocks."),
    ("model.encoder.conv", "encoder.conv"),
    (".self_attn_layer_norm.", ".attn_ln."),
    (".encoder_attn_layer_norm.", ".cross_attn_ln."),
    (".final_layer_norm.", ".mlp_ln."),
    (".self_attn.q_proj.", ".attn.query."),
    (".self_attn.k_proj.", ".attn.key."),
    (".self_attn.v_proj.", ".attn.value."),
    (".self_attn.out_proj.", ".attn.out."),
    (".encoder_attn.q_proj.", ".cross_attn.query."),
    (".encoder_attn.k_proj.", ".cross_attn.key."),
    (".encoder_attn.v_proj.", ".cross_attn.value."),
    (".encoder_attn.out_proj.", ".cross_attn.out."),
    (".fc1.", ".mlp.0."),
    (".fc2.", ".mlp.2."),
]


def hf_to_openai(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face Whisper names -> openai-whisper names.

    The tied `proj_out.weight` is dropped; so is a key-projection bias, which Whisper does not
    have (HF checkpoints never carry one, but a converter may write zeros)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("proj_out.") or key.endswith(("k_proj.bias",)):
            continue
        if key.startswith(("encoder.", "decoder.")):  # a bare WhisperModel has no "model." prefix
            key = "model." + key
        new = key
        for old, repl in _HF_TO_OPENAI:
            new = new.replace(old, repl)
        if new == key:
            raise KeyError(f"unexpected Hugging Face Whisper key {key!r}")
        out[new] = value
    return out


def openai_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """openai-whisper names -> Hugging Face names (tests write HF checkpoints with it)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for hf, oa in reversed(_HF_TO_OPENAI):
            new = new.replace(oa, hf)
        out[new] = value
    out["proj_out.weight"] = state_dict["decoder.token_embedding.weight"]
    return out
