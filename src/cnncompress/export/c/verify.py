"""The proof an export computes what was simulated: the host build against the integer reference
(bit for bit) on a whole test set, agreement with the simulation and with onnxruntime, and
optionally the Cortex-M firmware in QEMU against the host build."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

from ...analysis.inputs import ExampleInput, eval_mode
from ...data import ImageSet
from ...quant.data import CalibrationData
from ..onnx_qdq import OnnxRuntimeModule, export_onnx
from .agreement import OutputAgreement, compare_logits
from .codegen import CExport, check_replaceable, export_c, write_directory
from .firmware import McuRun, run_on_mcu
from .host import HostModel
from .ir import run_program

#: images the int64 reference runs at once: it keeps every intermediate tensor of a batch (ResNet-20 on all
#: 10,000 CIFAR-10 test images at once needed over 22 GB)
REFERENCE_BATCH = 128


@dataclass(frozen=True)
class CVerification:
    images: int
    host_equals_reference: bool  # every int8 output of the gcc build equals the numpy integer reference
    top1_c: float  # accuracy (percent) of the C build's argmax
    vs_simulation: OutputAgreement
    vs_onnxruntime: OutputAgreement
    mcu: McuRun | None = None
    mcu_equals_host: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"images": self.images, "host_equals_reference": self.host_equals_reference, "top1_c": self.top1_c,
               "vs_simulation": self.vs_simulation.to_dict(), "vs_onnxruntime": self.vs_onnxruntime.to_dict()}
        if self.mcu is not None:
            out.update(mcu=self.mcu.to_dict(), mcu_equals_host=self.mcu_equals_host)
        return out


def _logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with eval_mode(model):
        return torch.cat([model(batch) for batch in x.split(256)]).numpy()


def verify_export(record: CExport, qmodel: fx.GraphModule, test: ImageSet, build_dir: str | os.PathLike,
                  mcu_target: str | None = None, mcu_images: int = 100,
                  onnx_path: str | os.PathLike | None = None) -> CVerification:
    """Run the exported C on every image of ``test`` (host) and on the first ``mcu_images`` (emulated MCU).

    ``onnx_path``: ``qmodel``'s integer ONNX export when the caller has written it already (else it is
    exported into ``build_dir``)."""
    build = Path(build_dir)
    x, y = next(test.batches(len(test)))
    codes = record.input_grid.quantize(x.numpy())
    host = HostModel(record.output_dir, build / "host").run(codes, record.output_size)
    reference = np.concatenate([run_program(record.program, codes[i:i + REFERENCE_BATCH])
                                for i in range(0, len(codes), REFERENCE_BATCH)])
    same = bool(np.array_equal(host, reference))
    onnx = OnnxRuntimeModule(onnx_path or export_onnx(qmodel, build / "model.onnx", record.input_shape))
    mcu = equal = None
    if mcu_target is not None:
        n = min(mcu_images, len(codes))
        mcu = run_on_mcu(record.output_dir, codes[:n], record.output_size, build / mcu_target, mcu_target,
                         macs=record.macs)
        equal = bool(np.array_equal(mcu.outputs, host[:n]))
    return CVerification(len(codes), same, 100 * float((host.argmax(1) == y.numpy()).mean()),
                         compare_logits(host, _logits(qmodel, x), record.output_grid),
                         compare_logits(host, _logits(onnx, x), record.output_grid), mcu, equal)


def export_verified(qmodel: fx.GraphModule, out_dir: str | os.PathLike, input_shape: ExampleInput, target: str,
                    test: ImageSet, build_dir: str | os.PathLike, *, calibration: CalibrationData | None = None,
                    mcu_target: str | None = None, mcu_images: int = 100, onnx_path: str | os.PathLike | None = None,
                    require_equal: bool = False) -> tuple[CExport, CVerification]:
    """:func:`export_c` then :func:`verify_export`, the library moved to ``out_dir`` only once the proof ran.

    A failed proof (a compiler error, a model that does not fit the memory map, a missing tool, QEMU's timeout,
    and with ``require_equal`` outputs that differ from the integer reference) leaves ``out_dir`` as it was:
    no library there looks verified. ``out_dir`` is refused before any work unless it is missing, empty or an
    earlier export."""
    out = Path(out_dir)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.unverified.", dir=out.parent))
    try:
        record = export_c(qmodel, staging / out.name, input_shape, target, calibration=calibration)
        check = verify_export(record, qmodel, test, build_dir, mcu_target, mcu_images, onnx_path)
        if require_equal and not (check.host_equals_reference and (mcu_target is None or check.mcu_equals_host)):
            raise RuntimeError(f"the C build disagrees with the integer reference (host equal: "
                               f"{check.host_equals_reference}, {mcu_target} equal: {check.mcu_equals_host}); this "
                               "is a bug, please report it")
        write_directory(out, {p.name: p.read_text(encoding="utf-8") for p in sorted(record.output_dir.iterdir())})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record.output_dir = out
    return record, check
