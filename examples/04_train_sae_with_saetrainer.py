"""Train a TopK SAE on tiny.en's encoder with SAELens's own SAETrainer, then evaluate it on audio.

    uv run python examples/04_train_sae_with_saetrainer.py

The SAE, its config and the trainer are SAELens's, used as is; whisper_lens supplies the data
(real frames only, clips packed into full windows) and the audio evaluation.
For a full run with checkpoints and resume: `uv run whisper-lens train-sae configs/tiny_en_encoder_l2.yaml`.
"""

from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples
from whisper_lens.sae import activation_provider, evaluate

model = HookedWhisper.from_pretrained("tiny.en")
clips = list(load_samples())
train, held_out = clips[:32], clips[32:]
hook = "encoder_blocks.2.hook_resid_post"

# Real-frame activations, packed and shuffled through SAELens's mixing buffer. The corpus is small,
# so the first epoch is kept in memory and replayed instead of running the encoder again.
provider = activation_provider(model, train, hook, batch_size=1024, buffer_size=4096, keep_in_memory=True)
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=8 * model.cfg.d_model, k=32))
trainer = SAETrainer(
    cfg=SAETrainerConfig(total_training_samples=80 * 1024, train_batch_size_samples=1024, lr=3e-3, lr_end=3e-4,
                         lr_scheduler_name="cosineannealing"),
    sae=sae, data_provider=provider,
)
sae = trainer.fit()
sae.cfg.metadata.hook_name = hook  # where it reads, for splicing and evaluation
sae.cfg.metadata.model_name = model.model_name
print(f"{trainer.n_training_steps} steps, {provider.n_rows_read} real frames read from the model")

evaluate(model, sae, held_out, n_wer_clips=4)

# SAELens's format: load it back and splice it in, with the error term the output is unchanged.
sae.save_inference_model("runs/example_04_sae")
loaded = SAE.load_from_disk("runs/example_04_sae")
with model.saes([loaded]):
    print("spliced in:", model.transcribe(held_out[0].audio)[0].text)
