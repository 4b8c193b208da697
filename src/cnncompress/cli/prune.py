"""``prune`` command: structured channel pruning with measured costs and accuracy, optional fine-tuning."""

from __future__ import annotations

import argparse
import copy
import logging
import time
from typing import Any

import torch

from ..graph import build_channel_graph, format_group
from ..models import save_checkpoint
from ..prune import StructuredPruner, TargetNotReached, Taylor
from ..prune.importance import CRITERIA
from ..prune.structured_alloc import AllocationRule
from ..train import TrainConfig, evaluate, fit
from .basic import discard_partial, partial_path, saved_epochs
from .common import (
    EXIT_INFEASIBLE,
    CLIError,
    add_data_args,
    add_model_args,
    add_torch_device_arg,
    check_output_file,
    dataset_name,
    emit,
    format_table,
    input_shape,
    load_split,
    refuse_stale_partial,
    resolve_model,
    show_progress,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, add_common) -> None:
    p = sub.add_parser("prune", help="remove channels for real (structured pruning), optionally fine-tune")
    add_model_args(p)
    add_data_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float,
                        help="fraction of channels to drop per group (overall with --global)")
    target.add_argument("--target-macs", type=float, help="keep this fraction of the MACs (reached within 2%%)")
    target.add_argument("--target-params", type=float, help="keep this fraction of the parameters")
    p.add_argument("--criterion", choices=sorted(CRITERIA), default="l1")
    p.add_argument("--global", dest="global_ranking", action="store_true", help="rank channels across layers")
    p.add_argument("--max-ratio", type=float, default=0.9, help="global ranking: most a group may lose")
    p.add_argument("--min-channels", type=int, default=1, help="channels every group keeps at least")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    p.add_argument("--exclude", default="", help="comma-separated module names/patterns whose outputs are kept")
    p.add_argument("--per-layer", default="", help="NAME=RATIO,... own prune ratios for layers (fnmatch names)")
    p.add_argument("--leaf", default="", help="comma-separated modules not to trace into (their channels stay)")
    p.add_argument("--input-shape", help="C,H,W (default: the model's usual input)")
    p.add_argument("--taylor-batches", type=int, default=8, help="training batches for --criterion taylor")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs after pruning")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (SGD)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning images per step")
    p.add_argument("--max-batches", type=int, help="cap fine-tuning batches per epoch (quick runs)")
    p.add_argument("--no-distill", action="store_true", help="fine-tune without the unpruned model as teacher")
    add_torch_device_arg(p, "fine-tuning")
    p.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning shuffles")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--show-groups", action="store_true", help="print the channel groups the graph found")
    p.add_argument("--output", help="save the pruned model here (cnncompress checkpoint); fine-tuning keeps its "
                                    "finished epochs in OUTPUT.partial")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fine-tuning from OUTPUT.partial (same command otherwise)")
    add_common(p)
    p.set_defaults(handler=run_prune, on_interrupt=prune_interrupted)


def _names(text: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in text.split(",") if e.strip())


def _per_layer(text: str) -> dict[str, float]:
    ratios = {}
    for item in _names(text):
        name, _, value = item.partition("=")
        try:
            ratios[name.strip()] = float(value)
        except ValueError as exc:
            raise CLIError(f"--per-layer wants NAME=RATIO items, got {item!r}") from exc
    return ratios


def _pruner(args: argparse.Namespace) -> StructuredPruner:
    criterion = Taylor(args.taylor_batches) if args.criterion == "taylor" else args.criterion
    rule = AllocationRule(global_ranking=args.global_ranking, per_layer=_per_layer(args.per_layer),
                          max_ratio=args.max_ratio, min_channels=args.min_channels, round_to=args.round_to)
    return StructuredPruner(ratio=args.ratio, target_macs=args.target_macs, target_params=args.target_params,
                            criterion=criterion, rule=rule, exclude=_names(args.exclude),
                            leaf_modules=_names(args.leaf))


def _checkpoint(args: argparse.Namespace) -> str | None:
    """The fine-tuning's epoch checkpoint: beside --output (without one nothing is kept)."""
    return partial_path(args.output) if args.output and args.finetune_epochs > 0 else None


def prune_interrupted(args: argparse.Namespace, resume_command: str) -> str:
    partial = _checkpoint(args)
    if partial is None:
        return ("nothing was saved (only a fine-tuning with --output keeps its epochs)" if args.finetune_epochs
                else "nothing was saved")
    return saved_epochs(partial, args.finetune_epochs, resume_command)


