"""Unit tier: the stack-aware ActivationCache's decompositions add up."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities import get_act_name
from transformer_lens.ActivationCache import ActivationCache

from tests.conftest import make_inputs
from whisper_lens import components


@pytest.fixture(scope="module")
def run(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims)
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(mel, tokens)
    return tiny_model, tokens, logits, cache


def test_cache_is_a_transformer_lens_activation_cache(run):
    _, _, _, cache = run
    assert isinstance(cache, ActivationCache)
    assert torch.equal(cache["resid_post", 1, "encoder"], cache["encoder_blocks.1.hook_resid_post"])
    assert torch.equal(cache["cross_pattern", -1, "decoder"], cache["decoder_blocks.1.cross_attn.hook_pattern"])


def test_short_keys_follow_transformer_lens_on_the_default_stack(run, tiny_model):
    _, _, _, cache = run
    assert cache.default_stack == "decoder"
    assert torch.equal(cache["resid_post", 0], cache["decoder_blocks.0.hook_resid_post"])
    assert torch.equal(cache["pattern", 1, "attn"], cache["decoder_blocks.1.attn.hook_pattern"])
    assert torch.equal(cache["pattern", -1, "attn", "encoder"], cache["encoder_blocks.1.attn.hook_pattern"])
    assert torch.equal(cache[get_act_name("scale", 0, "ln2")], cache["decoder_blocks.0.ln3.hook_scale"])
    assert torch.equal(cache["embed"], cache["hook_embed"])
    mel, _ = make_inputs(tiny_model.dims)
    with torch.no_grad():
        _, encoder_only = tiny_model.run_with_cache(mel)
    assert encoder_only.default_stack == "encoder"
    assert torch.equal(encoder_only["resid_post", 0], encoder_only["encoder_blocks.0.hook_resid_post"])
    with pytest.raises(KeyError, match="not in the cache"):
        encoder_only["cross_pattern", 0, "decoder"]


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_decompose_resid_sums_to_the_residual_stream(run, stack):
    model, _, _, cache = run
    n = model.dims.n_audio_layer if stack == "encoder" else model.dims.n_text_layer
    for layer in range(n + 1):
        parts, labels = cache.decompose_resid(layer, stack=stack, return_labels=True)
        target = cache[f"{stack}_blocks.{layer}.hook_resid_pre"] if layer < n else \
            cache[f"{stack}_blocks.{n - 1}.hook_resid_post"]
        torch.testing.assert_close(parts.sum(0), target, atol=1e-4, rtol=0)
        assert len(labels) == parts.shape[0]
    mlp_in = cache.decompose_resid(0, True, stack=stack).sum(0)  # TL's positional mlp_input
    mid = "hook_resid_mid_cross" if stack == "decoder" else "hook_resid_mid"
    torch.testing.assert_close(mlp_in, cache[f"{stack}_blocks.0.{mid}"], atol=1e-4, rtol=0)
    if stack == "decoder":
        labels = cache.decompose_resid(stack="decoder", return_labels=True)[1]
        assert labels[:5] == ["embed", "pos_embed", "0_attn_out", "0_cross_attn_out", "0_mlp_out"]


def test_accumulated_resid_takes_transformer_lens_arguments(run):
    model, tokens, _, cache = run
    stack, labels = cache.accumulated_resid(-1, True, False, return_labels=True)  # positional, as TL
    assert labels == ["0_pre", "0_mid", "0_mid_cross", "1_pre", "1_mid", "1_mid_cross", "final_post"]
    assert torch.equal(stack[-1], cache["decoder_blocks.1.hook_resid_post"])
    last = cache.accumulated_resid(pos_slice=-1)  # an integer pos_slice drops the position axis
    assert last.shape == (model.dims.n_text_layer + 1, tokens.shape[0], model.dims.n_text_state)
    assert torch.equal(last[1], cache["decoder_blocks.1.hook_resid_pre"][:, -1])
    normed = cache.accumulated_resid(stack="encoder", apply_ln=True)
    assert normed.shape[0] == model.dims.n_audio_layer + 1
    with_mlp_in, labels = cache.accumulated_resid(1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid", "1_mid_cross"]


def test_apply_ln_to_stack_divides_by_the_cached_scale(run):
    _, _, _, cache = run
    resid = cache["decoder_blocks.1.hook_resid_pre"]
    by_hand = (resid - resid.mean(-1, keepdim=True)) / cache["decoder_blocks.1.ln1.hook_scale"]
    torch.testing.assert_close(cache.apply_ln_to_stack(resid[None], 1)[0], by_hand)
    mlp = cache.apply_ln_to_stack(resid[None], 1, mlp_input=True, batch_slice=[1])[0]
    scale = cache["decoder_blocks.1.ln3.hook_scale"][[1]]  # TL's ln2 is the decoder's MLP norm (ln3)
    torch.testing.assert_close(mlp, (resid[[1]] - resid[[1]].mean(-1, keepdim=True)) / scale)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_head_results_sum_to_attention_outputs(run, stack):
    model, _, _, cache = run
    n_heads = model.stack_config(stack).n_heads
    heads, labels = cache.stack_head_results(-1, True, stack=stack)
    assert labels[:2] == ["L0H0", "L0H1"] and len(labels) == heads.shape[0]
    for layer, block in enumerate(model.blocks(stack)):
        out = heads[layer * n_heads:(layer + 1) * n_heads].sum(0) + block.attn.b_O
        torch.testing.assert_close(out, cache[f"{stack}_blocks.{layer}.hook_attn_out"], atol=1e-4, rtol=0)
        neurons = cache.stack_neuron_results(layer + 1, stack=stack)[-model.stack_config(stack).d_mlp:]
        torch.testing.assert_close(neurons.sum(0) + block.mlp.b_out, cache[f"{stack}_blocks.{layer}.hook_mlp_out"],
                                   atol=1e-4, rtol=0)
    if stack == "decoder":
        cross, labels = cache.stack_head_results(1, True, cross=True)
        assert labels[0] == "L0C0"
        torch.testing.assert_close(cross.sum(0) + model.decoder_blocks[0].cross_attn.b_O,
                                   cache["decoder_blocks.0.hook_cross_attn_out"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_full_resid_decomposition_sums_to_the_residual_stream(run, stack):
    model, _, _, cache = run
    n = model.stack_config(stack).n_layers
    parts, labels = cache.get_full_resid_decomposition(stack=stack, expand_neurons=False, return_labels=True)
    torch.testing.assert_close(parts.sum(0), cache[f"{stack}_blocks.{n - 1}.hook_resid_post"], atol=1e-4, rtol=0)
    assert labels[-3:] == ["embed", "pos_embed", "bias"]
    assert any(label.startswith("L0C") for label in labels) == (stack == "decoder")


def test_batch_slice_keeps_the_helpers(run):
    _, _, _, cache = run
    first = cache.apply_slice_to_batch_dim(0)
    assert type(first) is type(cache)
    torch.testing.assert_close(first.decompose_resid().sum(0), cache["decoder_blocks.1.hook_resid_post"][0],
                               atol=1e-4, rtol=0)


def test_logit_attrs_of_decomposition_sum_to_logits(run):
    model, tokens, logits, cache = run
    parts = cache.decompose_resid(stack="decoder")
    target = tokens  # attribute each position's logit for the token in that slot
    attrs = cache.logit_attrs(parts, target)
    bias_term = (model.decoder_ln_final.b @ model.W_U)[target]
    expected = logits.gather(-1, target[..., None])[..., 0]
    torch.testing.assert_close(attrs.sum(0) + bias_term, expected, atol=1e-3, rtol=0)


def test_cache_offload_and_batch_dim(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, batch=1)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(mel, tokens, device="cpu", remove_batch_dim=True,
                                             names_filter=lambda n: n.endswith("resid_post"))
    assert all(n.endswith("resid_post") for n in cache.keys())
    assert cache["decoder_blocks.0.hook_resid_post"].shape == (tokens.shape[1], tiny_model.dims.n_text_state)


PATTERN = "encoder_blocks.0.attn.hook_pattern"


@pytest.fixture
def reuse_all(monkeypatch, tiny_model):
    """Reuse pattern buffers at the test models' small sizes too."""
    monkeypatch.setattr(components, "_MIN_SPARE_BYTES", 0)
    tiny_model.release_buffers()
    yield tiny_model
    tiny_model.release_buffers()


