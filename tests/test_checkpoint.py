"""Checkpoints: save/load round trips, identity, weights-only safety, backbones and their weights."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision

from retrieval.core.checkpoint import FORMAT, VERSION, checkpoint_summary, load_model, read_checkpoint, save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.errors import CheckpointError, ConfigError
from retrieval.core.model import DualEncoder, ImageEncoder
from retrieval.core.tokenizer import Vocabulary

TINY = ModelConfig(backbone="resnet18", image_size=32, embed_dim=32, word_dim=32, hidden_size=32)
CAPTIONS = ["a red circle", "there is a blue square", "a green triangle on grey", "a red square"]
QUERIES = ["a red circle", "a green square", "something never seen"]


def tiny_model(config: ModelConfig = TINY, seed: int = 0) -> DualEncoder:
    torch.manual_seed(seed)
    return DualEncoder(config, Vocabulary.build(CAPTIONS)).eval()


def pixels(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[DualEncoder, Path, str]:
    model = tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    identity = save_checkpoint(model, path, metrics={"val": {"rsum": 1.0}, "epoch": 3}, train_config={"epochs": 3})
    return model, path, identity


@torch.inference_mode()
def test_round_trip_gives_identical_embeddings(saved):  # type: ignore[no-untyped-def]
    model, path, identity = saved
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.vocab.words == model.vocab.words
    assert torch.equal(loaded.encode_image(pixels()), model.encode_image(pixels()))
    assert torch.equal(loaded.encode_captions(QUERIES), model.encode_captions(QUERIES))
    assert loaded.identity == identity == model.identity
    assert len(identity) == 16


def test_save_is_atomic_and_leaves_no_temporary_file(saved):  # type: ignore[no-untyped-def]
    _, path, _ = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_summary_reads_identity_and_metrics_without_building(saved):  # type: ignore[no-untyped-def]
    model, path, identity = saved
    summary = checkpoint_summary(path)
    assert summary["identity"] == identity
    assert summary["config"]["embed_dim"] == 32
    assert summary["vocab_size"] == len(model.vocab)
    assert summary["metrics"] == {"val": {"rsum": 1.0}, "epoch": 3}
    assert summary["train_config"] == {"epochs": 3}


def test_identity_is_a_content_hash(saved, tmp_path: Path):  # type: ignore[no-untyped-def]
    _, path, identity = saved
    again = tiny_model()  # same seed: same weights
    assert save_checkpoint(again, tmp_path / "again.pt") == identity
    with torch.no_grad():
        again.text.proj.bias[0] += 1e-3
    changed = save_checkpoint(again, tmp_path / "changed.pt")
    assert changed != identity
    assert load_model(tmp_path / "changed.pt").identity == changed
    # a re-save of a loaded model keeps its identity
    assert save_checkpoint(load_model(path), tmp_path / "resaved.pt") == identity


def test_identity_depends_on_the_vocabulary(saved, tmp_path: Path):  # type: ignore[no-untyped-def]
    _, _, identity = saved
    torch.manual_seed(0)
    other = DualEncoder(TINY, Vocabulary.build(list(reversed(CAPTIONS)) + ["zzz zzz zzz zzz zzz"]))
    assert save_checkpoint(other, tmp_path / "other.pt") != identity


@torch.inference_mode()
def test_text_only_load(saved):  # type: ignore[no-untyped-def]
    model, path, identity = saved
    text_only = load_model(path, with_image=False)
    assert text_only.image is None
    assert not any(name.startswith("image.") for name in text_only.state_dict())
    assert torch.equal(text_only.encode_captions(QUERIES), model.encode_captions(QUERIES))
    assert text_only.identity == identity
    with pytest.raises(RuntimeError, match="without its image branch"):
        text_only.encode_image(pixels())


def test_load_needs_nothing_but_the_file(tmp_path: Path):
    # the backbone was initialised from a file that is gone by the time the checkpoint is loaded
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = tiny_model(replace(TINY, weights=str(weights)))
    save_checkpoint(model, tmp_path / "model.pt")
    weights.unlink()
    with torch.inference_mode():
        assert torch.equal(load_model(tmp_path / "model.pt").encode_image(pixels()), model.encode_image(pixels()))


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_unpickled, ())


UNPICKLED: list[bool] = []


def _unpickled() -> str:
    UNPICKLED.append(True)
    return "code ran"


def test_pickled_objects_are_refused(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "x": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a safe vlsearch checkpoint") as error:
        load_model(path)
    assert str(path) in str(error.value)
    assert UNPICKLED == []  # refused before any code ran


def test_random_bytes_are_refused(tmp_path: Path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(error.value) == f"{path} is not a vlsearch model file"  # one line for the CLI, not torch's own


def test_a_text_file_is_not_a_model_file(tmp_path: Path):
    path = tmp_path / "README.md"
    path.write_text("# vlsearch\n\nfind images by describing them\n")
    with pytest.raises(CheckpointError, match=f"^{path} is not a vlsearch model file$"):
        load_model(path)


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="no such model file") as error:
        load_model(path)
    assert str(path) in str(error.value)


def test_other_torch_files_are_not_checkpoints(tmp_path: Path):
    path = tmp_path / "state.pt"
    torch.save({"proj.weight": torch.zeros(2, 2)}, path)  # a plain state dict
    with pytest.raises(CheckpointError, match="not a vlsearch checkpoint"):
        load_model(path)


def test_unknown_version(tmp_path: Path):
    torch.save({"format": FORMAT, "version": VERSION + 1, "state_dict": {}}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"version {VERSION + 1} is not supported"):
        load_model(tmp_path / "future.pt")


def test_weights_that_do_not_match_the_config(saved, tmp_path: Path):  # type: ignore[no-untyped-def]
    payload = read_checkpoint(saved[1])
    payload = dict(payload, config=dict(payload["config"], embed_dim=16))
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not match the stored config"):
        load_model(tmp_path / "mismatch.pt")


def test_newer_config_keys_are_ignored():
    config = ModelConfig.from_dict({**TINY.__dict__, "added_in_a_later_version": True})
    assert config == TINY


# --- backbones -----------------------------------------------------------------------------------------------------

def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        DualEncoder(replace(TINY, backbone="resnet9000"), Vocabulary())


def test_unknown_pool_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pool"):
        ImageEncoder(replace(TINY, pool="max"))


def test_missing_weights_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="--weights must be none, imagenet or an existing file"):
        ImageEncoder(replace(TINY, weights=str(tmp_path / "missing.pth")))


def test_weights_file_for_another_backbone_is_a_config_error(tmp_path: Path):
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="not a state dict for resnet18"):
        ImageEncoder(replace(TINY, weights=str(path)))


@pytest.mark.parametrize("wrapped", [False, True])
def test_backbone_state_dict_file_is_loaded(tmp_path: Path, wrapped: bool):
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state} if wrapped else state, path)
    torch.manual_seed(0)  # a different seed: only the file can make the weights equal
    encoder = ImageEncoder(replace(TINY, weights=str(path)))
    trunk = dict(encoder.trunk.named_parameters())
    assert torch.equal(trunk["0.weight"], state["conv1.weight"])  # trunk[0] is conv1
    assert torch.equal(trunk["7.1.conv2.weight"], state["layer4.1.conv2.weight"])  # trunk[7] is layer4
    # and not what the seed alone would have given
    torch.manual_seed(0)
    assert not torch.equal(ImageEncoder(TINY).trunk[0].weight, state["conv1.weight"])


def test_pretrained_false_ignores_the_weights_option(tmp_path: Path):
    ImageEncoder(replace(TINY, weights=str(tmp_path / "missing.pth")), pretrained=False)


def test_grid2_pool_keeps_four_cells():
    encoder = ImageEncoder(replace(TINY, pool="grid2")).eval()
    assert encoder.feature_dim == 512 * 4
    with torch.inference_mode():
        assert encoder(pixels(2, 64)).shape == (2, 32)


def test_drop_stages_ends_a_resnet_at_layer3(tmp_path: Path):
    encoder = ImageEncoder(replace(TINY, pool="grid2", drop_stages=1)).eval()
    assert encoder.feature_dim == 256 * 4  # layer3's channels, on its 4x4 map at 64 px pooled to 2x2
    assert not any(name.startswith("7.") for name, _ in encoder.trunk.named_parameters())  # 7 = layer4
    model = tiny_model(replace(TINY, drop_stages=1))
    save_checkpoint(model, tmp_path / "cut.pt")
    loaded = load_model(tmp_path / "cut.pt")
    assert loaded.config.drop_stages == 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encode_image(pixels(2, 64)), model.encode_image(pixels(2, 64)))


@pytest.mark.parametrize("drop_stages", [-1, 7])
def test_drop_stages_out_of_range_is_a_config_error(drop_stages: int):
    with pytest.raises(ConfigError, match=f"drop_stages must be 0 to 6 for ResNet, not {drop_stages}"):
        ImageEncoder(replace(TINY, drop_stages=drop_stages))


def test_freeze_backbone():
    encoder = ImageEncoder(replace(TINY, freeze_backbone=True))
    assert not any(p.requires_grad for p in encoder.trunk.parameters())
    assert all(p.requires_grad for p in encoder.proj.parameters())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "mobilenet_v3_small",
                                      "mobilenet_v3_large", "efficientnet_b0"])
def test_each_backbone_gives_unit_vectors(backbone: str):
    torch.manual_seed(0)
    model = DualEncoder(replace(TINY, backbone=backbone), Vocabulary.build(CAPTIONS)).eval()
    with torch.inference_mode():
        images = model.encode_image(pixels(2))
        texts = model.encode_captions(QUERIES)
    assert images.shape == (2, 32) and texts.shape == (3, 32)
    torch.testing.assert_close(images.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))
