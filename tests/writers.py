"""Checkpoint writers for round-trip tests: openai `.pt`, Hugging Face directory, CTranslate2 directory.

The CTranslate2 writer follows the file layout in the project's CTranslate2 reference: header,
alphabetically sorted variables (fused q/k/v with a zero key-bias slice), scalar settings, and the
tied-projection alias.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisper_lens.config import WhisperDims
from whisper_lens.loading.convert import openai_to_hf


def write_openai_pt(dims: WhisperDims, state_dict: dict[str, Tensor], path: Path) -> Path:
    torch.save({"dims": dims.to_dict(), "model_state_dict": state_dict}, path)
    return path


def hf_config(dims: WhisperDims) -> dict:
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=dims.n_vocab, num_mel_bins=dims.n_mels, d_model=dims.n_audio_state,
        encoder_layers=dims.n_audio_layer, encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer, decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx, max_target_positions=dims.n_text_ctx,
        activation_function="gelu", scale_embedding=False,
    ).to_dict()


def write_hf(dims: WhisperDims, state_dict: dict[str, Tensor], directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(dims), default=str))
    hf = {k: v.contiguous().clone() for k, v in openai_to_hf(state_dict).items()}
    hf.pop("proj_out.weight")  # tied to the token embedding, as transformers saves it
    save_file(hf, directory / "model.safetensors")
    return directory


def _str(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _var(name: str, array: np.ndarray) -> bytes:
    dtype_id = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2,
                np.dtype(np.int32): 3, np.dtype(np.float16): 4}[array.dtype]
    data = np.ascontiguousarray(array).tobytes()
    return (_str(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
            + struct.pack("<B", dtype_id) + struct.pack("<I", len(data)) + data)


def openai_to_ct2(dims: WhisperDims, sd: dict[str, Tensor], dtype=np.float16) -> dict[str, np.ndarray]:
    def a(t: Tensor) -> np.ndarray:
        return t.detach().float().numpy().astype(dtype)

    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        out[f"encoder/{conv}/weight"] = a(sd[f"encoder.{conv}.weight"])
        out[f"encoder/{conv}/bias"] = a(sd[f"encoder.{conv}.bias"])
    out["encoder/position_encodings/encodings"] = a(sd["encoder.positional_embedding"])
    out["encoder/layer_norm/gamma"] = a(sd["encoder.ln_post.weight"])
    out["encoder/layer_norm/beta"] = a(sd["encoder.ln_post.bias"])
    out["decoder/embeddings/weight"] = a(sd["decoder.token_embedding.weight"])
    out["decoder/position_encodings/encodings"] = a(sd["decoder.positional_embedding"])
    out["decoder/layer_norm/gamma"] = a(sd["decoder.ln.weight"])
    out["decoder/layer_norm/beta"] = a(sd["decoder.ln.bias"])
    for stack, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            s, d = f"{stack}.blocks.{i}", f"{stack}/layer_{i}"
            zeros = torch.zeros_like(sd[f"{s}.attn.query.bias"])
            out[f"{d}/self_attention/linear_0/weight"] = a(torch.cat(
                [sd[f"{s}.attn.query.weight"], sd[f"{s}.attn.key.weight"], sd[f"{s}.attn.value.weight"]]))
            out[f"{d}/self_attention/linear_0/bias"] = a(torch.cat(
                [sd[f"{s}.attn.query.bias"], zeros, sd[f"{s}.attn.value.bias"]]))
            out[f"{d}/self_attention/linear_1/weight"] = a(sd[f"{s}.attn.out.weight"])
            out[f"{d}/self_attention/linear_1/bias"] = a(sd[f"{s}.attn.out.bias"])
            out[f"{d}/self_attention/layer_norm/gamma"] = a(sd[f"{s}.attn_ln.weight"])
            out[f"{d}/self_attention/layer_norm/beta"] = a(sd[f"{s}.attn_ln.bias"])
            if stack == "decoder":
                out[f"{d}/attention/linear_0/weight"] = a(sd[f"{s}.cross_attn.query.weight"])
                out[f"{d}/attention/linear_0/bias"] = a(sd[f"{s}.cross_attn.query.bias"])
                out[f"{d}/attention/linear_1/weight"] = a(torch.cat(
                    [sd[f"{s}.cross_attn.key.weight"], sd[f"{s}.cross_attn.value.weight"]]))
                out[f"{d}/attention/linear_1/bias"] = a(torch.cat([zeros, sd[f"{s}.cross_attn.value.bias"]]))
                out[f"{d}/attention/linear_2/weight"] = a(sd[f"{s}.cross_attn.out.weight"])
                out[f"{d}/attention/linear_2/bias"] = a(sd[f"{s}.cross_attn.out.bias"])
                out[f"{d}/attention/layer_norm/gamma"] = a(sd[f"{s}.cross_attn_ln.weight"])
                out[f"{d}/attention/layer_norm/beta"] = a(sd[f"{s}.cross_attn_ln.bias"])
            out[f"{d}/ffn/linear_0/weight"] = a(sd[f"{s}.mlp.0.weight"])
            out[f"{d}/ffn/linear_0/bias"] = a(sd[f"{s}.mlp.0.bias"])
            out[f"{d}/ffn/linear_1/weight"] = a(sd[f"{s}.mlp.2.weight"])
            out[f"{d}/ffn/linear_1/bias"] = a(sd[f"{s}.mlp.2.bias"])
            out[f"{d}/ffn/layer_norm/gamma"] = a(sd[f"{s}.mlp_ln.weight"])
            out[f"{d}/ffn/layer_norm/beta"] = a(sd[f"{s}.mlp_ln.bias"])
    out["encoder/num_heads"] = np.array(dims.n_audio_head, dtype=np.int16)
    out["decoder/num_heads"] = np.array(dims.n_text_head, dtype=np.int16)
    out["decoder/activation"] = np.array(3, dtype=np.int8)
    out["decoder/alignment_heads"] = np.array(1, dtype=np.int16)  # a converter default, not Whisper's
    return out


def write_ct2(dims: WhisperDims, sd: dict[str, Tensor], directory: Path, *, parts: int = 1,
              config: dict | None = None, dtype=np.float16) -> Path:
    variables = openai_to_ct2(dims, sd, dtype)
    blob = struct.pack("<I", 6) + _str("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name in sorted(variables):
        blob += _var(name, variables[name])
    blob += struct.pack("<I", 1) + _str("decoder/projection/weight") + _str("decoder/embeddings/weight")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or {}))
    if parts == 1:
        (directory / "model.bin").write_bytes(blob)
    else:
        step = -(-len(blob) // parts)
        for i in range(parts):
            (directory / f"model.bin.part{i + 1}").write_bytes(blob[i * step:(i + 1) * step])
    return directory
