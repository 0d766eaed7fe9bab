"""Tests for flash_vstream.vision.clip: preprocessing and encoder parity with transformers, freezing."""

import importlib.util

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from flash_vstream.vision import (
    CLIP_VISION_PRESETS,
    CLIPFrameProcessor,
    CLIPVisionEncoder,
    clip_vision_config,
)

# The openai/clip-vit-large-patch14 preprocessing, spelled out so nothing is downloaded.
HF_KWARGS = {
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
    "do_convert_rgb": True,
}
# (height, width): landscape, portrait, square, smaller than 224 (upscaled), odd padding margins (so the
# centring offset's rounding matters), extreme aspect.
SIZES = [(120, 160), (480, 360), (224, 224), (97, 333), (225, 300), (150, 101), (50, 400)]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def tiny_config(**overrides):
    kwargs = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
    )
    return CLIPVisionConfig(**{**kwargs, **overrides})


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hf_processor():
    # Without torchvision, transformers.CLIPImageProcessor gives its PIL backend: the class we match.
    if HAS_TORCHVISION:
        return CLIPImageProcessorPil(**HF_KWARGS)
    return transformers.CLIPImageProcessor(**HF_KWARGS)


def hf_pixels(processor, image):
    return processor(image, return_tensors="pt")["pixel_values"]


