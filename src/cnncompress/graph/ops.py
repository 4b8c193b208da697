"""The channel graph's op handlers: one table entry per module type, function or tensor method.

A handler ties the channel elements of one traced node to those of its inputs, binds parameter axes
and fixes what it cannot follow, using the :class:`~cnncompress.graph.channels.Builder` vocabulary.
Supporting a new operation is one entry in :data:`MODULES`, :data:`FUNCTIONS` or :data:`METHODS`;
anything not in the tables is opaque (its channels are kept, with the reason recorded).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.resnet_cifar import PadShortcut
from .trace import node_shape, tuple_shapes

if TYPE_CHECKING:
    from .channels import Builder


@dataclass(frozen=True)
class Op:
    """A handler; ``opaque`` marks the fallback for operations the graph does not model."""

    fn: Callable[[Builder, fx.Node, Any], None]
    opaque: bool = False

    def __call__(self, b: Builder, node: fx.Node, module: Any) -> None:
        self.fn(b, node, module)


def _name(node: fx.Node) -> str:
    target = node.target
    return f".{target}()" if node.op == "call_method" else getattr(target, "__name__", str(target))


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


def _src(node: fx.Node) -> Any:
    return node.args[0] if node.args else None


# -- generic ----------------------------------------------------------------------------------------
def opaque(b: Builder, node: fx.Node, module: Any) -> None:
    what = f"module {node.target} ({type(module).__name__}) is opaque" if module is not None else \
        f"{_name(node)} is not understood"
    b.fix_all(node, f"{what} to the channel graph")


def no_channels(b: Builder, node: fx.Node, module: Any) -> None:
    """Metadata reads (``x.size()``, ``x.shape``): no tensor flows, nothing is tied."""


def pointwise(b: Builder, node: fx.Node, module: Any = None) -> None:
    """Same channels in, same channels out, on any layout (activations, dropout, copies)."""
    src = _src(node)
    if b.carries(src, node):
        b.alloc(node, b.span[src.name])
        b.link(src, node)
    else:
        b.fix_all(node, f"{_name(node)} changes the channel count in a way the graph cannot follow")


def spatial(b: Builder, node: fx.Node, module: Any = None) -> None:
    """Channels at dim 1 pass through an op over the spatial dims (pooling, resizing)."""
    if b.same(_src(node), node) and b.span[node.name] == (1, 2):
        b.link(_src(node), node)
    else:
        b.fix_all(node, f"{_name(node)} changes the channel count in a way the graph cannot follow")


def elementwise(b: Builder, node: fx.Node, module: Any = None) -> None:
    """Operands with the output's channels are tied; operands broadcast over the channels are not."""
    if not b.has(node):
        return b.fix_all(node, f"{_name(node)} returns channels the graph cannot follow")
    first = next((a for a in node.all_input_nodes if node_shape(a) == node_shape(node) and b.has(a)), None)
    if first is not None:
        b.alloc(node, b.span[first.name])
    span, out = b.span[node.name], node_shape(node)
    for arg in node.all_input_nodes:
        shape = node_shape(arg)
        if shape is None:
            continue
        if b.same(arg, node):
            b.link(arg, node)
            continue
        aligned = (1,) * (len(out) - len(shape)) + shape  # broadcasting aligns trailing dims
        if len(aligned) != len(out) or any(aligned[d] != 1 for d in range(*span)):
            return b.fix_all(node, f"{_name(node)} broadcasts over channels in an unsupported way")


# -- modules ----------------------------------------------------------------------------------------
def conv(b: Builder, node: fx.Node, m: nn.Module) -> None:
    """Ungrouped: input and output axes. Grouped (depthwise too): group k's inputs and outputs are
    one channel per group position, so pruning removes whole groups and the groups stay consistent."""
    src, name = _src(node), str(node.target)
    b.record_call(name, node, 1)
    if not (b.has(src) and b.span[src.name] == (1, 2)):
        return opaque(b, node, m)
    if m.groups == 1:
        b.bind(name, "in", src)
    else:
        per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
        for k in range(m.groups):
            b.tie(src, range(k * per_in, (k + 1) * per_in), node, range(k * per_out, (k + 1) * per_out))
    b.bind(name, "out", node)


