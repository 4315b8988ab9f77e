"""SAELens's own evals, ActivationsStore and training runner, called unchanged, on Whisper.

Unit tier: reference rows resolve to the windows the model holds and are refused when they
name nothing. Acceptance tier (real tiny.en, bundled speech): `run_evals` agrees with
`whisper_lens.sae.evaluate`, and `LanguageModelSAETrainingRunner` with SAELens's default config
(W&B logging on, disabled by `WANDB_MODE`; evals on) trains, evaluates and saves, for an encoder
hook and a decoder hook.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
from sae_lens import TopKTrainingSAEConfig
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore

from tests.conftest import make_inputs
from whisper_lens.audio_refs import ENCODER_REF, HeldAudio, encoder_rows
from whisper_lens.data import load_samples
from whisper_lens.sae import evaluate, saelens_dataset

HOOKS = ["encoder_blocks.2.hook_resid_post", "decoder_blocks.1.hook_resid_post"]


def test_reference_rows_resolve_to_the_held_windows(tiny_model):
    mel, _ = make_inputs(tiny_model.dims, batch=2)
    held = HeldAudio()
    mask = torch.zeros(2, tiny_model.dims.n_audio_ctx, dtype=torch.bool)
    mask[:, :5] = True
    held.mel += [mel[0], mel[1]]
    held.tokens += [torch.tensor([50257, 50362, 11, 12]), torch.tensor([50257, 50362, 13])]
    held.targets += [torch.tensor([False, False, True, True]), torch.tensor([False, False, True])]
    rows = encoder_rows(range(2), mask, pad_id=50256)
    resolved = held.resolve(rows.flip(0), eot=50256)
    assert torch.equal(resolved.mel[0], mel[1]) and resolved.kind == "encoder"
    assert resolved.tokens.tolist() == [[50257, 50362, 13, 50256], [50257, 50362, 11, 12]]
    with pytest.raises(ValueError, match="holds 2"):
        held.resolve(torch.full((1, 4), ENCODER_REF + 7 * 4096), eot=50256)
    with pytest.raises(ValueError, match="exactly one window"):
        held.resolve(torch.cat([rows[:1, :3], rows[1:, :3]], dim=1), eot=50256)


@pytest.fixture(scope="module")
def speech(real_model):
    return real_model, list(load_samples())


def _sae(hook: str, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    return SAE.from_dict(dict(architecture="topk", d_in=384, d_sae=768, k=32, dtype="float32", device="cpu",
                              metadata=dict(hook_name=hook, prepend_bos=False)))


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.parametrize("hook", HOOKS)
def test_run_evals_agrees_with_evaluate(speech, hook):
    model, clips = speech
    dataset = saelens_dataset(model, clips, hook_name=hook)
    sae = _sae(hook)
    store = ActivationsStore.from_sae(model, sae, dataset=dataset, context_size=len(dataset[0]["tokens"]),
                                      store_batch_size_prompts=2, train_batch_size_tokens=256, n_batches_in_buffer=2)
    n_batches = (len(dataset) + 1) // 2  # every window once
    decoder = hook.startswith("decoder")  # KL is per hooked position: text positions only (docs/compatibility.md)
    config = EvalConfig(batch_size_prompts=2, n_eval_reconstruction_batches=n_batches,
                        n_eval_sparsity_variance_batches=n_batches, compute_ce_loss=True, compute_kl=decoder,
                        compute_variance_metrics=True, compute_sparsity_metrics=True, compute_l2_norms=True)
    with torch.no_grad():
        metrics, _ = run_evals(sae, store, model, ActivationScaler(), config)  # exclude_special_tokens=True
    ours = evaluate(model, sae, clips, n_wer_clips=0, verbose=False)
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(ours.explained_variance, abs=0.01)
    assert metrics["sparsity"]["l0"] == pytest.approx(ours.l0, abs=0.5)
    assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(ours.ce_recovered, abs=0.02)
    assert metrics["model_performance_preservation"]["ce_loss_without_sae"] == pytest.approx(ours.ce_clean, abs=0.05)
    if decoder:
        kl = metrics["model_behavior_preservation"]
        assert kl["kl_div_with_ablation"] > kl["kl_div_with_sae"] > 0


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.parametrize("hook", HOOKS)
def test_training_runner_with_default_config_trains_evaluates_and_saves(speech, hook, tmp_path, monkeypatch):
    model, clips = speech
    monkeypatch.setenv("WANDB_MODE", "disabled")
    evals: list[dict] = []
    original = LLMSaeEvaluator.__call__

    def spy(self, *args, **kwargs):  # SAELens's evaluator, recorded
        evals.append(original(self, *args, **kwargs))
        return evals[-1]

    monkeypatch.setattr(LLMSaeEvaluator, "__call__", spy)
    dataset = saelens_dataset(model, clips, hook_name=hook)
    batch = 1024 if hook.startswith("encoder") else 128  # a decoder row is ~30 tokens
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=384, d_sae=768, k=16),
        model_name="tiny.en", model_class_name="HookedWhisper", hook_name=hook,
        dataset_path="whisper_lens/saelens_dataset", context_size=len(dataset[0]["tokens"]),
        training_tokens=6 * batch, train_batch_size_tokens=batch, store_batch_size_prompts=2, n_batches_in_buffer=2,
        n_eval_batches=2, device="cpu", output_path=str(tmp_path / "sae"),
        logger=LoggingConfig(wandb_log_frequency=1, eval_every_n_wandb_logs=3),  # log_to_wandb stays True
    )
    assert cfg.logger.log_to_wandb
    LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    assert len(evals) == 2
    assert all(0 <= e["model_performance_preservation"]["ce_loss_without_sae"] < 1 for e in evals)
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.metadata.hook_name == hook
