"""Training loop: contrastive learning of the dual encoder, validated by recall after every epoch.

The best epoch by validation rsum is kept. From-scratch VSE++ (hardest negative) can collapse in its
first epoch (every embedding equal, loss stuck at 2 x margin); ``hinge_warmup_epochs`` sums over
negatives first, and every epoch reports whether the image embeddings have collapsed.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from retrieval.core.captions import ImageCaptions
from retrieval.core.checkpoint import save_checkpoint
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.data import Batch, PairDataset, cache_images, collate, kept_rows
from retrieval.core.decode import load_rgb
from retrieval.core.device import autocast, resolve_device, resolve_precision, set_threads, unit_vectors
from retrieval.core.errors import CaptionsError, ConfigError, DecodeError
from retrieval.core.evaluate import EvalResult, embed_set, folded_metrics
from retrieval.core.features import build_feature_cache
from retrieval.core.glove import embedding_matrix, extend_vocabulary, load_glove
from retrieval.core.loss import make_loss
from retrieval.core.model import DualEncoder
from retrieval.core.tokenizer import Vocabulary
from retrieval.core.transforms import prepare_batch, train_transform

# Collapsed = the image embeddings crowd onto one point (mean cosine between different images above this)
# *and* retrieval is near chance; early in training the first alone is common and harmless.
COLLAPSE_SIMILARITY = 0.95
# Without a validation set, this share of the training images (at least 1, at most MAX_HELD_OUT), drawn with the
# run's seed, is held out to validate on.
VALIDATION_SHARE = 0.05
MAX_HELD_OUT = 1000


@dataclass
class StepEvent:
    epoch: int
    step: int
    steps: int
    loss: float
    images_per_s: float


@dataclass
class EpochEvent:
    epoch: int
    loss: float
    images_per_s: float
    seconds: float
    metrics: EvalResult
    best: bool
    collapsed: bool
    loss_name: str


@dataclass
class TrainResult:
    path: Path
    identity: str
    best_epoch: int
    best: EvalResult
    history: list[EpochEvent] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 5 % of the base rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class _ImageSource:
    """How training gets image tensors: frozen-trunk features of a few views per image computed once
    (:mod:`retrieval.core.features`), an in-memory uint8 pixel cache, or decoding with augmentation in DataLoader
    workers."""
    def __init__(self, model: DualEncoder, items: Sequence[ImageCaptions], config: TrainConfig,
                 device: torch.device, dtype: torch.dtype, augment: bool):
        self.model, self.device, self.dtype = model, device, dtype
        self.items = items
        size = model.config.image_size
        self.features = config.feature_cache and model.config.freeze_backbone
        self.streaming = augment and not self.features
        self.tail_stages = config.tail_stages if self.features else 0
        self.failed: list[str] = []  # images that could not be decoded, dropped from training
        self.views = 1
        self.rng = random.Random(config.seed)  # which cached view a step sees
        if self.streaming:
            self.transform = train_transform(size, augment=True, flip=config.flip, min_scale=config.crop_min_scale,
                                             max_aspect=config.crop_max_aspect)
            self.cache = None
            return
        if self.features:
            cache = build_feature_cache(
                model.image, items, image_size=size, views=config.cache_views if augment else 1,
                tail_stages=self.tail_stages, keep_stages=config.cache_stages if config.feature_cache_dir else 0,
                prepare=self._prepare, device=device, dtype=dtype,
                min_scale=config.crop_min_scale, max_aspect=config.crop_max_aspect, flip=config.flip,
                seed=config.seed, cache_dir=config.feature_cache_dir or None)
            self.cache, failed, self.views = cache.features, cache.failed, cache.views
        else:
            self.cache, failed = cache_images(items, size)
        if failed:
            keep = kept_rows(len(items), failed)
            self.failed = [str(items[i].image) for i in failed]
            self.cache, self.items = self.cache[keep], [items[i] for i in keep]

    def load(self, index: int) -> torch.Tensor | None:
        if self.cache is not None:
            return self.cache[index, self.rng.randrange(self.views)] if self.features else self.cache[index]
        try:  # the indexer's decoder, at up to twice the model's side: random crops zoom in
            return self.transform(load_rgb(self.items[index].image, 2 * self.model.config.image_size)[0])
        except DecodeError:
            return None

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return prepare_batch(images, self.device, self.model.config.input_mean, self.model.config.input_std)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """A batch from :meth:`load` -> vectors [B, D] (unit length after :func:`unit_vectors`)."""
        if not self.features:
            return self.model.encode_image(self._prepare(images))
        features = images.to(self.device).float()
        if self.tail_stages:
            features = self.model.image.tail_features(self._prepare(features), self.tail_stages)
        return self.model.image.project(features)


def _evaluate(model: DualEncoder, source: _ImageSource, items: Sequence[ImageCaptions]) -> tuple[EvalResult, bool]:
    """Validation recall, and whether the image embeddings have collapsed onto one point."""
    model.eval()
    images, texts, caption_image = embed_set(
        model, items, lambda indices: source.embed(torch.stack([source.load(i) for i in indices])),
        source.device, source.dtype)
    sample = images[:256]
    off_diagonal = (sample @ sample.T)[~np.eye(len(sample), dtype=bool)]
    metrics = folded_metrics(images, texts, caption_image)
    chance_r10 = 100.0 * min(1.0, 10 / len(items))
    crowded = len(sample) > 1 and float(off_diagonal.mean()) > COLLAPSE_SIMILARITY
    return metrics, crowded and metrics.t2i.r10 <= 2 * chance_r10


def hold_out(items: Sequence[ImageCaptions], seed: int = 0) -> tuple[list[ImageCaptions], list[ImageCaptions]]:
    """(training, validation) images: a seeded :data:`VALIDATION_SHARE` of ``items`` held out for validation."""
    if len(items) < 2:
        raise CaptionsError(f"training needs at least 2 images to hold one out for validation, not {len(items)}; "
                            "or give a validation set")
    count = min(MAX_HELD_OUT, max(1, round(len(items) * VALIDATION_SHARE)))
    held = set(random.Random(seed).sample(range(len(items)), count))
    return ([item for i, item in enumerate(items) if i not in held],
            [item for i, item in enumerate(items) if i in held])


def train(train_items: Sequence[ImageCaptions], val_items: Sequence[ImageCaptions] | None, model_config: ModelConfig,
          config: TrainConfig, out_path: str | Path,
          on_event: Callable[[StepEvent | EpochEvent], None] | None = None,
          initial: DualEncoder | None = None) -> TrainResult:
    """Train a new model on ``train_items``, validate on ``val_items`` every epoch, keep the best at ``out_path``.

    Without ``val_items`` (None or empty), :func:`hold_out` keeps a seeded share of ``train_items`` for validation.

    ``initial`` continues from a trained model: its architecture and vocabulary win over ``model_config``,
    whose ``freeze_backbone`` still says whether this run trains the trunk (with ``feature_cache``, a
    frozen-trunk run costs one forward pass per image, then trains the heads ~10x faster).
    """
    if config.epochs < 1:
        raise ConfigError("--epochs 0 trains nothing; only a --fusion-stage takes it (to make its choices on "
                          "validation)")
    if not val_items:
        train_items, val_items = hold_out(train_items, config.seed)
    if not train_items:
        raise CaptionsError("training needs at least one training image and one validation image")
    seed_everything(config.seed)
    set_threads()
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    if initial is not None:
        model_config = replace(initial.config, freeze_backbone=model_config.freeze_backbone)
        model, initial.config = initial.to(device), model_config
        model.image.trunk.requires_grad_(not model_config.freeze_backbone)
    else:
        vocab = Vocabulary.build((c for item in train_items for c in item.captions), config.min_word_count)
        model = _new_model(model_config, vocab, config).to(device)
    if config.freeze_embeddings:
        model.text.embed.weight.requires_grad_(False)
    if config.feature_cache and model_config.freeze_backbone and config.tail_stages:
        model.image.split_trunk(config.tail_stages)[1].requires_grad_(True)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    train_source = _ImageSource(model, train_items, config, device, dtype, augment=config.augment)
    val_source = _ImageSource(model, val_items, config, device, dtype, augment=False)
    train_items, val_items = train_source.items, val_source.items
    skipped = train_source.failed + val_source.failed
    if not train_items or not val_items:
        raise CaptionsError(f"no readable images left to train on ({len(skipped)} could not be decoded)")
    # streaming: an unreadable file makes load() return None and collate drops it
    dataset = PairDataset(train_items, model.vocab, train_source.load, seed=config.seed,
                          captions_per_image=config.captions_per_image)
    loader_kwargs = {"num_workers": config.workers, "persistent_workers": False} if train_source.streaming else {}
    loss_fn = make_loss(config.loss, config.margin, config.pair_weight).to(device)
    warm_loss_fn = make_loss("hinge-sum", config.margin).to(device) if config.loss == "hinge" else loss_fn

    pretrained_backbone = model_config.weights != "none"
    backbone = [p for p in model.image.trunk.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    rest = [p for p in list(model.parameters()) + list(loss_fn.parameters())
            if p.requires_grad and id(p) not in backbone_ids]
    groups = [{"params": rest, "lr": config.lr}]
    if backbone:  # a trunk being fine-tuned, or the tail of a frozen one
        groups.append({"params": backbone, "lr": config.lr * (config.backbone_lr_scale if pretrained_backbone else 1)})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(steps_per_epoch * config.epochs, max(1, int(config.warmup_epochs * steps_per_epoch))))

    best: TrainResult | None = None
    history: list[EpochEvent] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        if model_config.freeze_backbone:
            model.image.trunk.eval()  # frozen BatchNorm statistics stay as loaded
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate,
                            drop_last=len(dataset) > config.batch_size, **loader_kwargs)
        active_loss = warm_loss_fn if epoch <= config.hinge_warmup_epochs else loss_fn
        started, seen, total_loss = time.perf_counter(), 0, 0.0
        for step, batch in enumerate(loader, 1):
            skipped.extend(str(train_items[i].image) for i in batch.failed if str(train_items[i].image) not in skipped)
            if len(batch.images) < 2:  # a contrastive step needs at least one negative
                continue
            loss = _train_step(model, train_source, active_loss, batch, device, dtype, optimizer, config.grad_clip)
            scheduler.step()
            seen += len(batch.images)
            total_loss += loss
            if on_event:
                on_event(StepEvent(epoch, step, len(loader), loss, seen / (time.perf_counter() - started)))
        seconds = time.perf_counter() - started
        metrics, collapsed = _evaluate(model, val_source, val_items)
        improved = best is None or metrics.rsum > best.best.rsum
        if improved:
            identity = save_checkpoint(model, out_path, metrics={"val": metrics.to_dict(), "epoch": epoch},
                                       train_config=asdict(config))
            best = TrainResult(Path(out_path), identity, epoch, metrics)
        loss_name = "hinge-sum" if active_loss is not loss_fn else config.loss
        event = EpochEvent(epoch, total_loss / max(1, len(loader)), seen / seconds, seconds, metrics, improved,
                           collapsed, loss_name)
        history.append(event)
        if on_event:
            on_event(event)
    assert best is not None
    best.history = history
    best.skipped_images = skipped
    return best


def _new_model(model_config: ModelConfig, vocab: Vocabulary, config: TrainConfig) -> DualEncoder:
    """A fresh model; with ``config.glove``, a vocabulary extended by GloVe's most frequent words and word
    embeddings initialised from GloVe (kept in the checkpoint: queries never need the GloVe files)."""
    if not config.glove:
        return DualEncoder(model_config, vocab)

    glove = load_glove(config.glove)
    if glove.dim != model_config.word_dim:
        raise ConfigError(f"GloVe {config.glove} has {glove.dim}-dimensional vectors; set word_dim to {glove.dim}")
    vocab = extend_vocabulary(vocab, glove, config.glove_words)
    model = DualEncoder(model_config, vocab)
    with torch.no_grad():
        model.text.embed.weight.copy_(embedding_matrix(vocab, glove, model.text.embed.weight))
    return model


def _train_step(model: DualEncoder, source: _ImageSource, loss_fn: torch.nn.Module, batch: Batch,
                device: torch.device, dtype: torch.dtype, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    negatives = mask = None
    with autocast(device, dtype):
        images = source.embed(batch.images)
        texts = model.encode_text(batch.tokens.to(device), batch.lengths)
        if batch.negatives is not None:
            negatives = model.encode_text(batch.negatives.to(device), batch.negative_lengths)
            mask = batch.negative_mask.to(device)
    # unit float32 vectors whatever the precision, as indexing and search see them
    images, texts = unit_vectors(images), unit_vectors(texts)
    negatives = None if negatives is None else unit_vectors(negatives)
    # one contrastive loss per caption slot: each is B x B with distinct images, so no false negatives
    slots = [slice(k, k + len(images)) for k in range(0, len(texts), len(images))]
    loss = torch.stack([loss_fn(images, texts[s], None if negatives is None else negatives[s],
                                None if mask is None else mask[s]) for s in slots]).mean()
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())