def _evaluate(args: argparse.Namespace, model: torch.nn.Module, test, what: str):
    """Test accuracy of ``model``, with a progress bar on a terminal and log lines either way."""
    progress = show_progress(args)
    if not progress:
        log.info("evaluating the %s model on %d test images", what, len(test))
    began = time.perf_counter()
    result = evaluate(model, test, progress=progress)
    log.info("%s model: test top-1 %.2f%% (%.1f s)", what, result.top1, time.perf_counter() - began)
    return result


def run_prune(args: argparse.Namespace) -> int:
    if args.output:
        check_output_file(args.output)
    elif args.resume:
        raise CLIError("--resume needs --output: the fine-tuning keeps its epochs in OUTPUT.partial")
    partial = _checkpoint(args)
    if partial is not None:
        refuse_stale_partial(partial, args.resume)
    model, spec = resolve_model(args)
    name = dataset_name(args, spec)
    test = load_split(args, name, "test")
    if args.eval_limit is not None:
        if args.eval_limit <= 0:
            raise CLIError("--eval-limit must be positive")
        test = test.subset(range(min(args.eval_limit, len(test))))
    shape = input_shape(args, spec)
    pruner = _pruner(args)
    train = load_split(args, name, "train") if args.criterion == "taylor" or args.finetune_epochs > 0 else None
    log.info("pruning %s (criterion %s)", spec.factory, args.criterion)
    try:
        pruned, record = pruner.run(model, shape, data=train)
    except TargetNotReached as exc:
        raise CLIError(str(exc), EXIT_INFEASIBLE) from exc
    before, after = _evaluate(args, model, test, "unpruned"), _evaluate(args, pruned, test, "pruned")
    out: dict[str, Any] = {
        "model": spec.factory, "dataset": name, "criterion": record.criterion, "allocation": record.allocation,
        "before": {"params": record.params_before, "macs": record.macs_before, "top1": before.top1},
        "pruned": {"params": record.params_after, "macs": record.macs_after, "top1": after.top1},
        "eval_images": after.n, "record": record.to_dict()}
    if args.show_groups:
        out["graph"] = build_channel_graph(model, shape, pruner.leaf_modules, pruner.exclude).to_dict()
    if args.finetune_epochs > 0:
        out["finetuned"] = _finetune(args, model, pruned, train, test)
    if args.output:
        top1 = out.get("finetuned", out["pruned"])["top1"]
        save_checkpoint(args.output, pruned, spec, dataset=name, top1=top1,
                        pruning={k: out[k] for k in ("criterion", "allocation", "before", "pruned")})
        out["output"] = args.output
        discard_partial(partial)
    emit(args, out, _render)
    return 0


def _finetune(args, teacher: torch.nn.Module, pruned: torch.nn.Module, train, test) -> dict[str, Any]:
    """Fine-tune in place, checkpointing every epoch to OUTPUT.partial (``--resume`` continues from it)."""
    config = TrainConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.torch_device, max_batches_per_epoch=args.max_batches)
    record = fit(pruned, train, config, teacher=None if args.no_distill else copy.deepcopy(teacher),
                 checkpoint=_checkpoint(args), resume=args.resume, progress=show_progress(args))
    pruned.cpu()
    return {"top1": _evaluate(args, pruned, test, "fine-tuned").top1, "epochs": args.finetune_epochs,
            "distilled": not args.no_distill, "history": record.history,
            "resumed_from_epoch": record.resumed_from_epoch}


def _render(out: dict[str, Any]) -> str:
    rows = [["unpruned", out["before"]["params"], out["before"]["macs"], out["before"]["top1"]],
            ["pruned", out["pruned"]["params"], out["pruned"]["macs"], out["pruned"]["top1"]]]
    if "finetuned" in out:
        rows.append([f"fine-tuned ({out['finetuned']['epochs']} ep)", out["pruned"]["params"],
                     out["pruned"]["macs"], out["finetuned"]["top1"]])
    rec = out["record"]
    lines = [format_table(rows, ["model", "params", "MACs", "top-1 %"]),
             f"{out['model']} on {out['dataset']} ({out['eval_images']} test images), "
             f"criterion {out['criterion']}, {out['allocation']} allocation, prune ratio {rec['ratio']:.3f}: "
             f"MACs x{rec['macs_fraction']:.3f}, params x{rec['params_fraction']:.3f}"]
    if "graph" in out:
        lines += [format_group(g) for g in out["graph"]["groups"]]
        lines += [f"kept whole: {reason}" for reason in out["graph"]["kept_because"]]
    if "output" in out:
        lines.append(f"saved -> {out['output']}")
    return "\n".join(lines)
