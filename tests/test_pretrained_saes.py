"""Published Whisper SAEs (AudioSAE, FREUD) load into SAELens SAEs that compute what the
originals compute. Each test writes a small checkpoint in the release's own layout from random
weights and compares the loaded SAE with the release's formulas, reimplemented here from the
authors' code (dictionary_learning's BatchTopKSAE; FREUD's TopKAutoEncoder and L1AutoEncoder).
With a real download on disk (WHISPER_LENS_PRETRAINED_DIR), a marked test loads it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from whisper_lens.errors import CheckpointError
from whisper_lens.sae.pretrained import AUDIOSAE, FREUD, load_pretrained

D_IN, D_SAE, K = 24, 96, 5


def _x(n: int = 40, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


# ------------------------------------------------------------------ AudioSAE (dictionary_learning BatchTopK)
def _audiosae_state(threshold: float | None = 0.4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D_IN, D_SAE, generator=g)
    state = {"encoder.weight": torch.randn(D_SAE, D_IN, generator=g) * 0.3,
             "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
             "decoder.weight": decoder / decoder.norm(dim=0, keepdim=True),
             "b_dec": torch.randn(D_IN, generator=g) * 0.1, "k": torch.tensor(K, dtype=torch.int32)}
    if threshold is not None:
        state["threshold"] = torch.tensor(threshold)
    return state


def audiosae_reference(state, x, *, use_threshold: bool):
    """dictionary_learning BatchTopKSAE.encode/decode for a batch of frames [n d_in]."""
    post_relu = F.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    if use_threshold:
        f = post_relu * (post_relu > state["threshold"])
    else:  # per frame here: their batch-wide top k·n equals per-frame top k only for n = 1
        values, index = post_relu.topk(int(state["k"]), dim=-1)
        f = torch.zeros_like(post_relu).scatter(-1, index, values)
    return f, f @ state["decoder.weight"].T + state["b_dec"]


def _write_audiosae(root: Path, layer: int, state, config=None) -> Path:
    folder = root / f"layer_{layer}"
    folder.mkdir(parents=True)
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps(config or {
        "trainer": {"activation_dim": D_IN, "dict_size": D_SAE, "k": K, "layer": layer, "lm_name": "whisper-small"}}))
    return folder


def test_audiosae_threshold_inference_matches_their_encode(tmp_path):
    state = _audiosae_state(threshold=0.4)
    _write_audiosae(tmp_path, 6, state)
    sae = load_pretrained("audiosae", path=tmp_path, layer=6)
    x = _x()
    f, recon = audiosae_reference(state, x, use_threshold=True)
    assert sae.cfg.architecture() == "jumprelu"
    assert sae.cfg.metadata.hook_name == "encoder_blocks.5.hook_resid_post"  # layer_6 = output of the 6th block
    assert sae.cfg.metadata.model_name == "small"
    torch.testing.assert_close(sae.encode(x), f, atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=0)
    assert 0 < int((f > 0).sum()) < f.numel()  # the threshold really cuts


def test_audiosae_topk_inference_and_a_checkpoint_without_threshold(tmp_path):
    state = _audiosae_state(threshold=None)
    folder = _write_audiosae(tmp_path, 3, state)
    for sae in (load_pretrained("audiosae", path=folder),  # layer read from the folder name
                load_pretrained("audiosae", path=folder, inference="topk")):
        x = _x(seed=5)
        f, recon = audiosae_reference(state, x, use_threshold=False)
        assert sae.cfg.architecture() == "topk" and sae.cfg.k == K
        assert sae.cfg.metadata.hook_name == "encoder_blocks.2.hook_resid_post"
        torch.testing.assert_close(sae.encode(x), f, atol=1e-6, rtol=0)
        torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=0)


def test_audiosae_mismatched_config_and_missing_keys_are_named(tmp_path):
    state = _audiosae_state()
    _write_audiosae(tmp_path, 2, state, {"activation_dim": D_IN + 1, "dict_size": D_SAE, "k": K})
    with pytest.raises(CheckpointError, match="activation_dim"):
        load_pretrained("audiosae", path=tmp_path / "layer_2")
    other = tmp_path / "other"
    _write_audiosae(other, 2, {k: v for k, v in state.items() if k != "b_dec"})
    with pytest.raises(CheckpointError, match="b_dec"):
        load_pretrained("audiosae", path=other / "layer_2")
    with pytest.raises(FileNotFoundError, match="ae.pt"):
        load_pretrained("audiosae", path=tmp_path / "nowhere")


# ------------------------------------------------------------------ FREUD
def _freud_topk_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(D_SAE, D_IN, generator=g) * 0.3
    return {"encoder.weight": enc, "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
            "W_dec": enc * 1.7 + 0.05 * torch.randn(D_SAE, D_IN, generator=g),  # untied, rows not unit norm
            "b_dec": torch.randn(D_IN, generator=g) * 0.1}


def freud_topk_reference(state, x, k):
    """FREUD TopKAutoEncoder: ReLU, then the k largest per frame; decode with W_dec + b_dec."""
    pre = F.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    values, index = pre.topk(k, dim=-1, sorted=False)
    f = torch.zeros_like(pre).scatter(-1, index, values)
    return f, f @ state["W_dec"] + state["b_dec"]


def freud_l1_reference(state, x):
    """FREUD L1AutoEncoder: normalise the tied dictionary's columns, ReLU(x D + b), decode c Dᵀ."""
    dictionary = F.normalize(state["decoder.weight"], dim=0)
    c = F.relu(x @ dictionary + state["encoder_bias"])
    return c, c @ dictionary.T


