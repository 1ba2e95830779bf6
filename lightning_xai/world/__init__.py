"""The planted-concept world: synthetic scenes whose true reasons are known.

Scenes
    A scene has four slots: an object's **shape** (circle, square, triangle) and **colour** (red,
    green, blue, yellow), the background **texture** (plain, striped, dotted, checkered, zigzag,
    all in neutral greys) and an optional spurious **marker** (a small white cross in a corner chosen
    by the seed). Captions are plain English, ``"a red circle on a striped background"``,
    ``"a blue square on a plain background with a marker"`` (:func:`parse_caption`,
    :func:`make_caption`). A concept is one slot value, named ``"slot:value"``
    (``"texture:striped"``, ``"colour:red"``, ``"marker:present"``; :func:`all_concepts`).

Rendering
    :func:`render` (and the vectorised :func:`render_batch`) draws a scene deterministically from
    (slots, seed) and returns exact per-concept pixel masks. All random quantities are drawn from
    the seed *before* the slots are used, so the same seed with one slot changed differs only in
    that concept's pixels: this is what matched concept sets and interventions rely on.
    :class:`WorldGenerator` exposes the renderer as a text-to-image generator
    (``generate(captions, seeds)``).

Tasks and their ground truth (:func:`get_task`)
    * ``"shape_texture"`` (default, 6 classes): ``"<shape>/lined"`` if the texture is striped or
      zigzag, else ``"<shape>/unlined"``. Every shape and texture concept matters; **colour and
      the marker are irrelevant**.
    * ``"shape"``: class = shape (only shape concepts matter).
    * ``"colour"``: class = colour (only colour concepts matter).
    * ``"texture"``: class = texture (only texture concepts matter).
    * Any user function: :meth:`LabelRule.from_function`.

    :meth:`LabelRule.relevant_concepts`, :meth:`LabelRule.positive_concepts` and
    :meth:`LabelRule.irrelevant_concepts` are computed by exhaustive enumeration of all slot
    combinations, for built-in and user rules alike.

Spurious correlation
    ``WorldDataset(..., spurious_class=c, spurious_p=p)`` makes the marker co-occur with class
    ``c`` in the training split only (P(marker | c) = p, other classes ``marker_rate_other``,
    default 0). Validation/test splits, and every split when ``spurious_p`` is None, draw the
    marker independently of the label with probability ``marker_rate`` (default 0.5).

Concept detectors
    :class:`WorldConceptDetector` (a small CNN with a head per slot, :func:`train_world_concept_detector`,
    100% held-out accuracy on every slot after a minute of CPU training) and the pixel-rule
    :class:`WorldColourMarkerDetector` (colour and marker only, no training). Their ``scores`` method is
    the concept-detector form DiffExplainer's bias report takes.

Data and models
    :class:`WorldDataset`, :class:`WorldDataModule` (Lightning), probe sets :func:`concept_set`
    (matched by default; ``kind="isolated"`` is confounded and for comparison only) and
    :func:`random_set`; :class:`TinyCNN` and :func:`train_tiny_cnn` (CPU, about a minute).

How a model is judged
    A label rule says what the *data* depends on; what a trained model responds to is measured by
    :func:`interventional_effects`: the mean change (and standard error) of every class logit when
    a concept is introduced into otherwise identical scenes.

Example:
    >>> from lightning_xai.world import render, get_task, parse_caption
    >>> scene = render("a red circle on a striped background", seed=0)
    >>> scene.image.shape, sorted(scene.masks)
    (torch.Size([3, 64, 64]), ['colour:red', 'shape:circle', 'texture:striped'])
    >>> rule = get_task("shape_texture")
    >>> rule.class_name(parse_caption("a red circle on a striped background"))
    'circle/lined'
    >>> sorted(rule.irrelevant_concepts())
    ['colour:blue', 'colour:green', 'colour:red', 'colour:yellow', 'marker:present']
"""

from .concept_detector import (
    DETECTOR_SLOTS,
    DetectorReport,
    WorldConceptDetector,
    train_world_concept_detector,
)
from .concept_table import world_concept_table
from .data import (
    CONCEPT_SET_KINDS,
    SPLITS,
    WorldDataModule,
    WorldDataset,
    concept_set,
    concept_slots,
    random_set,
    random_set_slots,
    random_slots,
    sample_slots,
    scene_seeds,
)
from .detector import WorldColourMarkerDetector
from .diffusion_prompt import WORLD_PROMPT_POSITIONS, WorldDiffusionPromptGenerator
from .effects import EffectTable, interventional_effects, model_logits
from .generator import WorldGenerator
from .model import DEFAULT_TRAINING, TinyCNN, TrainedWorld, train_tiny_cnn
from .prompt import WorldPromptGenerator
from .render import RENDERER_VERSION, Scene, render, render_batch
from .rules import DEFAULT_TASK, TASKS, LabelRule, get_task, resolve_rule
from .vocab import (
    COLOURS,
    LINED_TEXTURES,
    MARKER_VALUES,
    SHAPES,
    SLOT_NAMES,
    TEXTURES,
    VOCABULARY,
    Slots,
    all_concepts,
    all_slot_combinations,
    concept_name,
    make_caption,
    parse_caption,
    parse_concept,
)

__all__ = [
    "COLOURS",
    "CONCEPT_SET_KINDS",
    "DEFAULT_TASK",
    "DEFAULT_TRAINING",
    "DETECTOR_SLOTS",
    "LINED_TEXTURES",
    "MARKER_VALUES",
    "RENDERER_VERSION",
    "SHAPES",
    "SLOT_NAMES",
    "SPLITS",
    "TASKS",
    "TEXTURES",
    "VOCABULARY",
    "WORLD_PROMPT_POSITIONS",
    "DetectorReport",
    "EffectTable",
    "LabelRule",
    "Scene",
    "Slots",
    "TinyCNN",
    "TrainedWorld",
    "WorldColourMarkerDetector",
    "WorldConceptDetector",
    "WorldDataModule",
    "WorldDataset",
    "WorldDiffusionPromptGenerator",
    "WorldGenerator",
    "WorldPromptGenerator",
    "all_concepts",
    "all_slot_combinations",
    "concept_name",
    "concept_set",
    "concept_slots",
    "get_task",
    "interventional_effects",
    "make_caption",
    "model_logits",
    "parse_caption",
    "parse_concept",
    "random_set",
    "random_set_slots",
    "random_slots",
    "render",
    "render_batch",
    "resolve_rule",
    "sample_slots",
    "scene_seeds",
    "train_tiny_cnn",
    "train_world_concept_detector",
    "world_concept_table",
]
