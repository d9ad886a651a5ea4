"""Training and measuring the fusion head (retrieval.core.fusion) on top of a frozen dual encoder.

The dual encoder never changes here (its weights stay byte-identical in the saved file, so indexes built
with it stay valid). The trunk's maps of the training images are computed once and cached (float16);
each step then trains only the head: each caption against its image and the dual encoder's own
top-ranked wrong images (a cross-entropy over 1 + K), plus its own false re-wordings (attribute swaps)
against its image as a two-way choice -- exactly the errors the re-ranker exists to fix.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.core.captions import ImageCaptions, load_captions
from retrieval.core.checkpoint import fusion_identity, load_model, read_checkpoint, save_checkpoint, write_payload
from retrieval.core.config import ModelConfig, TrainConfig
from retrieval.core.data import cache_images, kept_rows
from retrieval.core.device import set_threads
from retrieval.core.errors import CaptionsError, ConfigError
from retrieval.core.evaluate import EvalResult, encode_texts, folded_metrics, t2i_ranks
from retrieval.core.fusion import DEFAULT_DEPTH, FusionHead
from retrieval.core.model import DualEncoder
from retrieval.core.transforms import prepare_batch

EVAL_RERANK = 20  # validation re-ranks each caption's top 20 (cheap; search defaults to more)
MIX_CHOICES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # the first-stage score's share: 0.05 ... 0.95
BANK_SHARPNESS_CHOICES = (10.0, 20.0, 30.0, 50.0)  # with a query bank: the hubness's soft maximum
BANK_WEIGHT_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)  # and its weight in the score (0: the bank unused)


@dataclass
class FusionEpoch:
    """One epoch of the fusion stage (an event for the progress display, like train.EpochEvent)."""
    epoch: int
    loss: float
    seconds: float
    first: float  # validation t2i R@1 of the dual encoder
    reranked: float  # the same after re-ranking
    best: bool
    mix: float  # the first-stage score's share in the head's score
    bank_weight: float | None = None  # the query bank's hubness weight (None: no bank)


@dataclass
class EncodedImages:
    """What the frozen image branch gives for a set of images, computed once."""
    vectors: torch.Tensor  # [I, D] unit
    maps: torch.Tensor  # [I, C, h, w] float16: the region map (ImageEncoder.with_map)


def encode_maps(model: DualEncoder, items: Sequence[ImageCaptions], batch_size: int = 256
                ) -> tuple[EncodedImages, list[int]]:
    """Decode every image once and run the frozen trunk; returns the encodings (of the images that could be
    decoded, in order) and the rows that failed."""
    pixels, failed = cache_images(items, model.config.image_size)
    if failed:
        pixels = pixels[kept_rows(len(items), failed)]
    vectors, maps = [], []
    model.image.eval()
    device = next(model.image.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            batch = prepare_batch(pixels[start:start + batch_size], device, model.config.input_mean,
                                  model.config.input_std)
            vector, region_map = model.image.with_map(batch, model.config.fusion_region_stages)
            vectors.append(vector.float())
            maps.append(region_map.half().contiguous())
    return EncodedImages(torch.cat(vectors), torch.cat(maps)), failed


def word_vectors(model: DualEncoder, captions: Sequence[str], batch_size: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions -> (unit vectors [C, D], the head's word vectors [C, L, d], lengths [C]) without gradients."""
    vectors, words, lengths = [], [], []
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            tokens, length = model.tokenize(list(captions[start:start + batch_size]))
            vector, word = model.encode_text_words(tokens, length)
            vectors.append(vector.float())
            words.append(word)
            lengths.append(length)
    longest = max(w.shape[1] for w in words)
    words = [F.pad(w, (0, 0, 0, longest - w.shape[1])) for w in words]
    return torch.cat(vectors), torch.cat(words), torch.cat(lengths)


