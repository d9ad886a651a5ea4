"""Configuration: the model and training dataclasses (a checkpoint stores ``asdict(ModelConfig)`` and rebuilds
the model from it), and where the shipped default model lives (torch-free, so the indexer can ask cheaply)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "default_model.pt"


def default_model_path() -> Path:
    """The shipped default model (package ``vlsearch_data``, the repository's ``data/`` folder)."""
    return Path(str(resources.files("vlsearch_data").joinpath(DEFAULT_MODEL_NAME)))


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
    freeze_backbone: bool = False
    # the per-channel mean and std that pixels in [0, 1] are normalised with before the CNN (ImageNet's by
    # default: right for ImageNet backbones, harmless from scratch); every path that prepares pixels for this
    # model reads them here (retrieval.transforms.prepare_batch)
    input_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    input_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        self.input_mean = tuple(float(v) for v in self.input_mean)  # a stored checkpoint gives lists
        self.input_std = tuple(float(v) for v in self.input_std)

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
    min_word_count: int = 1  # vocabulary threshold
