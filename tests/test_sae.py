"""SAELens on Whisper: the three data routes, training with resume and resampling, splicing,
evaluation, configs. Mechanics run on a random tiny model (0.32 s windows); the real-weight
tests train briefly on tiny.en and check the numbers against direct computation."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import SAE

from whisper_lens.data import AudioExample
from whisper_lens.sae import TrainSAEConfig, activation_provider, cache_activations, evaluate, pcm_dataset, train_sae
from whisper_lens.sae.train import DeadLatentResampler, build_sae, set_metadata

ROOT = Path(__file__).resolve().parents[1]
HOOK = "encoder_blocks.1.hook_resid_post"


def clips(n: int = 12, seed: int = 0) -> list[AudioExample]:
    """Short noisy clips (0.05-0.15 s) that fit the random model's 0.32 s window several at a time."""
    rng = np.random.default_rng(seed)
    return [AudioExample(f"c{i}", (0.1 * rng.standard_normal(int(rng.integers(800, 2400)))).astype(np.float32),
                         16000, "the birch canoe slid") for i in range(n)]


def small_config(tmp_path: Path, **training) -> TrainSAEConfig:
    return TrainSAEConfig(
        model="unused", hook_name=HOOK, device="cpu", out_dir=str(tmp_path / "run"),
        data={"eval_clips": 0, "model_batch_size": 2, "buffer_batches": 2},
        sae={"architecture": "topk", "expansion_factor": 4, "options": {"k": 4}},
        training={"total_training_samples": 12 * 32, "batch_size": 32, "n_checkpoints": 2, **training},
    )


