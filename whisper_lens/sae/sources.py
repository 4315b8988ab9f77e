"""Activation sources for SAELens: the three ways Whisper activations reach an SAE.

    activation_provider(model, dataset, hook)   SAETrainer's data provider (real rows, mixed)
    pcm_dataset(examples)                        a `tokens` dataset for LanguageModelSAETrainingRunner
    cache_activations(model, dataset, hooks, out_dir)   the layout `use_cached_activations=True` reads

All three read only real positions (see `whisper_lens.activations`) except `pcm_dataset` with
`pack=False`, whose rows are padded and need a `seqpos_slice`.
"""

from __future__ import annotations

import itertools
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
from torch import Tensor
from tqdm.auto import tqdm

from whisper_lens.activations import batches_of, check_hooks, iter_real_activations
from whisper_lens.audio import AUDIO_POS_PER_SECOND, SAMPLE_RATE

if TYPE_CHECKING:
    from datasets import Dataset

    from whisper_lens.model import HookedWhisper


# ------------------------------------------------------------------ route 1: SAETrainer provider
class ActivationStream(Iterator[Tensor]):
    """Endless [batch_size d_in] batches of real-position activations, shuffled as SAELens's
    `mixing_buffer` shuffles them.

    Its whole state (epoch, model batches read, the shuffle buffer and its random generator) is
    saved with training checkpoints, so a resumed run gets exactly the batches an uninterrupted
    run would have had: clips are read in model batches fixed per epoch (`seed + epoch` sets the
    order), and `Mixer` is SAELens's algorithm with a saveable buffer."""

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
        self.seed, self.repeat, self.keep_in_memory = seed, repeat, keep_in_memory
        self.mixer = Mixer(buffer_size, batch_size, mix_fraction, seed)
        self._memory: list[Tensor] = []  # epoch 0's rows, one entry per model batch (keep_in_memory)
        self._memory_complete = False
        self.epoch, self.group = 0, 0  # model batches read in the current epoch
        self.n_rows_read = 0  # real rows that came out of the model
        self.model_seconds = 0.0  # time spent in the model, for throughput reports
        self._groups: tuple[int, list[list[Any]]] | None = None
        self._exhausted = False
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        """Width of one row (head hooks are flattened), read from one short forward pass."""
        if self._d_in is None:
            rows = next(iter_real_activations(self.model, self.dataset[:1], [self.hook_name], batch_size=1,
                                              pack=False, language=self.language))
            self._d_in = rows.acts[self.hook_name].shape[1]
        return self._d_in

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "group": self.group, "seed": self.seed, "mixer": self.mixer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"checkpoint was made with data seed {state['seed']}, this run uses {self.seed}")
        self.epoch = state["epoch"]
        if "group" in state:
            self.group = state["group"]
        else:  # a position in clips: the model batches wholly inside it
            self.group = sum(1 for _ in itertools.takewhile(
                lambda end: end <= state["position"], itertools.accumulate(len(g) for g in self._epoch_groups(self.epoch))))
        if "mixer" in state:
            self.mixer.load_state_dict(state["mixer"])
        self._memory, self._memory_complete, self._exhausted = [], False, False

    # ------------------------------------------------------------------ rows
    def _groups_of(self, epoch: int) -> list[list[Any]]:
        """The epoch's clips, in its shuffled order (`seed + epoch`), grouped into model batches."""
        order = list(range(len(self.dataset)))
        random.Random(self.seed + epoch).shuffle(order)
        return list(batches_of(self.model, [self.dataset[i] for i in order], self.model_batch_size, self.pack,
                               self.gap_s))

    def _epoch_groups(self, epoch: int) -> list[list[Any]]:
        if self._groups is None or self._groups[0] != epoch:
            self._groups = (epoch, self._groups_of(epoch))
        return self._groups[1]

    def _model_rows(self, group: list[Any]) -> Tensor:
        start = time.perf_counter()
        parts = [out.acts[self.hook_name] for out in iter_real_activations(
            self.model, group, [self.hook_name], batch_size=self.model_batch_size, pack=self.pack, gap_s=self.gap_s,
            language=self.language)]
        self.model_seconds += time.perf_counter() - start
        rows = torch.cat(parts).to(self.dtype)
        self.n_rows_read += len(rows)
        return rows

    def _next_rows(self) -> Tensor:
        """The next model batch's rows; StopIteration at the end of the data when not repeating."""
        replaying = self.keep_in_memory and self.epoch >= 1
        n_groups = len(self._memory_groups()) if replaying else len(self._epoch_groups(self.epoch))
        if self.group >= n_groups:
            if not self.repeat:
                raise StopIteration
            self.epoch, self.group = self.epoch + 1, 0
            return self._next_rows()
        if replaying:
            order = torch.randperm(n_groups, generator=torch.Generator().manual_seed(self.seed + self.epoch))
            rows = self._memory_groups()[int(order[self.group])]
        else:
            if self.keep_in_memory:
                self._memory_groups(upto=self.group)  # a resumed run rebuilds what it held
            rows = self._model_rows(self._epoch_groups(self.epoch)[self.group])
            if self.keep_in_memory:
                self._memory.append(rows)
        self.group += 1
        return rows

    def _memory_groups(self, upto: int | None = None) -> list[Tensor]:
        """Epoch 0's rows per model batch (the first `upto`, else all), read again if lost."""
        if not self._memory_complete:
            groups = self._epoch_groups(0) if self._groups is None or self._groups[0] == 0 else self._groups_of(0)
            wanted = len(groups) if upto is None else upto
            while len(self._memory) < wanted:
                self._memory.append(self._model_rows(groups[len(self._memory)]))
            if upto is None:
                if not any(len(rows) for rows in self._memory):
                    raise ValueError(f"no real positions at {self.hook_name} in the dataset (silent or empty clips?)")
                self._memory_complete = True
        return self._memory

    def __next__(self) -> Tensor:
        empty = 0
        while not self.mixer.ready():
            if self._exhausted:
                if not self.mixer.drain():
                    raise StopIteration
                break
            try:
                rows = self._next_rows()
            except StopIteration:
                self._exhausted = True
                continue
            empty = empty + 1 if len(rows) == 0 else 0
            if empty > len(self.dataset):
                raise ValueError(f"no real positions at {self.hook_name} in the dataset (silent or empty clips?)")
            self.mixer.add(rows)
        return self.mixer.take()