def linear(b: Builder, node: fx.Node, m: nn.Linear) -> None:
    """Features on the last dim: (N, C) after flatten/pool, or channels-last (N, H, W, C)."""
    src, name = _src(node), str(node.target)
    last = len(node_shape(node)) - 1
    b.record_call(name, node, last)
    if not (b.has(src) and b.span[src.name] == (last, last + 1)):
        return opaque(b, node, m)
    b.alloc(node, (last, last + 1))
    b.bind(name, "in", src)
    b.bind(name, "out", node)


def batchnorm(b: Builder, node: fx.Node, m: nn.Module) -> None:
    if not (b.same(_src(node), node) and b.span[node.name] == (1, 2)):
        return opaque(b, node, m)
    b.link(_src(node), node)
    b.bind(str(node.target), "bn", node)


def groupnorm(b: Builder, node: fx.Node, m: nn.GroupNorm) -> None:
    """Each normalisation group is one channel: removing it whole leaves the other groups' statistics."""
    src = _src(node)
    if not (b.same(src, node) and b.span[node.name] == (1, 2)):
        return opaque(b, node, m)
    if m.num_groups == 1:
        return b.fix_all(node, f"{node.target} (GroupNorm with one group) normalises over all channels")
    b.link(src, node)
    per = m.num_channels // m.num_groups
    for g in range(m.num_groups):
        b.tie(node, range(g * per, (g + 1) * per))
    if m.affine:
        b.bind(str(node.target), "affine", node)


def layernorm(b: Builder, node: fx.Node, m: nn.LayerNorm) -> None:
    """LayerNorm over the channel axis alone (last dim); pruning changes its statistics (fine-tune after)."""
    src, last = _src(node), len(node_shape(node)) - 1
    if not (b.has(src) and len(m.normalized_shape) == 1 and b.span[src.name] == (last, last + 1)):
        return b.fix_all(node, f"{node.target} (LayerNorm) normalises over more than the channel axis")
    b.alloc(node, (last, last + 1))
    b.link(src, node)
    if m.elementwise_affine:
        b.bind(str(node.target), "affine", node)


def prelu(b: Builder, node: fx.Node, m: nn.PReLU) -> None:
    if m.num_parameters == 1:
        return pointwise(b, node, m)
    if not (b.same(_src(node), node) and b.span[node.name] == (1, 2)):
        return opaque(b, node, m)
    b.link(_src(node), node)
    b.bind(str(node.target), "affine", node)


def pad_shortcut(b: Builder, node: fx.Node, m: PadShortcut) -> None:
    if not (b.has(_src(node)) and b.has(node)):
        return opaque(b, node, m)
    b.link(_src(node), node, 0, m.pad_before)
    b.bind(str(node.target), "pad", node)


def flatten_module(b: Builder, node: fx.Node, m: nn.Flatten) -> None:
    flatten_from(b, node, m.start_dim, m.end_dim)


# -- reshaping --------------------------------------------------------------------------------------
def flatten_call(b: Builder, node: fx.Node, module: Any = None) -> None:
    flatten_from(b, node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def flatten_from(b: Builder, node: fx.Node, start: int, end: int) -> None:
    src = _src(node)
    if not b.has(src):
        return b.fix_all(node, f"{_name(node)} flattens channels the graph cannot follow")
    ndim = len(node_shape(src))
    if start % ndim > b.span[src.name][1] - 1 and b.span[src.name] == (1, 2):
        return b.link(src, node)  # flattening only the spatial dims: channels stay at dim 1
    if start % ndim == 1 and end % ndim == ndim - 1:
        return flatten_features(b, node, src)
    b.fix_all(node, f"{_name(node)} with start_dim={start} mixes the batch and channel axes")


def flatten_features(b: Builder, node: fx.Node, src: fx.Node) -> None:
    """(N, C, H, W) -> (N, C*H*W): channel c becomes features [c*H*W, (c+1)*H*W)."""
    shape, out = node_shape(src), node_shape(node)
    if b.span[src.name] != (1, 2) or len(out) != 2 or out[1] != math.prod(shape[1:]):
        return b.fix_all(node, f"{_name(node)} reshapes channels in a way the graph does not model")
    per = math.prod(shape[2:])
    o_src, o_out, union = b.offset[src.name], b.offset[node.name], b.uf.union
    for f in range(out[1]):
        union(o_out + f, o_src + f // per)


def _shape_args(node: fx.Node) -> tuple:
    args = node.args[1:] or (node.kwargs.get("shape", ()),)
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], tuple | list) else tuple(args)


