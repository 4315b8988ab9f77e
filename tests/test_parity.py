"""Integration tier: the same weights give the same logits in openai-whisper, transformers and
HookedWhisper, and every checkpoint layout round-trips."""

from __future__ import annotations

import pytest
import torch
import whisper

from tests.conftest import DIMS, make_inputs, random_openai
from tests.writers import hf_config, write_ct2, write_hf, write_openai_pt
from whisper_lens import HookedWhisper
from whisper_lens.loading import load_checkpoint
from whisper_lens.loading.convert import hf_to_openai, hooked_to_openai, openai_to_hooked

ATOL = 1e-4


@pytest.mark.parametrize("path", ["sdpa", "explicit", "explicit_reused_buffers"])
def test_logits_match_openai_whisper(pair, dims, path, monkeypatch):
    ref, model = pair
    mel, tokens = make_inputs(dims)
    with torch.no_grad():
        if path == "sdpa":
            expected = ref(mel, tokens)
            got = model(mel, tokens)
        else:
            with whisper.model.disable_sdpa():
                expected = ref(mel, tokens)
            if path == "explicit_reused_buffers":  # second call writes into the first call's buffers
                from whisper_lens import components

                monkeypatch.setattr(components, "_MIN_SPARE_BYTES", 0)
                model.run_with_cache(mel * 0.5, tokens)
            got, cache = model.run_with_cache(mel, tokens)  # caching patterns forces the explicit path
            assert any(k.endswith("hook_pattern") for k in cache.keys())
            model.release_buffers()
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_encoder_output_matches_openai(pair, dims):
    ref, model = pair
    mel, _ = make_inputs(dims)
    with torch.no_grad():
        torch.testing.assert_close(model(mel), ref.embed_audio(mel), atol=ATOL, rtol=0)


def test_sdpa_and_explicit_paths_agree(pair, dims):
    _, model = pair
    mel, tokens = make_inputs(dims)
    with torch.no_grad():
        fast = model(mel, tokens)
        # hooking one layer's pattern switches only that layer to the explicit path
        slow = model.run_with_hooks(mel, tokens, fwd_hooks=[
            (lambda n: n.endswith("attn.hook_pattern"), lambda t, hook: None)])
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_state_dict_renaming_is_a_bijection(pair):
    ref, model = pair
    sd = ref.state_dict()
    assert hooked_to_openai(openai_to_hooked(sd)).keys() == sd.keys()
    assert set(openai_to_hooked(sd)) == set(model.state_dict())


@pytest.mark.parametrize("name", ["tiny_en", "mel128"])
def test_logits_match_transformers(name):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    dims = DIMS[name]
    torch.manual_seed(0)
    config = WhisperConfig(**hf_config(dims))
    config._attn_implementation = "eager"
    hf = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "embed_positions" not in n:
                p.normal_(0, 0.1).add_(1.0 if "layer_norm.weight" in n else 0.0)
    model = HookedWhisper.from_state_dict(dims, hf_to_openai(hf.state_dict()))
    mel, tokens = make_inputs(dims)
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
        got = model(mel, tokens)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def _logits(model: HookedWhisper, dims):
    mel, tokens = make_inputs(dims)
    with torch.no_grad():
        return model(mel, tokens)


@pytest.mark.parametrize("layout", ["openai", "huggingface", "ctranslate2", "ctranslate2-split"])
def test_checkpoint_round_trip(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("WHISPER_LENS_CACHE", str(tmp_path / "cache"))
    dims = DIMS["multilingual"]
    ref = random_openai(dims)
    sd = ref.state_dict()
    if layout == "ctranslate2" or layout == "ctranslate2-split":
        # CTranslate2 stores float16: compare against the same weights rounded to float16
        sd = {k: v.half().float() for k, v in sd.items()}
        ref.load_state_dict(sd)
    original = HookedWhisper.from_state_dict(dims, sd)
    if layout == "openai":
        path = write_openai_pt(dims, sd, tmp_path / "model.pt")
    elif layout == "huggingface":
        path = write_hf(dims, sd, tmp_path / "hf")
    else:
        path = write_ct2(dims, sd, tmp_path / "ct2", parts=2 if layout.endswith("split") else 1,
                         config={"alignment_heads": [[1, 0], [1, 3]]})
    ckpt = load_checkpoint(path)
    assert ckpt.dims == dims
    loaded = HookedWhisper.from_pretrained(str(path), device="cpu")
    assert torch.equal(_logits(loaded, dims), _logits(original, dims))
    if layout.startswith("ctranslate2"):
        assert ckpt.alignment_heads == ((1, 0), (1, 3))
        assert loaded.alignment_heads.nonzero().tolist() == [[1, 0], [1, 3]]
    if layout != "openai":  # converted checkpoints are cached; the second load reads the cache
        again = load_checkpoint(path)
        assert "cached" in again.source
        assert all(torch.equal(again.state_dict[k], ckpt.state_dict[k]) for k in ckpt.state_dict)
        assert not list((tmp_path / "cache").glob(".*.tmp")), "no half-written cache files"


def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_LENS_CACHE", str(tmp_path / "cache"))
    dims = DIMS["tiny_en"]
    sd = {k: v.half().float() for k, v in random_openai(dims).state_dict().items()}
    path = write_ct2(dims, sd, tmp_path / "ct2")
    first = load_checkpoint(path)
    for entry in (tmp_path / "cache").glob("*.pt"):
        entry.write_bytes(b"garbage")
    second = load_checkpoint(path)
    assert "cached" not in second.source
    assert torch.equal(first.state_dict["decoder.ln.weight"], second.state_dict["decoder.ln.weight"])