class Mixer:
    """SAELens's `mixing_buffer`, step for step, with its state exposed: rows gather in storage
    until it holds `buffer_size`; then it is shuffled, a `mix_fraction` of it is kept to mix with
    the next rows, and the rest is served in whole batches. SAELens's is a generator on the
    global random state, which a checkpoint cannot hold; this one has its own generator."""

    def __init__(self, buffer_size: int, batch_size: int, mix_fraction: float, seed: int):
        if buffer_size < batch_size:
            raise ValueError("Buffer size must be greater than or equal to batch size")
        if not 0 <= mix_fraction <= 1:
            raise ValueError("mix_fraction must be in [0, 1]")
        self.buffer_size, self.batch_size, self.mix_fraction = buffer_size, batch_size, mix_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.storage: Tensor | None = None
        self.serving: Tensor | None = None
        self.served = 0  # batches of `serving` already taken

    def add(self, rows: Tensor) -> None:
        self.storage = rows if self.storage is None else torch.cat([self.storage, rows])
        if self.storage.shape[0] < self.buffer_size:
            return
        if self.mix_fraction > 0:
            self.storage = self.storage[torch.randperm(self.storage.shape[0], generator=self.generator)]
        keep = int(self.buffer_size * self.mix_fraction)
        cutoff = max(1, (self.storage.shape[0] - keep) // self.batch_size) * self.batch_size
        self.serving, self.storage, self.served = self.storage[:cutoff], self.storage[cutoff:], 0

    def ready(self) -> bool:
        return self.serving is not None and self.served * self.batch_size < self.serving.shape[0]

    def take(self) -> Tensor:
        assert self.serving is not None
        batch = self.serving[self.served * self.batch_size : (self.served + 1) * self.batch_size]
        self.served += 1
        return batch

    def drain(self) -> bool:
        """At the end of the data, serve the whole batches left in storage (as SAELens does)."""
        if self.storage is None or self.storage.shape[0] < self.batch_size:
            return False
        cutoff = self.storage.shape[0] // self.batch_size * self.batch_size
        self.serving, self.storage, self.served = self.storage[:cutoff], None, 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "serving": self.serving, "served": self.served,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.storage, self.serving, self.served = state["storage"], state["serving"], state["served"]
        self.generator.set_state(state["generator"])


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
        buffer_size: rows held for shuffling (default 16 batches); SAELens's `mixing_buffer` algorithm.
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
    for decoder hooks) are written in shards of `clips_per_shard` clips; activations short of a
    full row at the end of a shard start the next shard's first row, so nothing is dropped but
    the last partial row (counted in the manifest as `n_activations_dropped`).

    Every step can be killed and rerun with the same arguments to the same result: a shard is
    written under a temporary name and renamed when whole; the merge into `out_dir` (SAELens's own
    consolidation, over hard links to the shards) is redone from the intact shards until the
    manifest `MANIFEST` is written, which is the commit point. Use `context_size` as the runner's
    `context_size`.
    """
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    decoder, _ = check_hooks(model, names)
    items = list(dataset)
    if not items:
        raise ValueError("the dataset is empty")
    out = Path(out_dir)
    tmp = out / _TMP
    settings = {"hook_names": names, "model_name": model.model_name, "dataset": dataset_name, "n_clips": len(items),
                "context_size": context_size, "clips_per_shard": clips_per_shard, "pack": pack, "gap_s": gap_s,
                "dtype": dtype, "batch_size": batch_size}
    finished = _finished_cache(out, settings)
    if finished is not None:
        return finished
    tmp.mkdir(parents=True, exist_ok=True)
    _check_progress(tmp / "progress.json", settings, out)
    for stale in tmp.glob("writing_*"):  # a shard interrupted mid-write
        shutil.rmtree(stale)

    totals = {"rows": 0, "activations": 0}
    carry: dict[str, Tensor] = {}
    d_ins: dict[str, int] = {}
    shards = range(0, len(items), clips_per_shard)
    bar = tqdm(total=len(items), desc="Caching activations", unit="clip", disable=not progress)
    for index, start in enumerate(shards):
        chunk = items[start : start + clips_per_shard]
        final = tmp / f"shard_{index:05d}"
        if not final.is_dir():
            stacked = _shard_activations(model, chunk, names, decoder, batch_size, pack, gap_s, language, carry, bar)
            _write_shard(tmp, index, stacked, names, decoder, context_size, dtype)
        else:
            bar.update(len(chunk))
        info = json.loads((final / _SHARD_INFO).read_text())
        carry = _load_remainder(final)
        d_ins = info["d_in"]
        totals["rows"] += info["rows"]
        totals["activations"] += info["rows"] * context_size
        (tmp / "progress.json").write_text(json.dumps({"settings": settings, "shards_done": index + 1}))
    bar.close()
    if totals["rows"] == 0:
        raise ValueError(f"{sum(len(v) for v in carry.values()) // max(len(carry), 1)} real activations, fewer than "
                         f"context_size {context_size}; lower context_size or add clips")
    dropped = len(next(iter(carry.values()))) if carry else 0
    manifest = {**settings, "d_in": d_ins, "n_rows": totals["rows"], "n_activations": totals["activations"],
                "n_activations_dropped": dropped, "n_shards": len(shards), "whisper_lens": _version()}
    return _consolidate(out, tmp, manifest)


_SHARD_INFO = "whisper_lens_shard.json"
_REMAINDER = "whisper_lens_remainder.safetensors"


def _finished_cache(out: Path, settings: dict[str, Any]) -> Dataset | None:
    """The finished cache in `out` (cleaning up what a kill after the manifest left), or None."""
    from datasets import Dataset

    if not (out / MANIFEST).is_file():
        return None
    manifest = json.loads((out / MANIFEST).read_text())
    if {k: manifest.get(k) for k in settings} != settings:
        raise FileExistsError(f"{out} already holds a finished activation cache made with other arguments; "
                              "choose another out_dir")
    shutil.rmtree(out / _TMP, ignore_errors=True)
    return Dataset.load_from_disk(str(out))


def _check_progress(progress_file: Path, settings: dict[str, Any], out: Path) -> None:
    if progress_file.is_file():
        previous = json.loads(progress_file.read_text())["settings"]
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(f"{out} holds an unfinished cache made with different {changed}; "
                             "use the same arguments to resume, or a new out_dir")


def _shard_activations(model: HookedWhisper, chunk: list[Any], names: list[str], decoder: bool, batch_size: int,
                       pack: bool, gap_s: float, language: str | None, carry: dict[str, Tensor],
                       bar: Any) -> dict[str, Tensor]:
    """This shard's activations (per hook, and `token_ids` for decoder hooks), after the carried ones."""
    columns: dict[str, list[Tensor]] = {n: [carry[n]] if n in carry else [] for n in [*names, "token_ids"]}
    for part in iter_real_activations(model, chunk, names, batch_size=batch_size, pack=pack, gap_s=gap_s,
                                      language=language):
        for n in names:
            columns[n].append(part.acts[n].cpu())
        if part.token_ids is not None:
            columns["token_ids"].append(part.token_ids.cpu())
        bar.update(part.n_items)
    if not decoder:
        columns.pop("token_ids")
    return {n: torch.cat(v) for n, v in columns.items()}


