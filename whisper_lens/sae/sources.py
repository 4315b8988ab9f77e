"""Activation sources for SAELens: the three ways Whisper activations reach an SAE.

    activation_provider(model, dataset, hook)   SAETrainer's data provider (real rows, mixed)
    pcm_dataset(examples)                        a `tokens` dataset for LanguageModelSAETrainingRunner
    cache_activations(model, dataset, hooks, out_dir)   the layout `use_cached_activations=True` reads

All three read only real positions (see `whisper_lens.activations`) except `pcm_dataset` with
`pack=False`, whose rows are padded and need a `seqpos_slice`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sae_lens.training.mixing_buffer import mixing_buffer
from torch import Tensor
from tqdm.auto import tqdm

from whisper_lens.activations import check_hooks, iter_real_activations
from whisper_lens.audio import AUDIO_POS_PER_SECOND, SAMPLE_RATE

if TYPE_CHECKING:
    from datasets import Dataset

    from whisper_lens.model import HookedWhisper


# ------------------------------------------------------------------ route 1: SAETrainer provider
class ActivationStream(Iterator[Tensor]):
    """Endless [batch_size d_in] batches of real-position activations, shuffled through
    SAELens's `mixing_buffer`. Its position (epoch, clips read) is saved with training checkpoints
    so a resumed run continues with unread clips instead of starting the data over."""

    def __init__(self, model: HookedWhisper, dataset: Sequence[Any], hook_name: str, *, batch_size: int,
                 model_batch_size: int, pack: bool, gap_s: float, buffer_size: int, mix_fraction: float,
                 seed: int, repeat: bool, language: str | None, dtype: torch.dtype, keep_in_memory: bool):
        self.dataset = list(dataset)
        if not self.dataset:
            raise ValueError("the dataset is empty: give at least one clip with audio")
        check_hooks(model, [hook_name])
        self.model, self.hook_name = model, hook_name
        self.batch_size, self.model_batch_size = batch_size, model_batch_size
        self.pack, self.gap_s, self.language, self.dtype = pack, gap_s, language, dtype
        self.buffer_size, self.mix_fraction, self.seed, self.repeat = buffer_size, mix_fraction, seed, repeat
        self.keep_in_memory = keep_in_memory
        self._memory: list[Tensor] = []  # first epoch's rows, replayed later when keep_in_memory
        self.epoch, self.position = 0, 0  # clips read in the current epoch
        self.n_rows_read = 0  # real rows that came out of the model
        self.model_seconds = 0.0  # time spent in the model, for throughput reports
        self._batches: Iterator[Tensor] | None = None
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        """Width of one row (head hooks are flattened), read from one short forward pass."""
        if self._d_in is None:
            rows = next(iter_real_activations(self.model, self.dataset[:1], [self.hook_name], batch_size=1,
                                              pack=False, language=self.language))
            self._d_in = rows.acts[self.hook_name].shape[1]
        return self._d_in

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint was made with data seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position, self._batches = state["epoch"], state["position"], None

    def _clips(self, repeat: bool) -> Iterator[Any]:
        while True:
            order = list(range(len(self.dataset)))
            random.Random(self.seed + self.epoch).shuffle(order)
            while self.position < len(order):
                item = self.dataset[order[self.position]]
                self.position += 1
                yield item
            if not repeat:
                return
            self.epoch, self.position = self.epoch + 1, 0

    def _rows(self) -> Iterator[Tensor]:
        if not self.keep_in_memory:
            yield from self._rows_from_model(self.repeat)
            return
        # Rows come from the model until one whole epoch is in memory; later epochs replay it in a
        # new order. Memory is not checkpointed, so a resumed run (position > 0) reads the rest of
        # its epoch, then one whole epoch, from the model before replaying.
        whole_epoch = self.position == 0
        for rows in self._rows_from_model(repeat=False):
            if whole_epoch:
                self._memory.append(rows)
            yield rows
        if not self.repeat:
            return
        if not whole_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            for rows in self._rows_from_model(repeat=False):
                self._memory.append(rows)
                yield rows
        if not any(len(rows) for rows in self._memory):
            raise ValueError(f"no real positions at {self.hook_name} in the dataset (silent or empty clips?)")
        while True:
            self.epoch, self.position = self.epoch + 1, len(self.dataset)
            order = torch.randperm(len(self._memory), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            for index in order.tolist():
                yield self._memory[index]

    def _rows_from_model(self, repeat: bool) -> Iterator[Tensor]:
        source = iter_real_activations(self.model, self._clips(repeat), [self.hook_name],
                                       batch_size=self.model_batch_size, pack=self.pack, gap_s=self.gap_s,
                                       language=self.language)
        empty_passes = 0
        while True:
            start = time.perf_counter()
            try:
                out = next(source)
            except StopIteration:
                return
            self.model_seconds += time.perf_counter() - start
            rows = out.acts[self.hook_name]
            empty_passes = empty_passes + 1 if len(rows) == 0 else 0
            if empty_passes > len(self.dataset):
                raise ValueError(f"no real positions at {self.hook_name} in the dataset (silent or empty clips?)")
            self.n_rows_read += len(rows)
            yield rows.to(self.dtype)

    def __next__(self) -> Tensor:
        if self._batches is None:
            self._batches = mixing_buffer(self.buffer_size, self.batch_size, self._rows(), self.mix_fraction)
        return next(self._batches)


def activation_provider(
    model: HookedWhisper,
    dataset: Sequence[Any],
    hook_name: str,
    *,
    batch_size: int = 4096,
    model_batch_size: int = 8,
    pack: bool = True,
    gap_s: float = 0.2,
    buffer_size: int | None = None,
    mix_fraction: float = 0.5,
    seed: int = 0,
    repeat: bool = True,
    language: str | None = None,
    dtype: torch.dtype = torch.float32,
    keep_in_memory: bool = False,
) -> ActivationStream:
    """A SAELens `DataProvider` of real-frame (encoder hooks) or transcript-token (decoder hooks)
    activations at `hook_name`.

    Args:
        dataset: clips with `.audio` (and `.text` for decoder hooks), e.g. `data.load_samples()`.
        batch_size: rows per yielded batch (SAELens's `train_batch_size_samples`).
        model_batch_size: 30 s windows (packed) or clips (unpacked) per forward pass.
        pack: pack several clips into each window (5-10x more real rows per forward pass).
        buffer_size: rows held for shuffling (default 16 batches); SAELens's `mixing_buffer`.
        seed: clip order per epoch is shuffled with `seed + epoch`.
        repeat: start a new epoch when the clips run out (otherwise the stream ends).
        keep_in_memory: keep the first epoch's rows (rows x d_in x 4 bytes) and replay them in later
            epochs instead of running the model again: for corpora small enough to fit.
    """
    if batch_size < 1 or model_batch_size < 1:
        raise ValueError("batch_size and model_batch_size must be >= 1")
    buffer_size = buffer_size or 16 * batch_size
    if buffer_size < batch_size:
        raise ValueError(f"buffer_size ({buffer_size}) must be at least batch_size ({batch_size})")
    return ActivationStream(model, dataset, hook_name, batch_size=batch_size, model_batch_size=model_batch_size,
                            pack=pack, gap_s=gap_s, buffer_size=buffer_size, mix_fraction=mix_fraction, seed=seed,
                            repeat=repeat, language=language, dtype=dtype, keep_in_memory=keep_in_memory)


# ------------------------------------------------------------------ route 2: LanguageModelSAETrainingRunner
def pcm_dataset(examples: Sequence[Any] | Any, *, seconds: float = 30.0, pack: bool = True,
                gap_s: float = 0.2) -> Dataset:
    """A Hugging Face dataset SAELens's `ActivationsStore` reads as "pretokenized": int16 PCM in
    a `tokens` column, `seconds * 16000` samples per row.

    With `pack=True` the clips are laid end to end (with `gap_s` of silence between them) and cut
    into full rows, so every encoder position of a 30 s row is speech; the last partial row is
    dropped. With `pack=False` each clip gets its own zero-padded row, and the runner needs
    `seqpos_slice=(0, n)` to skip the padding (`n_real` says how many positions are real).
    Rows shorter than 30 s are padded by the model, so `seconds=5` with `seqpos_slice=(0, 250)`
    is a faithful, cheaper setting for quick runs."""
    from datasets import Dataset, Features, Sequence as HFSequence, Value

    row_len = int(round(seconds * SAMPLE_RATE))
    if row_len <= 0 or seconds > 30:
        raise ValueError(f"seconds must be in (0, 30] (one Whisper window at most), got {seconds}")
    clips = [np.asarray(getattr(e, "audio", e), dtype=np.float32).reshape(-1) for e in examples]
    if not clips:
        raise ValueError("no examples given")
    pcm = [np.clip(np.round(c * 32768.0), -32768, 32767).astype(np.int16) for c in clips]
    rows: list[np.ndarray] = []
    n_real: list[int] = []
    if pack:
        gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), dtype=np.int16)
        stream = np.concatenate([part for c in pcm for part in (c, gap)])
        for start in range(0, len(stream) - row_len + 1, row_len):
            rows.append(stream[start : start + row_len])
            n_real.append(int(np.ceil(row_len / SAMPLE_RATE * AUDIO_POS_PER_SECOND)))
        if not rows:
            raise ValueError(f"{len(stream) / SAMPLE_RATE:.1f} s of audio does not fill one {seconds:g} s row; "
                             "add clips, lower `seconds`, or use pack=False")
    else:
        for c in pcm:
            row = np.zeros(row_len, dtype=np.int16)
            row[: min(len(c), row_len)] = c[:row_len]
            rows.append(row)
            n_real.append(int(np.ceil(min(len(c), row_len) / SAMPLE_RATE * AUDIO_POS_PER_SECOND)))
    features = Features({"tokens": HFSequence(Value("int16"), length=row_len), "n_real": Value("int32")})
    return Dataset.from_dict({"tokens": [r.tolist() for r in rows], "n_real": n_real}, features=features)


def saelens_dataset(model: HookedWhisper, examples: Sequence[Any], *, hook_name: str, pack: bool = True,
                    gap_s: float = 0.2, batch_size: int = 8, language: str | None = None) -> Dataset:
    """A Hugging Face dataset for SAELens's runner, `ActivationsStore` and `run_evals`, with one
    integer per hooked position (see `whisper_lens.audio_refs`).

    The windows (packed with `pack=True`) are held by `model`, which resolves the rows when
    SAELens calls it. Encoder hooks: one row per window, `model.dims.n_audio_ctx` ids (set
    `context_size` to that). Decoder hooks: one row per window's transcript, as long as the
    longest (`context_size` = `len(dataset[0]["tokens"])`). Padding, packing gaps and the decoder
    prompt hold `model.tokenizer.pad_token_id`, which `exclude_special_tokens=True` drops (the
    default of `run_evals`; SAELens's runner trains on every position unless it is set).
    The examples need transcripts (`.text`): SAELens's CE-loss evals read them.
    """
    from datasets import Dataset, Features, Sequence as HFSequence, Value

    from whisper_lens.activations import batches_of
    from whisper_lens.audio_refs import decoder_rows, encoder_rows

    decoder, _ = check_hooks(model, [hook_name])
    pad = model.tokenizer.pad_token_id
    rows: list[Tensor] = []
    for group in batches_of(model, list(examples), batch_size, pack, gap_s):
        batch = model.prepare(group, pack=pack, gap_s=gap_s, language=language)
        windows = model.held_audio.add(batch)
        if decoder:
            rows += list(decoder_rows(windows, batch.tokens, batch.transcript_mask, pad))
        else:
            rows += list(encoder_rows(windows, batch.audio_mask, pad))
    if not rows:
        raise ValueError("no examples given")
    width = max(len(r) for r in rows)
    table = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        table[i, : len(r)] = r
    features = Features({"tokens": HFSequence(Value("int64"), length=width)})
    return Dataset.from_dict({"tokens": table.tolist()}, features=features)


# ------------------------------------------------------------------ route 3: cached activations
MANIFEST = "whisper_lens_manifest.json"
_TMP = ".tmp_shards"


def cache_activations(
    model: HookedWhisper,
    dataset: Sequence[Any],
    hook_names: str | Sequence[str],
    out_dir: str | os.PathLike,
    *,
    context_size: int = 1500,
    clips_per_shard: int = 64,
    batch_size: int = 8,
    pack: bool = True,
    gap_s: float = 0.2,
    dataset_name: str = "custom",
    language: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> Dataset:
    """Write real-position activations where SAELens's `use_cached_activations=True` reads them.

    Rows of `context_size` consecutive real activations (one column per hook, plus `token_ids`
    for decoder hooks) are written in shards of `clips_per_shard` clips. Each shard is written to
    a temporary name and renamed when complete, so an interrupted run leaves only whole shards;
    calling again with the same arguments skips them and continues. When every shard is done
    they are merged with SAELens's own consolidation into `out_dir`, and `MANIFEST` records the
    hooks, model, dataset and counts. Use `context_size` as the runner's `context_size`.
    """
    from datasets import Array2D, Dataset, Features, Sequence as HFSequence, Value
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    decoder, _ = check_hooks(model, names)
    items = list(dataset)
    if not items:
        raise ValueError("the dataset is empty")
    out = Path(out_dir)
    if (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} already holds a finished activation cache; choose another out_dir")
    tmp = out / _TMP
    tmp.mkdir(parents=True, exist_ok=True)
    settings = {"hook_names": names, "model_name": model.model_name, "dataset": dataset_name, "n_clips": len(items),
                "context_size": context_size, "clips_per_shard": clips_per_shard, "pack": pack, "gap_s": gap_s,
                "dtype": dtype, "batch_size": batch_size}
    progress_file = tmp / "progress.json"
    if progress_file.is_file():
        previous = json.loads(progress_file.read_text())["settings"]
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{out} holds an unfinished cache made with different {changed}; "
                             "use the same arguments to resume, or a new out_dir")
    for stale in tmp.glob("writing_*"):  # a shard interrupted mid-write
        shutil.rmtree(stale)

    d_ins: dict[str, int] = {}
    n_rows = n_acts = 0
    shards = range(0, len(items), clips_per_shard)
    bar = tqdm(total=len(items), desc="Caching activations", unit="clip", disable=not progress)
    for index, start in enumerate(shards):
        final = tmp / f"shard_{index:05d}"
        chunk = items[start : start + clips_per_shard]
        if final.is_dir():
            info = json.loads((final / "whisper_lens_shard.json").read_text())
            n_rows, n_acts, d_ins = n_rows + info["rows"], n_acts + info["rows"] * context_size, info["d_in"]
            bar.update(len(chunk))
            continue
        columns: dict[str, list[Tensor]] = {n: [] for n in names}
        tokens: list[Tensor] = []
        for part in iter_real_activations(model, chunk, names, batch_size=batch_size, pack=pack, gap_s=gap_s,
                                          language=language):
            for n in names:
                columns[n].append(part.acts[n].cpu())
            if part.token_ids is not None:
                tokens.append(part.token_ids.cpu())
            bar.update(part.n_items)
        stacked = {n: torch.cat(v) for n, v in columns.items()}
        d_ins = {n: v.shape[1] for n, v in stacked.items()}
        rows = stacked[names[0]].shape[0] // context_size
        if rows == 0:
            raise ValueError(f"shard {index} has {stacked[names[0]].shape[0]} real rows, fewer than context_size "
                             f"{context_size}; raise clips_per_shard or lower context_size")
        keep = rows * context_size
        data: dict[str, Any] = {n: v[:keep].reshape(rows, context_size, -1).to(getattr(torch, dtype)).numpy()
                                for n, v in stacked.items()}
        features: dict[str, Any] = {n: Array2D(shape=(context_size, d_ins[n]), dtype=dtype) for n in names}
        if decoder:
            data["token_ids"] = torch.cat(tokens)[:keep].reshape(rows, context_size).to(torch.int32).numpy()
            features["token_ids"] = HFSequence(Value("int32"), length=context_size)
        writing = tmp / f"writing_{index:05d}"
        Dataset.from_dict(data, features=Features(features)).save_to_disk(str(writing))
        (writing / "whisper_lens_shard.json").write_text(json.dumps({"rows": rows, "d_in": d_ins}))
        os.replace(writing, final)  # the shard exists only once it is whole
        n_rows, n_acts = n_rows + rows, n_acts + keep
        progress_file.write_text(json.dumps({"settings": settings, "shards_done": index + 1}))
    bar.close()

    for extra in (progress_file, *tmp.glob("shard_*/whisper_lens_shard.json")):
        extra.unlink()
    result = CacheActivationsRunner._consolidate_shards(tmp, out, copy_files=False)
    manifest = {**settings, "d_in": d_ins, "n_rows": n_rows, "n_activations": n_acts, "n_shards": len(shards),
                "columns": list(result.column_names), "whisper_lens": _version()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return result


def _version() -> str:
    import whisper_lens

    return whisper_lens.__version__
