"""diffusers' loaders on panosync's pipelines: LoRAs on every family (UNet and text encoders for SD
and SDXL, transformer and text encoders for SD3 and FLUX), their scale in every network call of a
synced step, fused LoRAs, LoRAs on ControlSync, textual inversion, and the CPU offload hooks
through a synced step. Tiny random-weight models (tiny.py) and random LoRAs (lora_files.py)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline
from safetensors.torch import save_file

from panosync.control import ControlSyncPipeline, random_controlnet_like
from panosync.tiny import tiny_random_components

from ip_adapter_files import save_random_flux_ip_adapter, save_random_ip_adapter, save_random_sd3_ip_adapter
from lora_files import save_random_lora
from test_call import KINDS

FAMILIES = ("sd", "sdxl", "sd3", "flux")
WINDOW = 32  # pixels: 16 latents at VAE factor 2, every tiny model's
STEPS = 3
ROUNDING = 1e-5


def is_unet(name: str) -> bool:
    return name in ("sd", "sdxl")


def attention_kwargs(name: str, scale: float) -> dict:
    """diffusers' name for the LoRA scale's argument in this family's call."""
    return {"cross_attention_kwargs" if is_unet(name) else "joint_attention_kwargs": {"scale": scale}}


def pipelines(name: str):
    """Ours and the family's diffusers pipeline, each on its own copy of the same random weights (a
    LoRA loaded into one must not reach the other)."""
    ours, theirs, components = KINDS[name]
    mine = ours(**components())
    required, _ = theirs._get_signature_keys(theirs)
    built = components()
    options = dict(requires_safety_checker=False) if name == "sd" else {}
    their = theirs(**{key: built.get(key) for key in required}, **options)
    for pipe in (mine, their):
        pipe.set_progress_bar_config(disable=True)
    return mine, their


def one_window(name: str, ours: bool = True) -> dict:
    """A canvas of one window (a transformer's window is a parameter of ours, not of diffusers')."""
    transformer = {} if is_unet(name) else dict(max_sequence_length=32, **(dict(window=WINDOW) if ours else {}))
    return dict(width=WINDOW, height=WINDOW, num_inference_steps=STEPS, **transformer)


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 4, WINDOW // 2, WINDOW // 2), generator=torch.Generator().manual_seed(seed))


def their_latents(name: str, latents: torch.Tensor) -> torch.Tensor:
    from panosync.backbones.flux import pack

    return pack(latents) if name == "flux" else latents  # FluxPipeline takes packed latents


def synced_canvas(name: str) -> dict:
    """Three views half a window apart, synced at every step."""
    transformer = {} if is_unet(name) else dict(window=WINDOW, max_sequence_length=32)
    return dict(width=2 * WINDOW, height=WINDOW, stride=WINDOW // 4, num_inference_steps=2, sync_weight=20.0, seed=0,
                output_type="np", **transformer)


@pytest.fixture(scope="module")
def lora_folders(tmp_path_factory):
    """Two random LoRAs per family, in folders as diffusers' save_lora_weights writes them."""
    folders = {}
    for name in FAMILIES:
        components = KINDS[name][2]()
        for seed in (1, 2):
            folder = tmp_path_factory.mktemp(f"lora-{name}-{seed}")
            save_random_lora(name, components, folder, seed=seed)
            folders[name, seed] = folder
    return folders


# --- one window, sync off: the family's own diffusers pipeline with the same LoRA -------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_one_window_with_a_lora_is_the_familys_diffusers_image(name, lora_folders):
    """At scale 0.5, so that the scale must reach the text encoders and the denoiser as diffusers
    sends it (at 1 a scale that reached nothing would pass)."""
    mine, their = pipelines(name)
    latents = noise(seed=1)
    without = mine("a land", latents=latents, output_type="np", **one_window(name), **attention_kwargs(name, 0.5)).images
    for pipe in (mine, their):
        pipe.load_lora_weights(str(lora_folders[name, 1]), adapter_name="style")
    for output_type in ("latent", "np"):
        image = mine("a land", latents=latents, output_type=output_type, **one_window(name),
                     **attention_kwargs(name, 0.5)).images
        theirs = their("a land", latents=their_latents(name, latents), output_type=output_type,
                       **one_window(name, ours=False),
                       **attention_kwargs(name, 0.5)).images
        image, theirs = torch.as_tensor(np.asarray(image)).float(), torch.as_tensor(np.asarray(theirs)).float()
        if output_type == "latent":
            image = their_latents(name, image)
        difference = (image - theirs).abs().max().item()
        print(f"{name} {output_type}: max abs difference {difference:.3g}")
        assert difference <= ROUNDING, (output_type, difference)
    assert np.abs(np.asarray(image) - without).max() > 1e-2  # the LoRA changes the picture


