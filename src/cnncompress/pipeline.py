"""``compress()``: plan pruning and bit widths from a budget, run the stages, verify what was written.

Flow (each stage checkpointed in the run directory, so ``resume=True`` continues an interrupted run)::

    baseline -> cost model + sensitivity (cached) -> plan (or Infeasible)
      -> prune channels -> fine-tune (distilled from the original) -> PTQ at the planned bits
      -> QAT when the drop exceeds the tolerance -> export (.cnnc deployable + ONNX QDQ) -> verify

If a measured figure misses its limit, the budget handed to the planner is tightened by the
measured prediction error and the stages run again (at most ``max_rounds`` times).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from . import distributed
from .analysis import profile
from .data import ImageSet, as_image_set
from .data.adapt import UserData
from .export import OnnxRuntimeModule, export_onnx, export_plan
from .export.c import export_verified
from .export.c.firmware import c_flash_format, missing_tools
from .models import ModelSpec
from .plan import (
    Budget,
    CostModel,
    DeviceProfile,
    FlashFormat,
    Infeasible,
    Plan,
    PlanOptions,
    SensitivityTable,
    Verification,
    measure_artifacts,
    measure_sensitivity,
    plan,
    tighten,
    verify,
)
from .plan.devices import C_WEIGHT_BITS
from .plan.planner import unreachable
from .plan.sensitivity import Delta
from .plan.verify import Measured
from .prune import enforce_masks, lock_zeros, make_permanent, prune_channels, prune_weights
from .quant import qat, quantize, save_quantized
from .quant import sensitivity as bits_sensitivity
from .quant.deployable import write_deployable
from .recipe import RecipeError, load_recipe, run_recipe
from .report import FigureRow, RunReport, figure_rows, layer_rows_from_plan, write_report
from .rundir import RunDirectory, Stage, quantized_stage
from .train import TrainConfig, evaluate, fit
from .utils import check_finite

log = logging.getLogger(__name__)


class BudgetInfeasible(ValueError):
    """The budget cannot be met by any allowed setting; ``result`` names the binding constraint."""

    def __init__(self, result: Infeasible) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass(frozen=True)
class CompressOptions:
    """How hard the stages work. Defaults suit small models on a CPU; raise epochs on a GPU."""

    finetune_epochs: int = 3
    qat_epochs: int = 2
    lr: float = 0.01
    qat_lr: float = 1e-4
    batch_size: int = 128
    max_batches_per_epoch: int | None = None
    sensitivity_images: int = 1000
    prune_options: tuple[float, ...] = (0.25, 0.5, 0.75)
    sparsity_options: tuple[float, ...] = ()  # unstructured per-layer sparsities the planner may pick
    criterion: str = "l1"
    calibration: str = "mse"
    calib_images: int = 512
    max_rounds: int = 3
    weight_bits: tuple[int, ...] | None = None  # default: the device's, else (2, 3, 4, 5, 6, 8)
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0 or self.qat_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")
        for name in ("prune_options", "sparsity_options"):
            if not all(0 < r < 1 for r in getattr(self, name)):
                raise ValueError(f"{name} must be fractions in (0, 1), got {getattr(self, name)}")


@dataclass
class CompressionResult:
    """The compressed (simulated-quantized) model, its plan, what was measured and where it was written."""

    model: nn.Module
    plan: Plan | None  # None for a hand-written recipe
    verification: Verification
    baseline_top1: float
    top1: float
    onnx_top1: float | None
    paths: dict[str, Path]
    stages: list[dict[str, Any]] = field(default_factory=list)
    firmware: dict[str, Any] | None = None  # the C build on the device profile's core (see FirmwareCheck)

    @property
    def fits(self) -> bool:
        return self.verification.fits

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "baseline_top1": self.baseline_top1, "top1": self.top1,
                "onnx_top1": self.onnx_top1, "verification": self.verification.to_dict(),
                "plan": self.plan.to_dict() if self.plan else None, "paths": {k: str(v) for k, v in self.paths.items()},
                "stages": self.stages, "firmware": self.firmware}


def _evaluator(data: ImageSet, device: str) -> Callable[[nn.Module], tuple[float, float]]:
    def run(model: nn.Module) -> tuple[float, float]:
        result = evaluate(model, data, device=device)
        return result.loss, result.top1
    return run


def measure_plan_sensitivity(model: nn.Module, cost: CostModel, val: UserData, options: CompressOptions,
                             bits: tuple[int, ...], cache: Path, progress: bool) -> SensitivityTable:
    """Per channel group: pruned at each option; per layer: weights at each bit width (cached)."""
    val = as_image_set(val, need_labels=True, source="sensitivity: validation data", progress=progress)
    shape = val.info.input_shape
    probe = val.take(min(options.sensitivity_images, len(val)), seed=options.seed)

    def prune_group(copy_: nn.Module, group: str, ratio: float) -> nn.Module:
        per_layer = {layer: ratio for layer in cost.group_layers(group)}
        return prune_channels(copy_, shape, ratio=0.0, per_layer=per_layer, criterion=options.criterion)

    def sparsify_layer(copy_: nn.Module, layer: str, sparsity: float) -> nn.Module:
        return make_permanent(prune_weights(copy_, {layer: sparsity}, scope="layer"))

    evaluate_fn = _evaluator(probe, options.device)
    table = measure_sensitivity(model, sorted(cost.groups), evaluate_fn, prune_group,
                                options.prune_options, kind="prune", cache=cache, progress=progress)
    if options.sparsity_options:
        table = measure_sensitivity(model, cost.layer_names, evaluate_fn, sparsify_layer, options.sparsity_options,
                                    kind="sparsity", table=table, cache=cache, progress=progress)
    if not table.entries("bits"):
        quant = bits_sensitivity(model, probe, bits=bits)
        for layer, per_bits in quant.layers.items():
            for b, entry in per_bits.items():
                table.add("bits", layer, b, Delta(entry.delta_loss, entry.delta_top1))
        table.save(cache)
    return table


def _train_config(options: CompressOptions, epochs: int, lr: float, optimizer: str = "sgd") -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=options.batch_size, lr=lr, optimizer=optimizer,
                       weight_decay=5e-4 if optimizer == "sgd" else 0.0, seed=options.seed, device=options.device,
                       max_batches_per_epoch=options.max_batches_per_epoch)


class _Stages:
    """The stages of one round, closed over the data, the plan and the original model (the teacher)."""

    def __init__(self, original: nn.Module, spec: ModelSpec, the_plan: Plan, train: ImageSet, val: ImageSet,
                 options: CompressOptions, budget: Budget, progress: bool, partial: Callable[[str], Path]) -> None:
        self.original, self.spec, self.plan = original, spec, the_plan
        self.train, self.val, self.options, self.budget, self.progress = train, val, options, budget, progress
        self.shape = train.info.input_shape
        self.partial = partial  # stage name -> its per-epoch checkpoint, so a resumed stage continues mid-way

    def sparsities(self) -> dict[str, float]:
        return {layer: s for layer, s in self.plan.choice.sparsity.items() if s > 0}

    def prune(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """Remove the planned channels, then zero the planned fraction of each layer's smallest weights."""
        summary: dict[str, Any] = {"pruned": False, "sparsity": self.sparsities()}
        ratios = self.plan.prune_ratios()
        if ratios:
            model, record = prune_channels(model, self.shape, ratio=0.0, per_layer=ratios,
                                           criterion=self.options.criterion, return_record=True)
            summary.update(pruned=True, macs_before=record.macs_before, macs_after=record.macs_after,
                           params_before=record.params_before, params_after=record.params_after)
        if summary["sparsity"]:
            make_permanent(prune_weights(model, summary["sparsity"], scope="layer"))
        return model, summary

    def finetune(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        """Recover accuracy by distilling from the original; pruned zeros stay zero throughout."""
        epochs = self.options.finetune_epochs if self.plan.prune_ratios() or self.sparsities() else 0
        if epochs:
            hooks = [enforce_masks] if self.sparsities() else []
            if hooks:
                lock_zeros(model)
            config = _train_config(self.options, epochs, self.options.lr)
            record = fit(model, self.train, config, teacher=self.original, after_step=hooks, progress=self.progress,
                         checkpoint=self.partial("finetune"), resume=True)
            make_permanent(model)
        summary = {"epochs": epochs, "val_top1": evaluate(model, self.val, device=self.options.device).top1}
        return model, summary | ({"resumed_from_epoch": record.resumed_from_epoch}
                                 if epochs and record.resumed_from_epoch else {})

    def quantize(self, model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        calib = self.train.take(min(self.options.calib_images, len(self.train)), seed=self.options.seed)
        choice = self.plan.choice
        qmodel = quantize(model, calib, weight_bits=8, act_bits=choice.act_bits, layer_bits=dict(choice.bits),
                          calibration=self.options.calibration)
        return qmodel, {"val_top1": evaluate(qmodel, self.val, device=self.options.device).top1,
                        "layer_bits": dict(choice.bits), "act_bits": choice.act_bits}

    def qat(self, qmodel: nn.Module, reference_top1: float) -> tuple[nn.Module, dict[str, Any]]:
        before = evaluate(qmodel, self.val, device=self.options.device).top1
        drop = reference_top1 - before
        if drop <= self.budget.max_accuracy_drop or not self.options.qat_epochs:
            return qmodel, {"ran": False, "val_top1": before, "drop_before": drop}
        config = _train_config(self.options, self.options.qat_epochs, self.options.qat_lr, optimizer="adam")
        record = qat(qmodel, self.train, config, teacher=self.original, progress=self.progress,
                     checkpoint=self.partial("qat"), resume=True)
        after = evaluate(qmodel, self.val, device=self.options.device).top1
        summary = {"ran": True, "val_top1_before": before, "val_top1": after, "drop_before": drop}
        resumed = record.resumed_from_epoch
        return qmodel, summary | ({"resumed_from_epoch": resumed} if resumed else {})


def _run_round(run_dir: RunDirectory, round_no: int, stages: _Stages, model: nn.Module, reference_top1: float,
               ) -> tuple[nn.Module, nn.Module, list[dict[str, Any]]]:
    """One round of stages: (float pruned model, quantized model, stage records)."""
    tag = f"r{round_no}-"
    records = []
    model, rec = run_dir.run(Stage(tag + "prune", stages.prune), model)
    records.append(rec)
    model, rec = run_dir.run(Stage(tag + "finetune", stages.finetune), model)
    records.append(rec)
    qmodel, rec = run_dir.run(quantized_stage(tag + "quantize", stages.quantize, stages.spec), copy.deepcopy(model))
    records.append(rec)
    qmodel, rec = run_dir.run(quantized_stage(tag + "qat", lambda m: stages.qat(m, reference_top1), stages.spec),
                              qmodel)
    records.append(rec)
    return model, qmodel, [asdict(r) for r in records]


def compress(model: nn.Module, budget: Budget, train_data: UserData, val_data: UserData,
             test_data: UserData | None = None, profile_: DeviceProfile | None = None,
             output_dir: str | Path = "runs/compress", spec: ModelSpec | None = None,
             options: CompressOptions | None = None, resume: bool = False,
             progress: bool = True) -> CompressionResult:
    """Compress ``model`` to fit ``budget``; raises :class:`BudgetInfeasible` when no plan can fit.

    ``spec`` describes how to rebuild ``model`` (needed for checkpoints; inferred for zoo models only
    when given). Accuracy is checked on ``val_data`` during the run and reported on ``test_data``
    (default ``val_data``) measured with onnxruntime on the exported integer model. Each may be an
    ImageSet, a Dataset of (float image, label) or a DataLoader (loaded once, see :func:`.as_image_set`).
    """
    check_finite(model, "compress")
    if spec is None:
        raise ValueError("compress needs the model's ModelSpec to checkpoint and rebuild it")
    options = options or CompressOptions()
    train_data, val_data, test_data = _adapt_data(train_data, val_data, test_data, progress)
    out = Path(output_dir)
    device = profile_
    scratch = device.ram_reserved_bytes if device else 0
    firmware = FirmwareCheck.for_device(device, options, train_data)
    cost = preflight(model, train_data.info.input_shape, scratch, firmware.flash_format() if firmware else None)
    plan_options = PlanOptions.for_device(device) if device else PlanOptions()
    if options.weight_bits:
        plan_options = replace(plan_options, weight_bits=options.weight_bits)
    plan_options = replace(plan_options, sparsity=bool(options.sparsity_options))
    refused = unreachable(cost, budget, plan_options, options.prune_options, options.sparsity_options)
    if refused is not None:  # no sensitivity measurement can change what the most compressed plan reaches
        raise BudgetInfeasible(refused)
    settings = {"budget": budget.to_dict(), "device": device.to_dict() if device else None,
                "options": asdict(options), "spec": spec.to_dict()}
    with RunDirectory(out, spec, settings, resume=resume) as run_dir:
        shape = train_data.info.input_shape
        model = model.eval()
        original = copy.deepcopy(model)
        baseline_val = evaluate(model, val_data, device=options.device).top1
        baseline_test = evaluate(model, test_data, device=options.device).top1
        log.info("measuring sensitivity on %d validation images (cached in %s)",
                 min(options.sensitivity_images, len(val_data)), out / "sensitivity.json")
        table = measure_plan_sensitivity(model, cost, val_data, options, plan_options.weight_bits,
                                         out / "sensitivity.json", progress)
        target = budget
        stage_log: list[dict[str, Any]] = []
        for round_no in range(1, options.max_rounds + 1):
            the_plan = distributed.on_main(plan, cost, table, target, replace(plan_options, frontier_points=6))
            if isinstance(the_plan, Infeasible):
                raise BudgetInfeasible(the_plan)
            the_plan.save(out / f"plan-r{round_no}.json")
            log.info("round %d plan:\n%s", round_no, the_plan.table())
            partial = lambda name, tag=f"r{round_no}-": out / f"{tag}{name}.partial.pt"  # noqa: E731
            stages = _Stages(original, spec, the_plan, train_data, val_data, options, budget, progress, partial)
            pruned, qmodel, records = _run_round(run_dir, round_no, stages, copy.deepcopy(model), baseline_val)
            for name in ("finetune", "qat"):  # those stages' outputs are saved: their epoch checkpoints are spent
                if distributed.is_main():
                    partial(name).unlink(missing_ok=True)
            stage_log += records
            paths, onnx_top1, verification, firmware_record = distributed.on_main(
                _deploy_and_verify, qmodel, pruned, spec, shape, out, test_data, budget, baseline_test,
                the_plan.choice.act_bits, scratch, the_plan.predicted, firmware)
            log.info("round %d: %s", round_no, verification.describe())
            if verification.fits or not verification.misses or round_no == options.max_rounds:
                break
            only_accuracy = all(m.field == "accuracy_drop" for m in verification.misses)
            if only_accuracy:
                break  # more rounds of the same plan cannot buy accuracy back; report it plainly
            target = tighten(target, verification)
        top1 = evaluate(qmodel, test_data, device=options.device).top1
        result = CompressionResult(qmodel, the_plan, verification, baseline_test, top1, onnx_top1, paths, stage_log,
                                   firmware_record)
        paths.update(distributed.on_main(_write_report, result, original, spec, shape, table, device, budget, out,
                                         test_data.info.name))
        return result


def _adapt_data(train: UserData, val: UserData, test: UserData | None,
                progress: bool) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The three data sets as ImageSets (see :func:`~cnncompress.data.as_image_set`); test defaults to val."""
    train = as_image_set(train, need_labels=True, source="compress: train data", progress=progress)
    val = as_image_set(val, need_labels=True, source="compress: validation data", progress=progress)
    test = val if test is None else as_image_set(test, need_labels=True, source="compress: test data",
                                                 progress=progress)
    return train, val, test or val


def preflight(model: nn.Module, shape: tuple[int, ...], scratch_bytes: int = 0,
              flash: FlashFormat | None = None) -> CostModel:
    """Fail before the first stage when pruning, quantization or integer export cannot take the graph; log
    what the planner may prune and which nodes will run as float islands. Returns the planner's cost model."""
    log.info("integer export plan: %s", export_plan(model, shape).describe())
    cost = CostModel.from_model(model, shape, flash=flash, scratch_bytes=scratch_bytes)
    log.info("planner: %d prunable channel groups%s", len(cost.groups),
             f"; kept at full width (they cover part of a chunk or concat): {', '.join(cost.unplanned)}"
             if cost.unplanned else "")
    return cost


class FirmwareCheck:
    """For a device profile with a ``c_target``: the planner's C flash rules, and the proof at the end.

    The compressed model is exported as C, built for the host (every test image, bit for bit against the
    integer reference) and for the core (``images`` test images in QEMU, equal to the host build); flash
    and RAM are then the firmware's, read off the binary and the painted stack, not the container's.
    """

    def __init__(self, target: str, calibration: ImageSet, images: int = 100) -> None:
        self.target, self.calibration, self.images = target, calibration, images
        self.record: dict[str, Any] | None = None

    @classmethod
    def for_device(cls, device: DeviceProfile | None, options: CompressOptions, train: ImageSet
                   ) -> FirmwareCheck | None:
        """The check for ``device``; None without a C target, or (with a warning) without the toolchain."""
        if device is None or device.c_target is None:
            return None
        if options.weight_bits and not set(options.weight_bits) <= set(C_WEIGHT_BITS):
            raise ValueError(f"weight bits {list(options.weight_bits)}: the C kernels for {device.c_target} run "
                             f"{list(C_WEIGHT_BITS)}-bit weights only")
        if options.sparsity_options:
            raise ValueError(f"sparsity options: the C library for {device.c_target} stores weights dense, so "
                             "unstructured sparsity saves no flash there")
        if missing_tools():
            log.warning("%s not found: flash and RAM are measured on the .cnnc container and the graph, not on "
                        "%s firmware (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)",
                        ", ".join(missing_tools()), device.c_target)
            return None
        return cls(device.c_target, train.take(min(256, len(train)), seed=0))

    def flash_format(self) -> FlashFormat:
        return c_flash_format(self.target)

    def run(self, qmodel: fx.GraphModule, shape: tuple[int, ...], out: Path, test: ImageSet,
            onnx_path: Path | None = None) -> dict[str, Any]:
        """Export to ``out/c``, build and run on the host and the core; the record (also kept in ``record``).

        ``onnx_path``: the model's integer ONNX file when already written (else one is exported to compare with).
        """
        record, check = export_verified(qmodel, out / "c", shape, self.target, test, out / "c.build",
                                        calibration=self.calibration, mcu_target=self.target,
                                        mcu_images=self.images, onnx_path=onnx_path, require_equal=True)
        self.record = {"library": str(record.output_dir), "const_bytes": record.const_bytes,
                       **record.arena.to_dict(), **check.to_dict()}
        return self.record

    def measure(self, qmodel: fx.GraphModule, shape: tuple[int, ...], out: Path, test: ImageSet,
                measured: Measured, scratch: int, onnx_path: Path) -> Measured:
        """``measured`` with the firmware's flash and RAM (plus the reserve) in place of the container's."""
        run = self.run(qmodel, shape, out, test, onnx_path)["mcu"]
        return replace(measured, flash_bytes=run["flash_bytes"], ram_bytes=run["ram_bytes"] + scratch,
                       memory_source=f"{self.target} firmware on QEMU {run['board']}: flash = text + data of the "
                                     "model and kernel objects; RAM = their data + bss + painted stack + reserve")


def _deploy_and_verify(qmodel: nn.Module, float_model: nn.Module, spec: ModelSpec, shape: tuple[int, ...],
                       out: Path, test: ImageSet, budget: Budget, baseline_top1: float, act_bits: int,
                       scratch: int, predicted: Any = None, firmware: FirmwareCheck | None = None
                       ) -> tuple[dict[str, Path], float, Verification, dict[str, Any] | None]:
    """Write the deployable .cnnc, the QDQ ONNX and a checkpoint; measure them against ``budget``.

    Flash is the deployable's file size; RAM and MACs come from the deployed graph (the float graph
    at ``act_bits``); accuracy is onnxruntime's on ``test``. With ``firmware``, flash and RAM are the
    C firmware's instead.
    """
    paths = {"deployable": write_deployable(out / "model.cnnc", qmodel, spec, shape),
             "onnx": export_onnx(qmodel, out / "model.onnx", torch.zeros(1, *shape)),
             "checkpoint": save_quantized(out / "model.pt", qmodel, spec)}
    onnx_top1 = evaluate(OnnxRuntimeModule(paths["onnx"]), test).top1
    measured = measure_artifacts(paths["deployable"], float_model, shape, act_bits=act_bits, scratch_bytes=scratch,
                                 onnx_path=paths["onnx"], accuracy_drop=baseline_top1 - onnx_top1)
    if firmware is not None:
        measured = firmware.measure(qmodel, shape, out, test, measured, scratch, paths["onnx"])
        paths["c_library"] = out / "c"
    return paths, onnx_top1, verify(measured, budget, predicted), firmware.record if firmware else None


def compress_with_recipe(model: nn.Module, recipe: str | Path | dict[str, Any], train_data: UserData,
                         val_data: UserData, test_data: UserData | None = None, budget: Budget | None = None,
                         output_dir: str | Path = "runs/recipe", spec: ModelSpec | None = None,
                         device: str = "cpu", resume: bool = False, progress: bool = True) -> CompressionResult:
    """Run a hand-written recipe (see :mod:`cnncompress.recipe`) instead of the planner, then deploy and
    verify exactly as :func:`compress` does (against ``budget`` when given). The recipe must quantize."""
    check_finite(model, "compress")
    if spec is None:
        raise ValueError("compress_with_recipe needs the model's ModelSpec to checkpoint and rebuild it")
    stages = load_recipe(recipe)
    if "quantize" not in [name for name, _ in stages]:
        raise RecipeError("a recipe must contain a 'quantize' stage: the deployable is an integer model")
    budget = budget or Budget()
    train_data, val_data, test_data = _adapt_data(train_data, val_data, test_data, progress)
    out = Path(output_dir)
    settings = {"recipe": [[n, o] for n, o in stages], "budget": budget.to_dict(), "spec": spec.to_dict()}
    shape = train_data.info.input_shape
    preflight(model, shape)
    with RunDirectory(out, spec, settings, resume=resume) as run_dir:
        baseline_test = evaluate(model.eval(), test_data, device=device).top1
        float_model, qmodel, records = run_recipe(copy.deepcopy(model), stages, spec, train_data, val_data, run_dir,
                                                  device, progress=progress)
        act_bits = qmodel.quant_config.act_bits
        paths, onnx_top1, verification, _ = distributed.on_main(
            _deploy_and_verify, qmodel, float_model, spec, shape, out, test_data, budget, baseline_test, act_bits, 0)
        top1 = evaluate(qmodel, test_data, device=device).top1
        result = CompressionResult(qmodel, None, verification, baseline_test, top1, onnx_top1, paths, records)
        paths.update(distributed.on_main(_write_report, result, model, spec, shape, None, None, budget, out,
                                         test_data.info.name))
    return result


def _write_report(result: CompressionResult, original: nn.Module, spec: ModelSpec, shape: tuple[int, ...],
                  table: SensitivityTable | None, device: DeviceProfile | None, budget: Budget, out: Path,
                  dataset: str) -> dict[str, Path]:
    """report.json/.md/.html: limits, the original's figures, the plan's predictions, the measurements."""
    before = profile(original, shape)
    before_figures = {"flash_bytes": before.weight_bytes, "ram_bytes": before.peak_activation_bytes,
                      "macs": before.macs}
    measured = result.verification.measured.to_dict()
    plan_dict = result.plan.to_dict() if result.plan else None
    figures = figure_rows(budget.to_dict(), before_figures, plan_dict["predicted"] if plan_dict else None, measured)
    figures += [FigureRow("accuracy", before=result.baseline_top1, measured=result.onnx_top1),
                FigureRow("accuracy_drop", limit=budget.max_accuracy_drop,
                          predicted=result.plan.predicted_accuracy_drop if result.plan else None,
                          measured=measured["accuracy_drop"])]
    report = RunReport(
        title=f"cnncompress: {spec.factory} on {dataset}", model=spec.factory, dataset=dataset,
        device=device.to_dict() if device else None, budget=budget.to_dict(), figures=figures,
        layers=layer_rows_from_plan(plan_dict) if plan_dict else [],
        candidates=plan_dict.get("candidates", []) if plan_dict else [],
        sensitivity=table.to_dict() if table else None, plan=plan_dict, stages=result.stages,
        paths={k: str(v) for k, v in result.paths.items()}, fits=result.fits,
        notes=[result.verification.describe()], memory_source=measured["memory_source"], firmware=result.firmware)
    return {f"report_{k}": v for k, v in write_report(report, out).items()}
