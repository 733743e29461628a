"""Tiny random-weight models with the shape of Stable Diffusion (1/2, XL and 3) and FLUX.1, built
from configs.

They make no picture worth looking at: they exist so that the whole pipeline (views, sync
gradient through UNet and VAE, merging, decoding, the command) can run and be tested offline,
in seconds, on a CPU. `panosync generate --model tiny-random` uses them as a smoke test.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for the bytes 0..255."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def build_clip_tokenizer(words: list[str] = (), max_length: int = 77) -> CLIPTokenizer:
    """A CLIPTokenizer with a small vocabulary: every byte, plus one token for each of `words`.

    Words outside the list still tokenize, letter by letter, so any prompt is accepted.
    """
    alphabet = _byte_alphabet()
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [s + "</w>" for s in alphabet])}
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if not word.isascii() or not word.isalpha() or len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if merged + piece not in vocab:
                merges.append((merged, piece))
                vocab[merged + piece] = len(vocab)
            merged += piece
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.json"
        merges_file = Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)
    return tokenizer


def _check_vae_factor(vae_factor: int) -> None:
    if vae_factor < 1 or vae_factor & (vae_factor - 1):
        raise ValueError(f"vae_factor must be a power of two, got {vae_factor}.")


def _text_config(tokenizer: CLIPTokenizer, text_width: int, **extra) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder's config over `tokenizer`, `text_width` wide."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _unet(window: int, unet_channels: tuple[int, ...], cross_attention_dim: int, **family) -> UNet2DConditionModel:
    """A UNet on `window`-sized latents: attention in every block but the outermost; `family` adds
    a family's own settings (SDXL's added conditioning)."""
    depth = len(unet_channels)
    return UNet2DConditionModel(
        sample_size=window,
        in_channels=4,
        out_channels=4,
        block_out_channels=unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (depth - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (depth - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **family,
    )


def _vae(window: int, vae_factor: int, vae_channels: int, **family) -> AutoencoderKL:
    """An AutoencoderKL downsampling by `vae_factor`; `family` sets its scaling factor and the like."""
    blocks = vae_factor.bit_length()  # one more block than downsamplings
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(vae_channels,) * blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=window * vae_factor,
        **family,
    )


def _ddim(**extra) -> DDIMScheduler:
    """Stable Diffusion's (and SDXL's) scheduler settings, as DDIM."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, **extra)


def tiny_random_components(
    seed: int = 0,
    window: int = 64,
    vae_factor: int = 8,
    unet_channels: tuple[int, ...] = (32, 64),
    vae_channels: int = 32,
    text_width: int = 32,
) -> dict:
    """Random-weight vae, text_encoder, tokenizer, unet and a DDIM scheduler (Stable Diffusion's
    settings), small enough to run a panorama on a CPU in seconds.

    `window` is the UNet's native latent size (Stable Diffusion 2 base: 64); `vae_factor` the VAE's
    downsampling (a power of two; Stable Diffusion: 8).
    """
    _check_vae_factor(vae_factor)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, text_width))
    unet = _unet(window, unet_channels, cross_attention_dim=text_width)
    vae = _vae(window, vae_factor, vae_channels, scaling_factor=0.18215)
    scheduler = _ddim()
    for module in (text_encoder, unet, vae):
        module.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def tiny_random_xl_components(
    seed: int = 0,
    window: int = 16,
    vae_factor: int = 2,
    unet_channels: tuple[int, ...] = (32, 64),
    vae_channels: int = 32,
    text_width: int = 16,
    time_embedding_width: int = 8,
) -> dict:
    """Random-weight components with the shape of Stable Diffusion XL (as diffusers'
    StableDiffusionXLPipeline takes them): vae, text_encoder (CLIPTextModel), text_encoder_2
    (CLIPTextModelWithProjection: the pooled embedding), two tokenizers, a UNet with SDXL's added
    conditioning ("text_time": six size numbers and the pooled embedding), and SDXL's DDIM
    scheduler. The cross-attention context is both encoders' hidden states side by side, as SDXL's
    768 + 1280; the VAE has SDXL's scaling factor and force_upcast."""
    from transformers import CLIPTextModelWithProjection

    _check_vae_factor(vae_factor)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_config = _text_config(tokenizer, text_width, projection_dim=text_width)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    unet = _unet(window, unet_channels, cross_attention_dim=2 * text_width, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=time_embedding_width,
                 projection_class_embeddings_input_dim=6 * time_embedding_width + text_width)
    vae = _vae(window, vae_factor, vae_channels, scaling_factor=0.13025, force_upcast=True)
    scheduler = _ddim(timestep_spacing="leading")  # stabilityai/stable-diffusion-xl-base-1.0's
    for module in (text_encoder, text_encoder_2, unet, vae):
        module.eval()
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=copy.deepcopy(tokenizer), unet=unet, scheduler=scheduler)