def expand_to_square_reference(image, color):
    """LLaVA's expand-to-square, restated with PIL: paste onto a square canvas of the fill colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


# --------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the fallback taken when torchvision is missing")
def test_clip_image_processor_falls_back_to_pil_backend():
    assert type(transformers.CLIPImageProcessor(**HF_KWARGS)) is CLIPImageProcessorPil


@pytest.mark.parametrize("size", SIZES)
def test_crop_mode_is_pixel_identical_to_transformers(hf_processor, size):
    image = random_image(*size, seed=size[0])
    ours = CLIPFrameProcessor(aspect="crop")(image)
    theirs = hf_pixels(hf_processor, Image.fromarray(image))
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 224, 224)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("size", SIZES)
def test_pad_mode_is_pixel_identical_to_padded_transformers(hf_processor, size):
    image = random_image(*size, seed=size[1])
    processor = CLIPFrameProcessor(aspect="pad")
    padded = expand_to_square_reference(Image.fromarray(image), (122, 116, 104))
    assert torch.equal(processor(image), hf_pixels(hf_processor, padded))


def test_pad_colour_is_truncated_mean():
    assert CLIPFrameProcessor().pad_color == (122, 116, 104)


def test_pad_and_crop_differ_on_non_square_frames():
    image = random_image(120, 160)
    assert not torch.equal(CLIPFrameProcessor(aspect="pad")(image), CLIPFrameProcessor(aspect="crop")(image))


def test_batch_forms_agree_with_per_frame_processing(hf_processor):
    frames = np.stack([random_image(90, 130, seed=s) for s in range(3)])  # (t, h, w, 3)
    processor = CLIPFrameProcessor(aspect="crop")
    batched = processor(frames)
    assert batched.shape == (3, 3, 224, 224)
    assert torch.equal(batched, processor([Image.fromarray(f) for f in frames]))
    assert torch.equal(batched, processor(torch.from_numpy(frames)))
    expected = torch.cat([hf_pixels(hf_processor, Image.fromarray(f)) for f in frames])
    assert torch.equal(batched, expected)


def test_list_of_frames_with_different_sizes(hf_processor):
    frames = [Image.fromarray(random_image(h, w, seed=h)) for h, w in SIZES[:3]]
    out = CLIPFrameProcessor(aspect="crop")(frames)
    assert torch.equal(out, torch.cat([hf_pixels(hf_processor, f) for f in frames]))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_non_rgb_pil_images_convert_like_transformers(hf_processor, mode):
    rng = np.random.default_rng(3)
    channels = {"RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (150, 110, channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
    image = Image.fromarray(array, mode=mode)
    assert torch.equal(CLIPFrameProcessor(aspect="crop")([image]), hf_pixels(hf_processor, image))


def test_from_preprocessor_config_reads_old_and_new_layouts(hf_processor):
    old_layout = {  # the layout of openai/clip-vit-large-patch14's preprocessor_config.json
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    }
    assert CLIPFrameProcessor.from_preprocessor_config(old_layout) == CLIPFrameProcessor()
    new_layout = hf_processor.to_dict()
    processor = CLIPFrameProcessor.from_preprocessor_config(new_layout, aspect="crop")
    assert processor == CLIPFrameProcessor(aspect="crop")
    large = CLIPFrameProcessor.from_preprocessor_config({"size": {"shortest_edge": 336}, "crop_size": 336})
    assert (large.image_size, large.crop_size) == (336, 336)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"resample": 2}, "resample"),
        ({"do_center_crop": False}, "do_center_crop"),
        ({"rescale_factor": 1.0}, "rescale_factor"),
        ({"size": {"height": 224, "width": 224}}, "size"),
        ({"crop_size": {"height": 224, "width": 200}}, "crop_size"),
    ],
)
def test_from_preprocessor_config_rejects_unsupported_settings(config, field):
    with pytest.raises(ValueError, match=field):
        CLIPFrameProcessor.from_preprocessor_config(config)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aspect": "square"}, "aspect"),
        ({"crop_size": 256}, "crop_size"),
        ({"image_size": 0}, "image_size"),
        ({"image_mean": (0.5, 0.5)}, "image_mean"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std"),
    ],
)
def test_processor_validates_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CLIPFrameProcessor(**kwargs)


def test_processor_rejects_bad_frames():
    processor = CLIPFrameProcessor()
    with pytest.raises(TypeError, match="uint8"):
        processor(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        processor(np.zeros((2, 3, 32, 32, 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        processor(np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no frames"):
        processor([])


def test_from_vision_config_uses_tower_resolution():
    processor = CLIPFrameProcessor.from_vision_config(clip_vision_config("openai/clip-vit-large-patch14-336"))
    assert processor(random_image(100, 200)).shape == (1, 3, 336, 336)


# --------------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_and_reference():
    torch.manual_seed(0)
    config = tiny_config()
    encoder = CLIPVisionEncoder(config)
    reference = CLIPVisionModel(config).eval()
    reference.load_state_dict(encoder.clip.state_dict())
    return encoder, reference


def reference_hidden_states(reference, pixel_values):
    with torch.no_grad():
        return reference(pixel_values, output_hidden_states=True).hidden_states


def test_patch_features_match_transformers_layer_minus_two(encoder_and_reference):
    encoder, reference = encoder_and_reference
    pixel_values = torch.randn(3, 3, 224, 224)
    features = encoder(pixel_values)
    assert features.shape == (3, 256, 32)
    assert (encoder.num_patches, encoder.num_tokens, encoder.hidden_size, encoder.image_size) == (
        256,
        256,
        32,
        224,
    )
    assert torch.equal(features, reference_hidden_states(reference, pixel_values)[-2][:, 1:])


@pytest.mark.parametrize("select_layer", [-1, -4, 0, 1])
def test_other_layers_and_cls_match_transformers(encoder_and_reference, select_layer):
    encoder, reference = encoder_and_reference
    wrapped = CLIPVisionEncoder.from_model(
        encoder.clip, select_layer=select_layer, select_feature="cls_patch"
    )
    pixel_values = torch.randn(2, 3, 224, 224)
    features = wrapped(pixel_values)
    assert features.shape == (2, 257, 32) and wrapped.num_tokens == 257
    assert torch.equal(features, reference_hidden_states(reference, pixel_values)[select_layer])


def test_chunked_equals_unchunked(encoder_and_reference):
    encoder, _ = encoder_and_reference
    chunked = CLIPVisionEncoder.from_model(encoder.clip, batch_size=2)
    pixel_values = torch.randn(5, 3, 224, 224)
    torch.testing.assert_close(chunked(pixel_values), encoder(pixel_values), rtol=1e-6, atol=1e-6)
    # Not bit-equal above only because BLAS blocking depends on the batch size; chunk by chunk it is exact.
    expected = torch.cat([encoder(pixel_values[:2]), encoder(pixel_values[2:4]), encoder(pixel_values[4:])])
    assert torch.equal(chunked(pixel_values), expected)


def test_encoder_is_frozen_and_stays_in_eval(encoder_and_reference):
    encoder, _ = encoder_and_reference
    assert not any(p.requires_grad for p in encoder.parameters())
    pixel_values = torch.randn(1, 3, 224, 224, requires_grad=True)
    assert encoder(pixel_values).grad_fn is None
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    parent = torch.nn.Sequential(encoder).train()
    assert parent.training and not encoder.clip.training


def test_from_model_freezes_the_given_model():
    model = CLIPVisionModel(tiny_config(num_hidden_layers=2))
    encoder = CLIPVisionEncoder.from_model(model)
    assert encoder.clip is model and not any(p.requires_grad for p in model.parameters())


def test_input_is_cast_to_module_dtype(encoder_and_reference):
    encoder, _ = encoder_and_reference
    half = CLIPVisionEncoder(tiny_config()).to(torch.bfloat16)
    assert half(torch.randn(1, 3, 224, 224, dtype=torch.float64)).dtype == torch.bfloat16


def test_builds_full_size_on_meta_device():
    with torch.device("meta"):
        encoder = CLIPVisionEncoder(clip_vision_config("openai/clip-vit-large-patch14"))
        features = encoder(torch.empty(2, 3, 224, 224))
    assert all(p.is_meta for p in encoder.parameters())
    assert features.shape == (2, 256, 1024)
    assert len(encoder.clip.encoder.layers) == 24


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"select_layer": -5}, "select_layer"),
        ({"select_feature": "cls"}, "select_feature"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_encoder_validates_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CLIPVisionEncoder(tiny_config(), **kwargs)


def test_encoder_rejects_wrong_pixel_shape(encoder_and_reference):
    encoder, _ = encoder_and_reference
    with pytest.raises(ValueError, match="CLIPFrameProcessor"):
        encoder(torch.zeros(1, 3, 112, 112))


def test_from_pretrained_loads_vision_and_full_clip_checkpoints(tmp_path):
    vision = CLIPVisionModel(tiny_config(num_hidden_layers=2))
    vision.save_pretrained(tmp_path / "vision")
    loaded = CLIPVisionEncoder.from_pretrained(tmp_path / "vision")
    for key, value in vision.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[key], value), key

    full = CLIPModel(
        CLIPConfig(
            vision_config=tiny_config(num_hidden_layers=2).to_dict(),
            text_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "vocab_size": 99,
            },
            projection_dim=16,
        )
    )
    full.save_pretrained(tmp_path / "full")
    loaded = CLIPVisionEncoder.from_pretrained(tmp_path / "full")
    for key, value in full.vision_model.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[key], value), key


def test_from_pretrained_fails_on_missing_vision_weights(tmp_path):
    CLIPVisionModel(tiny_config(num_hidden_layers=2)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["pre_layrnorm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="pre_layrnorm.weight"):
        CLIPVisionEncoder.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "image_size"),
    [("openai/clip-vit-large-patch14", 224), ("openai/clip-vit-large-patch14-336", 336)],
)
def test_presets_hold_real_clip_large_values(name, image_size):
    config = clip_vision_config(name)
    assert isinstance(config, CLIPVisionConfig)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert (config.intermediate_size, config.patch_size, config.image_size) == (4096, 14, image_size)
    assert (config.projection_dim, config.hidden_act, config.layer_norm_eps) == (768, "quick_gelu", 1e-5)
    assert set(CLIP_VISION_PRESETS) == {"openai/clip-vit-large-patch14", "openai/clip-vit-large-patch14-336"}


def test_local_directory_with_vision_or_full_clip_config(tmp_path):
    tiny_config(hidden_size=48).save_pretrained(tmp_path / "vision")
    assert clip_vision_config(tmp_path / "vision").hidden_size == 48
    CLIPConfig(vision_config=tiny_config(num_hidden_layers=5).to_dict()).save_pretrained(tmp_path / "full")
    config = clip_vision_config(str(tmp_path / "full"))
    assert isinstance(config, CLIPVisionConfig) and config.num_hidden_layers == 5


def test_unresolvable_tower_names_the_config_field():
    # An invalid repo id fails before any network access.
    with pytest.raises(ValueError, match="mm_vision_tower"):
        clip_vision_config("not a valid/tower name!")


# --- the torch (GPU) path of the processor -------------------------------------------------------------------

SAMPLE_VIDEO = __import__("pathlib").Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
TORCH_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised outputs in 8-bit levels (undoing the division by the channel std)."""
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (a.cpu() - b.cpu()).abs() * std * 255


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("aspect", ["pad", "crop"])
def test_torch_path_is_within_one_level_of_pillow_on_video_frames(device, aspect):
    """Real frames, up- and down-scaled and padded: the torch path is the Pillow path to within 1/255.

    Pillow rounds to 8 bits in fixed point between its two passes and torch in floats (on a GPU with other
    rounding still), so a value that lands on a rounding edge after the first pass can end 2/255 off: rare.
    """
    from flash_vstream.video import read_video

    frames = read_video(SAMPLE_VIDEO).frames[:6]
    h, w = frames.shape[1:3]
    clips = [frames, np.ascontiguousarray(np.repeat(np.repeat(frames, 3, axis=1), 4, axis=2)), frames[:, : h // 2]]
    for clip in clips:
        pil = CLIPFrameProcessor(aspect=aspect)(clip)
        fast = CLIPFrameProcessor(aspect=aspect, device=device)(clip)
        assert fast.device.type == device and fast.shape == pil.shape and fast.dtype == torch.float32
        diffs = _levels(fast, pil)
        assert float(diffs.max()) <= 2.0 + 1e-3, float(diffs.max())
        assert float((diffs > 1.0 + 1e-3).float().mean()) < 1e-4


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_torch_path_on_noise_stays_within_two_levels(device):
    """Noise is the worst case (Pillow rounds to 8 bits in fixed point between its passes): <= 2 levels, rarely 1."""
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        diff = _levels(CLIPFrameProcessor(device=device)(frames), CLIPFrameProcessor()(frames))
        assert float(diff.max()) <= 2.0 + 1e-3
        assert float((diff > 0.5).float().mean()) < 0.01


def test_frames_already_on_a_gpu_take_the_torch_path_and_bad_devices_are_refused():
    frames = np.zeros((1, 30, 40, 3), dtype=np.uint8)
    torch_frames = torch.from_numpy(frames)
    assert torch.equal(CLIPFrameProcessor()(torch_frames), CLIPFrameProcessor()(frames))  # CPU tensors: Pillow
    with pytest.raises(ValueError, match="device"):
        CLIPFrameProcessor(device="gpu0")
    with pytest.raises(TypeError, match="uint8"):  # as on the Pillow path
        CLIPFrameProcessor(device="cpu")(frames.astype(np.float32))
