"""The dual encoder: a torchvision CNN and a GRU, both ending in L2-normalised vectors of one joint space.

The model only *encodes*; :mod:`retrieval.core.loss` turns encodings into a training signal.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from retrieval.core.config import TEXT_ENCODERS, ModelConfig
from retrieval.core.errors import ConfigError
from retrieval.core.fusion import FusionHead
from retrieval.core.tokenizer import PAD_ID, Vocabulary

POOL_GRID = {"avg": 1, "grid2": 2}


# torchvision CNN families whose feature trunk ends in a [B, C, H, W] map this module can pool
CNN_FAMILIES = ("resnet", "resnext", "wide_resnet", "regnet", "mobilenet", "efficientnet", "densenet", "convnext",
                "shufflenet", "mnasnet", "vgg", "alexnet")


def available_backbones() -> list[str]:
    """Names accepted by ``--backbone``: torchvision's classification CNNs."""
    import torchvision

    return sorted(name for name in torchvision.models.list_models(module=torchvision.models)
                  if name.startswith(CNN_FAMILIES))


def _torchvision_model(name: str, weights: str) -> nn.Module:
    import torchvision

    if name not in available_backbones():
        raise ConfigError(f"unknown backbone {name!r}; choose a torchvision CNN, e.g. resnet18, resnet50, "
                          "mobilenet_v3_small, efficientnet_b0 (families: " + ", ".join(CNN_FAMILIES) + ")")
    if weights == "imagenet":
        try:
            return torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as exc:  # no cache and no network, or a corrupt download
            raise ConfigError(
                f"could not get ImageNet weights for {name} ({exc.__class__.__name__}: {exc}); download the file "
                f"elsewhere and pass it with --weights PATH (a torchvision state dict for {name})") from exc
    model = torchvision.models.get_model(name, weights=None)
    if weights not in ("none", "", None):
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"--weights must be none, imagenet or an existing file; {weights!r} is none of these")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as exc:
            raise ConfigError(f"{path}: not a state dict for {name} ({exc})") from exc
    return model


def _feature_trunk(model: nn.Module, drop_stages: int = 0) -> nn.Module:
    """The convolutional part of a classifier: everything before global pooling and the head, less its
    last ``drop_stages`` stages (a ResNet's layer4 holds most of its weights and, on small images, half
    its CPU time, while layer3 still sees the whole image, at twice the spatial resolution)."""
    if hasattr(model, "features"):  # mobilenet, efficientnet, convnext, densenet, vgg, squeezenet, ...
        stages = list(model.features.named_children())  # names kept: checkpoints store them
    else:
        names = [name for name, _ in model.named_children()]
        head = next((names.index(n) for n in names if n in ("avgpool", "fc", "classifier", "head")), None)
        if not head:  # resnet, resnext, wide_resnet, regnet, shufflenet stop at avgpool or fc
            raise ConfigError(f"backbone {model.__class__.__name__} has no recognisable feature trunk")
        stages = [(str(k), getattr(model, n)) for k, n in enumerate(names[:head])]
    if not 0 <= drop_stages <= len(stages) - 2:
        raise ConfigError(f"drop_stages must be 0 to {len(stages) - 2} for {model.__class__.__name__}, "
                          f"not {drop_stages}")
    return nn.Sequential(OrderedDict(stages[: len(stages) - drop_stages]))


def _trunk_channels(trunk: nn.Module) -> int:
    """Channels of the trunk's output, read from its last normalisation or convolution (no forward pass)."""
    for module in reversed(list(trunk.modules())):
        if isinstance(module, nn.BatchNorm2d):
            return module.num_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
        if isinstance(module, nn.Linear):  # ConvNeXt blocks end in a channels-last MLP
            return module.out_features
    raise ConfigError(f"cannot tell how many channels {trunk.__class__.__name__} produces")