def _first_stage_top(similarity: np.ndarray, depth: int) -> np.ndarray:
    """similarity [C, I] -> [C, N] image rows, each caption's top ``depth`` (N = min(depth, I)), best first."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :min(depth, similarity.shape[1])]


def rerank_order(head: FusionHead, similarity: np.ndarray, words: torch.Tensor, lengths: torch.Tensor,
                 regions: torch.Tensor, depth: int, hubness: torch.Tensor | None = None, chunk: int = 256
                 ) -> np.ndarray:
    """[C, depth] image rows: each caption's first-stage top ``depth`` as the head re-orders them, best first.

    similarity [C, I] (first stage), words [C, L, d], lengths [C], regions [I, R, d], hubness [I] or None."""
    top = _first_stage_top(similarity, depth)  # [C, N]
    with torch.inference_mode():
        for start in range(0, len(top), chunk):
            rows = slice(start, start + chunk)
            candidates = torch.from_numpy(top[rows])
            first = torch.from_numpy(np.take_along_axis(similarity[rows], top[rows], axis=1))
            scores = head.score(words[rows, None], lengths[rows, None], regions[candidates], first,
                                None if hubness is None else hubness[candidates])  # [b, N]
            order = torch.argsort(scores, dim=1, descending=True, stable=True).numpy()
            top[rows] = np.take_along_axis(top[rows], order, axis=1)
    return top


def rerank_ranks(head: FusionHead, similarity: np.ndarray, caption_image: np.ndarray, words: torch.Tensor,
                 lengths: torch.Tensor, regions: torch.Tensor, depth: int, hubness: torch.Tensor | None = None
                 ) -> np.ndarray:
    """0-based rank of each caption's image after the head re-orders the first stage's top ``depth``
    (:func:`rerank_order`). An image outside the top ``depth`` keeps its first-stage rank (re-ranking
    cannot reach it)."""
    ranks = t2i_ranks(similarity, caption_image)
    hit = rerank_order(head, similarity, words, lengths, regions, depth, hubness) == caption_image[:, None]
    found = hit.any(axis=1)
    ranks[found] = hit.argmax(axis=1)[found]
    return ranks


def _attach_head(model: DualEncoder, model_config: ModelConfig) -> FusionHead:
    """Give ``model`` a fresh head with ``model_config``'s fusion settings, or keep the one it has -- its
    regions widened when ``model_config`` asks for more trunk stages than they have (RegionProjector.widen),
    and a query bank of the size it asks for (kept when it asks for none)."""
    stages = model_config.fusion_region_stages
    if model.fusion is None:
        if not model_config.fusion_dim:
            raise ConfigError("a fusion stage needs --fusion-dim (the size of the head's vectors, e.g. 64)")
        fusion = {k: v for k, v in asdict(model_config).items() if k.startswith("fusion")}
        model.config = replace(model.config, **fusion)
        model.fusion = FusionHead(model.config, model.image.region_channels(stages), model.text.state_dim)
    elif stages > model.config.fusion_region_stages:
        had = model.config.fusion_region_stages
        model.fusion.regions.widen(model.image.region_channels(stages) - model.image.region_channels(had))
        model.config = replace(model.config, fusion_region_stages=stages)
    if model_config.fusion_bank and model_config.fusion_bank != model.config.fusion_bank:
        model.fusion.set_bank(torch.zeros(model_config.fusion_bank, model.config.embed_dim))
        model.config = replace(model.config, fusion_bank=model_config.fusion_bank)
    model.requires_grad_(False)
    model.fusion.requires_grad_(True)
    return model.fusion


def _hard_negatives(captions: torch.Tensor, images: torch.Tensor, caption_image: np.ndarray, count: int
                    ) -> torch.Tensor:
    """[C, K] image rows the dual encoder ranks highest for each caption, its own image left out."""
    out = []
    for start in range(0, len(captions), 1024):
        scores = captions[start:start + 1024] @ images.T  # [b, I]
        own = torch.from_numpy(caption_image[start:start + 1024])
        scores[torch.arange(len(own)), own] = -math.inf
        out.append(scores.topk(min(count, images.shape[0] - 1), dim=1).indices)
    return torch.cat(out)


def _draw(pool: torch.Tensor, count: int) -> torch.Tensor:
    """[B, P] candidate negatives -> [B, count] of them, a different random choice per row (all when P = count)."""
    if pool.shape[1] <= count:
        return pool
    picks = torch.rand(pool.shape).argsort(dim=1)[:, :count]  # [B, count]
    return pool.gather(1, picks)


def train_fusion(model: DualEncoder, train_items: Sequence[ImageCaptions], val_items: Sequence[ImageCaptions],
                 model_config: ModelConfig, config: TrainConfig, out_path: str | Path,
                 base: str | Path | None = None, on_event: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Train ``model``'s fusion head (created from ``model_config`` if it has none), keep the best epoch by
    validation R@1 after re-ranking, and save it: into ``base``'s payload when given (the dual encoder's
    stored tensors and identity unchanged), else as a whole checkpoint. Returns the best epoch's figures.
    With ``config.epochs`` 0 nothing is trained or changed: the head only gets a query bank, its weight chosen
    on validation, so its identity and the indexes built with it stay valid."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = model.cpu().eval()
    if not config.epochs and (model.fusion is None or not (model_config.fusion_bank or model.config.fusion_bank)):
        raise ConfigError("--epochs 0 only adds a query bank (--fusion-bank N) to a model's trained fusion head")
    head = _attach_head(model, model_config)
    if config.epochs and head.bank is not None and not config.fusion_mix_on_validation:
        raise ConfigError("a query bank (--fusion-bank) needs --fusion-mix-on-validation: its weight is chosen "
                          "on the validation images")
    if head.bank is not None:  # captions are text: those of photos that fail to decode serve as well
        head.set_bank(_bank_sample(model, train_items, len(head.bank)))
    if config.fusion_mix_on_validation:
        head.mix_logit.requires_grad_(False)
    val_images, val_failed = encode_maps(model, val_items)
    val_items = [val_items[i] for i in kept_rows(len(val_items), val_failed)]
    best: dict[str, Any] | None = None

    def measure(epoch: int) -> FusionEpoch:
        nonlocal best
        if config.fusion_mix_on_validation or not epoch:
            choose_mix(model, val_items, val_images, keep_mix=not epoch)
        first, reranked = fusion_recall(model, val_items, val_images, EVAL_RERANK)
        improved = best is None or reranked.t2i.r1 > best["reranked"]["t2i"]["r1"]
        if improved:
            best = {"epoch": epoch, "first": first.to_dict(), "reranked": reranked.to_dict(), "depth": EVAL_RERANK,
                    "mix": float(head.mix.detach())}
            if head.bank is not None:
                best.update(bank=len(head.bank), bank_weight=float(head.bank_weight),
                            bank_sharpness=float(head.bank_sharpness))
            save_fusion(model, out_path, base, metrics={"fusion_val": best}, half=config.save_half)
        return FusionEpoch(epoch, 0.0, 0.0, first.t2i.r1, reranked.t2i.r1, improved, float(head.mix.detach()),
                           None if head.bank is None else float(head.bank_weight))

    if not config.epochs:
        event = measure(0)
        if on_event:
            on_event(event)
        assert best is not None
        return best
    train_images, failed = encode_maps(model, train_items)
    train_items = [train_items[i] for i in kept_rows(len(train_items), failed)]
    captions = [c for item in train_items for c in item.captions]
    caption_image = np.repeat(np.arange(len(train_items)), [len(item.captions) for item in train_items])
    swaps = [negs for item in train_items for negs in (item.caption_negatives or [[]] * len(item.captions))]
    caption_vectors = torch.from_numpy(encode_texts(model, captions))
    pool = max(config.fusion_negatives, config.fusion_negative_pool)
    negatives = _hard_negatives(caption_vectors, train_images.vectors, caption_image, pool)  # [C, P]

    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps = math.ceil(len(captions) / config.batch_size)
    for epoch in range(1, config.epochs + 1):
        if config.fusion_mix_on_validation:
            with torch.no_grad():
                head.mix_logit.fill_(-math.inf)  # the head's own score alone
        head.train()
        started, total = time.perf_counter(), 0.0
        order = torch.randperm(len(captions))
        for step in range(steps):
            rows = order[step * config.batch_size:(step + 1) * config.batch_size]
            chosen = _draw(negatives[rows], config.fusion_negatives)
            total += _step(model, head, optimizer, rows, captions, swaps, caption_image, caption_vectors,
                           chosen, train_images, config.grad_clip)
            if on_event and step % 20 == 0:
                on_event(f"epoch {epoch} step {step + 1}/{steps} loss {total / (step + 1):.4f}")
        event = replace(measure(epoch), loss=total / steps, seconds=time.perf_counter() - started)
        if on_event:
            on_event(event)
    assert best is not None
    return best


def _bank_sample(model: DualEncoder, items: Sequence[ImageCaptions], size: int) -> torch.Tensor:
    """[size, D] unit vectors of ``size`` training captions drawn at random."""
    captions = [c for item in items for c in item.captions]
    if len(captions) < size:
        raise ConfigError(f"--fusion-bank {size}: the training split has only {len(captions)} captions")
    chosen = torch.randperm(len(captions))[:size].tolist()
    return torch.from_numpy(encode_texts(model, [captions[i] for i in chosen]))


def _step(model: DualEncoder, head: FusionHead, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
          captions: list[str], swaps: list[list[str]], caption_image: np.ndarray, caption_vectors: torch.Tensor,
          negatives: torch.Tensor, images: EncodedImages, grad_clip: float) -> float:
    """One step on the captions ``rows`` against their images and ``negatives`` [B, K] (image rows)."""
    own = torch.from_numpy(caption_image[rows.numpy()])
    candidates = torch.cat([own[:, None], negatives], dim=1)  # [B, 1 + K], the true image first
    with torch.no_grad():
        tokens, lengths = model.tokenize([captions[i] for i in rows])
        _, states = model.text.with_words(tokens, lengths)
        chosen = [(n, random.choice(swaps[i])) for n, i in enumerate(rows.tolist()) if swaps[i]]
        if chosen:
            swap_tokens, swap_lengths = model.tokenize([text for _, text in chosen])
            swap_vectors, swap_states = model.text.with_words(swap_tokens, swap_lengths)
    flat = candidates.reshape(-1)
    regions = head.regions(images.maps[flat].float()).reshape(*candidates.shape, -1, head.words.proj.out_features)
    first = (caption_vectors[rows, None] * images.vectors[candidates]).sum(-1)  # [B, 1 + K]
    words = head.words(states)
    scale = head.logit_scale.clamp(max=math.log(100)).exp()
    scores = head.score(words[:, None], lengths[:, None], regions, first)  # [B, 1 + K]
    loss = F.cross_entropy(scale * scores, torch.zeros(len(rows), dtype=torch.long))
    if chosen:
        which = torch.tensor([n for n, _ in chosen])
        swap_first = (swap_vectors * images.vectors[own[which]]).sum(-1)
        swap_scores = head.score(head.words(swap_states), swap_lengths, regions[which, 0], swap_first)
        loss = loss + F.softplus(scale * (swap_scores - scores[which, 0])).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


@dataclass
class RerankInputs:
    """What measuring re-ranking on a set of images and their captions needs."""
    vectors: torch.Tensor  # [C, D] the captions'
    similarity: np.ndarray  # [C, I] the first stage's
    caption_image: np.ndarray  # [C] each caption's image row
    words: torch.Tensor  # [C, L, d] the head's word vectors
    lengths: torch.Tensor  # [C]
    regions: torch.Tensor  # [I, R, d]
    hubness: torch.Tensor | None  # [I] with a query bank


def _rerank_inputs(model: DualEncoder, items: Sequence[ImageCaptions], images: EncodedImages) -> RerankInputs:
    captions = [c for item in items for c in item.captions]
    caption_image = np.repeat(np.arange(len(items)), [len(item.captions) for item in items])
    vectors, words, lengths = word_vectors(model, captions)
    with torch.inference_mode():
        regions = model.fusion.regions(images.maps.float())
        hubness = model.fusion.hubness(images.vectors)
    return RerankInputs(vectors, (vectors @ images.vectors.T).numpy(), caption_image, words, lengths, regions,
                        hubness)


def choose_mix(model: DualEncoder, items: Sequence[ImageCaptions], images: EncodedImages,
               depth: int = DEFAULT_DEPTH, keep_mix: bool = False) -> float:
    """Set the head's mix to the choice (:data:`MIX_CHOICES`) that re-ranks ``items`` best -- R@1 of each
    caption's top ``depth``, then R@10 -- and return it; with a query bank, its sharpness and weight
    (:data:`BANK_SHARPNESS_CHOICES`, :data:`BANK_WEIGHT_CHOICES`) are chosen with it (``keep_mix``: only
    those). For a head trained on its own score alone: on training images the dual encoder's score is better
    than anywhere else, so a mix learned there trusts it too much; and the hubs a bank corrects are a
    property of unseen images."""
    head = model.fusion.eval()
    inputs = _rerank_inputs(model, items, images)
    top = _first_stage_top(inputs.similarity, depth)  # [C, N]
    with torch.inference_mode():
        fused = torch.cat([head.fused(inputs.words[rows, None], inputs.lengths[rows, None],
                                      inputs.regions[torch.from_numpy(top[rows])])
                           for rows in (slice(s, s + 256) for s in range(0, len(top), 256))]).numpy()
    first = np.take_along_axis(inputs.similarity, top, axis=1)
    own = top == inputs.caption_image[:, None]
    mixes = [float(head.mix.detach())] if keep_mix else MIX_CHOICES
    choices = [(mix, 0.0, 0.0) for mix in mixes]
    hubness = {}  # sharpness -> [C, N] each candidate's hubness
    if head.bank is not None:
        choices = [(mix, sharpness, weight) for mix in mixes for sharpness in BANK_SHARPNESS_CHOICES
                   for weight in BANK_WEIGHT_CHOICES]
        for sharpness in BANK_SHARPNESS_CHOICES:
            head.bank_sharpness.fill_(sharpness)
            hubness[sharpness] = head.hubness(images.vectors).numpy()[top]

    def recall(choice: tuple[float, float, float]) -> tuple[float, float]:
        mix, sharpness, weight = choice
        score = (1 - mix) * fused + mix * first - (weight * hubness[sharpness] if weight else 0)
        hit = np.take_along_axis(own, np.argsort(-score, axis=1, kind="stable"), axis=1)
        return float(hit[:, :1].any(axis=1).mean()), float(hit[:, :10].any(axis=1).mean())

    mix, sharpness, weight = max(choices, key=recall)
    with torch.no_grad():
        if not keep_mix:  # (kept, its stored value stays bit for bit: the head's identity with it)
            head.mix_logit.fill_(math.log(mix / (1 - mix)))
        if head.bank is not None:
            head.bank_sharpness.fill_(sharpness)
            head.bank_weight.fill_(weight)
    return mix


def fusion_recall(model: DualEncoder, items: Sequence[ImageCaptions], images: EncodedImages | None = None,
                  depth: int = DEFAULT_DEPTH) -> tuple[EvalResult, EvalResult]:
    """Text->image recall of the first stage, and after the head re-ranks each caption's top ``depth``
    (image->text columns of the second are the first stage's: re-ranking serves text queries)."""
    head = model.fusion
    if head is None:
        raise ConfigError("this model has no fusion head to re-rank with")
    head.eval()
    if images is None:
        images, failed = encode_maps(model, items)
        items = [items[i] for i in kept_rows(len(items), failed)]
    inputs = _rerank_inputs(model, items, images)
    first = folded_metrics(images.vectors.numpy(), inputs.vectors.numpy(), inputs.caption_image)
    ranks = rerank_ranks(head, inputs.similarity, inputs.caption_image, inputs.words, inputs.lengths,
                         inputs.regions, depth, inputs.hubness)
    hits = lambda k: float(100.0 * np.mean(ranks < k))  # noqa: E731
    second = replace(first, t2i=replace(first.t2i, r1=hits(1), r5=hits(5), r10=hits(10),
                                        medr=float(np.floor(np.median(ranks)) + 1), meanr=float(ranks.mean() + 1)))
    second.rsum = first.rsum - first.t2i.r1 - first.t2i.r5 - first.t2i.r10 + hits(1) + hits(5) + hits(10)
    return first, second


def save_fusion(model: DualEncoder, out_path: str | Path, base: str | Path | None, metrics: dict[str, Any],
                half: bool = False) -> str:
    """Save the model with its head. With ``base`` (the checkpoint the dual encoder came from), its payload
    is kept as stored -- tensors, identity, metrics -- and only the head's weights and settings are added."""
    if base is None:
        return save_checkpoint(model, out_path, metrics=metrics, half=half)
    payload = read_checkpoint(base)
    stored = next((v.dtype for v in payload["state_dict"].values() if v.is_floating_point()), torch.float32)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("fusion.")}
    state = {k: v.to(stored) if v.is_floating_point() else v for k, v in state.items()}
    # the settings that differ from what the stored file says (a key it lacks loads as the default): a head
    # saved unchanged keeps its identity
    stored_config, defaults = payload["config"], asdict(ModelConfig())
    fusion_config = {k: v for k, v in asdict(model.config).items()
                     if k.startswith("fusion") and stored_config.get(k, defaults[k]) != v}
    payload = {**payload, "config": {**payload["config"], **fusion_config},
               "state_dict": {**{k: v for k, v in payload["state_dict"].items() if not k.startswith("fusion.")},
                              **state},
               "metrics": {**payload.get("metrics", {}), **metrics}}
    payload["fusion_identity"] = fusion_identity(payload["config"], payload["state_dict"])
    write_payload(payload, out_path)
    model.identity, model.fusion_identity = str(payload["identity"]), payload["fusion_identity"]
    return model.identity


def evaluate_reranked(model_path: str | Path | None, captions_path: str | Path, images_dir: str | Path | None = None,
                      *, fmt: str = "auto", split: str | None = "test", depth: int = DEFAULT_DEPTH
                      ) -> tuple[EvalResult, EvalResult, Any]:
    """Like :func:`retrieval.core.evaluate.evaluate_model` (one fold, on the CPU), for both stages: returns (first
    stage, after re-ranking each caption's top ``depth``, the caption set)."""
    set_threads()
    model = load_model(model_path)
    if model.fusion is None:
        raise ConfigError(f"{model_path or 'the default model'} has no fusion head; --rerank needs one")
    captions_set = load_captions(captions_path, images_dir, fmt)
    if split and any(item.split for item in captions_set.items):
        captions_set.items = [item for item in captions_set.items if item.split == split]
        if not captions_set.items:
            raise CaptionsError(f"{captions_path}: no images in split {split!r}")
    images, failed = encode_maps(model, captions_set.items)
    captions_set.missing += [str(captions_set.items[i].image) for i in failed]
    captions_set.items = [captions_set.items[i] for i in kept_rows(len(captions_set.items), failed)]
    first, second = fusion_recall(model, captions_set.items, images, depth)
    return first, second, captions_set