def _kept_buffers(model) -> int:
    layers = {id(m) for m in model.modules()}
    return sum(id(owner()) in layers for _, owner in components._POOL.entries)


def test_pattern_buffers_are_reused_only_after_the_cache_is_dropped(reuse_all):
    model = reuse_all
    mel, tokens = make_inputs(model.dims)
    other, _ = make_inputs(model.dims, seed=7)
    with torch.no_grad():
        _, first = model.run_with_cache(mel, tokens)
        kept = first[PATTERN].clone()
        _, second = model.run_with_cache(other, tokens)  # must not write into `first`
        assert torch.equal(first[PATTERN], kept)
        assert first[PATTERN].data_ptr() != second[PATTERN].data_ptr()
        pointers = {first[PATTERN].data_ptr(), second[PATTERN].data_ptr()}
        del first, second
        _, third = model.run_with_cache(mel, tokens)
        assert third[PATTERN].data_ptr() in pointers  # a dropped cache's buffer, written again
        model.release_buffers()
        _, fresh = model.run_with_cache(mel, tokens)
    assert third[PATTERN].data_ptr() != fresh[PATTERN].data_ptr()
    for name in fresh.keys():
        assert torch.equal(third[name], fresh[name]), name
    assert torch.equal(third[PATTERN], kept)