class TFSameConv2d(nn.Conv2d):
    """A Conv2d padded as TensorFlow's "SAME": the total padding is split with the odd pixel after (bottom,
    right), where torchvision pads symmetrically; on a stride-2 3x3 convolution of an even-sized input that is
    0 before and 1 after instead of 1 and 1. Same parameters and state-dict keys as a Conv2d."""
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []  # F.pad order: (left, right, top, bottom)
        for size, kernel, stride, dilation in reversed(list(zip(x.shape[-2:], self.kernel_size, self.stride,
                                                                self.dilation))):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def use_tf_padding(module: nn.Module) -> None:
    """Replace, in place, every strided Conv2d under ``module`` by a :class:`TFSameConv2d` sharing its
    parameters (stride-1 convolutions with odd kernels pad the same way in both frameworks)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d and max(child.stride) > 1:
            same = TFSameConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, 0,
                                child.dilation, child.groups, child.bias is not None, device=child.weight.device)
            same.weight, same.bias = child.weight, child.bias
            setattr(module, name, same)
        else:
            use_tf_padding(child)


class ImageEncoder(nn.Module):
    """CNN trunk -> pooled features -> linear projection -> L2-normalised [B, D]."""
    def __init__(self, config: ModelConfig, pretrained: bool = True):
        super().__init__()
        if config.pool not in POOL_GRID:
            raise ConfigError(f"unknown pool {config.pool!r}: use avg or grid2")
        weights = config.weights if pretrained else "none"
        self.trunk = _feature_trunk(_torchvision_model(config.backbone, weights), config.drop_stages)
        if config.tf_padding:
            use_tf_padding(self.trunk)
        self.pool = nn.AdaptiveAvgPool2d(POOL_GRID[config.pool])
        self.feature_dim = _trunk_channels(self.trunk) * POOL_GRID[config.pool] ** 2
        self.proj = nn.Linear(self.feature_dim, config.embed_dim)
        self.dropout = config.dropout
        if config.freeze_backbone:
            self.trunk.requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> pooled trunk features [B, F] (what a feature cache stores)."""
        return self.pool(self.trunk(images)).flatten(1)

    def split_trunk(self, tail_stages: int) -> tuple[nn.Module, nn.Module]:
        """(head, tail): the trunk less its last ``tail_stages`` stages, and those stages (the tail may be empty)."""
        if not 0 <= tail_stages < len(self.trunk):
            raise ConfigError(f"the trunk has {len(self.trunk)} stages; cannot train the last {tail_stages} alone")
        cut = len(self.trunk) - tail_stages
        return self.trunk[:cut], self.trunk[cut:]

    def tail_features(self, maps: torch.Tensor, tail_stages: int) -> torch.Tensor:
        """Feature maps after the trunk's head [B, C, h, w] -> pooled features [B, F] (the tail runs on them)."""
        return self.pool(self.split_trunk(tail_stages)[1](maps)).flatten(1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[B, F] -> [B, D], unit length."""
        return F.normalize(self.proj(F.dropout(features.float(), self.dropout, self.training)), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(images))

    def with_map(self, images: torch.Tensor, stages: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (unit vectors [B, D], the region map [B, C, h, w]): one trunk pass. The region map
        is the trunk's map before pooling, or with ``stages`` > 1 the outputs of its last ``stages`` stages side
        by side at the finest grid among them, each coarser map repeated over it (a ResNet's layer2 sees
        objects at twice layer3's resolution)."""
        self._check_region_stages(stages)
        maps = []
        trunk_map = images
        for position, stage in enumerate(self.trunk):
            trunk_map = stage(trunk_map)
            if position >= len(self.trunk) - stages:
                maps.append(trunk_map)
        vectors = self.project(self.pool(trunk_map).flatten(1))
        if stages == 1:
            return vectors, trunk_map
        grid = max((m.shape[-2:] for m in maps), key=lambda size: size[0] * size[1])
        return vectors, torch.cat([F.interpolate(m, size=grid, mode="nearest") for m in maps], dim=1)

    def _check_region_stages(self, stages: int) -> None:
        if not 1 <= stages < len(self.trunk):
            raise ConfigError(f"fusion_region_stages {stages}: the trunk has {len(self.trunk)} stages, so regions "
                              f"can come from its last 1 to {len(self.trunk) - 1}")

    def region_channels(self, stages: int = 1) -> int:
        """Channels of :meth:`with_map`'s region map."""
        self._check_region_stages(stages)
        return sum(_trunk_channels(self.trunk[:len(self.trunk) - n]) for n in range(stages))


class TextEncoder(nn.Module):
    """Word embeddings -> per-word states -> one sentence vector -> projection -> L2-normalised [B, D].

    ``text_encoder`` picks the states and the sentence vector: ``gru`` a GRU over packed sequences, its last
    hidden state; ``gru-pool`` the same GRU's output at every word, averaged and max-pooled over the sentence
    (every word reaches the vector directly, which learns faster from few captions); ``pool`` a layer per word
    with no word order, averaged and max-pooled (cheap).
    """
    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        if config.text_encoder not in TEXT_ENCODERS:
            raise ConfigError(f"unknown text encoder {config.text_encoder!r}: use {' or '.join(TEXT_ENCODERS)}")
        self.kind = config.text_encoder
        self.embed = nn.Embedding(vocab_size, config.word_dim, padding_idx=PAD_ID)
        self.dropout = config.dropout
        pooled = 1 if self.kind == "gru" else 2  # mean and max side by side
        if self.kind == "pool":
            self.mlp = nn.Sequential(nn.Linear(config.word_dim, config.hidden_size), nn.ReLU())
            self.proj = nn.Linear(pooled * config.hidden_size, config.embed_dim)
            return
        self.gru = nn.GRU(config.word_dim, config.hidden_size, num_layers=config.gru_layers,
                          batch_first=True, bidirectional=config.bidirectional)
        directions = 2 if config.bidirectional else 1
        self.proj = nn.Linear(pooled * config.hidden_size * directions, config.embed_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] (padded with 0), lengths [B] -> [B, D]."""
        return self._encode(tokens, lengths)[0]

    def with_words(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, L], lengths [B] -> (the vector of :meth:`forward` [B, D], per-word states [B, L, S + W]:
        the GRU's output (or the pooled encoder's per-word layer) at each word beside the word's embedding;
        zero past each length)."""
        vectors, states, words = self._encode(tokens, lengths)
        return vectors, torch.cat([states, words], dim=-1)

    def _encode(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (sentence vectors [B, D], per-word states [B, L, S] and embeddings [B, L, W], zero past each length)."""
        words = F.dropout(self.embed(tokens), self.dropout, self.training)  # [B, L, W]
        mask = (tokens != PAD_ID).unsqueeze(-1)  # [B, L, 1]
        if self.kind == "pool":  # each word on its own: the layer runs once per distinct word of the batch
            distinct, where = torch.unique(tokens, return_inverse=True)
            states = self.mlp(F.dropout(self.embed(distinct), self.dropout, self.training))[where] * mask
            return self._pool(states, mask), states, words
        packed = pack_padded_sequence(words, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, hidden = self.gru(packed)  # hidden [layers * dirs, B, H]
        states, _ = pad_packed_sequence(output, batch_first=True, total_length=tokens.shape[1])  # [B, L, H * dirs]
        if self.kind == "gru-pool":
            return self._pool(states, mask), states, words
        dirs = 2 if self.gru.bidirectional else 1
        last = hidden[-dirs:].transpose(0, 1).reshape(tokens.shape[0], -1)  # [B, H * dirs]
        return F.normalize(self.proj(last), dim=-1), states, words

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean and max over the sentence's words -> [B, 2S] -> projection -> [B, D] unit vectors."""
        mean = states.sum(1) / mask.sum(1).clamp(min=1)
        largest = states.masked_fill(~mask, float("-inf")).amax(1)
        return F.normalize(self.proj(torch.cat([mean, largest], dim=1)), dim=-1)

    @property
    def state_dim(self) -> int:
        """Size of a per-word state of :meth:`with_words`."""
        if self.kind == "pool":
            return self.mlp[0].out_features + self.embed.embedding_dim
        return self.gru.hidden_size * (2 if self.gru.bidirectional else 1) + self.embed.embedding_dim


def pad_batch(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (tokens [B, Lmax] padded with 0, lengths [B])."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    tokens = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return tokens, lengths


class DualEncoder(nn.Module):
    """Both branches plus the vocabulary. ``image`` is None when loaded for text queries only."""
    def __init__(self, config: ModelConfig, vocab: Vocabulary, *, with_image: bool = True, pretrained: bool = True):
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.image = ImageEncoder(config, pretrained) if with_image else None
        self.text = TextEncoder(config, len(vocab))
        self.fusion = None  # the re-ranking head (retrieval.core.fusion), when config.fusion_dim > 0
        if config.fusion_dim:
            channels = self.image.region_channels(config.fusion_region_stages) if self.image is not None else None
            self.fusion = FusionHead(config, channels, self.text.state_dim)
        self.identity = ""  # content hash, set by the checkpoint loader
        self.fusion_identity = ""  # content hash of the fusion head ("" without one)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, D] unit vectors."""
        if self.image is None:
            raise RuntimeError("this model was loaded without its image branch")
        return self.image(images)

    def encode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, L], lengths [B] -> [B, D] unit vectors."""
        return self.text(tokens, lengths)

    def encode_image_regions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, 3, S, S] -> (unit vectors [B, D], the fusion head's unit region vectors [B, R, d], or None
        without a head)."""
        if self.image is None:
            raise RuntimeError("this model was loaded without its image branch")
        if self.fusion is None:
            return self.encode_image(images), None
        vectors, region_map = self.image.with_map(images, self.config.fusion_region_stages)
        return vectors, self.fusion.regions(region_map)

    def encode_text_words(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, L], lengths [B] -> (unit vectors [B, D], the fusion head's unit word vectors [B, L, d])."""
        if self.fusion is None:
            raise RuntimeError("this model has no fusion head")
        vectors, states = self.text.with_words(tokens, lengths)
        return vectors, self.fusion.words(states)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> padded token ids and lengths, on the model's device."""
        tokens, lengths = pad_batch([self.vocab.encode(c) for c in captions])
        return tokens.to(self.text.embed.weight.device), lengths

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Convenience: raw strings -> [B, D]."""
        return self.encode_text(*self.tokenize(captions))
