"""The decoder view: TransformerLens's own functions, called unchanged, on `model.with_audio(audio)`.

Unit tier on a tiny random model (the view against HookedWhisper's own decoder); acceptance tier
on real tiny.en and bundled speech (TL patching against `patch_resid`, the tutorial's
logit-difference idiom, `test_prompt`, `detect_head`, `SVDInterpreter`, `generate`).
"""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching
from transformer_lens import HookedTransformer, HookedTransformerConfig, SVDInterpreter
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.head_detector import detect_head
from transformer_lens.utilities import get_act_name
from transformer_lens.utilities import test_prompt as tl_test_prompt

from tests.conftest import make_inputs
from whisper_lens.data import load_samples


@pytest.fixture(scope="module")
def unit(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, batch=2, n_text=6)
    return tiny_model, mel, tokens, tiny_model.with_audio(mel)


def test_view_is_a_hooked_transformer_with_transformer_lens_names(unit):
    model, _, _, view = unit
    assert isinstance(view, HookedTransformer) and isinstance(view.cfg, HookedTransformerConfig)
    assert view.cfg.n_layers == model.dims.n_text_layer and view.cfg.n_key_value_heads is None
    for name in ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern",
                 "blocks.1.cross_attn.hook_pattern", "blocks.0.hook_cross_attn_out", "blocks.0.hook_resid_mid_cross",
                 "blocks.0.ln2.hook_scale", "ln_final.hook_scale", get_act_name("resid_post", 1)]:
        assert name in view.hook_dict, name
    shared = {id(h) for h in view.hook_dict.values()} & {id(h) for h in model.hook_dict.values()}
    assert not shared  # a HookPoint's name is its cache key: the view has its own
    assert view.W_Q.shape == (model.dims.n_text_layer, model.dims.n_text_head, 64, 16)
    assert view.OV.shape == (model.dims.n_text_layer, model.dims.n_text_head, 64, 64)