@pytest.mark.parametrize("name, checkpointing", [("sd", False), ("sd3", False), ("sd", True)],
                         ids=["sd", "sd3", "sd-checkpointed"])
def test_the_lora_scale_reaches_every_network_call_of_a_synced_step(name, checkpointing, lora_folders):
    """A call's scale 0.5 on an adapter of weight 1 is that adapter at weight 0.5 with no scale, in a
    synced panorama too: the gradient pass sees the network the denoising pass sees, and so does a
    gradient-checkpointed backward, which recomputes the forward after it has returned."""
    mine, _ = pipelines(name)
    if checkpointing:
        mine.enable_sync_checkpointing()
    mine.load_lora_weights(str(lora_folders[name, 1]), adapter_name="style")
    scaled = mine("a land", **synced_canvas(name), **attention_kwargs(name, 0.5)).images
    mine.set_adapters(["style"], adapter_weights=[0.5])
    weighted = mine("a land", **synced_canvas(name)).images
    full = mine("a land", **synced_canvas(name), **attention_kwargs(name, 2.0)).images  # 0.5 × 2: weight 1
    difference = np.abs(scaled - weighted).max()
    print(f"{name}: scale 0.5 against weight 0.5: {difference:.3g}; against weight 1: {np.abs(scaled - full).max():.3g}")
    assert difference <= ROUNDING
    assert np.abs(scaled - full).max() > 1e-2


def test_a_call_at_scale_zero_leaves_the_adapters_weights_as_they_were(lora_folders):
    """diffusers' own unscale after a scale of 0 resets every adapter to weight 1; here the weights
    set_adapters gave are the same after such a call."""
    mine, _ = pipelines("sd")
    mine.load_lora_weights(str(lora_folders["sd", 1]), adapter_name="style")
    mine.set_adapters(["style"], adapter_weights=[0.5])
    before = mine("a land", **synced_canvas("sd")).images
    zero = mine("a land", **synced_canvas("sd"), cross_attention_kwargs={"scale": 0.0}).images
    after = mine("a land", **synced_canvas("sd")).images
    assert np.abs(after - before).max() == 0
    assert np.abs(zero - before).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_two_loras_at_different_scales_make_a_synced_panorama_and_fused_is_unfused(name, lora_folders):
    mine, _ = pipelines(name)
    mine.load_lora_weights(str(lora_folders[name, 1]), adapter_name="style")
    mine.load_lora_weights(str(lora_folders[name, 2]), adapter_name="subject")
    mine.set_adapters(["style", "subject"], adapter_weights=[0.8, 0.5])
    both = mine("a land", **synced_canvas(name)).images
    mine.set_adapters(["style"], adapter_weights=[0.8])
    one = mine("a land", **synced_canvas(name)).images
    assert np.isfinite(both).all() and np.abs(both - one).max() > 1e-2  # the second LoRA counts

    mine.set_adapters(["style", "subject"], adapter_weights=[0.8, 0.5])
    mine.fuse_lora(adapter_names=["style", "subject"])
    fused = mine("a land", **synced_canvas(name)).images
    difference = np.abs(fused - both).max()
    print(f"{name}: fused against unfused: {difference:.3g}")
    assert difference <= 1e-4  # the same network, its products summed in another order


# --- ControlSync -------------------------------------------------------------------------------------