def _literal(value: Any) -> bool:
    """A size written as a constant in forward code (``-1`` and traced sizes adapt to pruning)."""
    return isinstance(value, int) and value != -1


def view(b: Builder, node: fx.Node, module: Any = None) -> None:
    """view/reshape: channels kept at dim 1, flattened into features, split for a shuffle, or merged back."""
    src, sizes = _src(node), _shape_args(node)
    if not b.has(src) or not b.has(node):
        return b.fix_all(node, f"{_name(node)} at {node.name} reshapes channels the graph cannot follow")
    shape, out, (s, e) = node_shape(src), node_shape(node), b.span[src.name]
    if (s, e) == (1, 2) and len(sizes) == len(out) == len(shape) + 1 and out[1] * out[2] == shape[1] \
            and out[3:] == shape[2:]:
        return split_channels(b, node, src, sizes)
    hard = len(sizes) > s and _literal(sizes[s])
    if e - s == 1 and out[:e] == shape[:e] and not hard:
        return b.link(src, node)  # (N, C, H, W) -> (N, C, H*W) or (N, C) -> (N, C, 1, 1)
    if e - s > 1 and out[:s] == shape[:s] and out[s] == b.size[src.name] and out[s + 1:] == shape[e:] \
            and not hard:
        b.alloc(node, (s, s + 1))
        return b.link(src, node)  # merging split channel dims back: same row-major order
    if (s, e) == (1, 2) and len(out) == 2 and not hard:
        return flatten_features(b, node, src)
    b.fix_all(node, f"{_name(node)} at {node.name} hard-codes a channel count")


def split_channels(b: Builder, node: fx.Node, src: fx.Node, sizes: tuple) -> None:
    """(N, C, ...) -> (N, g, C/g, ...): the factor written as a constant must survive pruning."""
    b.alloc(node, (1, 3))
    b.link(src, node)
    groups, width = node_shape(node)[1:3]
    if _literal(sizes[1]) and not _literal(sizes[2]):
        b.lockstep(node, groups)  # g constant: every slice keeps the same positions
    elif _literal(sizes[2]) and not _literal(sizes[1]):
        for g in range(groups):  # C/g constant: slices go whole
            b.tie(node, range(g * width, (g + 1) * width))
    else:
        b.fix_all(node, f"{_name(node)} at {node.name} hard-codes a channel count")


def permute(b: Builder, node: fx.Node, module: Any = None) -> None:
    """permute/transpose: channel dims move (channels-last) or reorder (a channel shuffle)."""
    src = _src(node)
    if not (b.has(src) and node_shape(node) is not None):
        return b.fix_all(node, f"{_name(node)} moves channels the graph cannot follow")
    ndim = len(node_shape(src))
    order = _permutation(node, ndim)
    s, e = b.span[src.name]
    where = sorted(order.index(d) for d in range(s, e))
    if where != list(range(where[0], where[-1] + 1)):
        return b.fix_all(node, f"{_name(node)} scatters the channel dims")
    b.alloc(node, (where[0], where[-1] + 1))
    inner = [order[k] - s for k in range(where[0], where[-1] + 1)]
    source_of = torch.arange(b.size[src.name]).reshape(node_shape(src)[s:e]).permute(inner).reshape(-1).tolist()
    o_src, o_out, union = b.offset[src.name], b.offset[node.name], b.uf.union
    for k, j in enumerate(source_of):
        union(o_out + k, o_src + j)


def _permutation(node: fx.Node, ndim: int) -> list[int]:
    """Output dim k takes input dim ``order[k]``."""
    if node.target in ("transpose", torch.transpose, "swapaxes"):
        d0, d1 = (_arg(node, 1, "dim0") % ndim, _arg(node, 2, "dim1") % ndim)
        order = list(range(ndim))
        order[d0], order[d1] = d1, d0
        return order
    dims = _shape_args(node)
    return [d % ndim for d in dims]