def test_residual_stream_equals_the_model_and_raw_logits_equal_without_processing(unit):
    model, mel, tokens, view = unit
    with torch.no_grad():
        logits, ours = model.run_with_cache(mel, tokens)
        view_logits, theirs = view.run_with_cache(tokens)
        raw = model.with_audio(mel, process=False)(tokens)
    for layer in range(model.dims.n_text_layer):
        for leaf in ["hook_resid_pre", "hook_resid_mid", "hook_resid_mid_cross", "hook_resid_post"]:
            torch.testing.assert_close(theirs[f"blocks.{layer}.{leaf}"], ours[f"decoder_blocks.{layer}.{leaf}"],
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(view_logits.log_softmax(-1), logits.log_softmax(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(raw, logits, atol=1e-5, rtol=0)
    assert isinstance(theirs, ActivationCache)


def test_tokens_behave_as_transformer_lens_tokens(unit):
    model, _, _, view = unit
    tokens = view.to_tokens([" The birch", " A"])  # right-padded with <|endoftext|>, as TL pads with pad_token_id
    prompt = model.sot_sequence()
    assert tokens[0].tolist() == prompt + model.tokenizer.encode(" The birch")
    assert tokens[1, -1] == view.tokenizer.pad_token_id
    assert view.to_tokens(" The", prepend_bos=False).tolist() == [[view.to_single_token(" The")]]
    assert view.to_string(tokens[0]) == "<|startoftranscript|><|notimestamps|> The birch"
    assert view.to_string(tokens)[1].startswith("<|startoftranscript|><|notimestamps|> A")
    assert view.to_str_tokens(" The birch")[2:] == [" The", " bir", "ch"]
    assert view.get_token_position(" The", " The birch") == len(prompt)
    with pytest.raises(AssertionError, match="single token"):
        view.to_single_token(" birch")


def test_token_rows_broadcast_over_audio(unit):
    model, mel, tokens, view = unit
    with torch.no_grad():
        two_each = view(tokens.repeat_interleave(2, dim=0))  # rows 0, 1 read audio 0; rows 2, 3 audio 1
        one = model.with_audio(mel[:1])(tokens)  # one audio, two rows
        separate = view(tokens)
    torch.testing.assert_close(two_each[::2], separate, atol=1e-5, rtol=0)
    torch.testing.assert_close(one[1], model.with_audio(mel[:1])(tokens[1:])[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="rows"):
        view(tokens[:1].repeat(3, 1))


def test_view_decompositions_include_cross_attention(unit):
    _, _, tokens, view = unit
    with torch.no_grad():
        _, cache = view.run_with_cache(tokens)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert "0_cross_attn_out" in labels
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=1e-4, rtol=0)
    full = cache.get_full_resid_decomposition(expand_neurons=True)
    torch.testing.assert_close(full.sum(0), cache["resid_post", -1], atol=1e-3, rtol=0)


def test_views_share_processed_weights_and_follow_weight_edits(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, batch=1)
    first, second = tiny_model.with_audio(mel), tiny_model.with_audio(mel)
    assert first.W_E.data_ptr() == second.W_E.data_ptr()
    before = first(tokens)
    with torch.no_grad():
        tiny_model.decoder_blocks[0].mlp.fc2.bias.add_(1.0)
        try:
            after = tiny_model.with_audio(mel)(tokens)
        finally:
            tiny_model.decoder_blocks[0].mlp.fc2.bias.sub_(1.0)
    assert not torch.allclose(before, after)


def test_model_rejects_tokens_where_audio_belongs(tiny_model):
    with pytest.raises(ValueError, match="with_audio"):
        tiny_model(torch.tensor([[50257, 50362, 383]]))


# ---------------------------------------------------------------------- acceptance: real tiny.en, real speech
@pytest.fixture(scope="module")
def speech_pair(real_model):
    from whisper_lens.analysis.patching import patching_setup

    clips = list(load_samples())
    clean, corrupted = clips[0], clips[1]
    setup = patching_setup(real_model, clean, corrupted, clean.text)
    return setup, real_model.with_audio(setup.clean), real_model.with_audio(setup.corrupted)


@pytest.mark.real_weights
@pytest.mark.slow
def test_transformer_lens_patching_equals_patch_resid(real_model, speech_pair):
    from whisper_lens.analysis.patching import patch_resid

    setup, clean_view, corrupted_view = speech_pair
    _, clean_cache = clean_view.run_with_cache(setup.tokens)
    with torch.no_grad():
        theirs = tl_patching.get_act_patch_resid_pre(corrupted_view, setup.tokens, clean_cache, setup.metric)
    ours = patch_resid(real_model, setup, stack="decoder").values
    torch.testing.assert_close(theirs.float(), ours, atol=1e-5, rtol=0)
    for fn in [tl_patching.get_act_patch_attn_out, tl_patching.get_act_patch_mlp_out,
               tl_patching.get_act_patch_attn_head_pattern_all_pos, tl_patching.get_act_patch_attn_head_v_all_pos]:
        with torch.no_grad():
            result = fn(corrupted_view, setup.tokens, clean_cache, setup.metric)
        assert torch.isfinite(result).all() and result.abs().max() > 0, fn.__name__


@pytest.mark.real_weights
def test_logit_difference_idiom_gives_the_models_logit_difference(real_model, speech_pair):
    setup, clean_view, _ = speech_pair
    with torch.no_grad():
        logits, cache = clean_view.run_with_cache(setup.tokens)
        model_logits = real_model(setup.clean.mel, setup.tokens)
    a, b = setup.answers
    direction = clean_view.W_U[:, a] - clean_view.W_U[:, b]
    final = cache.accumulated_resid(layer=-1, pos_slice=-1)[-1:]
    idiom = cache.apply_ln_to_stack(final, layer=-1, pos_slice=-1) @ direction
    expected = model_logits[0, -1, a] - model_logits[0, -1, b]
    b_U = clean_view.b_U[a] - clean_view.b_U[b]
    torch.testing.assert_close(idiom[0, 0] + b_U, expected, atol=1e-4, rtol=0)
    per_layer = cache.decompose_resid(layer=-1, pos_slice=-1, apply_ln=True) @ direction
    torch.testing.assert_close(per_layer.sum(0)[0] + b_U, expected, atol=1e-4, rtol=0)


@pytest.mark.real_weights
def test_transformer_lens_utilities_run_on_the_view(real_model, speech_pair, capsys):
    setup, clean_view, _ = speech_pair
    first_word = " " + next(load_samples()).text.split()[0]
    tl_test_prompt("", first_word, clean_view, prepend_bos=True)
    assert "Rank: 0" in capsys.readouterr().out  # the audio says "The ..."
    scores = detect_head(clean_view, first_word + " birch canoe", "previous_token_head")
    assert scores.shape == (clean_view.cfg.n_layers, clean_view.cfg.n_heads)
    vectors = SVDInterpreter(clean_view).get_singular_vectors("OV", layer_index=0, head_index=0, num_vectors=2)
    assert vectors.shape[0] == clean_view.cfg.d_vocab
    text = clean_view.generate("", max_new_tokens=8, do_sample=False, verbose=False)
    assert text.strip().startswith("The birch")
    assert clean_view.to_single_token(" The") == real_model.to_single_token(" The")
    assert clean_view.to_str_tokens(" The")[:2] == ["<|startoftranscript|>", "<|notimestamps|>"]


def test_every_cache_helper_runs_with_transformer_lens_arguments(unit):
    """Each ActivationCache helper as TransformerLens's docs call it, on the view and on the model."""
    model, mel, tokens, view = unit
    with torch.no_grad():
        _, view_cache = view.run_with_cache(tokens)
        _, model_cache = model.run_with_cache(mel, tokens)
    n_pos, d_model, d_mlp = tokens.shape[1], view.cfg.d_model, view.cfg.d_mlp
    for cache in (view_cache, model_cache):
        assert cache.accumulated_resid(-1, True, True, -1).shape[-2:] == (2, d_model)
        assert cache.decompose_resid(-1, False, "all", True, -1).shape[-2:] == (2, d_model)
        resid = cache.accumulated_resid(1)
        assert cache.apply_ln_to_stack(resid, 1, False, None, [0]).shape == (2, 1, n_pos, d_model)
        assert cache.logit_attrs(cache.decompose_resid(pos_slice=-1), tokens[:, -1], pos_slice=-1).ndim == 2
        cache.compute_head_results()
        assert cache.stack_head_results(-1, False, True, -1, True).shape == (
            view.cfg.n_layers * view.cfg.n_heads + 1, 2, d_model)
        assert cache.stack_activation("resid_post").shape == (view.cfg.n_layers, 2, n_pos, d_model)
        assert cache.get_neuron_results(0, [0, 1], -1).shape == (2, 2, d_model)
        assert cache.stack_neuron_results(1, -1).shape == (d_mlp, 2, d_model)
        full, labels = cache.get_full_resid_decomposition(1, True, False, True, -1, True)
        assert len(labels) == full.shape[0]
        sliced = cache.apply_slice_to_batch_dim([1])
        torch.testing.assert_close(sliced.decompose_resid().sum(0), cache["resid_post", -1][[1]], atol=1e-4, rtol=0)
        single = cache.apply_slice_to_batch_dim(0)
        assert single.accumulated_resid(-1).shape == (view.cfg.n_layers + 1, n_pos, d_model)


def test_unknown_hook_names_are_refused_with_close_matches(tiny_model):
    mel, tokens = make_inputs(tiny_model.dims, batch=1)
    with pytest.raises(ValueError, match="decoder_blocks.1.hook_resid_post"):
        tiny_model.run_with_cache(mel, tokens, names_filter=[get_act_name("resid_post", 1)])
    with pytest.raises(KeyError, match="encoder_blocks.0.hook_resid_post"):
        tiny_model.run_with_hooks(mel, tokens, fwd_hooks=[("encoder_blocks.0.hook_resid_pots", lambda a, hook: a)])
    with pytest.raises(ValueError, match="with_audio"):
        tiny_model.run_with_cache(mel, tokens, names_filter="blocks.0.attn.hook_pattern")