def test_one_window_controlsync_with_a_lora_is_diffusers_controlnet_pipelines_image(lora_folders):
    made = [tiny_random_components(window=16, vae_factor=2) for _ in range(2)]
    nets = [random_controlnet_like(components["unet"], 2, seed=1) for components in made]
    mine = ControlSyncPipeline(**made[0], controlnet=nets[0])
    their = StableDiffusionControlNetPipeline(**made[1], controlnet=nets[1], safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
    for pipe in (mine, their):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(lora_folders["sd", 1]), adapter_name="style")
    condition = torch.rand((1, 3, WINDOW, WINDOW), generator=torch.Generator().manual_seed(3))
    call = dict(image=condition, latents=noise(seed=2), output_type="np", cross_attention_kwargs={"scale": 0.7},
                **one_window("sd"))
    difference = np.abs(mine("a land", **call).images - their("a land", **call).images).max()
    print(f"ControlSync with a LoRA: max abs difference {difference:.3g}")
    assert difference <= ROUNDING


# --- textual inversion --------------------------------------------------------------------------------


def test_textual_inversion_is_diffusers_on_stable_diffusion(tmp_path):
    """A two-vector embedding in A1111's safetensors form ("emb_params"), loaded by diffusers'
    TextualInversionLoaderMixin; its token in the prompt changes the picture as in diffusers."""
    mine, their = pipelines("sd")
    width = mine.text_encoder.config.hidden_size
    embedding = tmp_path / "toy.safetensors"
    save_file({"emb_params": torch.randn((2, width), generator=torch.Generator().manual_seed(5))}, str(embedding))
    latents = noise(seed=3)
    before = mine("a <toy> land", latents=latents, output_type="np", **one_window("sd")).images
    for pipe in (mine, their):
        pipe.load_textual_inversion(str(embedding), token="<toy>")
    image = mine("a <toy> land", latents=latents, output_type="np", **one_window("sd")).images
    theirs = their("a <toy> land", latents=latents, output_type="np", **one_window("sd")).images
    assert np.abs(image - theirs).max() <= ROUNDING
    assert np.abs(image - before).max() > 1e-2


# --- offload -----------------------------------------------------------------------------------------


def test_model_cpu_offload_hooks_carry_a_synced_panorama():
    """enable_model_cpu_offload's hooks (accelerate) around every model, here offloading to the CPU it
    computes on: the synced panorama, gradient pass included, is the one without hooks. (The GPU
    check runs both offloads on a GPU: benchmarks/gpu_check.py, part "offload".)"""
    mine, _ = pipelines("sd")
    plain = mine("a land", **synced_canvas("sd")).images
    mine.enable_model_cpu_offload(device="cpu")
    offloaded = mine("a land", **synced_canvas("sd")).images
    assert np.abs(offloaded - plain).max() == 0


# --- IP-Adapter ---------------------------------------------------------------------------------------


def random_image(seed: int = 0):
    import PIL.Image

    return PIL.Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("name", ("sd", "sdxl"))
def test_one_window_with_an_image_prompt_is_diffusers_image(name, tmp_path):
    """A tiny random IP-Adapter and image encoder (ip_adapter_files.py), loaded by diffusers'
    load_ip_adapter; the image prompt changes the picture as in diffusers, and a synced panorama of
    two images per prompt takes it in every view."""
    mine, their = pipelines(name)
    save_random_ip_adapter(mine.unet, tmp_path, seed=1)
    for pipe in (mine, their):
        pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip-adapter.safetensors",
                             image_encoder_folder="image_encoder")
    image, latents = random_image(), noise(seed=1)
    ours = mine("a land", latents=latents, output_type="np", ip_adapter_image=image, **one_window(name)).images
    theirs = their("a land", latents=latents, output_type="np", ip_adapter_image=image, **one_window(name)).images
    assert np.abs(ours - theirs).max() <= ROUNDING
    mine.set_ip_adapter_scale(0.0)
    unprompted = mine("a land", latents=latents, output_type="np", ip_adapter_image=image, **one_window(name)).images
    assert np.abs(ours - unprompted).max() > 1e-2  # the image prompt counts

    mine.set_ip_adapter_scale(1.0)
    synced = mine("a land", ip_adapter_image=image, num_images_per_prompt=2, **synced_canvas(name)).images
    alone = mine("a land", ip_adapter_image=image, **synced_canvas(name)).images
    assert synced.shape[0] == 2 and np.abs(synced[0] - alone[0]).max() <= 1e-4  # batched as it is alone