# --------------------------------------------------------------------- flow-matching transformers


def build_t5_tokenizer(max_length: int = 32):
    """A T5 tokenizer (a Unigram model, as T5's SentencePiece) with a small vocabulary: the special
    tokens, the word boundary and every lower-case letter and digit, so any prompt tokenizes (other
    characters are <unk>)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(symbol, -3.0) for symbol in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [("\u2581" + symbol, -2.5) for symbol in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _t5_encoder(tokenizer, width: int):
    """A 1-layer T5 encoder over `tokenizer`, `width` wide."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=2 * width, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))


def _flow_vae(window: int, vae_factor: int, vae_channels: int, latent_channels: int, scaling_factor: float,
              shift_factor: float) -> AutoencoderKL:
    """The VAE of SD3 and FLUX: no quant convolutions, latents scaled and shifted."""
    blocks = vae_factor.bit_length()
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(vae_channels,) * blocks, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=window * vae_factor,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False, use_post_quant_conv=False,
    )


def tiny_random_sd3_components(
    seed: int = 0,
    window: int = 16,
    vae_factor: int = 2,
    latent_channels: int = 4,
    vae_channels: int = 8,
    text_width: int = 16,
    t5_width: int = 32,
    shift: float = 3.0,
) -> dict:
    """Random-weight components with the shape of Stable Diffusion 3 / 3.5 (as diffusers'
    StableDiffusion3Pipeline takes them): two CLIP text encoders with projections (their
    penultimate hidden states side by side, padded to T5's width, then T5's; their projections
    concatenated as the pooled embedding), a T5 encoder, an SD3Transformer2DModel whose
    `sample_size` is `window`, a VAE with SD3's scaling and shift factors, and SD3's
    FlowMatchEulerDiscreteScheduler (static shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    _check_vae_factor(vae_factor)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_config = _text_config(tokenizer, text_width, projection_dim=text_width)
    text_encoder = CLIPTextModelWithProjection(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    tokenizer_3 = build_t5_tokenizer()
    text_encoder_3 = _t5_encoder(tokenizer_3, t5_width)
    transformer = SD3Transformer2DModel(
        sample_size=window, patch_size=2, in_channels=latent_channels, out_channels=latent_channels, num_layers=2,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=t5_width, caption_projection_dim=16,
        pooled_projection_dim=2 * text_width, pos_embed_max_size=window,
    )
    vae = _flow_vae(window, vae_factor, vae_channels, latent_channels, scaling_factor=1.5305, shift_factor=0.0609)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    for module in (text_encoder, text_encoder_2, text_encoder_3, transformer, vae):
        module.eval()
    return dict(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=copy.deepcopy(tokenizer), text_encoder_3=text_encoder_3,
                tokenizer_3=tokenizer_3)


def tiny_random_flux_components(
    seed: int = 0,
    vae_factor: int = 2,
    latent_channels: int = 4,
    vae_channels: int = 8,
    text_width: int = 16,
    t5_width: int = 32,
    guidance_embeds: bool = True,
) -> dict:
    """Random-weight components with the shape of FLUX.1 (as diffusers' FluxPipeline takes them): a
    CLIP text encoder (its pooled output), a T5 encoder (its hidden states), a FluxTransformer2DModel
    on 2x2-packed latents with rotary position ids, with `guidance_embeds` (dev) or without
    (schnell), a VAE with FLUX's scaling and shift factors, and FLUX's FlowMatchEulerDiscrete-
    Scheduler (dynamic shift by the image's token count)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    _check_vae_factor(vae_factor)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(_text_config(tokenizer, text_width))
    tokenizer_2 = build_t5_tokenizer()
    text_encoder_2 = _t5_encoder(tokenizer_2, t5_width)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=t5_width, pooled_projection_dim=text_width,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )
    vae = _flow_vae(16, vae_factor, vae_channels, latent_channels, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    for module in (text_encoder, text_encoder_2, transformer, vae):
        module.eval()
    return dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
