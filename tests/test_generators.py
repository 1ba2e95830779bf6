"""DiffusersGenerator and the tiny offline Stable Diffusion pipeline (CPU, a few seconds in all)."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lightning_xai.generators import (
    DiffusersGenerator,
    ImageGenerator,
    tiny_stable_diffusion_pipeline,
)
from lightning_xai.world import WorldGenerator

STEPS = 2
# Batched UNet/VAE arithmetic may round differently for different batch sizes (observed max |diff|
# about 2e-6 on CPU); the initial noise itself is identical.
BATCH_ATOL = 1e-5
CAPTIONS = [
    "1 person, 1 cup",
    "a red circle on a striped background",
    "a blue square on a plain background with a marker",
    "1 oven, 1 sink, 2 book",
]
SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a busy 2-core machine
    OpenMP threads waiting on each other made each call about 20 times slower (5 s instead of 0.2 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    """Shared tiny pipeline: tests must not modify it (build a fresh one for that)."""
    return tiny_stable_diffusion_pipeline(seed=0)


@pytest.fixture(scope="module")
def gen(pipe):
    return DiffusersGenerator(pipe, num_inference_steps=STEPS, batch_size=4)


@pytest.fixture(scope="module")
def base_images(gen):
    return gen.generate(CAPTIONS, SEEDS)


def _mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


# ----------------------------------------------------------------------------------- output


def test_output_is_float32_cpu_images_in_unit_range(base_images):
    assert base_images.shape == (4, 3, 64, 64)
    assert base_images.dtype == torch.float32
    assert base_images.device.type == "cpu"
    assert not base_images.requires_grad
    assert base_images.min() >= 0.0 and base_images.max() <= 1.0
    assert base_images.std() > 0.05  # an image, not a constant


def test_image_size_follows_sample_size_and_explicit_height_width(pipe):
    assert DiffusersGenerator(pipe).image_size == (64, 64)
    small = tiny_stable_diffusion_pipeline(seed=0, sample_size=16)
    images = DiffusersGenerator(small, num_inference_steps=STEPS).generate(["a"], [0])
    assert images.shape == (1, 3, 32, 32)
    wide = DiffusersGenerator(pipe, num_inference_steps=STEPS, height=32, width=48)
    assert wide.image_size == (32, 48)
    assert wide.generate(["a"], [0]).shape == (1, 3, 32, 48)


def test_empty_input_gives_empty_batch(gen):
    assert gen.generate([], []).shape == (0, 3, 64, 64)


# --------------------------------------------------------------------------- reproducibility


def test_same_caption_and_seed_are_bit_identical_across_calls(gen, base_images):
    torch.manual_seed(1234)  # the global RNG must play no part
    torch.rand(10)
    again = gen.generate(CAPTIONS, SEEDS)
    assert torch.equal(again, base_images)


def test_numpy_and_tensor_seeds_equal_python_int_seeds(gen, base_images):
    assert torch.equal(gen.generate(CAPTIONS, np.arange(4, dtype=np.int64)), base_images)
    assert torch.equal(gen(CAPTIONS, torch.arange(4)), base_images)


def test_different_seeds_give_clearly_different_images(gen, base_images):
    other = gen.generate(CAPTIONS, [10, 11, 12, 13])
    for i in range(len(CAPTIONS)):
        assert _mean_abs_diff(other[i], base_images[i]) > 0.05  # observed about 0.18


def test_different_captions_with_the_same_seed_differ(gen, pipe):
    a = "a red circle on a striped background"
    b = "a red circle on a dotted background"
    assert pipe.tokenizer(a).input_ids != pipe.tokenizer(b).input_ids
    images = gen.generate([a, b], [5, 5])
    assert _mean_abs_diff(images[0], images[1]) > 1e-3  # observed about 0.01 with guidance 7.5


def test_negative_prompt_changes_images(pipe, base_images):
    steered = DiffusersGenerator(pipe, num_inference_steps=STEPS, negative_prompt="blurry")
    images = steered.generate(CAPTIONS, SEEDS)
    assert _mean_abs_diff(images, base_images) > 1e-3


@pytest.mark.parametrize("batch_size", [1, 3])
def test_images_do_not_depend_on_batch_size(pipe, base_images, batch_size):
    images = DiffusersGenerator(pipe, num_inference_steps=STEPS, batch_size=batch_size).generate(
        CAPTIONS, SEEDS
    )
    torch.testing.assert_close(images, base_images, atol=BATCH_ATOL, rtol=0)


def test_images_do_not_depend_on_batch_neighbours(gen, base_images):
    order = [3, 1, 0, 2]
    shuffled = gen.generate([CAPTIONS[i] for i in order], [SEEDS[i] for i in order])
    torch.testing.assert_close(shuffled, base_images[order], atol=BATCH_ATOL, rtol=0)


def test_saved_pipeline_reloads_offline_with_same_images_and_fingerprint(
    gen, base_images, tmp_path, monkeypatch
):
    from diffusers import StableDiffusionPipeline

    gen.pipeline.save_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reloaded = DiffusersGenerator(
        StableDiffusionPipeline.from_pretrained(tmp_path), num_inference_steps=STEPS, batch_size=4
    )
    assert reloaded.fingerprint == gen.fingerprint
    assert torch.equal(reloaded.generate(CAPTIONS, SEEDS), base_images)


# --------------------------------------------------------------------------------- pipeline use


def test_generate_leaves_progress_bar_config_and_prints_nothing(capfd):
    pipe = tiny_stable_diffusion_pipeline(seed=0)
    pipe.set_progress_bar_config(leave=False)
    DiffusersGenerator(pipe, num_inference_steps=STEPS).generate(["a"], [0])
    assert pipe._progress_bar_config == {"leave": False}
    assert "it/s" not in capfd.readouterr().err


def test_show_progress_keeps_the_pipeline_bar(capfd):
    pipe = tiny_stable_diffusion_pipeline(seed=0)
    DiffusersGenerator(pipe, num_inference_steps=STEPS, show_progress=True).generate(["a"], [0])
    assert "2/2" in capfd.readouterr().err


def test_dtype_moves_the_pipeline_once():
    gen64 = DiffusersGenerator(
        tiny_stable_diffusion_pipeline(seed=0), num_inference_steps=STEPS, dtype=torch.float64
    )
    assert gen64.dtype == torch.float64 and gen64.pipeline.unet.dtype == torch.float64
    images = gen64.generate(["a"], [0])
    assert images.dtype == torch.float32


def test_training_mode_components_are_warned_about():
    pipe = tiny_stable_diffusion_pipeline(seed=0)
    pipe.unet.train()
    with pytest.warns(UserWarning, match=r"\['unet'\] are in training mode"):
        DiffusersGenerator(pipe)


# -------------------------------------------------------------------------------------- errors


def test_mismatched_lengths_are_rejected(gen):
    with pytest.raises(ValueError, match="got 2 captions but 3 seeds"):
        gen.generate(["a", "b"], [0, 1, 2])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", 2**64])
def test_bad_seeds_are_rejected(gen, seed):
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 18446744073709551615\]"):
        gen.generate(["a"], [seed])


def test_a_single_string_or_non_string_caption_is_rejected(gen):
    with pytest.raises(TypeError, match="not one string"):
        gen.generate("a red circle", [0])
    with pytest.raises(TypeError, match="every caption must be a str, got int"):
        gen.generate([3], [0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, r"num_inference_steps must be an int in \[1, 10000\], got 0"),
        ({"num_inference_steps": 2.0}, r"num_inference_steps must be an int in \[1, 10000\], got 2.0"),
        ({"guidance_scale": -1.0}, r"guidance_scale must be a finite number >= 0 .*got -1.0"),
        ({"guidance_scale": float("nan")}, r"guidance_scale must be a finite number >= 0 .*got nan"),
        ({"height": 30}, r"height must be None or a positive multiple of 8 \(pixels\), got 30"),
        ({"width": 0}, r"width must be None or a positive multiple of 8 \(pixels\), got 0"),
        ({"batch_size": 0}, r"batch_size must be an int in \[1, 1000000\], got 0"),
        ({"dtype": torch.int64}, r"dtype must be None or one of torch.float16, .*got torch.int64"),
        ({"device": "gpu7"}, r"device must be None, a torch.device or a device string .*got 'gpu7'"),
        ({"negative_prompt": 3}, r"negative_prompt must be None or a str, got int"),
        ({"show_progress": "yes"}, r"show_progress must be True or False, got 'yes'"),
    ],
)
def test_bad_constructor_arguments_are_rejected(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiffusersGenerator(pipe, **kwargs)


def test_a_non_pipeline_is_rejected():
    with pytest.raises(TypeError, match="pipeline must be a diffusers DiffusionPipeline .*got Linear"):
        DiffusersGenerator(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_size": 6}, r"sample_size must be a multiple of 4 .*got 6"),
        ({"sample_size": 0}, r"sample_size must be an int in \[4, 4096\], got 0"),
        ({"seed": -1}, r"seed must be an int in \[0, 9223372036854775807\], got -1"),
        ({"num_train_timesteps": 1}, r"num_train_timesteps must be an int in \[2, 100000\], got 1"),
    ],
)
def test_bad_tiny_pipeline_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_stable_diffusion_pipeline(**kwargs)


def test_missing_diffusers_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "lightning-xai\[diffusion\]"'):
        DiffusersGenerator(object())
    with pytest.raises(ImportError, match=r'pip install "lightning-xai\[diffusion\]"'):
        tiny_stable_diffusion_pipeline()


def test_package_imports_without_diffusers():
    code = (
        "import sys; sys.modules['diffusers'] = None; sys.modules['transformers'] = None\n"
        "import lightning_xai.generators as g\n"
        "assert g.DiffusersGenerator and g.ImageGenerator and g.tiny_stable_diffusion_pipeline\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_across_builds_and_calls(gen):
    fingerprint = gen.fingerprint
    assert fingerprint.startswith("diffusers:StableDiffusionPipeline(steps=2,guidance=7.5,size=64x64,")
    other = DiffusersGenerator(
        tiny_stable_diffusion_pipeline(seed=0), num_inference_steps=STEPS, batch_size=1
    )
    assert other.fingerprint == fingerprint  # batch_size is not part of it
    other.generate(["a"], [0])
    assert other.fingerprint == fingerprint  # generating leaves no trace


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_inference_steps": 3},
        {"guidance_scale": 1.0},
        {"height": 32},
        {"width": 32},
        {"negative_prompt": "blurry"},
        {"negative_prompt": ""},
    ],
)
def test_fingerprint_changes_with_each_setting(pipe, gen, kwargs):
    settings = {"num_inference_steps": STEPS, **kwargs}
    assert DiffusersGenerator(pipe, **settings).fingerprint != gen.fingerprint


def test_fingerprint_changes_with_weights_dtype_and_scheduler(gen):
    reseeded = DiffusersGenerator(tiny_stable_diffusion_pipeline(seed=1), num_inference_steps=STEPS)
    assert reseeded.fingerprint != gen.fingerprint
    as64 = DiffusersGenerator(
        tiny_stable_diffusion_pipeline(seed=0), num_inference_steps=STEPS, dtype=torch.float64
    )
    assert as64.fingerprint != gen.fingerprint
    assert "dtype=float64" in as64.fingerprint

    edited = tiny_stable_diffusion_pipeline(seed=0)
    tuned = DiffusersGenerator(edited, num_inference_steps=STEPS)
    with torch.no_grad():
        edited.unet.conv_in.weight[0, 0, 0, 0] += 1.0  # the first value is always sampled
    assert tuned.fingerprint != gen.fingerprint

    from diffusers import PNDMScheduler

    swapped = tiny_stable_diffusion_pipeline(seed=0)
    swapped.scheduler = PNDMScheduler.from_config(swapped.scheduler.config)
    assert DiffusersGenerator(swapped, num_inference_steps=STEPS).fingerprint != gen.fingerprint


# ------------------------------------------------------------------------------ tiny pipeline


def test_tiny_pipeline_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = tiny_stable_diffusion_pipeline(seed=3)
    b = tiny_stable_diffusion_pipeline(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not getattr(a, name).training


def test_tiny_pipeline_builds_and_generates_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pipe = tiny_stable_diffusion_pipeline(seed=0)
    images = DiffusersGenerator(pipe, num_inference_steps=STEPS).generate(["offline"], [0])
    assert images.shape == (1, 3, 64, 64)


def test_tiny_tokenizer_is_character_level():
    tokenizer = tiny_stable_diffusion_pipeline(seed=0).tokenizer
    ids = tokenizer("1 Cup, 2 bowls!").input_ids
    assert ids[0] == 0 and ids[-1] == 1  # <|startoftext|> ... <|endoftext|>
    assert len(ids) == len("1cup,2bowls!") + 2  # one token per non-space character
    assert 1 not in ids[1:-1]  # no character fell back to the unknown token
    assert max(ids) < 1000  # inside the text encoder's vocabulary
    assert tokenizer.model_max_length == 77


def test_tiny_max_length_keeps_long_captions_apart():
    concepts = [
        "person",
        "bottle",
        "cup",
        "bowl",
        "chair",
        "couch",
        "bed",
        "dining table",
        "tv",
        "laptop",
        "remote",
    ]
    long_a = ", ".join(f"1 {name}" for name in [*concepts, "oven"])  # DEPICT-style slot captions
    long_b = ", ".join(f"1 {name}" for name in [*concepts, "sink"])
    short = tiny_stable_diffusion_pipeline(seed=0).tokenizer
    assert short(long_a, truncation=True).input_ids == short(long_b, truncation=True).input_ids
    pipe = tiny_stable_diffusion_pipeline(seed=0, max_length=128)
    ids_a, ids_b = pipe.tokenizer(long_a).input_ids, pipe.tokenizer(long_b).input_ids
    assert len(ids_a) == 86 and ids_a != ids_b
    images = DiffusersGenerator(pipe, num_inference_steps=STEPS).generate([long_a, long_b], [0, 0])
    assert _mean_abs_diff(images[0], images[1]) > 1e-4


# ---------------------------------------------------------------------------------- protocol


def test_generators_satisfy_the_protocol(gen):
    assert isinstance(gen, ImageGenerator)
    assert isinstance(WorldGenerator(size=32), ImageGenerator)
    assert not isinstance(object(), ImageGenerator)
