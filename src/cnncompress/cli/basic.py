"""``train``, ``evaluate``, ``profile`` and ``benchmark`` commands."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch

from ..analysis import measure_latency, profile
from ..models import save_checkpoint
from ..train import TrainConfig, evaluate, fit
from .common import (
    CLIError,
    add_data_args,
    add_dataset_option,
    add_model_args,
    check_output_file,
    dataset_name,
    emit,
    format_table,
    input_shape,
    load_split,
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
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.partial if an earlier run stopped")
    p.add_argument("--teacher", help="checkpoint of a teacher to distill from (same --model family or its own spec)")
    add_common(p)
    p.set_defaults(handler=run_train)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy and loss on a dataset's test split")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    add_common(p)
    p.set_defaults(handler=run_evaluate)

    p = sub.add_parser("profile", help="parameters, MACs, weight bytes and peak activation memory, per layer")
    add_model_args(p)
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    add_dataset_option(p, "use this dataset's input shape for a user model")
    p.add_argument("--weight-bits", type=int, default=32)
    p.add_argument("--act-bits", type=int, default=32)
    add_common(p)
    p.set_defaults(handler=run_profile)

    p = sub.add_parser("benchmark", help="latency (median and spread) on torch and onnxruntime")
    add_model_args(p)
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    add_dataset_option(p, "use this dataset's input shape for a user model")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--backends", default="torch,onnxruntime")
    add_common(p)
    p.set_defaults(handler=run_benchmark)


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                       weight_decay=args.weight_decay, schedule=args.schedule,
                       label_smoothing=args.label_smoothing, augment=not args.no_augment, seed=args.seed,
                       device=args.device)


def run_train(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    model, spec = resolve_model(args)
    name = dataset_name(args, spec)
    train, test = load_split(args, name, "train"), load_split(args, name, "test")
    teacher = None
    if args.teacher:
        teacher, _ = resolve_model(argparse.Namespace(model=args.model, weights=args.teacher))
    partial = f"{args.output}.partial"
    record = fit(model, train, train_config(args), teacher=teacher, checkpoint=partial, resume=args.resume,
                 progress=show_progress(args))
    result = evaluate(model.cpu(), test)
    save_checkpoint(args.output, model, spec, dataset=name, top1=result.top1, epochs=args.epochs)
    if os.path.exists(partial):
        os.remove(partial)
    out = {"model": spec.factory, "dataset": name, "output": args.output, "top1": result.top1,
           "top5": result.top5, "loss": result.loss, "history": record.history}
    emit(args, out, _render_train)
    return 0


def _render_train(out: dict[str, Any]) -> str:
    rows = [[h["epoch"], h["train_loss"], h["train_top1"], h["seconds"]] for h in out["history"]]
    table = format_table(rows, ["epoch", "train loss", "train top-1 %", "seconds"])
    return f"{table}\n\n{out['model']} on {out['dataset']} test: top-1 {out['top1']:.2f}%  -> {out['output']}"


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
