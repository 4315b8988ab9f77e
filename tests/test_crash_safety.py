"""Long jobs lose nothing when killed: `cache_activations` is SIGKILLed at each phase in a
subprocess, rerun, and must give what an uninterrupted run gives."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from tests.test_sae import HOOK, clips
from whisper_lens.sae import cache_activations

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(context_size=8, clips_per_shard=7, batch_size=2, progress=False)

# The subprocess runs the same job with one library function wrapped to SIGKILL the process at
# its n-th call with a matching argument, before or after the call: the kill lands at that point.
KILLER = """
import os, signal

def killing(original, matches, when, nth):
    # `original`, made to SIGKILL the process at its nth call with an argument that `matches`
    seen = [0]

    def wrapper(*args, **kwargs):
        hit = any(matches(str(a)) for a in args)
        seen[0] += hit
        if hit and seen[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if hit and seen[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return wrapper
"""

SCRIPT = KILLER + """
import json, shutil, sys
sys.path.insert(0, {root!r})
import safetensors.torch
from tests.conftest import DIMS, random_openai
from tests.test_sae import HOOK, clips
from whisper_lens import HookedWhisper
from whisper_lens.sae import cache_activations

module_name, name, when, ending, nth = json.loads(sys.argv[2])
module = {{"os": os, "shutil": shutil, "safetensors": safetensors.torch}}[module_name]
setattr(module, name, killing(getattr(module, name), lambda a: a.endswith(ending), when, nth))
model = HookedWhisper.from_state_dict(DIMS["tiny_en"], random_openai(DIMS["tiny_en"]).state_dict())
cache_activations(model, clips(24), HOOK, sys.argv[1], **json.loads(sys.argv[3]))
print("finished without being killed")
"""

PHASES = {
    "writing a shard": ("safetensors", "save_file", "before", "whisper_lens_remainder.safetensors", 2),
    "between shards": ("os", "replace", "after", "shard_00001", 1),
    "during the merge": ("shutil", "move", "after", ".arrow", 2),
    "before the manifest": ("os", "replace", "before", "whisper_lens_manifest.json", 1),
    "cleaning up": ("shutil", "rmtree", "before", ".tmp_shards", 1),
}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return cache_activations(tiny_model, clips(24), HOOK, out, **ARGS), json.loads(
        (out / "whisper_lens_manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_cache_activations_killed_at_any_phase_resumes_to_the_same_result(phase, tiny_model, uninterrupted, tmp_path):
    out = tmp_path / "acts"
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT)), str(out),
                           json.dumps(PHASES[phase]), json.dumps(ARGS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    resumed = cache_activations(tiny_model, clips(24), HOOK, out, **ARGS)
    reference, manifest = uninterrupted
    assert json.loads((out / "whisper_lens_manifest.json").read_text()) == manifest
    assert not (out / ".tmp_shards").exists()
    reference.set_format("torch")
    resumed.set_format("torch")
    assert len(resumed) == len(reference)
    assert torch.equal(resumed[:][HOOK], reference[:][HOOK])
    assert isinstance(Dataset.load_from_disk(str(out)), Dataset)


def test_no_activation_is_dropped_between_shards(tiny_model, uninterrupted):
    """Regression: each shard's remainder (short of a full row) used to be dropped."""
    reference, manifest = uninterrupted
    direct = sum(len(rows) for rows in tiny_model.iter_activations(clips(24), HOOK, batch_size=2))
    assert manifest["n_activations"] + manifest["n_activations_dropped"] == direct
    assert manifest["n_activations_dropped"] < ARGS["context_size"]
    assert manifest["n_rows"] == len(reference) == direct // ARGS["context_size"]


# ---------------------------------------------------------------------- training
TRAIN_SCRIPT = KILLER + """
import json, sys
sys.path.insert(0, {root!r})
import safetensors.torch
target, name, when, contains, nth = json.loads(sys.argv[2])
if target == "safetensors":  # patched before SAELens binds it
    safetensors.torch.save_file = killing(safetensors.torch.save_file, lambda a: contains in a, when, nth)
from pathlib import Path
from sae_lens.training.sae_trainer import SAETrainer
from tests.conftest import DIMS, random_openai
from tests.test_sae import clips, small_config
from whisper_lens import HookedWhisper
from whisper_lens.sae import train_sae
if target == "os":
    setattr(os, name, killing(getattr(os, name), lambda a: contains in a, when, nth))
if target == "trainer":
    SAETrainer._train_step = killing(SAETrainer._train_step, lambda a: contains in a, when, nth)
model = HookedWhisper.from_state_dict(DIMS["tiny_en"], random_openai(DIMS["tiny_en"]).state_dict())
train_sae(small_config(Path(sys.argv[1])), model=model, clips=clips(12))
print("finished without being killed")
"""

TRAIN_PHASES = {
    "during a step": ("trainer", "_train_step", "before", "", 6),
    "writing a checkpoint's weights": ("safetensors", "save_file", "before", "checkpoints/288", 1),  # the second
    "before a checkpoint is marked complete": ("os", "replace", "before", "whisper_lens_state.json", 2),
    "writing the final SAE": ("safetensors", "save_file", "before", "/sae/", 1),
}


@pytest.fixture(scope="module")
def trained_uninterrupted(tiny_model, tmp_path_factory):
    from tests.test_sae import small_config
    from whisper_lens.sae import train_sae

    out = tmp_path_factory.mktemp("train_reference")
    return train_sae(small_config(out), model=tiny_model, clips=clips(12)).sae


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(TRAIN_PHASES))
def test_training_killed_at_any_phase_resumes_to_the_same_sae(phase, tiny_model, trained_uninterrupted, tmp_path):
    from tests.test_sae import small_config
    from whisper_lens.sae import train_sae

    done = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT.format(root=str(ROOT)), str(tmp_path),
                           json.dumps(TRAIN_PHASES[phase])], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    result = train_sae(small_config(tmp_path), model=tiny_model, clips=clips(12))
    assert result.resumed_from is not None  # it continued from the last complete checkpoint
    resumed, reference = result.sae, trained_uninterrupted.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, reference[name]), name
