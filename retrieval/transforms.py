"""Image transforms: PIL image -> normalised tensor [3, S, S] (directly, or as uint8 normalised later in batches)."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: right for pretrained backbones, harmless from scratch
STD = (0.229, 0.224, 0.225)
# a model's own normalisation is in its config (ModelConfig.input_mean / input_std); these are the defaults
Stats = tuple[float, ...]


def eval_transform(image_size: int, mean: Stats = MEAN, std: Stats = STD) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``image_size``, centre-crop a square, normalise."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(mean, std)])


def eval_transform_uint8(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """:func:`eval_transform` without its last step: uint8 [3, S, S]; :func:`normalize_uint8` finishes it."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.PILToTensor()])


def normalize_uint8(images: torch.Tensor, mean: Stats = MEAN, std: Stats = STD) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float normalised, bit for bit as :func:`eval_transform` (keeps the memory format)."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def train_transform(image_size: int, augment: bool = True, flip: bool = True, min_scale: float = 0.6,
                    max_aspect: float = 1.18, mean: Stats = MEAN,
                    std: Stats = STD) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crops (and optional flips) for training; the eval transform when ``augment`` is off."""
    from torchvision import transforms as T

    if not augment:
        return eval_transform(image_size, mean, std)
    steps = [T.RandomResizedCrop(image_size, scale=(min_scale, 1.0), ratio=(1 / max_aspect, max_aspect),
                                 antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
