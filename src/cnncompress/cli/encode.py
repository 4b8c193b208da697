"""``encode`` (prune + share + write .cnnc) and ``decode`` (rebuild, evaluate) commands."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import load_artifact
from ..data.errors import DataCorruptError, DataNotFoundError
from ..encode import DeepCompressionConfig, deep_compress, write_cnnc
from ..models import ModelSpec, default_dataset, save_checkpoint
from ..prune.unstructured import prunable_layers
from ..quant import save_quantized
from ..train import TrainConfig, evaluate
from .common import (
    CLIError,
    add_data_args,
    add_model_args,
    check_output_file,
    dataset_name,
    emit,
    format_table,
    load_split,
    resolve_model,
    show_progress,
)

log = logging.getLogger(__name__)

#: a loss of this many top-1 points without fine-tuning is called out (the model may have collapsed)
LOUD_DROP = 5.0
UNMEASURED = ("WITHOUT fine-tuning the encoded model's test accuracy is NOT measured, and one-shot pruning and "
              "weight sharing may have collapsed it")


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("encode", help="prune, share weights by k-means and write an entropy-coded .cnnc file")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--sparsity", default="0",
                   help="fraction of weights to prune: one value (e.g. 0.92) or per layer "
                        "(fc1=0.92,conv1=0.34); a bare value is the default for unnamed layers")
    p.add_argument("--bits", default="5", help="codebook bits 1..8: one value or per layer (conv1=8,fc1=5)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer",
                   help="rank weights per layer or across all layers (one bare --sparsity value only)")
    p.add_argument("--exclude", default="", help="comma-separated layer names or globs left dense and unshared")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="retraining epochs while pruning along an AGP ramp (0: one-shot pruning)")
    p.add_argument("--rounds", type=int, default=0,
                   help="split the fine-tune epochs over N iterative prune-retrain rounds instead of AGP")
    p.add_argument("--share-epochs", type=int, default=0, help="centroid fine-tuning epochs after sharing")
    p.add_argument("--distill", action="store_true", help="retrain with the dense input model as teacher")
    p.add_argument("--lr", type=float, default=0.01, help="retraining learning rate")
    p.add_argument("--share-lr", type=float, default=1e-4, help="centroid fine-tuning learning rate (Adam)")
    p.add_argument("--batch-size", type=int, default=128, help="retraining images per step")
    p.add_argument("--seed", type=int, default=0, help="seed of the retraining shuffles")
    p.add_argument("--full-precision", action="store_true",
                   help="keep codebooks and biases in float32 instead of rounding them to float16")
    p.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=None,
                   help="report test top-1 before and after (default: on when there is no fine-tuning, since "
                        "one-shot pruning and sharing can lose much accuracy; --no-evaluate skips it, with a "
                        "warning)")
    p.add_argument("--output", required=True, help=".cnnc file to write")
    add_common(p)
    p.set_defaults(handler=run_encode)

    p = sub.add_parser("decode", help="rebuild a model from a .cnnc file; optionally evaluate or save it")
    p.add_argument("file", help=".cnnc file")
    p.add_argument("--model", help="factory of your own architecture ('file.py:factory' or 'pkg.module:factory') "
                                   "when the file names one outside the zoo: a name read from a file is never "
                                   "imported")
    add_data_args(p)
    p.add_argument("--evaluate", action="store_true", help="top-1 on the dataset's test split")
    p.add_argument("--output", help="also save the decoded model as a cnncompress checkpoint (.pt)")
    add_common(p)
    p.set_defaults(handler=run_decode)


def parse_layer_values(text: str, cast: Callable[[str], Any], layers: list[str]) -> Any:
    """``"0.9"`` -> 0.9; ``"fc1=0.9,conv1=0.3"`` -> per layer; ``"0.9,fc3=0.5"`` -> default plus overrides."""
    default, named = None, {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        key, sep, value = item.partition("=")
        try:
            if sep:
                named[key.strip()] = cast(value)
            elif default is None:
                default = cast(key)
            else:
                raise ValueError("two default values")
        except ValueError as exc:
            raise CLIError(f"cannot parse {text!r}: {exc}") from exc
    unknown = sorted(set(named) - set(layers))
    if unknown:
        raise CLIError(f"unknown layer(s) {', '.join(unknown)} in {text!r}; layers: {', '.join(layers)}")
    if not named:
        if default is None:
            raise CLIError(f"no value in {text!r}")
        return default
    return {name: named.get(name, default) for name in layers if name in named or default is not None}


def run_encode(args: argparse.Namespace) -> int:
    check_output_file(args.output)
    model, spec = resolve_model(args)
    exclude = tuple(e for e in args.exclude.split(",") if e)
    layers = list(prunable_layers(model, exclude))
    sparsity = parse_layer_values(args.sparsity, float, layers)
    if isinstance(sparsity, dict) and args.scope == "global":
        raise CLIError("--scope global takes one --sparsity value")
    bits = parse_layer_values(args.bits, int, layers)
    tuned = bool(args.finetune_epochs or args.share_epochs)
    name = dataset_name(args, spec) if tuned or args.evaluate else None
    train = load_split(args, name, "train") if tuned else None
    test = load_split(args, name, "test") if args.evaluate else None
    if test is None and not tuned:
        if args.evaluate is None:
            name, test = _test_split_for_one_shot(args, spec)
        else:
            log.warning("%s (--no-evaluate)", UNMEASURED)
    before = evaluate(model, test).top1 if test is not None else None
    config = DeepCompressionConfig(
        sparsity=sparsity, bits=bits, scope=args.scope, exclude=exclude, prune_epochs=args.finetune_epochs,
        rounds=args.rounds, share_epochs=args.share_epochs, share_lr=args.share_lr, distill=args.distill,
        train=TrainConfig(lr=args.lr, batch_size=args.batch_size, augment=False, seed=args.seed),
        half_codebooks=not args.full_precision, half_vectors=not args.full_precision)
    model, record = deep_compress(model, config, train, progress=show_progress(args))
    after = evaluate(model, test).top1 if test is not None else None
    meta = {"dataset": name, "top1": after} if name else {}
    report = write_cnnc(args.output, model, spec, meta=meta)
    out = {"model": spec.factory, "output": args.output, "file_bytes": report.file_bytes,
           "dense_bytes": report.dense_bytes, "params": report.params, "ratio": report.ratio,
           "top1_before": before, "top1_after": after, "dataset": name,
           "layers": record.sparsity["layers"], "tensors": report.to_dict()["tensors"]}
    out["finetuned"] = tuned
    if after is not None and not tuned and before - after > LOUD_DROP:
        log.warning("one-shot pruning and sharing without fine-tuning lost %.1f points of test top-1 (%.2f%% -> "
                    "%.2f%%); retrain while pruning with --finetune-epochs N (and --share-epochs)", before - after,
                    before, after)
    emit(args, out, _render_encode)
    return 0


def _test_split_for_one_shot(args: argparse.Namespace, spec: ModelSpec):
    """(dataset, test split) to measure a one-shot encode on; (None, None), with a loud warning, when the
    model has no known dataset or its files are missing."""
    try:
        name = dataset_name(args, spec)
        test = load_split(args, name, "test")
    except CLIError:
        log.warning("%s: give --dataset to measure it", UNMEASURED)
    except (DataNotFoundError, DataCorruptError) as exc:
        log.warning("%s: %s", UNMEASURED, exc)
    else:
        log.info("no fine-tuning: measuring test top-1 before and after on %s (%d images; --no-evaluate skips it)",
                 name, len(test))
        return name, test
    return None, None


def _render_encode(out: dict[str, Any]) -> str:
    rows = [[t["name"], t["numel"], t["nonzero"], t["coding"], t["bits"], t["bytes"]] for t in out["tensors"]]
    text = format_table(rows, ["tensor", "values", "non-zero", "coding", "bits", "bytes"])
    text += (f"\n\n{out['output']}: {out['file_bytes']:,} bytes, dense fp32 {out['dense_bytes']:,} bytes, "
             f"ratio {out['ratio']:.1f}x")
    if out["top1_before"] is not None:
        text += f"\ntest top-1 {out['top1_before']:.2f}% -> {out['top1_after']:.2f}% on {out['dataset']}"
        if not out["finetuned"]:
            text += " (one-shot, no fine-tuning)"
    elif not out["finetuned"]:
        text += "\ntest top-1 NOT measured (no fine-tuning: it may have collapsed; pass --evaluate --dataset NAME)"
    return text


def run_decode(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file(args.output)
    path = Path(args.file)
    loaded = load_artifact(path, ModelSpec(args.model) if args.model else None)
    if loaded.header is None:
        raise CLIError(f"{path} is a {loaded.kind}, not a .cnnc file (evaluate it with --weights)")
    model, spec, header = loaded.model, loaded.spec, loaded.header
    size = path.stat().st_size
    params = int(header["params"])
    out: dict[str, Any] = {"file": str(path), "kind": loaded.kind, "model": spec.factory, "file_bytes": size,
                           "params": params,
                           "dense_bytes": 4 * params, "ratio": 4 * params / size, "meta": header.get("meta", {})}
    if args.evaluate:
        name = args.dataset or out["meta"].get("dataset") or default_dataset(spec.factory)
        if name is None:
            raise CLIError("give --dataset to evaluate this model")
        result = evaluate(model, load_split(args, name, "test"), progress=show_progress(args))
        out.update(dataset=name, top1=result.top1, top5=result.top5, loss=result.loss, n=result.n)
    if args.output:
        save = save_quantized if loaded.quantized else save_checkpoint  # a deployable stays quantized
        save(args.output, model, spec, source=str(path))
        out["output"] = args.output
    emit(args, out, _render_decode)
    return 0


def _render_decode(out: dict[str, Any]) -> str:
    text = (f"{out['file']}: {out['model']}, {out['params']:,} parameters, {out['file_bytes']:,} bytes "
            f"(dense fp32 {out['dense_bytes']:,}), ratio {out['ratio']:.1f}x")
    if "top1" in out:
        text += f"\n{out['dataset']} test ({out['n']} images): top-1 {out['top1']:.2f}%"
    return text
