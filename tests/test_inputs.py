"""Input conventions: concept folders follow the model's channels (a grayscale model reads its concept PNGs
as grayscale), and a mismatch names both shapes and the argument to pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _models import SmallNet, make_trainer
from lightning.pytorch import seed_everything
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import ConceptAttributionCallback
from lightning_xai.records import read_records
from lightning_xai.results import read_result
from lightning_xai.tcav.data import ConceptDataError, load_images


class GrayNet(SmallNet):
    """SmallNet on one input channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)


def _gray(n: int, seed: int) -> TensorDataset:
    """The class is the image's brightness: 0 dark, 1 middle, 2 bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.3 + 0.3 * y[:, None, None, None]
    return TensorDataset(x, y)


def _png_folder(folder: Path, value: float, n: int = 12) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # RGB files, as users' concept folders usually are
        pixels = np.clip(value + rng.random((8, 8, 1)) * 0.3, 0, 1).repeat(3, axis=2)
        Image.fromarray((pixels * 255).astype(np.uint8), "RGB").save(folder / f"{i}.png")
    return folder


def test_an_rgb_concept_folder_is_read_in_the_models_channels(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path / "bright", 0.6)
    gray = load_images("bright", folder, input_shape=(1, 8, 8))
    rgb = load_images("bright", folder, input_shape=(3, 8, 8))
    assert gray.shape == (12, 1, 8, 8) and rgb.shape == (12, 3, 8, 8)
    assert torch.allclose(gray[:, 0], rgb.mean(1), atol=1 / 255)  # a gray image: every channel alike
    with pytest.raises(
        ConceptDataError,
        match=r"shape \[1, 8, 8\] but the model's inputs are \[3, 16, 16\].*concept_transform=",
    ):
        load_images("bright", torch.rand(4, 1, 8, 8), input_shape=(3, 16, 16))


@pytest.mark.slow
def test_a_grayscale_model_is_explained_with_its_concept_folder(tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    model = GrayNet()
    train, val = (
        DataLoader(_gray(256, 1), batch_size=32, shuffle=True),
        DataLoader(_gray(96, 2), batch_size=32),
    )
    make_trainer(tmp_path / "train", [], max_epochs=6, logger=False, limit_train_batches=8).fit(
        model, train, val
    )
    cb = ConceptAttributionCallback(
        {"bright": _png_folder(tmp_path / "bright", 0.6)}, n_random=10, images_per_class=4, probe_images=1,
        m_steps=4, on_error="raise",
    )  # fmt: skip
    trainer = make_trainer(tmp_path / "explain", [cb])
    trainer.validate(model, val, verbose=False)
    (record,) = read_records(trainer.log_dir, method="concept_attribution")
    scores = {s.class_name: s for s in read_result(record).scores}
    # brightness is what the classes are: adding it raises the bright class and lowers the dark one
    assert scores["class_2"].tcav >= 0.9 and scores["class_2"].significant, scores
    assert scores["class_0"].tcav <= 0.1, scores


def test_depict_names_the_generated_shape_and_the_argument_for_a_grayscale_model() -> None:
    from lightning_xai.permutation import ConceptPermutation
    from lightning_xai.world import TinyCNN, WorldGenerator, world_concept_table

    gray = TinyCNN(num_classes=6, width=4)
    first = gray.conv1[0]
    gray.conv1[0] = nn.Conv2d(
        1, first.out_channels, 3, stride=first.stride, padding=first.padding
    )  # one channel in
    table = world_concept_table(12, seed=0)
    depict = ConceptPermutation(
        WorldGenerator(), table, model=gray, n_repeats=2, show_progress=False, n_bootstrap=10
    )
    with pytest.raises(
        ValueError, match=r"cannot read the generated images of shape \[\d+, 3, 64, 64\].*Pass transform="
    ):
        depict.explain()
    adapted = ConceptPermutation(
        WorldGenerator(), table, model=gray, n_repeats=2, show_progress=False, n_bootstrap=10,
        transform=lambda x: x.mean(1, keepdim=True),
    )  # fmt: skip
    assert len(adapted.explain().importance) == len(table.concepts)


def test_depict_fits_generated_images_to_a_grayscale_model_of_another_size(tmp_path: Path) -> None:
    from lightning_xai.callbacks import ConceptPermutationCallback
    from lightning_xai.world import TinyCNN, WorldDataModule, WorldGenerator, world_concept_table

    dm = WorldDataModule(n_train=64, n_val=64, size=32, seed=0)
    dm.setup()

    def gray(dataset) -> TensorDataset:
        items = [dataset[i] for i in range(len(dataset))]
        return TensorDataset(
            torch.stack([x.mean(0, keepdim=True) for x, *_ in items]),
            torch.tensor([int(y) for _, y, *_ in items]),
        )

    model = TinyCNN(num_classes=dm.num_classes, width=4)
    first = model.conv1[0]
    model.conv1[0] = nn.Conv2d(
        1, first.out_channels, 3, stride=first.stride, padding=first.padding, bias=False
    )
    cb = ConceptPermutationCallback(
        WorldGenerator(), world_concept_table(12, seed=0), n_repeats=2, on_error="raise", show_progress=False
    )
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=2)
    with pytest.warns(
        UserWarning,
        match=r"generated images \[3, 64, 64\] are resized and converted to the model's inputs \[1, 32, 32\].*transform=",
    ):
        trainer.fit(
            model, DataLoader(gray(dm.train_set), batch_size=32), DataLoader(gray(dm.val_set), batch_size=32)
        )
    (record,) = read_records(trainer.log_dir, method="concept_permutation")
    assert record.name == "epoch" and cb.input_shape == (1, 32, 32)
    assert {r.concept for r in read_result(record).importance} == {"shape", "colour", "texture", "marker"}