@pytest.mark.parametrize("true_cfg", [False, True], ids=["flux", "flux-true-cfg"])
def test_one_window_flux_with_an_image_prompt_is_diffusers_image(true_cfg, tmp_path):
    """FLUX.1's IP-Adapter (a tiny random one, keyed as diffusers' FluxIPAdapterMixin reads it): the
    image prompt in the transformer's attention of each view, and with true CFG a blank image's in
    the negative branch, as FluxPipeline does."""
    mine, their = pipelines("flux")
    save_random_flux_ip_adapter(mine.transformer, tmp_path, seed=1)
    for pipe in (mine, their):
        pipe.load_ip_adapter(str(tmp_path), weight_name="ip-adapter.safetensors",
                             image_encoder_pretrained_model_name_or_path=str(tmp_path / "image_encoder"),
                             image_encoder_dtype=torch.float32)
    options = dict(true_cfg_scale=3.0, negative_prompt="dull") if true_cfg else {}
    image, latents = random_image(), noise(seed=1)
    ours = mine("a land", latents=latents, output_type="np", ip_adapter_image=image, **one_window("flux"),
                **options).images
    theirs = their("a land", latents=their_latents("flux", latents), output_type="np", ip_adapter_image=image,
                   **one_window("flux", ours=False), **options).images
    assert np.abs(ours - theirs).max() <= ROUNDING
    mine.set_ip_adapter_scale(0.0)
    unprompted = mine("a land", latents=latents, output_type="np", ip_adapter_image=image, **one_window("flux"),
                      **options).images
    assert np.abs(ours - unprompted).max() > 1e-2
    mine.set_ip_adapter_scale(1.0)
    synced = mine("a land", ip_adapter_image=image, num_images_per_prompt=2, **synced_canvas("flux"), **options).images
    assert synced.shape[0] == 2 and np.isfinite(synced).all()


@pytest.mark.parametrize("guidance", [7.0, 1.0], ids=["sd3-cfg", "sd3-no-cfg"])
def test_one_window_sd3_with_an_image_prompt_is_diffusers_image(guidance, tmp_path):
    """SD3's IP-Adapter (a tiny random one with a SigLIP encoder, keyed as the original SD3.5
    IP-Adapter): the image prompt in every transformer call, zeros in the negative branch, as
    StableDiffusion3Pipeline does; none of it at guidance 1, where no negative branch runs."""
    mine, their = pipelines("sd3")
    save_random_sd3_ip_adapter(mine.transformer, tmp_path, seed=1)
    for pipe in (mine, their):
        pipe.load_ip_adapter(str(tmp_path), weight_name="ip-adapter.safetensors", subfolder="",
                             image_encoder_folder=str(tmp_path / "image_encoder"))
        pipe.set_ip_adapter_scale(1.0)
    image, latents = random_image(), noise(seed=1)
    ours = mine("a land", latents=latents, output_type="np", ip_adapter_image=image, guidance_scale=guidance,
                **one_window("sd3")).images
    theirs = their("a land", latents=latents, output_type="np", ip_adapter_image=image, guidance_scale=guidance,
                   **one_window("sd3", ours=False)).images
    unprompted = mine("a land", latents=latents, output_type="np", guidance_scale=guidance, **one_window("sd3")).images
    assert np.abs(ours - theirs).max() <= ROUNDING
    assert np.abs(ours - unprompted).max() > 1e-2
    synced = mine("a land", ip_adapter_image=image, num_images_per_prompt=2, guidance_scale=guidance,
                  **synced_canvas("sd3")).images
    assert synced.shape[0] == 2 and np.isfinite(synced).all()
    # embeddings given in place of the image: both halves with guidance, the image's rows alone without
    embeds = their.prepare_ip_adapter_image_embeds(image, None, "cpu", 1, do_classifier_free_guidance=guidance > 1)
    given = mine("a land", latents=latents, output_type="np", ip_adapter_image_embeds=embeds,
                 guidance_scale=guidance, **one_window("sd3")).images
    assert np.abs(given - ours).max() <= ROUNDING


