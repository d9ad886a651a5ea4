"""Image transforms: PIL image -> normalised tensor [3, S, S]."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: right for pretrained backbones, harmless from scratch
STD = (0.229, 0.224, 0.225)


def eval_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the short side to ``image_size``, centre-crop a square, normalise."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(image_size, antialias=True), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(MEAN, STD)])


def train_transform(image_size: int, augment: bool = True, flip: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crops (and optional flips) for training; the eval transform when ``augment`` is off."""
    from torchvision import transforms as T

    if not augment:
        return eval_transform(image_size)
    steps = [T.RandomResizedCrop(image_size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])
