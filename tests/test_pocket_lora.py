"""The night LoRA shipped for pocket (docs/pocket-lora/, made by pocket/lora.py): a small safetensors
file that diffusers' loader takes, that changes pocket's picture, and that at scale 0 changes nothing."""

from pathlib import Path

import numpy as np
import pytest

from panosync.bundled import bundled_model_folder
from panosync.pipeline import SyncDiffusionPipeline

LORA = Path(__file__).resolve().parents[1] / "docs" / "pocket-lora" / "pocket-night-lora"
WEIGHTS = LORA / "pytorch_lora_weights.safetensors"

pytestmark = pytest.mark.skipif(bundled_model_folder("pocket") is None or not WEIGHTS.is_file(),
                                reason="the pocket model or its LoRA is not in this checkout")


def test_the_lora_is_a_small_safetensors_file_of_unet_attention_layers():
    from safetensors import safe_open

    assert WEIGHTS.stat().st_size < 2**20
    with safe_open(WEIGHTS, framework="pt") as file:
        keys = list(file.keys())
    assert keys and all(key.startswith("unet.") and "lora" in key for key in keys)
    assert {key.split(".lora")[0].rsplit(".", 1)[-1] for key in keys} >= {"to_q", "to_k", "to_v"}


@pytest.mark.slow
def test_the_lora_loads_on_pocket_changes_the_picture_and_does_nothing_at_scale_0():
    pipe = SyncDiffusionPipeline.from_pretrained("pocket")
    pipe.set_progress_bar_config(disable=True)
    options = dict(width=128, height=64, seed=3, num_inference_steps=6, guidance_scale=5.0, sync_weight=14.0,
                   stride=12, output_type="np")
    plain = pipe("snowy mountains", **options).images[0]
    pipe.load_lora_weights(LORA, adapter_name="night")
    assert pipe.get_list_adapters() == {"unet": ["night"]}
    off = pipe("snowy mountains", cross_attention_kwargs={"scale": 0.0}, **options).images[0]
    on = pipe("snowy mountains", cross_attention_kwargs={"scale": 1.0}, **options).images[0]
    np.testing.assert_array_equal(off, plain)
    assert np.abs(on - plain).mean() > 0.02
    # a night LoRA darkens the sky (the top rows), where the classifier reads the time of day
    assert on[:8].mean() < plain[:8].mean()
