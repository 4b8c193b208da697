"""C99 export: a quantized model as integer kernels, a static arena and const weights, with a host
build (gcc + ctypes) and a Cortex-M firmware build run in QEMU that prove it computes what the
project's integer reference computes."""

from .arena import ArenaPlan, plan_arena
from .codegen import TARGETS, CExport, export_c
from .firmware import McuRun, run_on_mcu
from .fixedpoint import quantize_multiplier, requantize
from .host import HostModel
from .ir import Grid, Program, run_program
from .lower import lower
from .ops import HANDLERS, UnsupportedOp
from .verify import CVerification, export_verified, verify_export

__all__ = ["HANDLERS", "TARGETS", "ArenaPlan", "CExport", "CVerification", "Grid", "HostModel", "McuRun", "Program",
           "UnsupportedOp", "export_c", "export_verified", "lower", "plan_arena", "quantize_multiplier", "requantize",
           "run_on_mcu", "run_program", "verify_export"]
