"""``train``, ``evaluate``, ``profile`` and ``benchmark`` commands."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch

from .. import distributed
from ..analysis import measure_latency, profile
from ..models import save_checkpoint
from ..train import TrainConfig, evaluate, fit
from .common import (
    CLIError,
    add_data_args,
    add_dataset_option,
    add_model_args,
    add_torch_device_arg,
    check_output_file,
    dataset_name,
    emit,
    format_table,
    input_shape,
    load_split,
    partial_epochs,
    refuse_stale_partial,
    resolve_model,
    show_progress,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("train", help="train a model on a dataset, with per-epoch checkpoints and --resume")
    add_model_args(p)
    add_data_args(p)
    add_train_args(p)
    p.add_argument("--output", required=True, help="final checkpoint path (.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT.partial (the finished epochs of an interrupted run); without it "
                        "an existing OUTPUT.partial is refused, never overwritten")
    p.add_argument("--teacher", help="checkpoint of a teacher to distill from (same --model family or its own spec)")
    add_common(p)
    p.set_defaults(handler=run_train, on_interrupt=train_interrupted)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy and loss on a dataset's test split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split to score")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    add_common(p)
    p.set_defaults(handler=run_evaluate)

    p = sub.add_parser("profile", help="parameters, MACs, weight bytes and peak activation memory, per layer")
    add_model_args(p)
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    add_dataset_option(p, "use this dataset's input shape for a user model")
    p.add_argument("--weight-bits", type=int, default=32, help="bits per weight when counting weight bytes")
    p.add_argument("--act-bits", type=int, default=32, help="bits per activation when counting activation bytes")
    add_common(p)
    p.set_defaults(handler=run_profile)

    p = sub.add_parser("benchmark", help="latency (median and spread) on torch and onnxruntime")
    add_model_args(p)
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    add_dataset_option(p, "use this dataset's input shape for a user model")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per batch size")
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime")
    add_common(p)
    p.set_defaults(handler=run_benchmark)


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: with Nesterov momentum 0.9")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 penalty")
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine",
                   help="learning-rate schedule over the run")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--no-augment", action="store_true", help="train without random crops and flips")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffles and augmentation")
    add_torch_device_arg(p, "training")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                       weight_decay=args.weight_decay, schedule=args.schedule,
                       label_smoothing=args.label_smoothing, augment=not args.no_augment, seed=args.seed,
                       device=args.torch_device)


def partial_path(output: str) -> str:
    """Where ``fit`` keeps the finished epochs of a run writing ``output``."""
    return f"{output}.partial"


def discard_partial(partial: str | None) -> None:
    """Remove the epoch checkpoint of a finished run: its output is saved (by rank 0 alone under torchrun,
    which wrote that output)."""
    if partial and distributed.is_main() and os.path.exists(partial):
        os.remove(partial)


def saved_epochs(partial: str, epochs: int, resume_command: str) -> str:
    """The interrupt message's account of an epoch checkpoint: what is saved and how to continue."""
    done = partial_epochs(partial)
    if done is None:
        return "no epoch had finished, so nothing was saved; run the same command again to start over"
    return f"{done} of {epochs} epochs are saved in {partial}; to continue: {resume_command}"


def train_interrupted(args: argparse.Namespace, resume_command: str) -> str:
    return saved_epochs(partial_path(args.output), args.epochs, resume_command)


def run_train(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    partial = partial_path(args.output)
    refuse_stale_partial(partial, args.resume)
    model, spec = resolve_model(args)
    name = dataset_name(args, spec)
    train, test = load_split(args, name, "train"), load_split(args, name, "test")
    teacher = None
    if args.teacher:
        teacher, _ = resolve_model(argparse.Namespace(model=args.model, weights=args.teacher))
    record = fit(model, train, train_config(args), teacher=teacher, checkpoint=partial, resume=args.resume,
                 progress=show_progress(args))
    result = evaluate(model.cpu(), test)
    save_checkpoint(args.output, model, spec, dataset=name, top1=result.top1, epochs=args.epochs)
    discard_partial(partial)
    out = {"model": spec.factory, "dataset": name, "output": args.output, "top1": result.top1,
           "top5": result.top5, "loss": result.loss, "history": record.history}
    emit(args, out, _render_train)
    return 0


def _render_train(out: dict[str, Any]) -> str:
    """The result; each epoch was logged once as it finished (the figures per epoch are in --json)."""
    history = out["history"]
    trained = ""
    if history:
        last = history[-1]
        trained = (f" after {last['epoch']} epochs ({sum(h['seconds'] for h in history):.1f} s; last epoch: "
                   f"train loss {last['train_loss']:.4f}, train top-1 {last['train_top1']:.2f}%)")
    return (f"{out['model']} on {out['dataset']} test: top-1 {out['top1']:.2f}%, top-5 {out['top5']:.2f}%"
            f"{trained} -> {out['output']}")


def run_evaluate(args: argparse.Namespace) -> int:
    model, spec = resolve_model(args)
    if args.weights is None:
        log.warning("no --weights given: scoring %s with its initial random weights", spec.factory)
    name = dataset_name(args, spec)
    data = load_split(args, name, args.split)
    if args.limit is not None:
        if args.limit <= 0:
            raise CLIError("--limit must be positive")
        data = data.subset(range(min(args.limit, len(data))))
    result = evaluate(model, data, batch_size=args.batch_size, progress=show_progress(args))
    out = {"model": spec.factory, "dataset": name, "split": args.split, **result.to_dict()}
    emit(args, out, lambda o: f"{o['model']} on {o['dataset']} {o['split']} ({o['n']} images): "
                              f"top-1 {o['top1']:.2f}%  top-5 {o['top5']:.2f}%  loss {o['loss']:.4f}")
    return 0


def run_profile(args: argparse.Namespace) -> int:
    model, spec = resolve_model(args)
    report = profile(model, input_shape(args, spec), weight_bits=args.weight_bits, act_bits=args.act_bits)
    out = {"model": spec.factory, **report.to_dict()}
    emit(args, out, lambda _: report.table())
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    model, spec = resolve_model(args)
    shape = input_shape(args, spec)
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError as exc:
        raise CLIError(f"--batch-sizes must be integers, got {args.batch_sizes!r}") from exc
    threads = args.threads or torch.get_num_threads()
    reports = {backend: measure_latency(model, shape, batch_sizes=batch_sizes, backend=backend,
                                        repeats=args.repeats, threads=threads).to_dict()
               for backend in args.backends.split(",")}
    out = {"model": spec.factory, "input_shape": list(shape), "threads": threads, "latency": reports}
    emit(args, out, _render_benchmark)
    return 0


def _render_benchmark(out: dict[str, Any]) -> str:
    rows = []
    for backend, report in out["latency"].items():
        for batch, entry in report["batches"].items():
            rows.append([backend, int(batch), entry["median_ms"], entry["p10_ms"], entry["p90_ms"]])
    return format_table(rows, ["backend", "batch", "median ms", "p10 ms", "p90 ms"]) + f"\nthreads: {out['threads']}"
