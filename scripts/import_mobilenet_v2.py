"""Convert Google's quantised MobileNetV2 (TensorFlow Lite) into a state dict for ``torchvision.models.mobilenet_v2``.

    python scripts/import_mobilenet_v2.py ../shared/weights/mobilenet_v2_1.0_224_quant.tflite runs/mobilenet_v2_tflite.pt
    python scripts/import_mobilenet_v2.py TFLITE OUT --check 500   # then compare with the LiteRT interpreter

The file's 52 convolutions come in the order of torchvision's ``features`` (stem, then each inverted-residual
block's expand / depthwise / project), then a 1x1 convolution that classifies (1280 -> 1001). Each is
dequantised (uint8 weights: per-tensor scale and zero point; int32 biases: scale = input scale x weight scale,
as the file stores it), reordered (OHWI -> OIHW, depthwise 1HW(C*mult) -> (C*mult)1HW), and its folded
batch-norm bias goes into the BatchNorm after it, which becomes an identity (weight 1, running mean 0,
variance 1; eval mode divides by sqrt(1 + 1e-5), 5e-6 off exact). Class 0 ("background") is dropped: the
classifier keeps the 1,000 ImageNet classes in the usual order, so the file loads into the
``mobilenet_v2()`` the project builds. The network matches TensorFlow only with TensorFlow's padding and
input scaling, both stored in the model's config:

    ModelConfig(backbone="mobilenet_v2", weights=OUT, tf_padding=True,
                input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))

``--check N`` runs the first N Flickr8k test images (sorted) through the LiteRT interpreter and through the
converted network (with and without TF padding, and with TF padding and every activation rounded to the
interpreter's uint8 grid) and prints top-1 agreement (plain, and counting the interpreter's ties for first in
its uint8 logits) and the mean absolute difference between the dequantised TFLite logits and the torch
logits (classes 1..1000). Needs the ``convert`` extra: ``pip install -e
".[convert]"`` (tflite reads the flatbuffer, ai-edge-litert runs the original).
"""
from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TFLITE = SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite"
FLICKR = SHARED / "flickr8k"
INPUT_STATS = (0.5, 0.5, 0.5)  # mean = std: x / 127.5 - 1, the [-1, 1] input TensorFlow's MobileNets expect


@dataclass
class ConvLayer:
    """One convolution of the file, dequantised, in TFLite layout."""

    weight: np.ndarray  # OHWI, or 1HW(C*mult) when depthwise
    bias: np.ndarray  # [O]
    depthwise: bool
    stride: int
    output: int  # tensor index of its output (the last one's is the logits)


@dataclass
class Quantisation:
    """How the interpreter stores the activations torch computes in float: each one rounded to uint8 at its
    tensor's scale and zero point. Lists in execution order."""

    input: tuple[float, int]
    convolutions: list[tuple[float, int]]  # each conv's output (its ReLU6 fused in)
    additions: list[tuple[float, int]]  # each residual ADD's output
    pooled: tuple[float, int]  # the global average pool's output