# ---------------------------------------------------------------- route 1: the provider
def test_provider_yields_exactly_the_real_rows(tiny_model):
    data = clips(6)
    # unpacked, so each clip's activations do not depend on which clips share its window
    stream = activation_provider(tiny_model, data, HOOK, batch_size=16, model_batch_size=2, buffer_size=16,
                                 mix_fraction=0.0, repeat=False, pack=False)
    got = torch.cat(list(stream))
    batch = tiny_model.prepare(data, pack=False)
    _, cache = tiny_model.run_with_cache(batch.mel, names_filter=[HOOK])
    expected = cache[HOOK][batch.audio_mask]
    assert got.shape[1] == 64 and stream.d_in == 64
    assert len(expected) < batch.audio_mask.numel()  # padding was excluded
    # every real row once (the last partial batch is dropped), in shuffled order
    assert len(got) == (len(expected) // 16) * 16
    distance = torch.cdist(got, expected.float(), compute_mode="donot_use_mm_for_euclid_dist")
    assert distance.min(dim=1).values.max() < 1e-4
    assert len(set(distance.argmin(dim=1).tolist())) == len(got)


def test_provider_decoder_hook_reads_transcript_tokens(tiny_model):
    data = clips(4)
    stream = activation_provider(tiny_model, data, "decoder_blocks.0.hook_resid_post", batch_size=4,
                                 model_batch_size=1, pack=False, buffer_size=4, mix_fraction=0.0, repeat=False)
    rows = torch.cat(list(stream))
    n_text = len(tiny_model.to_tokens("the birch canoe slid", prepend_sot=False)[0])  # prompt excluded
    assert len(rows) == 4 * n_text


@pytest.mark.parametrize("pack, keep", [(False, False), (True, False), (True, True)])
def test_provider_state_resumes_exactly(tiny_model, pack, keep):
    """A stream restored from a state gives exactly the batches the original gives next."""
    import copy

    data = clips(10)
    kwargs = dict(batch_size=8, model_batch_size=2, pack=pack, buffer_size=24, mix_fraction=0.5, keep_in_memory=keep)
    first = activation_provider(tiny_model, data, HOOK, **kwargs)
    for _ in range(5):
        next(first)
    state = copy.deepcopy(first.state_dict())
    assert state["mixer"]["storage"] is not None
    expected = [next(first) for _ in range(40)]  # several epochs
    assert first.epoch >= 2
    second = activation_provider(tiny_model, data, HOOK, **kwargs)
    second.load_state_dict(state)
    got = [next(second) for _ in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    with pytest.raises(ValueError, match="seed"):
        activation_provider(tiny_model, data, HOOK, seed=1).load_state_dict(state)


def test_provider_errors_are_clear(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        activation_provider(tiny_model, [], HOOK)
    with pytest.raises(ValueError, match="unknown hook"):
        activation_provider(tiny_model, clips(2), "encoder_blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="two position axes"):
        activation_provider(tiny_model, clips(2), "encoder_blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match="transcript"):
        next(activation_provider(tiny_model, [AudioExample("x", np.zeros(800, np.float32), 16000, None)],
                                 "decoder_blocks.0.hook_resid_post", batch_size=2))


# ---------------------------------------------------------------- training, checkpoints, resume
def test_train_sae_saves_in_saelens_format(tiny_model, tmp_path):
    result = train_sae(small_config(tmp_path), model=tiny_model, clips=clips())
    assert result.n_steps == 12 and result.n_samples == 12 * 32
    sae = SAE.load_from_disk(str(result.sae_path))
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.model_class_name, meta.sample_rate, meta.packed) == (HOOK, "HookedWhisper", 16000, True)
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 256
    # TopK decoder rows are unit norm once saved (SAELens folds the norm in)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(256), atol=1e-5, rtol=0)
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_interrupted_training_resumes_without_lost_steps(tiny_model, tmp_path):
    cfg = small_config(tmp_path)
    calls = {"n": 0}

    def interrupt_once(act, hook):
        calls["n"] += 1
        if calls["n"] == 10:  # mid-run, while the provider refills its buffer
            signal.raise_signal(signal.SIGINT)

    tiny_model.add_hook(HOOK, interrupt_once)
    try:
        with pytest.raises(SystemExit, match="interrupted after step"):
            train_sae(cfg, model=tiny_model, clips=clips())
    finally:
        tiny_model.reset_hooks()
    saved = sorted((tmp_path / "run" / "checkpoints").iterdir(), key=lambda p: int(p.name))
    stopped_at = int(saved[-1].name)
    assert 0 < stopped_at < 12 * 32
    result = train_sae(cfg, model=tiny_model, clips=clips())
    assert result.resumed_from == saved[-1]
    assert result.n_samples == 12 * 32 and result.n_steps == 12  # every step taken exactly once
    state = torch.load(saved[-1] / "trainer_state.pt")
    assert state["n_training_samples"] == stopped_at


def test_resume_refuses_a_changed_config(tiny_model, tmp_path):
    train_sae(small_config(tmp_path), model=tiny_model, clips=clips())
    with pytest.raises(ValueError, match="different config"):
        train_sae(small_config(tmp_path, lr=1e-2), model=tiny_model, clips=clips())


def test_resampler_reinitialises_dead_latents_from_worst_inputs(tiny_model):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = build_sae(small_config(Path("/tmp")).sae, 64)
    stream = activation_provider(tiny_model, clips(), HOOK, batch_size=32, model_batch_size=2, buffer_size=64)
    trainer = SAETrainer(cfg=SAETrainerConfig(total_training_samples=64, train_batch_size_samples=32, lr_end=1e-4),
                         sae=sae, data_provider=stream)
    resampler = DeadLatentResampler(trainer, every=1)
    output = trainer.step(next(stream))
    fired = output.feature_acts.bool().any(0)
    dead = (~fired).nonzero().flatten()
    assert len(dead) > 0
    resampler.fired |= fired
    assert resampler.resample(output.sae_in, output.sae_out) == len(dead)
    residual = output.sae_in - output.sae_out
    unit = residual / residual.norm(dim=-1, keepdim=True)
    rows = sae.W_dec.detach()[dead]
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(len(dead)))
    # each new decoder row is the normalised residual of one training input
    assert (rows @ unit.detach().T).max(dim=1).values.min() > 0.9999
    assert torch.all(trainer.optimizer.state[sae.W_dec]["exp_avg"][dead] == 0)
    assert torch.all(sae.b_enc.detach()[dead] == 0)


# ---------------------------------------------------------------- splicing
def test_add_sae_error_term_is_exact_and_hooks_are_cached(tiny_model):
    sae = build_sae(small_config(Path("/tmp")).sae, 64)
    set_metadata(sae, tiny_model, HOOK, pack=True, dataset="test")
    mel = torch.randn(2, 80, 32)
    tokens = torch.tensor([[50257, 50362, 440, 1029], [50257, 50362, 440, 1029]])
    clean = tiny_model(mel, tokens)
    tiny_model.add_sae(sae, use_error_term=True)
    try:
        assert torch.equal(tiny_model(mel, tokens), clean)
        _, cache = tiny_model.run_with_cache(mel, tokens, names_filter=lambda n: "sae" in n)
        assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (2, 16, 256)
        tiny_model.add_sae(sae, use_error_term=False)
        assert not torch.allclose(tiny_model(mel, tokens), clean)
    finally:
        tiny_model.reset_saes()
    assert torch.equal(tiny_model(mel, tokens), clean)
    with tiny_model.saes([sae]):
        assert HOOK in tiny_model.acts_to_saes
        assert not torch.allclose(tiny_model(mel, tokens), clean)
    assert torch.equal(tiny_model(mel, tokens), clean) and not tiny_model.acts_to_saes
    sae.cfg.metadata.hook_name = "encoder_blocks.7.hook_resid_post"
    with pytest.raises(ValueError, match="no hook"):
        tiny_model.add_sae(sae)


# ---------------------------------------------------------------- route 2: SAELens's own runner
def test_pcm_dataset_rows():
    data = clips(20)
    packed = pcm_dataset(data, seconds=0.25, gap_s=0.0)
    total = sum(len(c.audio) for c in data)
    assert len(packed) == total // 4000 and len(packed[0]["tokens"]) == 4000
    unpacked = pcm_dataset(data[:3], seconds=0.25, pack=False)
    assert len(unpacked) == 3 and unpacked[0]["n_real"] == int(np.ceil(len(data[0].audio) / 320))
    with pytest.raises(ValueError, match="does not fill"):
        pcm_dataset(data[:1], seconds=30)


def test_saelens_runner_trains_unchanged_on_pcm(tiny_model, tmp_path):
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

    window = 16 * 2 * 160  # the random model's window: 5120 samples, 16 encoder positions
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=64, d_sae=256, k=4), model_name="random-tiny", model_class_name="HookedWhisper",
        hook_name=HOOK, dataset_path="pcm", is_dataset_tokenized=True, context_size=window, seqpos_slice=(0, 16),
        training_tokens=8 * 32, train_batch_size_tokens=32, store_batch_size_prompts=2, n_batches_in_buffer=4,
        device="cpu", logger=LoggingConfig(log_to_wandb=False), output_path=str(tmp_path / "out"))
    data = clips(40)
    sae = LanguageModelSAETrainingRunner(cfg, override_model=tiny_model,
                                         override_dataset=pcm_dataset(data, seconds=window / 16000)).run()
    assert sae.cfg.metadata.hook_name == HOOK
    assert SAE.load_from_disk(str(tmp_path / "out")).cfg.d_sae == 256


# ---------------------------------------------------------------- route 3: cached activations
def test_cache_activations_is_sharded_resumable_and_read_by_saelens(tiny_model, tmp_path):
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

    out = tmp_path / "acts"
    data = clips(24)
    calls = {"n": 0}

    def fail_in_third_shard(act, hook):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("power cut")

    kwargs = dict(context_size=8, clips_per_shard=8, batch_size=2, progress=False)
    tiny_model.add_hook(HOOK, fail_in_third_shard)
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            cache_activations(tiny_model, data, HOOK, out, **kwargs)
    finally:
        tiny_model.reset_hooks()
    done = sorted(p.name for p in (out / ".tmp_shards").iterdir() if p.name.startswith("shard_"))
    assert done == ["shard_00000"]  # whole shards only
    with pytest.raises(ValueError, match="different"):
        cache_activations(tiny_model, data, HOOK, out, **{**kwargs, "context_size": 4})
    ds = cache_activations(tiny_model, data, HOOK, out, **kwargs)
    manifest = json.loads((out / "whisper_lens_manifest.json").read_text())
    assert manifest["hook_names"] == [HOOK] and manifest["n_shards"] == 3 and manifest["n_rows"] == len(ds)
    assert ds.features[HOOK].shape == (8, 64)
    # the first shard's rows equal the real rows of its clips, computed directly
    direct = torch.cat(list(tiny_model.iter_activations(data[:8], HOOK, batch_size=2)))
    ds.set_format("torch")
    torch.testing.assert_close(ds[0][HOOK], direct[:8])

    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=64, d_sae=256, k=4), model_name="random-tiny", model_class_name="HookedWhisper",
        hook_name=HOOK, dataset_path="pcm", use_cached_activations=True, cached_activations_path=str(out),
        context_size=8, training_tokens=4 * 16, train_batch_size_tokens=16, store_batch_size_prompts=2,
        n_batches_in_buffer=2, device="cpu", logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path / "sae"))
    # SAELens opens a token dataset even when it reads cached activations: any PCM dataset will do
    sae = LanguageModelSAETrainingRunner(cfg, override_model=tiny_model,
                                         override_dataset=pcm_dataset(data, seconds=0.32)).run()
    assert sae.cfg.d_in == 64


