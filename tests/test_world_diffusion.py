"""The world's Stable-Diffusion-architecture pipeline: offline tokenizer with one token per caption word,
components that build, save and load offline, and both generator wrappers on top of it (mechanics only:
the weights here are random; the trained model is a separate step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("diffusers")

from lightning_xai.world import Slots, all_slot_combinations
from lightning_xai.world.diffusion import WORLD_WORDS, world_diffusion_pipeline, world_tokenizer


def test_every_world_word_is_one_token_and_every_caption_fits() -> None:
    tok = world_tokenizer()
    for word in WORLD_WORDS:
        (token,) = tok.convert_ids_to_tokens(tok(word, add_special_tokens=False).input_ids)
        assert token == f"{word}</w>"
    captions = [s.caption for s in all_slot_combinations()] + [Slots(None, None, "dotted", True).caption]
    ids = [tuple(tok(c).input_ids) for c in captions]
    assert max(len(i) for i in ids) <= tok.model_max_length
    assert len(set(ids)) == len(captions)  # distinct captions, distinct token sequences
    assert all(len(i) == len(c.split()) + 2 for i, c in zip(ids, captions))  # one token per word
    unknown = tok(
        "purple", add_special_tokens=False
    ).input_ids  # not a world word: spelled in pieces, never <unk>
    assert len(unknown) > 1 and tok.unk_token_id not in unknown


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return world_diffusion_pipeline(seed=0)


def test_pipeline_generates_world_sized_images_and_round_trips_offline(pipeline: Any, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipeline.set_progress_bar_config(disable=True)
    caption = "a red circle on a striped background with a marker"

    def draw(pipe: Any) -> torch.Tensor:
        return pipe(
            caption, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt"
        ).images

    first = draw(pipeline)
    assert first.shape == (1, 3, 32, 32)
    pipeline.save_pretrained(tmp_path)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(draw(loaded), first)


def test_both_generator_wrappers_run_on_it(pipeline: Any) -> None:
    from lightning_xai.diffexplainer import DiffusersPromptGenerator
    from lightning_xai.generators import DiffusersGenerator

    images = DiffusersGenerator(pipeline, num_inference_steps=2).generate(
        ["a blue square on a plain background"] * 2, [0, 1]
    )
    assert images.shape == (2, 3, 32, 32) and not torch.equal(images[0], images[1])
    gen = DiffusersPromptGenerator(pipeline, init_word="circle", num_inference_steps=2, seeds=(0,))
    readout = gen.readout(gen.init_prompt())
    assert (
        readout.words == ["circle"] and readout.caption == "a photo of circle"
    )  # one soft token per world word


def test_held_out_grid_composes_every_shape_colour_pair_with_one_texture() -> None:
    from lightning_xai.world import COLOURS, SHAPES, TEXTURES
    from lightning_xai.world.diffusion import world_diffusion_held_out

    grid = world_diffusion_held_out()
    assert len(grid) == len({s.caption for s in grid}) == 2 * len(SHAPES) * len(COLOURS)
    triples = {(s.shape, s.colour, s.texture) for s in grid}
    assert {(shape, colour) for shape, colour, _ in triples} == {(s, c) for s in SHAPES for c in COLOURS}
    assert len(triples) == len(SHAPES) * len(COLOURS)  # one texture per pair, with and without the marker
    assert {t for *_, t in triples} == set(TEXTURES)
    assert sorted(s.marker for s in grid) == [False] * 12 + [True] * 12


def test_load_world_diffusion_reads_the_package_folder_offline(
    pipeline: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_xai.world.diffusion as world_diffusion

    monkeypatch.setattr(world_diffusion, "WORLD_DIFFUSION_DIR", tmp_path / "missing")
    with pytest.raises(
        FileNotFoundError, match=r"missing.*train one: python examples/train_world_diffusion\.py"
    ):
        world_diffusion.load_world_diffusion()
    pipeline.save_pretrained(tmp_path / "saved")
    monkeypatch.setattr(world_diffusion, "WORLD_DIFFUSION_DIR", tmp_path / "saved")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = world_diffusion.load_world_diffusion(dtype=torch.float64)
    assert loaded.unet.dtype == torch.float64 and not loaded.unet.training
    assert loaded._progress_bar_config == {"disable": True}
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipeline, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k].double(), theirs[k]) for k in ours), name


def test_the_pixel_resolution_variant_denoises_at_the_image_size() -> None:
    pipe = world_diffusion_pipeline(seed=0, latent_scale=1)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 1 and pipe.unet.config.sample_size == 32
    assert pipe.scheduler.config.beta_schedule == "linear"
    image = pipe("a red circle", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"latent_scale=4 is not supported; choose one of \[1, 2\]"):
        world_diffusion_pipeline(latent_scale=4)
