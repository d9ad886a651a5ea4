"""The MobileNetV2 import: TensorFlow's SAME padding, the input normalisation a checkpoint carries, and (with
../shared/weights and the ``convert`` extra) the converted network against the TFLite interpreter."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from indexer.embed import ImageEmbedder
from retrieval.core.checkpoint import load_model, save_checkpoint
from retrieval.core.config import ModelConfig
from retrieval.core.model import DualEncoder, TFSameConv2d, use_tf_padding
from retrieval.core.tokenizer import Vocabulary
from retrieval.core.transforms import normalize_uint8

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TF_STATS = dict(input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
TINY = ModelConfig(backbone="mobilenet_v2", image_size=32, embed_dim=16, word_dim=16, hidden_size=16,
                   tf_padding=True, **TF_STATS)


@pytest.mark.parametrize("size, pads", [(16, (0, 1, 0, 1)), (15, (1, 1, 1, 1))])
@pytest.mark.parametrize("groups", [1, 4])
def test_tf_padding_conv_matches_explicit_pad(size: int, pads: tuple[int, ...], groups: int) -> None:
    """TF SAME on a stride-2 3x3 conv: 0 before / 1 after at even sizes, 1 / 1 at odd sizes."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=groups, bias=True))
    keys = list(conv.state_dict())
    x = torch.randn(2, 4, size, size)
    symmetric = conv(x)
    use_tf_padding(conv)
    assert isinstance(conv[0], TFSameConv2d) and list(conv.state_dict()) == keys
    expected = F.conv2d(F.pad(x, pads), conv[0].weight, conv[0].bias, stride=2, groups=groups)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv(x).shape == symmetric.shape
    if size % 2 == 0:
        assert not torch.allclose(conv(x), symmetric, atol=1e-3)


def test_tf_padding_leaves_stride_one_convolutions() -> None:
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2, padding=1))
    use_tf_padding(net)
    assert [type(m) for m in net] == [nn.Conv2d, TFSameConv2d]


@torch.inference_mode()
def test_tf_padding_and_input_stats_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DualEncoder(TINY, Vocabulary.build(["a dog in the snow"])).eval()
    # a fresh mobilenet_v2's features are ~1e-10: without a bias the projection's direction still follows them
    model.image.proj.bias.zero_()
    assert sum(isinstance(m, TFSameConv2d) for m in model.modules()) == 5  # the stem and 4 strided depthwise
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.config.input_mean == (0.5, 0.5, 0.5)
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    batch = normalize_uint8(pixels, loaded.config.input_mean, loaded.config.input_std)
    assert batch.min() >= -1 and batch.max() <= 1  # x / 127.5 - 1
    assert torch.equal(loaded.encode_image(batch), model.encode_image(batch))
    # the indexer normalises uint8 batches with the model's own statistics
    embedded = ImageEmbedder(loaded, device="cpu", precision="fp32")(pixels)
    assert torch.allclose(torch.from_numpy(embedded), loaded.encode_image(batch), atol=1e-5)
    symmetric = DualEncoder(ModelConfig(**{**vars(TINY), "tf_padding": False}), model.vocab).eval()
    symmetric.load_state_dict(model.state_dict())  # same keys: only the padding differs
    assert not torch.allclose(symmetric.encode_image(batch), model.encode_image(batch), atol=1e-4)


def test_input_stats_from_json_lists_are_tuples() -> None:
    config = ModelConfig.from_dict({"input_mean": [0.5, 0.5, 0.5], "input_std": [0.5, 0.5, 0.5]})
    assert config == ModelConfig(**TF_STATS)


def _import_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_mobilenet_v2", ROOT / "scripts" / "import_mobilenet_v2.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.skipif(not (SHARED / "weights").is_dir() or not (SHARED / "flickr8k").is_dir(),
                    reason="needs ../shared/weights and ../shared/flickr8k")
def test_converted_network_agrees_with_tflite(tmp_path: Path) -> None:
    pytest.importorskip("tflite")
    pytest.importorskip("ai_edge_litert")
    script = _import_script()
    state = script.convert(script.TFLITE, tmp_path / "mobilenet_v2.pt")
    assert state["features.1.conv.2.bias"].abs().sum() > 0  # the folded batch norm's shift is carried
    results = script.compare(script.TFLITE, state, script.test_images(50))
    tf, symmetric = results["tf_padding=True"], results["tf_padding=False"]
    rounded = results["tf_padding=True, uint8 activations"]
    assert tf["top1_agreement_ties"] >= 95 and tf["top1_agreement"] >= 90
    assert tf["mean_abs_logit_diff"] < 0.2 * tf["reference_logit_std"]
    assert tf["mean_abs_logit_diff"] < symmetric["mean_abs_logit_diff"]
    # rounding every activation as the interpreter does closes what float32 leaves: the weights are exact
    assert rounded["top1_agreement"] >= 95 and rounded["top1_agreement"] >= tf["top1_agreement"]
    assert rounded["mean_abs_logit_diff"] < tf["mean_abs_logit_diff"]