def _write_freud(root: Path, state, variant: str, layer_name="encoder.blocks.2", whisper="tiny",
                 features: bool = True) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    hparams = {"autoencoder_variant": variant, "activation_size": D_IN, "lr": 1e-3,
               "autoencoder_config": {"k": K} if variant == "topk" else {"n_dict_components": D_SAE},
               "whisper_config": {"model": whisper, "layer_name": layer_name}}
    torch.save({"model": state, "hparams": hparams, "step": 10, "best_val_loss": np.float64(0.5)},
               root / "checkpoints" / "bestval.pth")
    if features:
        (root / "features.json").write_text(json.dumps({"whisper_model": whisper, "layer_name": layer_name}))
    return root


def test_freud_topk_matches_their_autoencoder(tmp_path):
    state = _freud_topk_state()
    sae = load_pretrained("freud", path=_write_freud(tmp_path, state, "topk"))
    x = _x()
    f, recon = freud_topk_reference(state, x, K)
    assert sae.cfg.architecture() == "topk" and not sae.cfg.rescale_acts_by_decoder_norm
    assert sae.cfg.metadata.hook_name == "encoder_blocks.2.hook_resid_post" and sae.cfg.metadata.model_name == "tiny"
    torch.testing.assert_close(sae.encode(x), f, atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=0)


def test_freud_l1_folds_the_column_normalisation(tmp_path):
    g = torch.Generator().manual_seed(2)
    state = {"decoder.weight": torch.randn(D_IN, D_SAE, generator=g) * 3, "encoder_bias": torch.randn(D_SAE, generator=g)}
    sae = load_pretrained("freud", path=_write_freud(tmp_path, state, "l1", "encoder.blocks.16", "large-v3",
                                                   features=False))
    x = _x(seed=9)
    c, recon = freud_l1_reference(state, x)
    assert sae.cfg.architecture() == "standard"
    assert sae.cfg.metadata.hook_name == "encoder_blocks.16.hook_resid_post"
    assert sae.cfg.metadata.model_name == "large-v3"
    torch.testing.assert_close(sae.encode(x), c, atol=1e-5, rtol=0)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=0)


def test_freud_site_that_is_not_a_block_output_is_refused(tmp_path):
    _write_freud(tmp_path, _freud_topk_state(), "topk", layer_name="encoder.blocks.2.mlp.1")
    with pytest.raises(CheckpointError, match="encoder.blocks.N"):
        load_pretrained("freud", path=tmp_path)


def test_loaded_sae_splices_into_a_model_at_its_hook(tmp_path, tiny_model):
    """The hook names are real hooks: a FREUD-layout SAE at the test model's width splices in."""
    d = tiny_model.dims.n_audio_state
    g = torch.Generator().manual_seed(4)
    enc = torch.randn(2 * d, d, generator=g) * 0.1
    state = {"encoder.weight": enc, "encoder.bias": torch.zeros(2 * d), "W_dec": enc.clone(), "b_dec": torch.zeros(d)}
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": state, "hparams": {"autoencoder_variant": "topk", "autoencoder_config": {"k": 4},
                                            "whisper_config": {"model": "tiny", "layer_name": "encoder.blocks.1"}}},
               tmp_path / "checkpoints" / "bestval.pth")
    sae = load_pretrained("freud", path=tmp_path)
    mel = torch.randn(1, 80, 32)
    _, cache = tiny_model.run_with_cache_with_saes(mel, saes=[sae])
    assert "encoder_blocks.1.hook_resid_post.hook_sae_acts_post" in cache.keys()


def test_registry_names_and_offline_message(tmp_path, monkeypatch):
    assert AUDIOSAE["small"].repo_id == "Egorgij21/Audio-SAE-Whisper-small" and AUDIOSAE["small"].layers[-1] == 12
    assert AUDIOSAE["turbo"] is AUDIOSAE["large-v3-turbo"] and len(AUDIOSAE["large-v3"].layers) == 32
    assert FREUD["tiny-topk"].repo_id == "cherrvak/topkautoencoder_baseline"
    with pytest.raises(ValueError, match="layers 1..12"):
        load_pretrained("audiosae", model="small", layer=13)
    with pytest.raises(ValueError, match="model="):
        load_pretrained("audiosae", model="medium", layer=1)
    # a local copy under $WHISPER_LENS_PRETRAINED_DIR is used before any download
    monkeypatch.setenv("WHISPER_LENS_PRETRAINED_DIR", str(tmp_path))
    _write_audiosae(tmp_path / "Audio-SAE-Whisper-small", 4, _audiosae_state())
    assert load_pretrained("audiosae", model="small", layer=4).cfg.metadata.hook_name == "encoder_blocks.3.hook_resid_post"
    # offline (HF_HUB_OFFLINE) and not on disk: the error says what to download and where
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"WHISPER_LENS_PRETRAINED_DIR/Audio-SAE-Whisper-small/layer_5/ae.pt"):
        load_pretrained("audiosae", model="small", layer=5)


PRETRAINED_DIR = os.environ.get("WHISPER_LENS_PRETRAINED_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not PRETRAINED_DIR, reason="set WHISPER_LENS_PRETRAINED_DIR to a folder of downloaded releases")
@pytest.mark.parametrize("release,model,layer", [("audiosae", "small", 6), ("freud", "tiny-topk", None),
                                                 ("freud", "tiny-l1", None)])
def test_downloaded_release_loads(release, model, layer):
    sae = load_pretrained(release, model=model, layer=layer)
    x = torch.randn(4, sae.cfg.d_in)
    assert sae.decode(sae.encode(x)).shape == x.shape
    assert sae.cfg.metadata.hook_name.startswith("encoder_blocks.")