# -- joins and splits -------------------------------------------------------------------------------
def cat(b: Builder, node: fx.Node, module: Any = None) -> None:
    parts = _src(node)
    ndim = len(node_shape(node))
    dim = _arg(node, 1, "dim", 0) % ndim
    if not all(b.has(p) for p in parts):
        return b.fix_all(node, "torch.cat of tensors the graph cannot follow")
    spans = {b.span[p.name] for p in parts}
    (s, e) = spans.pop() if len(spans) == 1 else (dim, -1)
    if (s, e) == (dim, dim + 1):
        b.alloc(node, (s, e))
        start = 0
        for part in parts:
            b.link(part, node, 0, start)
            start += b.size[part.name]
    elif not s <= dim < e:  # joined along another dim: channels pass through
        b.alloc(node, (s, e))
        for part in parts:
            b.link(part, node)
    else:
        b.fix_all(node, "torch.cat across channel dims the graph cannot follow")


def split(b: Builder, node: fx.Node, module: Any = None) -> None:
    """split/chunk. Pieces cut by a count or by sizes computed from the width (chunk(k),
    split(x.size(1) // k), [c // 4, 3 * c // 4]) stay valid after pruning if every slice of the gcd's
    width loses the same positions; pieces of constant sizes keep the source whole."""
    src, shapes = _src(node), tuple_shapes(node)
    if not b.has(src) or shapes is None:
        b.splits[node.name] = None
        return
    chunk = node.target in (torch.chunk, "chunk")
    size_arg = _arg(node, 1, "chunks" if chunk else "split_size_or_sections")
    ndim = len(node_shape(src))
    dim = _arg(node, 2, "dim", 0) % ndim
    s, e = b.span[src.name]
    if not s <= dim < e:
        b.splits[node.name] = (src, [0] * len(shapes))  # channels pass through every piece unchanged
        return
    if e - s != 1:
        b.splits[node.name] = None
        return b.fix(f"{_name(node)} at {node.name} splits across channel dims", src)
    sizes = [shape[dim] for shape in shapes]
    b.splits[node.name] = (src, [sum(sizes[:k]) for k in range(len(sizes))])
    computed = isinstance(size_arg, fx.Node) or (
        isinstance(size_arg, list | tuple) and all(isinstance(v, fx.Node) for v in size_arg))
    if chunk and len(set(sizes)) == 1 or computed:
        b.lockstep(src, b.size[src.name] // math.gcd(*sizes))  # sizes computed in proportion to the width
    else:
        b.fix(f"{_name(node)} at {node.name} has constant sizes {sizes} in forward code", src)


def getitem(b: Builder, node: fx.Node, module: Any = None) -> None:
    src = _src(node)
    if isinstance(src, fx.Node) and src.name in b.splits:
        piece = b.splits[src.name]
        if piece is None:
            b.fix("a piece of a split the graph cannot follow", node)
        elif b.has(node):
            b.link(node, piece[0], 0, piece[1][node.args[1]])
        return None
    if not b.has(src):
        return None  # indexing sizes or other metadata
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    whole = index[0] == slice(None) and (len(index) < 2 or index[1] in (slice(None), Ellipsis))
    if whole and b.span[src.name] == (1, 2):
        return pointwise(b, node)
    b.fix_all(node, f"indexing {index} selects channels by constants in forward code")


def reduce(b: Builder, node: fx.Node, module: Any = None) -> None:
    """mean/sum/amax over non-channel dims: (N, C, H, W) -> (N, C[, 1, 1]), channel c stays channel c."""
    src = _src(node)
    dims = _arg(node, 1, "dim")
    dims = dims if isinstance(dims, tuple | list) else (dims,)
    if not (b.has(src) and b.has(node)) or dims[0] is None:
        return b.fix_all(node, f"{_name(node)} reduces over the channel axis")
    ndim, (s, e) = len(node_shape(src)), b.span[src.name]
    dims = [d % ndim for d in dims]
    if any(d == 0 or s <= d < e for d in dims):
        return b.fix_all(node, f"{_name(node)} reduces over the channel axis")
    shift = 0 if _arg(node, 2, "keepdim", False) else sum(d < s for d in dims)
    b.alloc(node, (s - shift, e - shift))
    b.link(src, node)


def pad(b: Builder, node: fx.Node, module: Any = None) -> None:
    src, pads = _src(node), _arg(node, 1, "pad")
    if b.has(src) and b.span[src.name] == (1, 2) and len(pads) <= 2 * (len(node_shape(src)) - 2):
        return spatial(b, node)
    b.fix_all(node, "F.pad on the channel axis has constant sizes in forward code (use a PadShortcut module)")


# -- the tables -------------------------------------------------------------------------------------
_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
                      nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout,
                      nn.Dropout2d)
