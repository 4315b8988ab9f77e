"""SAELens's own LanguageModelSAETrainingRunner, imported and called as is, on Whisper.

    uv run python examples/05_train_with_saelens_runner.py

The runner reads "pretokenized" rows from a `tokens` column; `pcm_dataset` puts int16 PCM there,
packed so every position of a row is speech. HookedWhisper takes int PCM as input, and its
`run_with_cache` stops at the hooked layer, as SAELens's activation store expects.
Rows here are 5 s (the model pads them to its 30 s window), so `seqpos_slice=(0, 250)` keeps
the 250 real encoder positions (50 per second) and drops the padding.
"""

from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig

from whisper_lens import HookedWhisper
from whisper_lens.data import load_samples
from whisper_lens.sae import pcm_dataset

model = HookedWhisper.from_pretrained("tiny.en")
seconds = 5
dataset = pcm_dataset(list(load_samples()), seconds=seconds)
print(f"{len(dataset)} rows of {seconds} s of packed speech")

cfg = LanguageModelSAERunnerConfig(
    sae=TopKTrainingSAEConfig(d_in=384, d_sae=3072, k=32),
    model_name="tiny.en", model_class_name="HookedWhisper", hook_name="encoder_blocks.2.hook_resid_post",
    dataset_path="whisper_lens/samples", is_dataset_tokenized=True,
    context_size=seconds * 16000, seqpos_slice=(0, seconds * 50),
    training_tokens=30 * 1024, train_batch_size_tokens=1024, store_batch_size_prompts=4, n_batches_in_buffer=8,
    lr=3e-3, device="cpu", logger=LoggingConfig(log_to_wandb=False), output_path="runs/example_05_sae",
)
sae = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
print(f"trained {sae.cfg.d_sae} latents at {sae.cfg.metadata.hook_name}; saved to runs/example_05_sae")