def _write_shard(tmp: Path, index: int, stacked: dict[str, Tensor], names: list[str], decoder: bool,
                 context_size: int, dtype: str) -> None:
    """Full rows as a dataset, the remainder beside it; renamed into place only once whole."""
    from datasets import Array2D, Dataset, Features, Sequence as HFSequence, Value
    from safetensors.torch import save_file

    rows = stacked[names[0]].shape[0] // context_size
    keep = rows * context_size
    d_ins = {n: stacked[n].shape[1] for n in names}
    data: dict[str, Any] = {n: stacked[n][:keep].reshape(rows, context_size, -1).to(getattr(torch, dtype)).numpy()
                            for n in names}
    features: dict[str, Any] = {n: Array2D(shape=(context_size, d_ins[n]), dtype=dtype) for n in names}
    if decoder:
        data["token_ids"] = stacked["token_ids"][:keep].reshape(rows, context_size).to(torch.int32).numpy()
        features["token_ids"] = HFSequence(Value("int32"), length=context_size)
    writing = tmp / f"writing_{index:05d}"
    Dataset.from_dict(data, features=Features(features)).save_to_disk(str(writing))
    save_file({n: v[keep:].contiguous() for n, v in stacked.items()}, str(writing / _REMAINDER))
    (writing / _SHARD_INFO).write_text(json.dumps({"rows": rows, "d_in": d_ins}))
    os.replace(writing, tmp / f"shard_{index:05d}")  # the shard exists only once it is whole


