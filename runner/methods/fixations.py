"""CNN fixations (Mopuri, Garg & Babu 2017, arXiv 1708.06670): from the class node back to the input pixels,
keeping at each layer the neurons whose activation x weight contributes most to the neurons kept above; the
pixels reached (the fixations), blurred into a density, are the map. One forward pass, no gradients.

Rules per op, as the paper and the authors' code (github.com/val-iisc/cnn-fixations) apply them:
- fully connected (Gemm/MatMul with a weight): for each kept output j, the inputs i with a_i w_ji > 0; when the
  input is a flattened feature map (VGG's fc6), only the largest contribution;
- convolution: for each kept (c, y, x), the input channel whose window contributes most (a x w summed over
  the window, as their code), at the position in that channel's window that contributes most (their ResNet
  code; their VGG code keeps the window's centre);
- max pooling: the window's maximum; average and global average pooling, ReduceMean over h, w: the largest
  input of the window (the largest contribution to the mean);
- residual Add: the branch with the larger value at that point (their ResNet rule); other element-wise ops
  (ReLU, ReLU6, BatchNorm, scaling) keep the point; a broadcast input (a squeeze-excitation scale) is not
  followed;
- Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Slice and Pad move the index.
A graph with any other op on the way from the input to the logits (attention's MatMul of two activations,
a Resize) cannot be served; `check` names it before the run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from onnxcam.runner.model.forward import ForwardGraph, Node, forward_graph
from onnxcam.runner.model.graph import GraphInfo
from onnxcam.runner.model.passes import ExtraPasses

POINTWISE = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
             "Softplus", "Gelu", "Erf", "BatchNormalization", "Dropout", "Identity", "Cast", "CastLike", "Neg",
             "Sqrt", "Exp", "Abs", "Mul", "Add", "Sub", "Div", "Max", "Min", "Where", "Pow", "Sum"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}
LINEAR = {"Gemm", "MatMul"}
SUPPORTED = POINTWISE | RESHAPES | POOLS | LINEAR | {"Conv", "Transpose", "Concat", "Slice", "Pad"}


def _unsupported(graph: ForwardGraph, node: Node) -> str:
    """Why the rules cannot follow `node` ("" if they can)."""
    a = node.attributes
    if node.op not in SUPPORTED:
        return node.op
    if node.op in LINEAR and (node.inputs[0] not in graph.dynamic or node.inputs[1] in graph.dynamic
                              or a.get("transA")):
        return f"{node.op} of two activations, as in attention"
    if node.op in ("ReduceMean", "ReduceMax"):
        axes = a.get("axes")
        axes = graph.static(node.inputs[1]) if axes is None and len(node.inputs) > 1 else axes
        if axes is None or sorted(int(axis) % 4 for axis in np.ravel(axes)) != [2, 3]:
            return f"{node.op} over axes other than h, w"
    if node.op in ("Conv", "MaxPool", "AveragePool") and (a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                                                        or len(a.get("kernel_shape", (0, 0))) != 2):
        return f"{node.op} other than 2-D with explicit padding"
    if node.op == "Transpose" and (not a.get("perm") or a["perm"][0] != 0):
        return "Transpose that moves the batch axis"
    if node.op == "Concat" and a["axis"] == 0:
        return "Concat along the batch axis"
    if node.op == "Slice" and any(name and graph.static(name) is None for name in node.inputs[1:]):
        return "Slice with computed bounds"
    if node.op == "Pad" and (a.get("mode", b"constant") not in (b"constant", "constant") or len(node.inputs) > 3
                             or (len(node.inputs) > 1 and graph.static(node.inputs[1]) is None)):
        return "Pad other than constant padding of every axis"
    return ""


def check(graph: ForwardGraph) -> str:
    """What keeps fixations from this graph ("" if nothing): an op without a rule first, else a rule's limit."""
    followed = [node for node in graph.nodes if node.output in graph.followed]
    for node in sorted(followed, key=lambda node: node.op in SUPPORTED):
        problem = _unsupported(graph, node)
        unread = [name for name in node.inputs if name in graph.dynamic - graph.followed - {"input"}]
        if unread and node.op not in POINTWISE:
            problem = f"{node.op} whose input {unread[0]} is not a float activation"
        if problem:
            return f"cannot backtrack through {problem} ({node.name})"
    return ""


def _unique(points: np.ndarray) -> np.ndarray:
    return np.unique(points, axis=0) if len(points) > 1 else points