_SPATIAL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d,
                    nn.UpsamplingBilinear2d, nn.ZeroPad2d)

#: Module type -> handler (looked up along the type's MRO, so subclasses inherit their base's entry).
MODULES: dict[type[nn.Module], Op] = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), Op(conv)), nn.Linear: Op(linear),
    nn.modules.batchnorm._BatchNorm: Op(batchnorm), nn.GroupNorm: Op(groupnorm), nn.LayerNorm: Op(layernorm),
    nn.PReLU: Op(prelu), PadShortcut: Op(pad_shortcut), nn.Flatten: Op(flatten_module),
    **dict.fromkeys(_POINTWISE_MODULES, Op(pointwise)), **dict.fromkeys(_SPATIAL_MODULES, Op(spatial)),
}

_ELEMENTWISE_FUNCTIONS = (operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                          operator.isub, operator.imul, operator.itruediv, torch.add, torch.sub, torch.mul,
                          torch.div, torch.maximum, torch.minimum, torch.where)
_POINTWISE_FUNCTIONS = (torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.abs, F.relu, F.relu6,
                        F.hardtanh, F.sigmoid, F.silu, F.gelu, F.mish, F.hardswish, F.hardsigmoid, F.leaky_relu,
                        F.elu, F.softplus, F.dropout, F.dropout2d, torch.clone)
_SPATIAL_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool2d,
                      F.adaptive_max_pool2d, F.adaptive_avg_pool1d, F.interpolate, F.upsample)

#: Function (``call_function`` target) -> handler.
FUNCTIONS: dict[Callable, Op] = {
    **dict.fromkeys(_ELEMENTWISE_FUNCTIONS, Op(elementwise)), **dict.fromkeys(_POINTWISE_FUNCTIONS, Op(pointwise)),
    **dict.fromkeys(_SPATIAL_FUNCTIONS, Op(spatial)), torch.cat: Op(cat), torch.concat: Op(cat),
    torch.split: Op(split), torch.chunk: Op(split), operator.getitem: Op(getitem), getattr: Op(no_channels),
    torch.flatten: Op(flatten_call), torch.reshape: Op(view), torch.permute: Op(permute),
    torch.transpose: Op(permute), torch.mean: Op(reduce), torch.sum: Op(reduce), torch.amax: Op(reduce),
    F.pad: Op(pad),
}

#: Tensor method name (``call_method`` target) -> handler.
METHODS: dict[str, Op] = {
    **dict.fromkeys(("add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum"),
                    Op(elementwise)),
    **dict.fromkeys(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "contiguous",
                     "clone", "detach", "abs", "float", "to"), Op(pointwise)),
    **dict.fromkeys(("size", "dim", "numel"), Op(no_channels)),
    **dict.fromkeys(("mean", "sum", "amax", "amin"), Op(reduce)),
    "split": Op(split), "chunk": Op(split), "flatten": Op(flatten_call), "view": Op(view), "reshape": Op(view),
    "permute": Op(permute), "transpose": Op(permute), "swapaxes": Op(permute),
}

_OPAQUE = Op(opaque, opaque=True)
_PLACEHOLDER = Op(lambda b, node, module: b.fix("model input", node))
_OUTPUT = Op(lambda b, node, module: b.fix("model output", *b.tensor_inputs(node)))
_GET_ATTR = Op(lambda b, node, module: b.fix("a parameter or buffer used directly in forward code", node))


def _module_op(cls: type) -> Op:
    return next((MODULES[base] for base in cls.__mro__ if base in MODULES), _OPAQUE)


def handler_for(node: fx.Node, module: nn.Module | None) -> Op:
    """The handler of ``node`` (``module``: the called module of a ``call_module`` node)."""
    if node.op == "call_module":
        return _module_op(type(module))
    if node.op == "call_function":
        return FUNCTIONS.get(node.target, _OPAQUE)
    if node.op == "call_method":
        return METHODS.get(node.target, _OPAQUE)
    return {"placeholder": _PLACEHOLDER, "output": _OUTPUT, "get_attr": _GET_ATTR}[node.op]