def _load_remainder(shard: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(shard / _REMAINDER))


def _consolidate(out: Path, tmp: Path, manifest: dict[str, Any]) -> Dataset:
    """Merge the shards into `out` with SAELens's consolidation, redoably: it moves hard links
    (or copies) of the shards' files, so the shards stay whole until the manifest is written."""
    from datasets import Dataset

    from whisper_lens.sae._saelens_private import consolidate_shards

    for leftover in out.iterdir():  # what an interrupted merge left in out
        if leftover.name != _TMP:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    linked = tmp / "linked"
    shutil.rmtree(linked, ignore_errors=True)
    shards = sorted(p for p in tmp.iterdir() if p.name.startswith("shard_"))
    for shard in shards:
        state = json.loads((shard / "state.json").read_text())
        files = ["dataset_info.json", "state.json", *(f["filename"] for f in state["_data_files"])]
        (linked / shard.name).mkdir(parents=True)
        for name in files:
            _link_or_copy(shard / name, linked / shard.name / name)
    consolidate_shards(linked, out)
    manifest["columns"] = list(Dataset.load_from_disk(str(out)).column_names)
    staged = out / (MANIFEST + ".writing")
    staged.write_text(json.dumps(manifest, indent=2))
    os.replace(staged, out / MANIFEST)  # the commit point
    shutil.rmtree(tmp, ignore_errors=True)
    return Dataset.load_from_disk(str(out))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _version() -> str:
    import whisper_lens

    return whisper_lens.__version__