def test_a_loop_that_rebinds_its_cache_reuses_the_buffers_of_two_calls_ago(reuse_all):
    model = reuse_all
    mel, tokens = make_inputs(model.dims)
    pointers, cache = [], None
    with torch.no_grad():
        for step in range(4):
            previous = cache[PATTERN].clone() if cache is not None else None
            _, new = model.run_with_cache(mel + step, tokens)  # `cache` still lives during the call
            if cache is not None:
                assert torch.equal(cache[PATTERN], previous)
            cache = new
            pointers.append(cache[PATTERN].data_ptr())
    assert pointers[2] == pointers[0] and pointers[3] == pointers[1] and pointers[0] != pointers[1]


def test_a_hook_that_keeps_the_pattern_keeps_its_values(reuse_all):
    model = reuse_all
    mel, tokens = make_inputs(model.dims)
    stash = []
    with torch.no_grad():
        model.run_with_hooks(mel, tokens, fwd_hooks=[(PATTERN, lambda t, hook: stash.append(t))])
        kept = stash[0].clone()
        model.run_with_hooks(mel * 0, tokens, fwd_hooks=[(PATTERN, lambda t, hook: stash.append(t))])
    assert torch.equal(stash[0], kept) and not torch.equal(stash[1], kept)


def test_pattern_buffers_are_released_by_fused_calls_and_never_kept_under_autograd(reuse_all):
    model = reuse_all
    mel, tokens = make_inputs(model.dims)
    with torch.no_grad():
        model.run_with_cache(mel, tokens)
        assert _kept_buffers(model) > 0
        model(mel, tokens)  # no pattern hooks: every layer takes the fused path
    assert _kept_buffers(model) == 0
    model.run_with_cache(mel, tokens)  # autograd on: `out=` buffers are not used
    assert _kept_buffers(model) == 0
    with torch.no_grad():
        model.run_with_cache(mel, tokens)
    model.release_buffers()
    assert _kept_buffers(model) == 0
