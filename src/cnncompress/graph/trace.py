"""torch.fx tracing with shapes, and errors that name what could not be traced.

Pruning reads the traced graph, never the model's Python code, so every coupling (residual adds,
concatenations, flatten into a linear layer) is seen even when it lives inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..analysis.inputs import ExampleInput, eval_mode, model_device, one_image
from ..models.resnet_cifar import PadShortcut

#: Modules whose channel behaviour the graph knows without looking inside them.
KNOWN_LEAVES: tuple[type[nn.Module], ...] = (PadShortcut,)


class GraphTraceError(RuntimeError):
    """torch.fx could not trace (or shape-propagate) the model; the message names where it failed."""


class _Tracer(fx.Tracer):
    """Treats standard layers, :data:`KNOWN_LEAVES` and user-declared modules as leaves.

    It remembers the innermost module being traced when tracing fails, for the error message.
    """

    def __init__(self, leaf_names: frozenset[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.leaf_types = KNOWN_LEAVES + leaf_types
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaf_names or isinstance(m, self.leaf_types)
                or super().is_leaf_module(m, qualname))

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = f"{self.path_of_module(m) or '<root>'} ({type(m).__name__})"
            raise


def trace_model(model: nn.Module, leaf_modules: Iterable[str | type[nn.Module]] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; on failure raise :class:`GraphTraceError` naming the module.

    ``leaf_modules`` names modules (qualified names) or module types not to trace into. The one
    tracer behind pruning's channel graph and the profiler's activation analysis.
    """
    leaves = list(leaf_modules)
    names = frozenset(n for n in leaves if isinstance(n, str))
    types = tuple(t for t in leaves if isinstance(t, type))
    unknown = sorted(names - {n for n, _ in model.named_modules()})
    if unknown:
        raise ValueError(f"leaf_modules names no module of the model: {unknown}")
    tracer = _Tracer(names, types)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or f"<root> ({type(model).__name__})"
        raise GraphTraceError(
            f"torch.fx cannot trace {where}: {type(exc).__name__}: {exc}. Declare that module a leaf "
            "(leaf_modules=[name]; its channels are then kept) or remove data-dependent control flow "
            "from its forward") from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace_with_shapes(model: nn.Module, example_input: ExampleInput,
                      leaf_modules: Iterable[str | type[nn.Module]] = ()) -> fx.GraphModule:
    """Trace ``model`` and annotate every node with ``meta['tensor_meta']`` from one example image.

    The graph treats the channels of ``leaf_modules`` as fixed unless it knows the type.
    """
    gm = trace_model(model, leaf_modules)
    example = one_image(example_input, model_device(model))
    try:
        with eval_mode(model):
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise GraphTraceError(f"the traced graph of {type(model).__name__} fails on an input of shape "
                              f"{tuple(example.shape)}: {type(exc).__name__}: {exc}") from exc
    return gm


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape ShapeProp recorded for a tensor-valued node, else None."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def tuple_shapes(node: fx.Node) -> list[tuple[int, ...]] | None:
    """Shapes of a node whose output is a tuple/list of tensors (split, chunk), else None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)) and all(hasattr(m, "shape") for m in meta):
        return [tuple(m.shape) for m in meta]
    return None


