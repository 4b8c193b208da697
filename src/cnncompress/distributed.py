"""Scale-out on ``torch.distributed``: the process group ``torchrun`` starts, work split across ranks,
and rank 0 as the only writer.

Every rank runs the same program. Training wraps the model in DistributedDataParallel and each rank
takes its slice of every global batch (:func:`data_parallel`, :func:`my_slice`); evaluations and
sensitivity candidates are split across ranks and gathered in order (:func:`shard_map`); rank 0 alone
writes files and runs one-off steps such as export and verification, handing its result to the
others (:func:`on_main`). A single process takes the same path with a world of one and no messages.

Inside :func:`on_main` and inside a :func:`shard_map` task the process works alone, so the code it
runs (an evaluation, say) never waits for ranks that are not running it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")
R = TypeVar("R")

# A rank gives up on its peers after this long in one collective (torchrun's own default is 30 min;
# a sensitivity chunk or an epoch on a slow rank must fit in it).
TIMEOUT = datetime.timedelta(minutes=30)

_solo = threading.local()


class PeerFailed(RuntimeError):
    """Another rank failed, so this one stops too; the message names that rank and its error."""


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def active() -> bool:
    """True when this process shares its work with other ranks right now."""
    return _group_up() and not getattr(_solo, "depth", 0)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _group_up() else 0


def world_size() -> int:
    return dist.get_world_size() if _group_up() else 1


def is_main() -> bool:
    """True on the rank that writes files and prints results (and in a single process)."""
    return rank() == 0


def describe() -> str:
    """``rank R/N`` for messages, empty in a single process."""
    return f"rank {rank()}/{world_size()}" if _group_up() else ""


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Run the block as if this were the only process: no collective inside it waits for peers."""
    _solo.depth = getattr(_solo, "depth", 0) + 1
    try:
        yield
    finally:
        _solo.depth -= 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when not launched by it.

    gloo on the CPU, NCCL for CUDA (each rank on GPU ``LOCAL_RANK``).
    """
    if dist.is_initialized() or not launched_by_torchrun():
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return True


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torch_device(device: str) -> str:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device == "cuda" and _group_up():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# What gloo and NCCL say when a peer process has gone (it failed, was killed, or timed out).
PEER_LOSS_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
                   "nccl communicator was aborted", "socket closed")


def is_peer_loss(exc: BaseException) -> bool:
    """True when ``exc`` is a collective failing because another rank went away."""
    return isinstance(exc, dist.DistError) or any(sign in str(exc).lower() for sign in PEER_LOSS_SIGNS)


def on_main(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """Run ``fn(*args, **kwargs)`` on rank 0 alone and return its (picklable) result on every rank.

    The other ranks wait; a failure on rank 0 raises there as usual and :class:`PeerFailed` elsewhere.
    """
    if not active():
        return fn(*args, **kwargs)
    payload: list[Any] = [None]
    if is_main():
        try:
            with alone():
                payload[0] = (True, fn(*args, **kwargs))
        except BaseException as exc:
            payload[0] = (False, _error_text(exc))
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise PeerFailed(f"rank 0 failed: {value}")
    return value


def shard_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` with the items dealt round-robin to the ranks; every rank gets all results.

    Each ``fn`` runs alone (see :func:`alone`), and results must pickle. A task that fails on one rank
    stops all of them, naming that rank.
    """
    items = list(items)
    if not active():
        return [fn(item) for item in items]
    size, me = world_size(), rank()
    error: BaseException | None = None
    try:
        with alone():
            local: tuple[bool, Any] = (True, [fn(item) for item in items[me::size]])
    except Exception as exc:
        error, local = exc, (False, _error_text(exc))
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, local)
    for source, (ok, value) in enumerate(gathered):
        if not ok:
            if source == me and error is not None:
                raise error
            raise PeerFailed(f"rank {source} failed: {value}")
    results: list[Any] = [None] * len(items)
    for source, (_, values) in enumerate(gathered):
        results[source::size] = values
    return results


def my_slice(batch: torch.Tensor) -> torch.Tensor:
    """This rank's equal share of a global batch (its rows ``rank * n/N`` to ``(rank + 1) * n/N``)."""
    if not active():
        return batch
    size = world_size()
    if len(batch) % size:
        raise ValueError(f"a batch of {len(batch)} cannot be split evenly across {size} processes; "
                         f"choose a batch size that is a multiple of {size}")
    share = len(batch) // size
    return batch[rank() * share:(rank() + 1) * share]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64)."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if active():
        dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_model(model: nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers exactly (in place)."""
    if not active():
        return
    for tensor in model.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, src=0)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the sum of the ranks' gradients (each rank's loss counts)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - autograd signature
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchStats:
    """Mixed into a BatchNorm class: training normalises over the global batch of all ranks.

    torch's SyncBatchNorm runs on CUDA only; this works on any device. The layer keeps its class's
    parameters, buffers and state-dict keys, so checkpoints written during training are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.running_mean is None) or not active():
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1] * world_size()
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = _AllReduceSum.apply(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / count
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


_SYNCED_CLASSES: dict[type, type] = {}


def _synced_class(cls: type) -> type:
    if cls not in _SYNCED_CLASSES:
        _SYNCED_CLASSES[cls] = type(f"Synced{cls.__name__}", (_GlobalBatchStats, cls), {})
    return _SYNCED_CLASSES[cls]


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every BatchNorm of ``model`` trains on global-batch statistics; restored after.

    Chosen over per-rank statistics so that a run's result does not depend on how many processes
    share it (per-rank statistics would see batches of ``batch_size / ranks`` images).
    """
    swapped = []
    if active():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm | _GlobalBatchStats):
                swapped.append((module, type(module)))
                module.__class__ = _synced_class(type(module))
    try:
        yield model
    finally:
        for module, cls in swapped:
            module.__class__ = cls


@contextlib.contextmanager
def data_parallel(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` wrapped for training across the ranks (DDP with global-batch BatchNorm), or itself alone.

    Rank 0's weights are copied to every rank on entry. Gradients are averaged over the ranks, so with
    each rank taking an equal share of a global batch a step equals one process's step on that batch.
    """
    if not active():
        yield model
        return
    from torch.nn.parallel import DistributedDataParallel

    with synced_batchnorm(model):
        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        yield DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

