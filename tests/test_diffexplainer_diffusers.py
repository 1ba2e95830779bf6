"""DiffusersPromptGenerator: soft tokens through a tiny random Stable Diffusion pipeline (CPU, offline)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lightning_xai.diffexplainer.diffusers_prompt import DiffusersPromptGenerator
from lightning_xai.diffexplainer.prompt import PromptGenerator, Readout
from lightning_xai.generators.tiny import tiny_stable_diffusion_pipeline

STEPS = 2  # enough to exercise the multi-step graph; keeps the file fast on one core


@pytest.fixture(scope="module")
def pipe():
    return tiny_stable_diffusion_pipeline(seed=0)


@pytest.fixture(scope="module")
def gen(pipe):
    return DiffusersPromptGenerator(pipe, init_word="cat", num_inference_steps=STEPS, seeds=(0, 1))


def _components(pipe):
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}


def _caption_ids(pipe, caption: str) -> torch.Tensor:
    tok = pipe.tokenizer
    return tok(caption, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids


# ------------------------------------------------------------------------------------ text encoder


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_composed_text_encoder_matches_input_ids(pipe, gen, attn):
    encoder = pipe.text_encoder
    saved = encoder.config._attn_implementation
    encoder.set_attn_implementation(attn)  # eager gets a materialised 4-D mask, sdpa relies on is_causal
    try:
        ids = _caption_ids(pipe, "a photo of a red padlock, 42!")
        with torch.no_grad():
            expected = encoder(ids).last_hidden_state
            composed = gen._encode(encoder.get_input_embeddings()(ids))
    finally:
        encoder.set_attn_implementation(saved)
    torch.testing.assert_close(composed, expected, rtol=1e-5, atol=1e-6)


def test_conditioning_equals_the_real_caption(pipe, gen):
    """Template prefix + init tokens of "cat" + EOS + padding is exactly "a photo of cat"."""
    with torch.no_grad():
        expected = pipe.text_encoder(_caption_ids(pipe, "a photo of cat")).last_hidden_state
        cond = gen._conditioning(gen.init_prompt("cat"))
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "EulerDiscreteScheduler", "LCMScheduler"])
def test_sampler_matches_the_pipeline(pipe, scheduler):
    """The hand-written loop reproduces diffusers' own sampling (initial noise, sigma scaling, step noise)."""
    import diffusers

    other = diffusers.StableDiffusionPipeline(
        **{**pipe.components, "scheduler": getattr(diffusers, scheduler).from_config(pipe.scheduler.config)},
        requires_safety_checker=False,
    )
    other.set_progress_bar_config(disable=True)
    g = DiffusersPromptGenerator(other, init_word="cat", num_inference_steps=3, seeds=(3, 7))
    prompt = g.init_prompt()
    with torch.no_grad():
        ours = g.render(prompt)
        theirs = other(
            prompt_embeds=g._conditioning(prompt).expand(2, -1, -1),
            generator=[torch.Generator().manual_seed(s) for s in (3, 7)],
            num_inference_steps=3,
            guidance_scale=1.0,
            output_type="pt",
        ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_guidance_matches_the_pipeline(pipe):
    g = DiffusersPromptGenerator(
        pipe,
        init_word="cat",
        num_inference_steps=STEPS,
        seeds=(0,),
        guidance_scale=4.0,
        negative_prompt="blurry",
    )
    pipe.set_progress_bar_config(disable=True)
    prompt = g.init_prompt()
    with torch.no_grad():
        ours = g.render(prompt)
        theirs = pipe(
            prompt_embeds=g._conditioning(prompt),
            negative_prompt="blurry",
            generator=[torch.Generator().manual_seed(0)],
            num_inference_steps=STEPS,
            guidance_scale=4.0,
            output_type="pt",
        ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    unguided = DiffusersPromptGenerator(pipe, init_word="cat", num_inference_steps=STEPS, seeds=(0,))
    with torch.no_grad():
        assert not torch.equal(ours, unguided.render(prompt))


def test_guidance_embedding_unet_matches_the_pipeline(pipe):
    """A guidance-distilled (LCM-style) UNet gets the guidance weight as timestep_cond, not CFG."""
    import diffusers

    config = dict(pipe.unet.config)
    # from_config re-applies the defaults listed in _use_default_values (time_cond_proj_dim is one)
    config.pop("_use_default_values", None)
    config["time_cond_proj_dim"] = 16
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(config).eval()
    other = diffusers.StableDiffusionPipeline(
        **{**pipe.components, "unet": unet}, requires_safety_checker=False
    )
    other.set_progress_bar_config(disable=True)
    g = DiffusersPromptGenerator(other, init_word="cat", num_inference_steps=STEPS, guidance_scale=5.0)
    assert not g.uses_guidance
    prompt = g.init_prompt()
    with torch.no_grad():
        ours = g.render(prompt)
        theirs = other(
            prompt_embeds=g._conditioning(prompt),
            generator=[torch.Generator().manual_seed(0)],
            num_inference_steps=STEPS,
            guidance_scale=5.0,
            output_type="pt",
        ).images
        weaker = DiffusersPromptGenerator(
            other, init_word="cat", num_inference_steps=STEPS, guidance_scale=2.0
        )
        assert not torch.equal(weaker.render(prompt), ours)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_bf16_with_guidance_on_cpu(pipe):
    g = DiffusersPromptGenerator(
        pipe, init_word="cat", num_inference_steps=STEPS, guidance_scale=3.0, dtype=torch.bfloat16
    )
    prompt = g.init_prompt().requires_grad_()
    (grad,) = torch.autograd.grad(g.render(prompt).mean(), prompt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradients_reach_only_the_soft_tokens(pipe, gen):
    before = {
        f"{name}.{key}": value.clone()
        for name, module in _components(pipe).items()
        for key, value in module.state_dict().items()
    }
    prompt = gen.init_prompt().requires_grad_()
    images = gen.render(prompt)
    assert images.requires_grad and images.dtype == torch.float32
    (grad,) = torch.autograd.grad(images.mean() + images[:, 0].std(), prompt)
    assert grad.shape == prompt.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0

    images = gen.render(prompt)
    images.mean().backward()  # a plain backward must not populate any component .grad either
    assert prompt.grad is not None
    for name, module in _components(pipe).items():
        assert not module.training, name
        for key, param in module.named_parameters():
            assert not param.requires_grad and param.grad is None, f"{name}.{key}"
    after = {
        f"{name}.{key}": value
        for name, module in _components(pipe).items()
        for key, value in module.state_dict().items()
    }
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_determinism_seeds_and_images(pipe, gen):
    prompt = gen.init_prompt()
    with torch.no_grad():
        first, second = gen.render(prompt), gen.render(prompt)
    assert torch.equal(first, second)
    assert first.shape == (2, 3, 64, 64)
    assert (first[0] - first[1]).abs().mean() > 1e-3  # seeds 0 and 1 differ

    images = gen.images(prompt, [0, 1, 5, 0])
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert images.device.type == "cpu" and not images.requires_grad
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(images[:2], first)  # the optimisation seeds render as in render()
    assert torch.equal(images[3], images[0])
    assert not torch.equal(images[2], images[0])
    assert gen.images(prompt, []).shape == (0, 3, 64, 64)

    seed2 = DiffusersPromptGenerator(pipe, init_word="cat", num_inference_steps=STEPS, seeds=(2,))
    with torch.no_grad():
        assert (seed2.render(prompt)[0] - first[0]).abs().mean() > 1e-3


def test_pipeline_scheduler_and_global_rng_untouched(pipe, gen):
    scheduler = pipe.scheduler
    timesteps = None if scheduler.num_inference_steps is None else scheduler.timesteps.clone()
    state = torch.get_rng_state()
    with torch.no_grad():
        gen.render(gen.init_prompt())
    assert scheduler is pipe.scheduler and gen._scheduler is not scheduler
    if timesteps is None:
        assert scheduler.num_inference_steps is None
    else:
        assert torch.equal(scheduler.timesteps, timesteps)
    assert torch.equal(torch.get_rng_state(), state)


def test_checkpointing_gives_the_same_gradient(pipe, gen):
    ckpt = DiffusersPromptGenerator(
        pipe, init_word="cat", num_inference_steps=STEPS, seeds=(0, 1), gradient_checkpointing=True
    )
    prompt = gen.init_prompt().requires_grad_()
    (plain,) = torch.autograd.grad(gen.render(prompt).square().mean(), prompt)
    (recomputed,) = torch.autograd.grad(ckpt.render(prompt).square().mean(), prompt)
    torch.testing.assert_close(recomputed, plain, rtol=1e-4, atol=1e-7)
    assert ckpt.fingerprint != gen.fingerprint


def test_bf16_autocast_on_cpu(pipe, gen):
    low = DiffusersPromptGenerator(
        pipe, init_word="cat", num_inference_steps=STEPS, seeds=(0,), dtype=torch.bfloat16
    )
    prompt = low.init_prompt().requires_grad_()
    images = low.render(prompt)
    assert images.dtype == torch.float32 and prompt.dtype == torch.float32
    (grad,) = torch.autograd.grad(images.mean(), prompt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert pipe.unet.dtype == torch.float32  # the pipeline itself is never converted
    with torch.no_grad():
        full = gen.render(prompt.detach())[:1]
    assert (images.detach() - full).abs().mean() < 0.05  # same picture, bf16 rounding


# ------------------------------------------------------------------------------ prompt and readout


def test_init_prompt_lengths_and_copy(pipe, gen):
    table = pipe.text_encoder.get_input_embeddings().weight
    cat = gen.init_prompt()
    assert cat.shape == (3, 8) and cat.dtype == torch.float32 and not cat.requires_grad
    cat.add_(1.0)  # a new tensor, not a view of the embedding table
    assert not torch.equal(table[6], cat[0])
    assert gen.init_prompt("a dog").shape == (4, 8)  # a, d, o, g
    cycled = DiffusersPromptGenerator(pipe, n_tokens=5, init_word="cat", num_inference_steps=STEPS)
    prompt = cycled.init_prompt()
    assert prompt.shape == (5, 8)
    assert torch.equal(prompt[3], prompt[0]) and torch.equal(prompt[4], prompt[1])
    assert cycled.init_prompt("object").shape == (5, 8)  # truncated
    with torch.no_grad():
        assert gen.render(gen.init_prompt("kite")).shape == (2, 3, 64, 64)  # free length without n_tokens


def test_readout_of_the_initial_prompt(pipe, gen):
    readout = gen.readout(gen.init_prompt("cat"), k=4)
    assert isinstance(readout, Readout)
    assert readout.positions == ["token 1", "token 2", "token 3"]
    assert readout.words == ["c", "a", "t"]
    assert readout.caption == "a photo of cat"
    for candidates in readout.candidates:
        assert len(candidates) == 4
        assert candidates[0][1] == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in candidates] == sorted((s for _, s in candidates), reverse=True)

    cycled = DiffusersPromptGenerator(pipe, n_tokens=5, init_word="cat", num_inference_steps=STEPS)
    assert cycled.readout(cycled.init_prompt()).words == ["c", "a", "t", "c", "a"]


def test_readout_words_come_from_the_vocabulary(pipe, gen):
    vocab = {token.removesuffix("</w>") for token in pipe.tokenizer.get_vocab()}
    special = {"<|startoftext|>", "<|endoftext|>"}
    prompt = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    readout = DiffusersPromptGenerator(pipe, n_tokens=6, num_inference_steps=STEPS).readout(prompt, k=3)
    assert len(readout.words) == 6
    for candidates in readout.candidates:
        for word, score in candidates:
            assert word in vocab and word not in special
            assert -1.0 <= score <= 1.0
    assert readout.caption.startswith("a photo of ")
    assert readout.changed_since(readout) == {}


def test_protocol_and_fingerprint(pipe, gen):
    assert isinstance(gen, PromptGenerator)
    assert gen.proximity == 0.0 and DiffusersPromptGenerator.proximity == 0.0
    assert gen.device == torch.device("cpu")
    same = DiffusersPromptGenerator(pipe, init_word="cat", num_inference_steps=STEPS, seeds=(0, 1))
    assert same.fingerprint == gen.fingerprint
    for change in (
        {"seeds": (0, 2)},
        {"num_inference_steps": 3},
        {"template": "{} on a table"},
        {"guidance_scale": 2.0},
        {"n_tokens": 3},
        {"height": 32},
    ):
        kwargs = {"init_word": "cat", "num_inference_steps": STEPS, "seeds": (0, 1), **change}
        assert DiffusersPromptGenerator(pipe, **kwargs).fingerprint != gen.fingerprint, change
    other_weights = tiny_stable_diffusion_pipeline(seed=1)
    assert (
        DiffusersPromptGenerator(
            other_weights, init_word="cat", num_inference_steps=STEPS, seeds=(0, 1)
        ).fingerprint
        != gen.fingerprint
    )


def test_smaller_image_and_template_suffix(pipe):
    g = DiffusersPromptGenerator(
        pipe, init_word="red", template="{} wood", num_inference_steps=1, height=32, width=48
    )
    with torch.no_grad():
        expected = pipe.text_encoder(_caption_ids(pipe, "red wood")).last_hidden_state
        torch.testing.assert_close(g._conditioning(g.init_prompt()), expected, rtol=1e-5, atol=1e-6)
        assert g.render(g.init_prompt()).shape == (1, 3, 32, 48)
    assert g.readout(g.init_prompt()).caption == "red wood"


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_word": "é"}, r"'é' contains characters the tokenizer cannot encode"),
        ({"init_word": "★"}, r"cannot encode"),
        ({"init_word": "  "}, r"init_word '  ' gives no tokens"),
        ({"template": "a photo"}, r"exactly one '\{\}'.*'a photo'"),
        ({"template": "{} and {}"}, r"exactly one '\{\}'"),
        ({"template": "a ★ photo of {}"}, r"template .* cannot encode"),
        ({"n_tokens": 0}, r"n_tokens must be an int in \[1, "),
        ({"n_tokens": 200}, r"n_tokens must be an int in \[1, 67\], got 200"),
        ({"init_word": "x" * 80}, r"init_word .* has 80 tokens but the template leaves room for 67"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be an int in \[1, "),
        ({"seeds": ()}, r"seeds must not be empty"),
        ({"seeds": (0, -1)}, r"seed must be an int in \[0, .*got -1"),
        ({"height": 60}, r"height must be None or a positive multiple of 8 pixels.*got 60"),
        ({"width": 0}, r"width must be None or a positive multiple of 8"),
        (
            {"dtype": torch.float64},
            r"dtype must be one of None, torch.float32, torch.bfloat16, torch.float16",
        ),
        ({"dtype": "bf16"}, r"dtype must be one of .*'bf16'"),
        ({"dtype": torch.float16}, r"float16 needs a GPU"),
        ({"guidance_scale": -1.0}, r"guidance_scale must be a finite number >= 0"),
        ({"gradient_checkpointing": "yes"}, r"gradient_checkpointing must be True or False"),
        ({"device": "warp-drive"}, r"device must be None"),
    ],
)
def test_bad_settings_raise(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusersPromptGenerator(pipe, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seeds": 0}, r"seeds must be a sequence of ints"),
        ({"init_word": 3}, r"init_word must be a str, got int"),
        ({"negative_prompt": None}, r"negative_prompt must be a str, got NoneType"),
    ],
)
def test_wrong_types_raise(pipe, kwargs, match):
    with pytest.raises(TypeError, match=match):
        DiffusersPromptGenerator(pipe, **kwargs)


def test_missing_components_are_named(pipe):
    partial = types.SimpleNamespace(unet=pipe.unet, vae=None, text_encoder=pipe.text_encoder, scheduler=None)
    with pytest.raises(ValueError, match=r"missing the component\(s\) \['vae', 'tokenizer', 'scheduler'\]"):
        DiffusersPromptGenerator(partial)
    bad_encoder = types.SimpleNamespace(**{**pipe.components, "text_encoder": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"text_encoder must be a transformers CLIPTextModel.*Linear"):
        DiffusersPromptGenerator(bad_encoder)


def test_unets_that_need_more_than_the_prompt_embeddings_are_refused(pipe):
    """SDXL-style extra conditioning needs inputs the generator never makes; pooled-text conditioning does not."""
    sdxl_like = types.SimpleNamespace(config=types.SimpleNamespace(addition_embed_type="text_time"))
    with pytest.raises(ValueError, match=r"addition_embed_type='text_time'.*None or 'text'"):
        DiffusersPromptGenerator(types.SimpleNamespace(**{**pipe.components, "unet": sdxl_like}))


def test_bad_prompts_and_calls_raise(pipe, gen):
    fixed = DiffusersPromptGenerator(pipe, n_tokens=3, num_inference_steps=STEPS)
    cases = [
        (gen, torch.zeros(8), r"prompt must be a floating tensor of shape \[n, 8\], got \(8,\)"),
        (gen, torch.zeros(3, 7), r"prompt must have shape \[n, 8\], got \(3, 7\)"),
        (gen, torch.zeros(3, 8, dtype=torch.long), r"floating tensor"),
        (gen, [[0.0] * 8], r"floating tensor of shape \[n, 8\], got list"),
        (gen, torch.zeros(0, 8), r"0 soft tokens; the template leaves room for 1 to 67"),
        (gen, torch.zeros(68, 8), r"68 soft tokens"),
        (fixed, torch.zeros(4, 8), r"prompt must have shape \[3, 8\], got \(4, 8\)"),
    ]
    for generator, prompt, match in cases:
        with pytest.raises(ValueError, match=match):
            generator.render(prompt)
    with pytest.raises(ValueError, match=r"cannot encode"):
        gen.init_prompt("★")
    with pytest.raises(ValueError, match=r"gives no tokens"):
        gen.init_prompt("")
    with pytest.raises(ValueError, match=r"init 'x+' has 80 tokens but the template leaves room for 67"):
        gen.init_prompt("x" * 80)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, "):
        gen.images(gen.init_prompt(), [-3])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, "):
        gen.readout(gen.init_prompt(), k=0)


# -------------------------------------------------------------------------------------- optimising


def test_adam_raises_a_random_classifier_logit(gen):
    """20 Adam steps on the soft tokens lower -logit_0 of a fixed random CNN.

    The tiny random pipeline's images hardly depend on the text (the prompt moves the pixels by about
    1e-3), so the decrease is small in absolute terms; what matters is that it is a steady descent.
    """
    torch.manual_seed(0)
    classifier = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
        )
        .eval()
        .requires_grad_(False)
    )
    prompt = gen.init_prompt().requires_grad_()
    optimiser = torch.optim.Adam([prompt], lr=0.05)
    losses = []
    for _ in range(20):
        loss = -classifier(gen.render(prompt))[:, 0].mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = -classifier(gen.render(prompt))[:, 0].mean().item()
    assert losses[1] < losses[0]
    assert final < losses[0] and final <= min(losses), (losses, final)


def test_module_imports_without_diffusers():
    """diffusers and transformers are imported lazily (only a built pipeline brings them in)."""
    import ast
    from pathlib import Path

    import lightning_xai.diffexplainer.diffusers_prompt as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    top_level = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    assert not [name for name in top_level if name and name.split(".")[0] in ("diffusers", "transformers")]
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "import lightning_xai.diffexplainer.diffusers_prompt as m\n"
        "assert m.DiffusersPromptGenerator.proximity == 0.0\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
def test_bf16_checkpointed_render_on_cuda(pipe):
    import copy

    cuda_pipe = copy.deepcopy(pipe)
    g = DiffusersPromptGenerator(
        cuda_pipe,
        init_word="cat",
        num_inference_steps=4,
        seeds=(0, 1),
        dtype=torch.bfloat16,
        gradient_checkpointing=True,
        device="cuda",
    )
    assert g.device.type == "cuda"
    prompt = g.init_prompt().requires_grad_()
    assert prompt.device.type == "cuda"
    images = g.render(prompt)
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    (grad,) = torch.autograd.grad(images.mean(), prompt)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(g.render(prompt), g.render(prompt))


def test_pickle_round_trip(gen):
    """Picklable (Lightning's DDP spawn pickles callbacks), and the copy renders the same images."""
    import pickle

    copy_ = pickle.loads(pickle.dumps(gen))
    prompt = gen.init_prompt()
    with torch.no_grad():
        assert torch.equal(copy_.render(prompt), gen.render(prompt))
    assert copy_.fingerprint == gen.fingerprint


def test_default_lr_is_a_few_percent_of_a_token_and_optimize_prompt_takes_it(pipe, gen):
    """Adam moves every coordinate by about lr, so the default step is scaled to the token embeddings."""
    from lightning_xai.diffexplainer import optimize_prompt
    from lightning_xai.world import WorldPromptGenerator

    norms = pipe.text_encoder.get_input_embeddings().weight.detach().norm(dim=-1)
    assert gen.default_lr == pytest.approx(0.03 * float(norms.median()))
    assert WorldPromptGenerator().default_lr == 0.1
    torch.manual_seed(0)
    classifier = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    kwargs = {"steps": 2, "early_stop": None, "image_seeds": (5,)}
    implicit = optimize_prompt(classifier, gen, 1, **kwargs)
    explicit = optimize_prompt(classifier, gen, 1, lr=gen.default_lr, **kwargs)
    assert torch.equal(implicit.prompt, explicit.prompt)
    larger = optimize_prompt(classifier, gen, 1, lr=10 * gen.default_lr, **kwargs)
    assert not torch.equal(larger.prompt, implicit.prompt)