class Backtrack:
    """One image's backtrack over the forward graph, given its activations (`values`, batch dimension removed)."""

    def __init__(self, graph: ForwardGraph, values: dict[str, np.ndarray]):
        self.graph, self.values = graph, values
        self.rules: dict[str, Callable[[Node, np.ndarray], list[tuple[str, np.ndarray]]]] = {
            "Conv": self._conv, "Transpose": self._transpose, "Concat": self._concat, "Slice": self._slice,
            "Pad": self._pad, **dict.fromkeys(POINTWISE, self._pointwise), **dict.fromkeys(RESHAPES, self._reshape),
            **dict.fromkeys(POOLS, self._pool), **dict.fromkeys(LINEAR, self._linear)}

    def value(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        constant = self.graph.constant(name)
        if constant is None:
            raise KeyError(name)
        return constant

    def input_pixels(self, target: int) -> np.ndarray:
        """The fixations [P, 2] (y, x) at model input resolution."""
        points = {"logits": np.array([[target]])}
        for node in reversed(self.graph.nodes):
            kept = points.pop(node.output, None)
            if kept is None or not len(kept):
                continue
            for name, moved in self.rules[node.op](node, _unique(kept)):
                points[name] = np.concatenate([points[name], moved]) if name in points else moved
        found = points.get("input", np.zeros((0, 3), np.int64))
        pixels = _unique(found[:, 1:]) if len(found) else np.zeros((0, 2), np.int64)
        assert ((pixels >= 0) & (pixels < self.values["input"].shape[1:])).all(), "a fixation outside the input"
        return pixels

    # -- rules: (node, kept points of its output [P, ndim]) -> [(input name, points on that input)] ----------

    def _pointwise(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The point stays where it is, on the input of the output's own shape (a broadcast one, such as a
        squeeze-excitation scale or Where's condition, is not followed); of two such inputs, Add, Sum and Max
        follow the larger value there, Min the smaller."""
        shape = self.values[node.output].shape
        full = [name for name in node.inputs if name in self.graph.dynamic and name in self.values
                and self.values[name].shape == shape]
        if len(full) == 1 or node.op not in ("Add", "Sum", "Max", "Min"):
            return [(full[0], points)] if full else []
        stacked = np.stack([self.values[name][tuple(points.T)] for name in full])
        choice = stacked.argmin(axis=0) if node.op == "Min" else stacked.argmax(axis=0)
        return [(name, points[choice == k]) for k, name in enumerate(full)]

    def _reshape(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        source = node.inputs[0]
        flat = np.ravel_multi_index(tuple(points.T), self.values[node.output].shape)
        return [(source, np.stack(np.unravel_index(flat, self.values[source].shape), axis=1))]

    def _transpose(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        perm = [axis - 1 for axis in node.attributes["perm"][1:]]
        moved = np.empty_like(points)
        moved[:, perm] = points
        return [(node.inputs[0], moved)]

    def _concat(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        axis = node.attributes["axis"] % (points.shape[1] + 1) - 1
        moved, start = [], 0
        for name in node.inputs:
            size = self.value(name).shape[axis + (name not in self.graph.dynamic)]  # only dynamic ones lost the batch
            inside = (points[:, axis] >= start) & (points[:, axis] < start + size)
            if name in self.graph.dynamic and inside.any():
                shifted = points[inside].copy()
                shifted[:, axis] -= start
                moved.append((name, shifted))
            start += size
        return moved

    def _slice(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        starts, _, axes, steps = (self.graph.static(name) if name else None
                                  for name in (*node.inputs[1:], "", "", "")[:4])
        rank = points.shape[1] + 1
        axes = np.arange(len(starts)) if axes is None else axes
        steps = np.ones(len(starts), np.int64) if steps is None else steps
        shape = self.values[node.inputs[0]].shape
        moved = points.copy()
        for start, axis, step in zip(starts, axes, steps, strict=True):
            axis = int(axis) % rank - 1
            size = shape[axis]
            first = min(max(int(start) + size if start < 0 else int(start), 0), size - 1)
            moved[:, axis] = first + points[:, axis] * int(step)
        return [(node.inputs[0], moved)]

    def _pad(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        pads = self.graph.static(node.inputs[1]) if len(node.inputs) > 1 else node.attributes["pads"]
        rank = points.shape[1] + 1
        begin = np.asarray(pads[:rank][1:], np.int64)
        moved = points - begin
        shape = np.asarray(self.values[node.inputs[0]].shape)
        inside = ((moved >= 0) & (moved < shape)).all(axis=1)
        return [(node.inputs[0], moved[inside])]

    def _linear(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        source = node.inputs[0]
        weight = self.value(node.inputs[1])
        if node.attributes.get("transB", 0):
            weight = weight.T  # [in, out]
        a, spatial, kept = self.values[source], self._from_feature_map(source), []
        for start in range(0, len(points), 256):  # [256, in] contributions at a time (VGG's fc6: 25088 inputs)
            chunk = points[start:start + 256]
            rows = a[tuple(chunk[:, :-1].T)] if a.ndim > 1 else np.broadcast_to(a, (len(chunk), len(a)))
            for point, row in zip(chunk, rows * weight[:, chunk[:, -1]].T, strict=True):
                chosen = [int(row.argmax())] if spatial or not (row > 0).any() else np.flatnonzero(row > 0)
                kept += [(*point[:-1], i) for i in chosen]
        return [(source, np.asarray(kept, np.int64).reshape(-1, points.shape[1]))]

    def _from_feature_map(self, name: str) -> bool:
        """Whether `name` is a flattened map with more than one position (VGG's pool5 -> fc6)."""
        producers = self.graph.producers
        while name in producers and producers[name].op in RESHAPES | {"Identity"}:
            name = producers[name].inputs[0]
        value = self.values.get(name)
        return value is not None and value.ndim == 3 and value.shape[1] * value.shape[2] > 1

    def _window(self, node: Node, points: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Rows [P, kh] and columns [P, kw] of each point's window in the input (may fall outside it)."""
        kh, kw = node.attributes.get("kernel_shape", shape[-2:])
        sh, sw = node.attributes.get("strides", (1, 1))
        dh, dw = node.attributes.get("dilations", (1, 1))
        top, left = node.attributes.get("pads", (0, 0, 0, 0))[:2]
        rows = points[:, 1:2] * sh - top + np.arange(kh) * dh
        cols = points[:, 2:3] * sw - left + np.arange(kw) * dw
        return rows, cols

    @staticmethod
    def _gather(x: np.ndarray, channels: np.ndarray, rows: np.ndarray, cols: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """x[channels, rows, cols] per point, [P, c, kh, kw] (0 outside x), and where it is inside x [P, 1, kh, kw]."""
        _, height, width = x.shape
        inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[:, None, None, :]
        window = x[channels[:, :, None, None], np.clip(rows, 0, height - 1)[:, None, :, None],
                   np.clip(cols, 0, width - 1)[:, None, None, :]]
        return np.where(inside, window, 0), inside

    @staticmethod
    def _argmax_inside(window: np.ndarray, inside: np.ndarray, rows: np.ndarray, cols: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The input position of each window's largest entry that lies inside the input (never the padding):
        window and inside [P, kh, kw] -> (rows [P], cols [P])."""
        flat = np.where(inside, window, -np.inf).reshape(len(window), -1).argmax(axis=1)
        r, c = np.unravel_index(flat, window.shape[1:])
        return rows[np.arange(len(rows)), r], cols[np.arange(len(cols)), c]

    def _conv(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        x, weight = self.values[node.inputs[0]], self.value(node.inputs[1])
        per_group = weight.shape[1]
        group_of = weight.shape[0] // node.attributes.get("group", 1)
        moved = []
        for start in range(0, len(points), 512):  # [512, C/groups, kh, kw] at a time (VGG: 512 x 512 x 9)
            chunk = points[start:start + 512]
            channels = (chunk[:, 0] // group_of)[:, None] * per_group + np.arange(per_group)
            rows, cols = self._window(node, chunk, weight.shape)
            window, inside = self._gather(x, channels, rows, cols)
            contributions = window * weight[chunk[:, 0]]
            best = contributions.sum(axis=(2, 3)).argmax(axis=1)
            picked = np.arange(len(chunk))
            y, x_ = self._argmax_inside(contributions[picked, best], inside[:, 0], rows, cols)
            moved.append(np.stack([channels[picked, best], y, x_], axis=1))
        return [(node.inputs[0], np.concatenate(moved))]

    def _pool(self, node: Node, points: np.ndarray) -> list[tuple[str, np.ndarray]]:
        source = node.inputs[0]
        x = self.values[source]
        if node.op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"):
            channel = points[:, 0]
            flat = x[channel].reshape(len(channel), -1).argmax(axis=1)
            y, x_ = np.unravel_index(flat, x.shape[1:])
            return [(source, np.stack([channel, y, x_], axis=1))]
        rows, cols = self._window(node, points, x.shape)
        window, inside = self._gather(x, points[:, :1], rows, cols)
        y, x_ = self._argmax_inside(window[:, 0], inside[:, 0], rows, cols)
        return [(source, np.stack([points[:, 0], y, x_], axis=1))]


def density(pixels: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """The fixations as a map [H, W]: one count per fixation, Gaussian-blurred (sigma in pixels)."""
    counts = np.zeros(size, np.float32)
    np.add.at(counts, (pixels[:, 0], pixels[:, 1]), 1)
    return cv2.GaussianBlur(counts, (0, 0), sigma) if sigma > 0 else counts


def fixations(out: dict[str, np.ndarray], passes: ExtraPasses, *, sigma: float, batch_size: int) -> np.ndarray:
    """[N, H, W] fixation densities at model input resolution, `batch_size` forward passes at a time."""
    inputs, targets, maps = out["input"], out["target"], []
    for start in range(0, len(inputs), batch_size):
        graph, values = passes.forward(inputs[start:start + batch_size])
        for k in range(len(values["logits"])):
            own = {name: value[k] if name in graph.dynamic else value for name, value in values.items()}
            own["input"] = inputs[start + k]
            pixels = Backtrack(graph, own).input_pixels(int(targets[start + k]))
            maps.append(density(pixels, inputs.shape[2:], sigma))
    return np.stack(maps)


def check_model(options: dict, info: GraphInfo, path: Path) -> str:
    if info.input_format == "uint8":
        return "needs a float-input graph; use the graph as exported, without --uint8-input"
    problem = check(forward_graph(path))
    return (f"{problem}; fixations serve convolutional networks (VGG, AlexNet, ResNet, EfficientNet-Lite): use "
            "gradcam for this one") if problem else ""