# ---------------------------------------------------------------- configs
def test_configs_load_and_override():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = TrainSAEConfig.from_yaml(path)
        assert cfg.hook_name.endswith("hook_resid_post"), path
    cfg = TrainSAEConfig.from_yaml(ROOT / "configs" / "tiny_en_encoder_l2.yaml",
                                   overrides=["training.lr=1e-3", "sae.options.k=64"])
    assert cfg.training.lr == 1e-3 and cfg.sae.options == {"k": 64}
    assert cfg.sae.expansion_factor == 8 and cfg.training.batch_size == 4096
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        TrainSAEConfig(sae={"architecture": "magic"})
    with pytest.raises(ValueError, match="extra"):
        TrainSAEConfig.from_yaml(ROOT / "configs" / "tiny_en_encoder_l2.yaml", overrides=["training.lrr=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        TrainSAEConfig().with_overrides(["lr"])
    with pytest.raises(ValueError, match="needs data.path"):
        TrainSAEConfig(data={"source": "folder"})
    with pytest.raises(ValueError, match="do not fit"):
        build_sae(TrainSAEConfig(sae={"options": {"kk": 3}}).sae, 8)


# ---------------------------------------------------------------- real weights: evaluation
@pytest.mark.real_weights
@pytest.mark.slow
def test_evaluate_on_tiny_en(real_model, tmp_path):
    from whisper_lens.data import load_samples

    data = list(load_samples())
    hook = "encoder_blocks.2.hook_resid_post"
    cfg = TrainSAEConfig(model="tiny.en", hook_name=hook, device="cpu", out_dir=str(tmp_path / "run"),
                         data={"eval_clips": 0, "buffer_batches": 2},
                         training={"total_training_samples": 40 * 1024, "batch_size": 1024, "n_checkpoints": 0,
                                   "lr": 3e-3},
                         sae={"options": {"k": 32}})
    result = train_sae(cfg, model=real_model, clips=data[:32])
    ev = evaluate(real_model, result.sae, data[32:], out_dir=tmp_path / "eval", n_wer_clips=4, verbose=False)
    # reconstruction metrics agree with a direct computation on the same real frames
    rows = torch.cat(list(real_model.iter_activations(data[32:], hook, batch_size=8)))  # evaluate's windows
    with torch.no_grad():
        recon = result.sae.decode(result.sae.encode(rows))
    ev_direct = 1 - (rows - recon).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum()
    assert ev.n_positions == len(rows)
    assert ev.explained_variance == pytest.approx(float(ev_direct), abs=1e-4)
    assert ev.l0 == pytest.approx(32, abs=0.01)
    assert 0.3 < ev.explained_variance < 1
    assert ev.ce_clean < ev.ce_spliced < ev.ce_zero and 0 < ev.ce_recovered < 1
    assert ev.ce_clean < 1.0  # tiny.en reads the bundled speech well (0.40 nats/token measured)
    assert ev.wer_clean is not None and ev.wer_clean < 0.2
    assert Path(ev.density_plot).is_file()
    assert 0 <= ev.dead_fraction < 1 and len(ev.density) == 3072


def test_audio_evaluator_has_saelens_evaluator_shape(tiny_model):
    from sae_lens.training.activation_scaler import ActivationScaler

    from whisper_lens.sae import audio_evaluator

    sae = build_sae(small_config(Path("/tmp")).sae, 64)
    set_metadata(sae, tiny_model, HOOK, pack=True, dataset="test")
    metrics = audio_evaluator(tiny_model, clips(4), n_wer_clips=2)(sae, iter(()), ActivationScaler())
    assert {"whisper/explained_variance", "whisper/ce_recovered", "whisper/wer_spliced", "whisper/l0"} <= set(metrics)
    assert metrics["whisper/l0"] == pytest.approx(4.0)
    assert metrics["whisper/ce_clean"] > 0


def test_keep_in_memory_replays_the_first_epoch_without_the_model(tiny_model):
    calls = {"n": 0}

    def count(act, hook):
        calls["n"] += 1

    data = clips(6)
    stream = activation_provider(tiny_model, data, HOOK, batch_size=8, model_batch_size=2, pack=False,
                                 buffer_size=8, mix_fraction=0.0, keep_in_memory=True)
    tiny_model.add_hook(HOOK, count)
    try:
        first = [next(stream) for _ in range(3)]
        while stream.epoch == 0:
            next(stream)
        model_calls = calls["n"]
        later = torch.cat([next(stream) for _ in range(8)])
    finally:
        tiny_model.reset_hooks()
    assert calls["n"] == model_calls  # later epochs come from memory
    assert stream.epoch >= 1 and stream.n_rows_read == sum(len(r) for r in stream._memory)
    seen = torch.cat(stream._memory)
    distance = torch.cdist(later, seen, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert distance.max() < 1e-5
    seen_first = torch.cat(first)
    assert torch.cdist(seen_first, seen, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max() < 1e-5  # the first batches came from the model too


@pytest.mark.parametrize("position", [0, 3, 6])
def test_keep_in_memory_resumes_past_the_first_epoch(tiny_model, position):
    """Regression: a checkpoint taken after the first epoch left the memory empty and `next` spun forever."""
    import threading

    data = clips(6)
    stream = activation_provider(tiny_model, data, HOOK, batch_size=8, model_batch_size=2, pack=False,
                                 buffer_size=8, mix_fraction=0.0, keep_in_memory=True)
    stream.load_state_dict({"epoch": 2, "position": position, "seed": 0})
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(next(stream) for _ in range(12)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the resumed stream hangs"
    assert len(out) == 12 and all(batch.shape == (8, 64) for batch in out)
    assert stream.epoch > 2 and stream._memory  # one whole epoch was read back into memory
