"""torch.fx tracing with shapes, and errors that name what could not be traced.

Pruning reads the traced graph, never the model's Python code, so every coupling (residual adds,
concatenations, flatten into a linear layer) is seen even when it lives inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

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


def trace_graph(model: nn.Module, leaf_modules: Iterable[str | type[nn.Module]] = ()) -> fx.Graph:
    """Symbolically trace ``model`` into a graph; on failure raise :class:`GraphTraceError` naming the module.

    ``leaf_modules`` names modules (qualified names) or module types not to trace into.
    """
    leaves = list(leaf_modules)
    names = frozenset(n for n in leaves if isinstance(n, str))
    types = tuple(t for t in leaves if isinstance(t, type))
    unknown = sorted(names - {n for n, _ in model.named_modules()})
    if unknown:
        raise ValueError(f"leaf_modules names no module of the model: {unknown}")
    tracer = _Tracer(names, types)
    try:
        return tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or f"<root> ({type(model).__name__})"
        raise GraphTraceError(
            f"torch.fx cannot trace {where}: {type(exc).__name__}: {exc}. Declare that module a leaf "
            "(leaf_modules=[name]; its channels are then kept) or remove data-dependent control flow "
            "from its forward") from exc


def trace_model(model: nn.Module, leaf_modules: Iterable[str | type[nn.Module]] = ()) -> fx.GraphModule:
    """:func:`trace_graph` as a runnable GraphModule: the tracer behind the profiler's activation analysis."""
    return fx.GraphModule(model, trace_graph(model, leaf_modules), type(model).__name__)


class _Shapes(fx.Interpreter):
    """Runs the graph once, recording each node's output shape(s) in ``meta['shape']``.

    Nodes for which ``measure(node)`` holds (operations the channel graph does not model) run under
    torch's FLOP counter and get their multiply-accumulates in ``meta['macs']``.
    """

    def __init__(self, model: nn.Module, graph: fx.Graph, measure: Callable[[fx.Node], bool]) -> None:
        super().__init__(model, graph=graph)
        self.measure = measure

    def run_node(self, n: fx.Node) -> Any:
        if self.measure(n):
            with FlopCounterMode(display=False) as counter:
                result = super().run_node(n)
            n.meta["macs"] = counter.get_total_flops() // 2
        else:
            result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["shape"] = tuple(result.shape)
        elif isinstance(result, tuple | list) and result and all(isinstance(r, torch.Tensor) for r in result):
            n.meta["shapes"] = [tuple(r.shape) for r in result]
        return result


def trace_with_shapes(model: nn.Module, example_input: ExampleInput,
                      leaf_modules: Iterable[str | type[nn.Module]] = (),
                      measure: Callable[[fx.Node], bool] = lambda node: False) -> fx.Graph:
    """Trace ``model`` and record every node's output shape from one example image (see :class:`_Shapes`).

    The graph treats the channels of ``leaf_modules`` as fixed unless it knows the type.
    """
    graph = trace_graph(model, leaf_modules)
    example = one_image(example_input, model_device(model))
    try:
        with eval_mode(model), torch.no_grad():
            _Shapes(model, graph, measure).run(example)
    except Exception as exc:
        raise GraphTraceError(f"the traced graph of {type(model).__name__} fails on an input of shape "
                              f"{tuple(example.shape)}: {type(exc).__name__}: {exc}") from exc
    return graph


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The output shape recorded for a tensor-valued node, else None."""
    return node.meta.get("shape")


def tuple_shapes(node: fx.Node) -> list[tuple[int, ...]] | None:
    """Shapes of a node whose output is a tuple/list of tensors (split, chunk), else None."""
    return node.meta.get("shapes")
