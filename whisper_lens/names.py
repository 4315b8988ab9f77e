"""The hook table: the one place where whisper_lens hook names and shapes are defined.

Every HookPoint in `HookedWhisper` has a row here. `hook_table(...)` expands the rows for a
model's depth and options; `docs/hook_names.md` is generated from it (`render_markdown`), and a
test checks that `model.hook_dict` equals the table for every model size.

Names follow TransformerLens: leaf names (`hook_resid_pre`, `attn.hook_pattern`, ...) as in
`HookedTransformer`, stack prefixes (`encoder_blocks.{l}`, `decoder_blocks.{l}`) as in its
encoder-decoder models, so `HookPoint.layer()` and SAELens's layer parsing both work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stack = Literal["encoder", "decoder"]


@dataclass(frozen=True)
class HookSpec:
    name: str  # hook name; "{l}" stands for the block index inside a stack
    shape: str  # axis names of the activation, in order
    doc: str  # what the activation is
    gate: str | None = None  # HookedWhisper option that must be on for the hook to exist


def _attn_rows(prefix: str, q_pos: str, k_pos: str, gated: bool) -> list[HookSpec]:
    rows = [
        HookSpec(f"{prefix}.hook_q", f"batch {q_pos} head d_head", "queries"),
        HookSpec(f"{prefix}.hook_k", f"batch {k_pos} head d_head", "keys"),
        HookSpec(f"{prefix}.hook_v", f"batch {k_pos} head d_head", "values"),
        HookSpec(
            f"{prefix}.hook_attn_scores",
            f"batch head {q_pos} {k_pos}",
            "scaled pre-softmax scores, causal mask applied (fires on the explicit path only)",
        ),
        HookSpec(
            f"{prefix}.hook_pattern",
            f"batch head {q_pos} {k_pos}",
            "attention probabilities (fires on the explicit path only)",
        ),
        HookSpec(f"{prefix}.hook_z", f"batch {q_pos} head d_head", "pattern-weighted values"),
    ]
    if gated:
        rows.append(
            HookSpec(
                f"{prefix}.hook_result",
                f"batch {q_pos} head d_model",
                "each head's output through W_O (without b_O)",
                gate="use_attn_result",
            )
        )
    return rows


def _ln_rows(prefix: str, pos: str, what: str) -> list[HookSpec]:
    return [
        HookSpec(f"{prefix}.hook_scale", f"batch {pos} 1", f"layer-norm scale before {what}"),
        HookSpec(
            f"{prefix}.hook_normalized", f"batch {pos} d_model", f"centred and scaled input to {what}"
        ),
    ]


def _split_input_rows(pos: str) -> list[HookSpec]:
    per_head = f"batch {pos} head d_model"
    return [
        HookSpec("hook_attn_in", per_head, "residual stream copied per head into self-attention",
                 gate="use_attn_in"),
        HookSpec("hook_q_input", per_head, "per-head query input", gate="use_split_qkv_input"),
        HookSpec("hook_k_input", per_head, "per-head key input", gate="use_split_qkv_input"),
        HookSpec("hook_v_input", per_head, "per-head value input", gate="use_split_qkv_input"),
    ]


def _mlp_rows(ln: str, pos: str) -> list[HookSpec]:
    return [
        *_ln_rows(ln, pos, "the MLP"),
        HookSpec("mlp.hook_pre", f"batch {pos} d_mlp", "MLP pre-activation (fc1 output)"),
        HookSpec("mlp.hook_post", f"batch {pos} d_mlp", "MLP activation (after GELU)"),
        HookSpec("hook_mlp_out", f"batch {pos} d_model", "MLP output added to the residual stream"),
        HookSpec("hook_resid_post", f"batch {pos} d_model", "residual stream after the block"),
    ]


_PER_HEAD_LN = " (with `use_attn_in` or `use_split_qkv_input` it gains a `head` axis before the last)"

STEM: list[HookSpec] = [
    HookSpec("hook_conv1", "batch mel_frame d_model", "conv1 output after GELU"),
    HookSpec("hook_audio_embed", "batch audio_pos d_model", "conv2 output after GELU"),
    HookSpec("hook_audio_pos_embed", "batch audio_pos d_model", "sinusoidal audio positions"),
]

ENCODER_BLOCK: list[HookSpec] = [
    HookSpec("hook_resid_pre", "batch audio_pos d_model", "residual stream into the block"),
    *_split_input_rows("audio_pos"),
    *_ln_rows("ln1", "audio_pos", "self-attention" + _PER_HEAD_LN),
    *_attn_rows("attn", "query_pos", "key_pos", gated=True),
    HookSpec("hook_attn_out", "batch audio_pos d_model", "self-attention output"),
    HookSpec("hook_resid_mid", "batch audio_pos d_model", "residual stream after self-attention"),
    *_mlp_rows("ln2", "audio_pos"),
]

ENCODER_FINAL: list[HookSpec] = [
    *_ln_rows("encoder_ln_final", "audio_pos", "the encoder output"),
    HookSpec("hook_encoder_out", "batch audio_pos d_model", "encoder output `xa`, read by every cross-attention"),
]

DECODER_EMBED: list[HookSpec] = [
    HookSpec("hook_embed", "batch text_pos d_model", "token embeddings"),
    HookSpec("hook_pos_embed", "batch text_pos d_model", "learned text positions"),
]

DECODER_BLOCK: list[HookSpec] = [
    HookSpec("hook_resid_pre", "batch text_pos d_model", "residual stream into the block"),
    *_split_input_rows("text_pos"),
    *_ln_rows("ln1", "text_pos", "self-attention" + _PER_HEAD_LN),
    *_attn_rows("attn", "query_pos", "key_pos", gated=True),
    HookSpec("hook_attn_out", "batch text_pos d_model", "self-attention output"),
    HookSpec("hook_resid_mid", "batch text_pos d_model", "residual stream after self-attention"),
    *_ln_rows("ln2", "text_pos", "cross-attention"),
    *_attn_rows("cross_attn", "text_pos", "audio_pos", gated=True),
    HookSpec("hook_cross_attn_out", "batch text_pos d_model", "cross-attention output"),
    HookSpec("hook_resid_mid_cross", "batch text_pos d_model", "residual stream after cross-attention"),
    *_mlp_rows("ln3", "text_pos"),
]

DECODER_FINAL: list[HookSpec] = [
    *_ln_rows("decoder_ln_final", "text_pos", "the unembedding"),
    HookSpec("unembed.hook_out", "batch text_pos d_vocab", "logits"),
]

GATES = ("use_attn_result", "use_attn_in", "use_split_qkv_input")


def hook_table(
    n_encoder_layers: int, n_decoder_layers: int, *, enabled: frozenset[str] | set[str] = frozenset()
) -> dict[str, HookSpec]:
    """All hook names of a model with these depths and these gated options turned on, in forward order."""
    unknown = set(enabled) - set(GATES)
    if unknown:
        raise ValueError(f"unknown hook options {sorted(unknown)}; the options are {list(GATES)}")

    def keep(spec: HookSpec) -> bool:
        return spec.gate is None or spec.gate in enabled

    table: dict[str, HookSpec] = {}
    for spec in STEM:
        table[spec.name] = spec
    for layer in range(n_encoder_layers):
        for spec in filter(keep, ENCODER_BLOCK):
            table[f"encoder_blocks.{layer}.{spec.name}"] = spec
    for spec in [*ENCODER_FINAL, *DECODER_EMBED]:
        table[spec.name] = spec
    for layer in range(n_decoder_layers):
        for spec in filter(keep, DECODER_BLOCK):
            table[f"decoder_blocks.{layer}.{spec.name}"] = spec
    for spec in DECODER_FINAL:
        table[spec.name] = spec
    return table


def _short_name(leaf: str) -> str:
    """`attn.hook_pattern` -> `pattern`, `cross_attn.hook_q` -> `cross_q`, `ln1.hook_scale` -> `ln1_scale`."""
    head, _, tail = leaf.rpartition("hook_")
    head = head.rstrip(".")
    if head == "cross_attn":
        return f"cross_{tail}"
    if head.startswith("ln"):
        return f"{head}_{tail}"
    return tail


_ALIASES = {"attn": "pattern", "scores": "attn_scores", "cross_attn": "cross_pattern",
            "cross_scores": "cross_attn_scores", "mlp_pre": "pre", "mlp_post": "post", "logits": "out"}
_SHORT = {
    "encoder": {_short_name(s.name): s.name for s in ENCODER_BLOCK},
    "decoder": {_short_name(s.name): s.name for s in DECODER_BLOCK},
    None: {_short_name(s.name): s.name for s in [*STEM, *ENCODER_FINAL, *DECODER_EMBED, *DECODER_FINAL]},
}


def get_act_name(name: str, layer: int | None = None, stack: Stack | None = None) -> str:
    """Full hook name from a short one, like TransformerLens's `utils.get_act_name`, for both stacks.

    `get_act_name("resid_post", 2, "encoder")` -> `encoder_blocks.2.hook_resid_post`;
    `get_act_name("pattern", 1, "decoder")` -> `decoder_blocks.1.attn.hook_pattern`;
    `get_act_name("cross_pattern", 1)` -> `decoder_blocks.1.cross_attn.hook_pattern`;
    `get_act_name("encoder_out")` -> `hook_encoder_out`. A full name comes back unchanged.
    """
    short = _ALIASES.get(name.removeprefix("hook_"), name.removeprefix("hook_"))
    if layer is None:
        if short in _SHORT[None]:
            return _SHORT[None][short]
        return name
    if stack is None and short.startswith("cross_"):
        stack = "decoder"
    if stack not in ("encoder", "decoder"):
        raise ValueError(f"{name!r} at layer {layer} needs stack='encoder' or 'decoder'")
    if short not in _SHORT[stack]:
        raise ValueError(
            f"no {stack} hook called {name!r}; short names are {sorted(_SHORT[stack])} "
            "(see docs/hook_names.md)"
        )
    return f"{stack}_blocks.{layer}.{_SHORT[stack][short]}"


def activation_width(name: str, sizes: dict[str, int]) -> int | None:
    """How wide one position of hook `name` is, flattened as SAELens reads it (`hook_z`: heads x
    d_head), from the table's axis names and `sizes` (d_model, d_mlp, d_head, head, d_vocab);
    None for hooks with two position axes (attention patterns) or unknown names."""
    spec = _spec_of(name)
    if spec is None:
        return None
    axes = spec.shape.split()
    positions = [i for i, axis in enumerate(axes) if axis.endswith("pos") or axis == "mel_frame"]
    if len(positions) != 1:
        return None
    width = 1
    for axis in axes[positions[0] + 1 :]:
        width *= 1 if axis == "1" else sizes[axis]
    return width


def _spec_of(name: str) -> HookSpec | None:
    for rows, prefix in ((STEM + ENCODER_FINAL + DECODER_EMBED + DECODER_FINAL, ""),
                         (ENCODER_BLOCK, "encoder_blocks."), (DECODER_BLOCK, "decoder_blocks.")):
        leaf = name
        if prefix:
            if not name.startswith(prefix):
                continue
            leaf = name[len(prefix):].partition(".")[2]
        for spec in rows:
            if spec.name == leaf:
                return spec
    return None


def render_markdown() -> str:
    """The generated `docs/hook_names.md`."""
    sections = [
        ("Audio stem", STEM),
        ("Encoder block `encoder_blocks.{l}.`", ENCODER_BLOCK),
        ("Encoder output", ENCODER_FINAL),
        ("Decoder embeddings", DECODER_EMBED),
        ("Decoder block `decoder_blocks.{l}.`", DECODER_BLOCK),
        ("Decoder output", DECODER_FINAL),
    ]
    lines = [
        "# Hook names",
        "",
        "<!-- Generated from whisper_lens/names.py by `python -m whisper_lens.names`; do not edit. -->",
        "",
        "Every activation of `HookedWhisper` passes through a `HookPoint` with one of these names.",
        "Attention shapes use `query_pos`/`key_pos` for self-attention (both `audio_pos` in the",
        "encoder, both `text_pos` in the decoder). Hooks with an option fire only when the model is",
        "built with that option (`HookedWhisper.from_pretrained(..., use_attn_result=True)`).",
        "`hook_attn_scores` and `hook_pattern` fire on the explicit attention path, which a layer",
        "takes automatically whenever one of them is hooked or cached.",
        "",
    ]
    for title, rows in sections:
        lines += [f"## {title}", "", "| name | shape | what | option |", "|---|---|---|---|"]
        for spec in rows:
            lines.append(f"| `{spec.name}` | `[{spec.shape}]` | {spec.doc} | {spec.gate or ''} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