def test_flux_with_two_ip_adapters_and_true_cfg_is_diffusers_image(tmp_path):
    """Two adapters, one image each; the negative branch gets one blank image per adapter."""
    mine, their = pipelines("flux")
    folders = [tmp_path / "first", tmp_path / "second"]
    for seed, folder in enumerate(folders, start=1):
        save_random_flux_ip_adapter(mine.transformer, folder, seed=seed)
    for pipe in (mine, their):
        pipe.load_ip_adapter([str(folder) for folder in folders], weight_name=["ip-adapter.safetensors"] * 2,
                             image_encoder_pretrained_model_name_or_path=str(folders[0] / "image_encoder"),
                             image_encoder_dtype=torch.float32)
    images, latents = [random_image(0), random_image(1)], noise(seed=1)
    options = dict(true_cfg_scale=3.0, negative_prompt="dull", output_type="np", ip_adapter_image=images)
    ours = mine("a land", latents=latents, **one_window("flux"), **options).images
    theirs = their("a land", latents=their_latents("flux", latents), **one_window("flux", ours=False), **options).images
    assert np.abs(ours - theirs).max() <= ROUNDING


def test_an_image_prompt_without_an_ip_adapter_is_one_sentence():
    mine, _ = pipelines("sd")
    with pytest.raises(ValueError, match="needs an IP-Adapter: load one first"):
        mine("a land", ip_adapter_image=random_image(), **synced_canvas("sd"))


def test_one_window_controlsync_with_an_image_prompt_is_diffusers_image(tmp_path):
    """The ControlNet reads the prompt's conditioning, the UNet the prompt's and the image's, as in
    diffusers' ControlNet pipeline."""
    made = [tiny_random_components(window=16, vae_factor=2) for _ in range(2)]
    nets = [random_controlnet_like(components["unet"], 2, seed=1) for components in made]
    mine = ControlSyncPipeline(**made[0], controlnet=nets[0])
    their = StableDiffusionControlNetPipeline(**made[1], controlnet=nets[1], safety_checker=None,
                                              feature_extractor=None, requires_safety_checker=False)
    save_random_ip_adapter(mine.unet, tmp_path, seed=1)
    for pipe in (mine, their):
        pipe.set_progress_bar_config(disable=True)
        pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip-adapter.safetensors",
                             image_encoder_folder="image_encoder")
    condition = torch.rand((1, 3, WINDOW, WINDOW), generator=torch.Generator().manual_seed(3))
    call = dict(image=condition, latents=noise(seed=2), output_type="np", ip_adapter_image=random_image(),
                **one_window("sd"))
    assert np.abs(mine("a land", **call).images - their("a land", **call).images).max() <= ROUNDING


def test_model_cpu_offload_keeps_the_loops_models_resident_through_a_synced_step():
    """Under enable_model_cpu_offload the VAE's call offloads its predecessor in
    model_cpu_offload_seq, the UNet, which in a synced step sits between the UNet's forward and the
    backward through it: during the loop the VAE's hook offloads nothing, the UNet's still offloads
    the text encoder; after the call the hooks are as diffusers made them. (The hooks move nothing
    on a CPU-only machine, so the links are what is checked here; the GPU check's "offload" part
    runs the panorama on a GPU.)"""
    mine, _ = pipelines("sd")
    mine.enable_model_cpu_offload(device="cpu")
    hook_of = {id(user_hook.model): user_hook.hook for user_hook in mine._all_hooks}
    vae_hook, unet_hook = hook_of[id(mine.vae)], hook_of[id(mine.unet)]
    before = (vae_hook.prev_module_hook, unet_hook.prev_module_hook)
    assert before[0].model is mine.unet and before[1].model is mine.text_encoder
    during = []

    def after_step(pipe, step, timestep, values):
        during.append((vae_hook.prev_module_hook, unet_hook.prev_module_hook))
        return {}

    mine("a land", **synced_canvas("sd"), callback_on_step_end=after_step)
    assert during and all(vae is None and unet is before[1] for vae, unet in during)
    assert (vae_hook.prev_module_hook, unet_hook.prev_module_hook) == before