def _dequantise(model, graph, index: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A constant tensor of the file -> float32, with its own scale and zero point (per tensor or per axis)."""
    import tflite

    dtypes = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8,
              tflite.TensorType.INT32: np.int32, tflite.TensorType.FLOAT32: np.float32}
    tensor = graph.Tensors(index)
    if tensor.Type() not in dtypes:
        raise ValueError(f"tensor {tensor.Name().decode()}: unsupported type {tensor.Type()}")
    raw = model.Buffers(tensor.Buffer()).DataAsNumpy().view(dtypes[tensor.Type()]).reshape(tensor.ShapeAsNumpy())
    quant = tensor.Quantization()
    if quant is None or quant.ScaleLength() == 0:
        return raw.astype(np.float32)
    axis = [1] * raw.ndim
    if quant.ScaleLength() > 1:
        axis[quant.QuantizedDimension()] = -1
    scale = quant.ScaleAsNumpy().reshape(axis)
    zero = quant.ZeroPointAsNumpy().reshape(axis) if quant.ZeroPointLength() else 0
    return ((raw.astype(np.float64) - zero) * scale).astype(np.float32)


def _operators(path: Path):  # type: ignore[no-untyped-def]
    """(model, graph, [(operator, its builtin code)]) of the file's graph, in execution order."""
    import tflite

    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        ops.append((op, max(code.BuiltinCode(), code.DeprecatedBuiltinCode())))  # old files: deprecated field
    return model, graph, ops


def read_tflite(path: Path) -> list[ConvLayer]:
    """Every CONV_2D / DEPTHWISE_CONV_2D of the file's graph, in execution order."""
    import tflite

    model, graph, ops = _operators(path)
    layers = []
    for i, (op, kind) in enumerate(ops):
        if kind not in (tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D):
            continue
        depthwise = kind == tflite.BuiltinOperator.DEPTHWISE_CONV_2D
        options = tflite.DepthwiseConv2DOptions() if depthwise else tflite.Conv2DOptions()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        if options.StrideH() != options.StrideW():
            raise ValueError(f"{path}: operator {i} has unequal strides")
        _, weight, bias = op.InputsAsNumpy()
        layers.append(ConvLayer(_dequantise(model, graph, weight), _dequantise(model, graph, bias), depthwise,
                                options.StrideH(), int(op.OutputsAsNumpy()[0])))
    return layers


def read_quantisation(path: Path) -> Quantisation:
    """The uint8 scale and zero point of the input and of every activation :func:`simulate_uint8` rounds."""
    import tflite

    _, graph, ops = _operators(path)

    def of(index: int) -> tuple[float, int]:
        quant = graph.Tensors(index).Quantization()
        return float(quant.ScaleAsNumpy()[0]), int(quant.ZeroPointAsNumpy()[0])

    def outputs(*kinds: int) -> list[tuple[float, int]]:
        return [of(int(op.OutputsAsNumpy()[0])) for op, kind in ops if kind in kinds]

    convolutions = outputs(tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.DEPTHWISE_CONV_2D)
    return Quantisation(of(int(graph.InputsAsNumpy()[0])), convolutions, outputs(tflite.BuiltinOperator.ADD),
                        outputs(tflite.BuiltinOperator.AVERAGE_POOL_2D)[0])


def _round_uint8(x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
    """Float activations -> the float values of their uint8 codes (what the interpreter holds)."""
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def simulate_uint8(net: nn.Module, quant: Quantisation) -> None:
    """Round ``net``'s activations (a torchvision mobilenet_v2 of this file) to the interpreter's uint8 grid,
    with forward hooks: what is left between the two is then the interpreter's integer arithmetic alone."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    def rounding(scale: float, zero: int):  # type: ignore[no-untyped-def]
        return lambda module, inputs, output: _round_uint8(output, scale, zero)

    modules = list(net.modules())
    norms = [i for i, m in enumerate(modules) if isinstance(m, nn.BatchNorm2d)]
    residual = [m for m in modules if isinstance(m, InvertedResidual) and m.use_res_connect]
    if len(residual) != len(quant.additions) or len(norms) != len(quant.convolutions) - 1:
        raise ValueError("the file's graph does not match torchvision's mobilenet_v2")
    for position, (scale, zero) in zip(norms, quant.convolutions):  # the conv's output: after its ReLU6, if any
        after = modules[position + 1] if position + 1 < len(modules) else None
        (after if isinstance(after, nn.ReLU6) else modules[position]).register_forward_hook(rounding(scale, zero))
    for block, (scale, zero) in zip(residual, quant.additions):
        block.register_forward_hook(rounding(scale, zero))
    pooled = quant.pooled
    net.classifier.register_forward_pre_hook(lambda module, inputs: (_round_uint8(inputs[0], *pooled),))
    net.classifier.register_forward_hook(rounding(*quant.convolutions[-1]))


def to_state_dict(layers: list[ConvLayer]) -> dict[str, torch.Tensor]:
    """TFLite convolutions -> a state dict for ``torchvision.models.mobilenet_v2()`` (1,000 classes)."""
    import torchvision

    net = torchvision.models.mobilenet_v2(weights=None)
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    norms = [name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if len(layers) != len(convs) + 1 or len(norms) != len(convs):
        raise ValueError(f"expected {len(convs)} convolutions and a classifier, found {len(layers)} convolutions")
    state = net.state_dict()
    for (name, conv), norm, layer in zip(convs, norms, layers):
        order = (3, 0, 1, 2) if layer.depthwise else (0, 3, 1, 2)  # 1HW(C*mult) / OHWI -> OIHW
        weight = torch.from_numpy(layer.weight.transpose(order).copy())
        if weight.shape != conv.weight.shape or (layer.stride,) * 2 != conv.stride:
            raise ValueError(f"{name}: TFLite gives {tuple(weight.shape)} stride {layer.stride}, torchvision wants "
                             f"{tuple(conv.weight.shape)} stride {conv.stride[0]}")
        state[f"{name}.weight"] = weight
        state[f"{norm}.weight"] = torch.ones(conv.out_channels)
        state[f"{norm}.bias"] = torch.from_numpy(layer.bias)  # the folded batch norm's shift
        state[f"{norm}.running_mean"] = torch.zeros(conv.out_channels)
        state[f"{norm}.running_var"] = torch.ones(conv.out_channels)
    head = layers[-1]  # 1x1 conv [1001, 1, 1, 1280]; row 0 is "background"
    state["classifier.1.weight"] = torch.from_numpy(head.weight.reshape(head.weight.shape[0], -1)[1:].copy())
    state["classifier.1.bias"] = torch.from_numpy(head.bias[1:].copy())
    net.load_state_dict(state)  # strict: every key and shape checked
    return net.state_dict()


def convert(tflite_path: Path, out: Path) -> dict[str, torch.Tensor]:
    """Read, convert, write ``out`` (a plain state dict); returns it."""
    state = to_state_dict(read_tflite(tflite_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return state


def test_images(count: int, flickr: Path = FLICKR) -> list[Path]:
    """The first ``count`` Flickr8k test images, sorted by name."""
    names = sorted((flickr / "Flickr_8k.testImages.txt").read_text().split())[:count]
    return [flickr / "images" / name for name in names]


def tflite_logits(tflite_path: Path, pixels: torch.Tensor) -> tuple[np.ndarray, float]:
    """uint8 [N, 3, 224, 224] -> the interpreter's dequantised logits [N, 1000] (classes 1..1000) and their
    quantisation step."""
    from ai_edge_litert.interpreter import Interpreter

    logits_index = read_tflite(tflite_path)[-1].output  # the classifier conv, before reshape and softmax
    with warnings.catch_warnings():  # "for debugging purposes only": keeping the logits is debugging
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True,
                                  num_threads=1)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]
    detail = next(d for d in interpreter.get_tensor_details() if d["index"] == logits_index)
    scale, zero = detail["quantization"]
    rows = []
    for image in pixels.permute(0, 2, 3, 1).numpy():  # NHWC, as the file wants
        interpreter.set_tensor(source["index"], image[None].astype(source["dtype"]))
        interpreter.invoke()
        rows.append((interpreter.get_tensor(logits_index).reshape(-1).astype(np.float32) - zero) * scale)
    return np.stack(rows)[:, 1:], float(scale)


@torch.inference_mode()
def torch_logits(state: dict[str, torch.Tensor], pixels: torch.Tensor, tf_padding: bool,
                 quant: Quantisation | None = None) -> np.ndarray:
    """uint8 [N, 3, 224, 224] -> the converted network's logits [N, 1000]; with ``quant``, its input and
    activations rounded as the interpreter's (see :func:`simulate_uint8`)."""
    import torchvision

    from retrieval.core.model import use_tf_padding
    from retrieval.core.transforms import normalize_uint8

    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(state)
    if tf_padding:
        use_tf_padding(net)
    net.eval()
    if quant is None:
        return torch.cat([net(normalize_uint8(batch, INPUT_STATS, INPUT_STATS)) for batch in pixels.split(50)]).numpy()
    simulate_uint8(net, quant)
    scale, zero = quant.input
    return torch.cat([net((batch.float() - zero) * scale) for batch in pixels.split(50)]).numpy()


def compare(tflite_path: Path, state: dict[str, torch.Tensor], images: list[Path]) -> dict[str, dict[str, float]]:
    """Top-1 agreement (%) and mean absolute logit difference vs the interpreter: the float network with and
    without TF padding, and with TF padding and the interpreter's uint8 rounding of every activation simulated
    (the float network is what ships; the simulation shows what of the difference is that rounding).

    The interpreter's logits are uint8 (a step of ~0.1): on some images two classes tie for first and its
    argmax takes the lower index. ``top1_agreement`` is the plain argmax comparison; ``top1_agreement_ties``
    also counts torch's top-1 as agreeing when it is one of the interpreter's tied first classes."""
    from PIL import Image

    from retrieval.core.transforms import eval_transform_uint8

    resize = eval_transform_uint8(224)  # Flickr8k's images are 224 x 224 already: this only makes tensors
    pixels = torch.stack([resize(Image.open(path).convert("RGB")) for path in images])  # uint8 [N, 3, 224, 224]
    reference, step = tflite_logits(tflite_path, pixels)  # [N, 1000]
    first = reference.max(1)  # [N]
    results = {}
    runs = {"tf_padding=True": (True, None), "tf_padding=False": (False, None),
            "tf_padding=True, uint8 activations": (True, read_quantisation(tflite_path))}
    for name, (tf_padding, quant) in runs.items():
        logits = torch_logits(state, pixels, tf_padding, quant)
        chosen = logits.argmax(1)  # [N]
        results[name] = {
            "top1_agreement": float((chosen == reference.argmax(1)).mean() * 100),
            "top1_agreement_ties": float((reference[np.arange(len(chosen)), chosen] == first).mean() * 100),
            "mean_abs_logit_diff": float(np.abs(logits - reference).mean()),
            "reference_logit_std": float(reference.std()),
            "reference_logit_step": step,
            "reference_ties": float(((reference == first[:, None]).sum(1) > 1).mean() * 100),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tflite", type=Path, nargs="?", default=TFLITE, help="the .tflite file")
    parser.add_argument("out", type=Path, nargs="?", default=Path("runs/mobilenet_v2_tflite.pt"),
                        help="where to write the state dict")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="compare with the LiteRT interpreter on the first N Flickr8k test images")
    parser.add_argument("--flickr", type=Path, default=FLICKR, help="the Flickr8k folder for --check")
    args = parser.parse_args()
    state = convert(args.tflite, args.out)
    print(f"wrote {args.out} ({len(state)} tensors)")
    if args.check:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        start = time.perf_counter()
        images = test_images(args.check, args.flickr)
        for name, row in compare(args.tflite, state, images).items():
            print(f"{name}: top-1 agreement {row['top1_agreement']:.1f} % on {len(images)} images "
                  f"({row['top1_agreement_ties']:.1f} % counting the interpreter's ties for first, which "
                  f"{row['reference_ties']:.1f} % of its outputs have), mean |logit difference| "
                  f"{row['mean_abs_logit_diff']:.3f} (TFLite logits: std {row['reference_logit_std']:.2f}, "
                  f"step {row['reference_logit_step']:.3f})")
        print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
