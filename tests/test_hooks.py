"""Unit tier: hook names, shapes and behaviour on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import DIMS, make_inputs, random_openai
from whisper_lens import HookedWhisper
from whisper_lens.config import WhisperDims
from whisper_lens.names import GATES, get_act_name, hook_table, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def _axis_sizes(dims: WhisperDims, name: str, batch: int, n_text: int) -> dict[str, int]:
    encoder = name.startswith(("encoder", "hook_conv1", "hook_audio"))
    d_model = dims.n_audio_state if encoder else dims.n_text_state
    heads = dims.n_audio_head if encoder else dims.n_text_head
    pos = dims.n_audio_ctx if encoder else n_text
    return {
        "batch": batch, "mel_frame": dims.n_mel_frames, "audio_pos": dims.n_audio_ctx, "text_pos": n_text,
        "query_pos": pos, "key_pos": pos, "head": heads, "d_head": d_model // heads, "d_model": d_model,
        "d_mlp": 4 * d_model, "d_vocab": dims.n_vocab, "1": 1,
    }


@pytest.mark.parametrize("gates", [frozenset(), frozenset({"use_attn_result"}), frozenset(GATES) - {"use_attn_in"},
                                   frozenset({"use_attn_in"})])
def test_hook_dict_equals_table_for_every_size(dims, gates):
    ref = random_openai(dims)
    model = HookedWhisper.from_state_dict(dims, ref.state_dict(), **{g: True for g in gates})
    table = hook_table(dims.n_audio_layer, dims.n_text_layer, enabled=gates)
    assert list(model.hook_dict) == list(table)


def test_every_hook_fires_with_documented_shape(dims):
    model = HookedWhisper.from_state_dict(dims, random_openai(dims).state_dict(), use_attn_result=True,
                                          use_split_qkv_input=True)
    mel, tokens = make_inputs(dims, batch=2, n_text=5)
    with torch.no_grad():
        _, cache = model.run_with_cache(mel, tokens)
    table = hook_table(dims.n_audio_layer, dims.n_text_layer, enabled={"use_attn_result", "use_split_qkv_input"})
    assert set(cache.keys()) == set(table)
    for name, spec in table.items():
        sizes = _axis_sizes(dims, name, 2, 5)
        expected = tuple(sizes[axis] for axis in spec.shape.split())
        if ".ln1." in name:  # per-head attention inputs give ln1 a head axis, as in TransformerLens
            expected = expected[:-1] + (sizes["head"], expected[-1])
        assert tuple(cache[name].shape) == expected, name


def test_gated_hooks_do_not_change_outputs(pair, dims):
    ref, plain = pair
    mel, tokens = make_inputs(dims)
    for gate in GATES:
        gated = HookedWhisper.from_state_dict(dims, ref.state_dict(), **{gate: True})
        with torch.no_grad():
            torch.testing.assert_close(gated(mel, tokens), plain(mel, tokens), atol=1e-4, rtol=0)


def test_hooks_are_identity_and_removed_after_context(tiny_model):
    dims = tiny_model.dims
    mel, tokens = make_inputs(dims)
    seen = []
    with torch.no_grad():
        clean = tiny_model(mel, tokens)
        with tiny_model.hooks(fwd_hooks=[(lambda n: True, lambda t, hook: seen.append(hook.name))]):
            hooked = tiny_model(mel, tokens)
        after = tiny_model(mel, tokens)
    assert len(seen) == len(tiny_model.hook_dict)
    assert torch.equal(hooked, clean) or torch.allclose(hooked, clean, atol=1e-5)
    assert torch.equal(after, clean)
    assert not any(hp.fwd_hooks for hp in tiny_model.hook_dict.values())


@pytest.mark.parametrize("layer", [0, 1])
def test_zero_ablating_encoder_attention_changes_logits(tiny_model, layer):
    mel, tokens = make_inputs(tiny_model.dims)
    with torch.no_grad():
        clean = tiny_model(mel, tokens)
        ablated = tiny_model.run_with_hooks(
            mel, tokens, fwd_hooks=[(f"encoder_blocks.{layer}.hook_attn_out", lambda t, hook: torch.zeros_like(t))])
    assert (ablated - clean).abs().max() > 1e-3


def test_hook_edit_reaches_the_output_exactly(tiny_model):
    """Replacing the residual stream at the last decoder block changes exactly the predicted logits."""
    mel, tokens = make_inputs(tiny_model.dims)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(mel, tokens)
        resid = cache["decoder_blocks.1.hook_resid_post"]
        logits = tiny_model.run_with_hooks(
            mel, tokens, fwd_hooks=[("decoder_blocks.1.hook_resid_post", lambda t, hook: resid * 2)])
        expected = tiny_model.unembed(tiny_model.decoder_ln_final(resid * 2), tiny_model.W_U)
    torch.testing.assert_close(logits, expected)


def test_stop_at_layer_with_names_filter_stops_early(tiny_model):
    mel, _ = make_inputs(tiny_model.dims)
    fired = []
    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=[("encoder_blocks.1.hook_resid_pre", lambda t, hook: fired.append(1))]):
            out, cache = tiny_model.run_with_cache(
                mel, names_filter=["encoder_blocks.0.hook_resid_post"], stop_at_layer=1, prepend_bos=False)
        full, full_cache = tiny_model.run_with_cache(mel, names_filter=["encoder_blocks.0.hook_resid_post"])
    assert list(cache.keys()) == ["encoder_blocks.0.hook_resid_post"]
    assert torch.equal(out, cache["encoder_blocks.0.hook_resid_post"])
    assert torch.equal(cache["encoder_blocks.0.hook_resid_post"], full_cache["encoder_blocks.0.hook_resid_post"])
    assert fired == [], "block 1 must not run"
    assert full.shape == (2, tiny_model.dims.n_audio_ctx, tiny_model.dims.n_audio_state)


def test_stop_at_layer_without_filter_returns_residual(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(mel, tokens)
        enc_resid = tiny_model(mel, stop_at_layer=1)
        dec_resid = tiny_model(mel, tokens, stop_at_layer=-1)
    torch.testing.assert_close(enc_resid, cache["encoder_blocks.1.hook_resid_pre"])
    torch.testing.assert_close(dec_resid, cache["decoder_blocks.1.hook_resid_pre"])


def test_pcm_waveform_and_mel_inputs_agree(tiny_model):
    dims = tiny_model.dims
    samples = dims.n_mel_frames * 160
    g = torch.Generator().manual_seed(0)
    pcm = (torch.randn(2, samples // 2, generator=g) * 3000).round().clamp(-32768, 32767).to(torch.int16)
    wave = pcm.float() / 32768
    with torch.no_grad():
        a = tiny_model(pcm)  # SAELens stores PCM as integer "tokens" (and may widen them to int64)
        b = tiny_model(pcm.long())
        c = tiny_model(wave)
        d = tiny_model(tiny_model.to_mel(wave))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(c, d)


def test_bad_inputs_raise_clear_errors(tiny_model):
    dims = tiny_model.dims
    with pytest.raises(ValueError, match="log-mel input has shape"):
        tiny_model(torch.randn(1, dims.n_mels, 7))
    with pytest.raises(ValueError, match="int16 PCM"):
        tiny_model(torch.full((1, 100), 40000))
    with pytest.raises(ValueError, match="exactly one of"):
        tiny_model()
    mel, _ = make_inputs(dims)
    with pytest.raises(ValueError, match="at most"):
        tiny_model(mel, torch.zeros(2, dims.n_text_ctx + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="not a hook of this model"):
        tiny_model.run_with_cache(mel, names_filter=["encoder_blocks.0.hook_nope"], stop_at_layer=1)


def test_loss_matches_manual_cross_entropy(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, n_text=6)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, :3] = False
    with torch.no_grad():
        logits, loss = tiny_model(mel, tokens, return_type="both", loss_mask=mask)
        per_token = tiny_model(mel, tokens, return_type="loss", loss_per_token=True)
    manual = torch.nn.functional.cross_entropy(logits[:, 2:-1].reshape(-1, logits.shape[-1]), tokens[:, 3:].reshape(-1))
    torch.testing.assert_close(loss, manual)
    assert per_token.shape == (2, 5)


def test_docs_hook_table_is_generated_from_names():
    assert (ROOT / "docs" / "hook_names.md").read_text() == render_markdown(), \
        "regenerate with: uv run python -m whisper_lens.names > docs/hook_names.md"


def test_get_act_name_knows_both_stacks():
    assert get_act_name("resid_post", 2, "encoder") == "encoder_blocks.2.hook_resid_post"
    assert get_act_name("pattern", 1, "decoder") == "decoder_blocks.1.attn.hook_pattern"
    assert get_act_name("cross_pattern", 1) == "decoder_blocks.1.cross_attn.hook_pattern"
    assert get_act_name("cross_attn_out", 0, "decoder") == "decoder_blocks.0.hook_cross_attn_out"
    assert get_act_name("ln3_scale", 0, "decoder") == "decoder_blocks.0.ln3.hook_scale"
    assert get_act_name("encoder_out") == "hook_encoder_out"
    assert get_act_name("logits") == "unembed.hook_out"
    with pytest.raises(ValueError, match="stack"):
        get_act_name("resid_post", 0)
    with pytest.raises(ValueError, match="no encoder hook"):
        get_act_name("cross_q", 0, "encoder")
    # the names SAELens parses: HookPoint.layer() and its layer regex agree
    from sae_lens.util import extract_layer_from_tlens_hook_name

    model = HookedWhisper(DIMS["tiny_en"])
    for name, hp in model.hook_dict.items():
        if "_blocks." in name:
            assert hp.layer() == extract_layer_from_tlens_hook_name(name) == int(name.split(".")[1])


def test_model_moves_and_keeps_working(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims)
    with torch.no_grad():
        before = tiny_model(mel, tokens)
        moved = tiny_model.to(torch.float64)
        after = moved(mel.double(), tokens)
        tiny_model.to(torch.float32)
    assert after.dtype == torch.float32  # logits are float32, as in openai-whisper
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    assert tiny_model.cfg.dtype == torch.float32 and tiny_model.alignment_heads.layout == torch.strided
