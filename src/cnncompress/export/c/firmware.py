"""Microcontroller proof: the exported library cross-compiled for Cortex-M and run in QEMU.

The firmware links the generated sources with a start-up file, a linker script sized to the
target's flash and RAM (``plan/devices``) on the QEMU board's memory map, and a ``main`` that runs
inference on images embedded in flash, measures the stack high-water mark by painting the stack
first, and prints the outputs through newlib's semihosting. Flash and RAM are read off the
model's own object files with ``arm-none-eabi-size``. QEMU is not cycle-accurate; run with
``-icount`` its virtual clock counts executed instructions, and SysTick (timed against a loop
of known length) turns that into instructions per inference.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ...plan import FlashFormat, load_device
from .codegen import kernel_sources
from .host import CompileError, c_sources, compile_c

BOARDS = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500"}  # QEMU machines with these cores
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
ARM_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-mthumb", "-mfloat-abi=soft",
             "-ffunction-sections", "-fdata-sections")
STACK_BYTES = 16 * 1024  # reserved for the stack (the device profiles' ram_reserved)
HEAP_BYTES = 8 * 1024  # newlib's stdio buffers (semihosted printf) come from the heap
PAINT = 0xA5C3A5C3
CALIBRATION_LOOPS = 1_000_000  # a two-instruction loop, timed to turn SysTick ticks into instructions
ICOUNT = ("-icount", "shift=0,align=off,sleep=off")  # the virtual clock counts executed instructions


def missing_tools() -> list[str]:
    """The cross toolchain and emulator programs not on PATH (``.ci/run`` installs them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _board(target: str) -> str:
    if target not in BOARDS:
        raise ValueError(f"no emulated board for target {target!r}; choose one of {', '.join(BOARDS)}")
    return BOARDS[target]


def _fill(template: str, values: dict[str, Any]) -> str:
    """``template`` (a file in ``runtime/``) with its ``@NAME@`` placeholders replaced."""
    text = (resources.files(__package__) / "runtime" / template).read_text(encoding="utf-8")
    return re.sub(r"@(\w+)@", lambda m: str(values[m.group(1)]), text)


def _main_source(codes: np.ndarray) -> str:
    rows = ["    {" + ", ".join(str(int(v)) for v in image) + "}," for image in codes.reshape(len(codes), -1)]
    return _fill("firmware_main.c", {"COUNT": len(codes), "IMAGES": "\n".join(rows), "PAINT": f"0x{PAINT:08X}",
                                     "LOOPS": CALIBRATION_LOOPS})


def _linker_script(target: str) -> str:
    device = load_device(target)
    return _fill("firmware.ld", {"FLASH": device.flash_bytes, "RAM": device.ram_bytes, "STACK": STACK_BYTES,
                                 "HEAP": HEAP_BYTES})


@dataclass(frozen=True)
class SectionSizes:
    text: int
    data: int
    bss: int


def object_sizes(objects: list[Path]) -> dict[str, SectionSizes]:
    """Berkeley ``arm-none-eabi-size`` of each object file: text (code + const data), data, bss."""
    done = subprocess.run(["arm-none-eabi-size", *map(str, objects)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in done.stdout.splitlines()[1:]:
        text, data, bss, _, _, name = line.split(maxsplit=5)
        sizes[Path(name).name] = SectionSizes(int(text), int(data), int(bss))
    return sizes


@dataclass(frozen=True)
class McuRun:
    """Outputs and measured memory of the firmware on the emulated board."""

    target: str
    board: str
    outputs: np.ndarray
    flash_bytes: int  # text + data of the model's object files (model.o and the kernels)
    ram_bytes: int  # model .data + .bss (the arena) + stack high-water mark
    stack_bytes: int
    instructions_per_inference: int  # QEMU's executed-instruction count (-icount), not cycles
    objects: dict[str, SectionSizes]
    elf: Path

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "board": self.board, "images": len(self.outputs),
                "flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes, "stack_bytes": self.stack_bytes,
                "instructions_per_inference": self.instructions_per_inference,
                "objects": {k: vars(v) for k, v in self.objects.items()}, "elf": str(self.elf)}


#: Flash ``model.c`` adds besides its const arrays, per kernel call: the call's parameter struct (its sizeof in
#: cnnc_kernels.h: exact) and the call's code in ``cnnc_run``. The code is a least-squares fit of cnnc_run's
#: size (``arm-none-eabi-nm -S model.o``, arm-none-eabi-gcc 12.2.1 with ARM_FLAGS, the same for cortex-m4 and
#: cortex-m7) against the calls of each kind, over 40 random nets mixing every kernel plus the digits CNN,
#: LeNet-5 and ResNet-20: 13.6 B per conv/linear call, 17.2 per add (two inputs), 15.3 per window, 13.4 per
#: max pool, 13.6 per average pool, 15.2 per requantizing copy, and 44.9 B once; the fit is within 11 B of
#: every net. The call code varies by a few bytes with how the arena offsets encode. Repeat the measurement
#: with ``python benchmarks/c_call_bytes.py`` (results/c_call_bytes.md).
C_STRUCT_BYTES = {"conv": 96, "add": 52, "window": 76, "maxpool": 48, "avgpool": 72, "requant": 28}
C_CALL_BYTES = {"conv": 14, "add": 17, "window": 15, "maxpool": 13, "avgpool": 14, "requant": 15}
C_RUN_BYTES = 45  # cnnc_run's prologue and epilogue, the arena's address and the copy of the output
#: RAM the firmware needs besides the arena: the stack high-water mark of ``cnnc_run`` and its deepest kernel
#: (painted in QEMU), which the data + bss of the model and kernel objects add nothing to. Measured 300-308 B
#: on the digits CNN, LeNet-5 and ResNet-20 for cortex-m4 (results/mcu.md); checked against the firmware by
#: tests/export/test_c_firmware.py.
C_STACK_BYTES = 308
#: flash a conv/linear layer adds besides its arrays (weights, bias, multiplier, shift)
C_LAYER_BYTES = C_STRUCT_BYTES["conv"] + C_CALL_BYTES["conv"]
#: flash of each other kernel call, by the kinds ``plan.cost.kernel_calls`` counts
C_OP_BYTES = {kind: C_STRUCT_BYTES[kind] + C_CALL_BYTES[kind] for kind in C_STRUCT_BYTES if kind != "conv"}


@functools.cache
def kernel_code_bytes(target: str) -> int:
    """Flash of the kernels (text + data of cnnc_kernels.o), compiled for ``target`` as the firmware is."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "cnnc_kernels.c"
        for name, text in kernel_sources().items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        obj = Path(tmp) / "cnnc_kernels.o"
        compile_c("arm-none-eabi-gcc", [*ARM_FLAGS, f"-mcpu={target}", "-c", str(source), "-o", str(obj)],
                  f"the kernels for {target}")
        sizes = object_sizes([obj])["cnnc_kernels.o"]
    return sizes.text + sizes.data


def c_flash_format(target: str) -> FlashFormat:
    """The planner's flash rules for the C library on ``target``, as ``model.c`` lays it out: weights packed
    at their width, an int32 bias and an int32 multiplier and shift per output channel, a parameter struct
    and a call per layer and per other kernel call (add, pooling, window, requantizing copy), ``cnnc_run``
    itself, and the kernels' code measured by compiling them (the toolchain must be present); RAM adds the
    kernels' stack."""
    return FlashFormat(bias_bits=32, scale_bytes=8, layer_bytes=C_LAYER_BYTES,
                       fixed_bytes=kernel_code_bytes(target) + C_RUN_BYTES, op_bytes=dict(C_OP_BYTES),
                       runtime_ram_bytes=C_STACK_BYTES)


def build_firmware(lib_dir: str | os.PathLike, codes: np.ndarray, build_dir: str | os.PathLike,
                   target: str) -> tuple[Path, dict[str, SectionSizes]]:
    """Cross-compile the library and a test ``main`` for ``target``: the ELF and the model objects' sizes."""
    if missing_tools():
        raise RuntimeError(f"the Cortex-M build needs {', '.join(missing_tools())} (Debian: apt-get install "
                           "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    build = Path(build_dir)
    build.mkdir(parents=True, exist_ok=True)
    (build / "startup.c").write_text(_fill("startup.c", {}))
    (build / "main.c").write_text(_main_source(np.asarray(codes, np.int8)))
    (build / "firmware.ld").write_text(_linker_script(target))
    flags = [*ARM_FLAGS, f"-mcpu={target}", f"-I{lib_dir}"]
    objects = []
    for source in c_sources(lib_dir):
        obj = build / (Path(source).stem + ".o")
        compile_c("arm-none-eabi-gcc", [*flags, "-c", source, "-o", str(obj)], f"{Path(source).name} for {target}")
        objects.append(obj)
    elf = build / "firmware.elf"
    try:
        compile_c("arm-none-eabi-gcc", [*flags, "--specs=rdimon.specs", "-nostartfiles", f"-T{build / 'firmware.ld'}",
                                        "-Wl,--gc-sections", str(build / "startup.c"), str(build / "main.c"),
                                        *map(str, objects), "-o", str(elf)], f"the {target} firmware")
    except CompileError as exc:
        overflows = [line for line in exc.lines if "overflowed by" in line]
        if not overflows:
            raise
        device = load_device(target)
        raise RuntimeError(f"the model does not fit the {target} memory map (flash {device.flash_bytes:,} B, RAM "
                           f"{device.ram_bytes:,} B of which {STACK_BYTES + HEAP_BYTES:,} B stack and heap, from "
                           f"the {target} device profile): {'; '.join(overflows)}") from None
    return elf, object_sizes(objects)


#: QEMU's default timeout: TIMEOUT_START_S plus the images' MACs at INSTRUCTIONS_PER_MAC run at SLOWEST_IPS
#: instructions per second. Measured here: 16-31 instructions per MAC (8-bit weights to packed 4-bit ones),
#: 500-700M instructions per second under -icount on a loaded 2-core host; the timeout allows 10x slower
#: (ResNet-20 at 20M MACs, 100 images: 1,900 s; the digits CNN: 330 s).
TIMEOUT_START_S, INSTRUCTIONS_PER_MAC, SLOWEST_IPS = 300, 40, 50e6


def mcu_timeout_s(images: int, macs: int | None) -> float:
    """Seconds QEMU may take for ``images`` inferences of ``macs`` each (the start-up allowance without ``macs``)."""
    return TIMEOUT_START_S + (images * macs * INSTRUCTIONS_PER_MAC / SLOWEST_IPS if macs else 0)


def run_on_mcu(lib_dir: str | os.PathLike, codes: np.ndarray, output_size: int, build_dir: str | os.PathLike,
               target: str = "cortex-m4", timeout_s: float | None = None, macs: int | None = None) -> McuRun:
    """Build the firmware for ``target``, run it in QEMU and read back outputs and memory.

    ``timeout_s``: how long QEMU may run; by default :func:`mcu_timeout_s` of the images and the model's
    ``macs`` per inference (``CExport.macs``), 300 s when ``macs`` is not given."""
    board = _board(target)
    timeout_s = mcu_timeout_s(len(codes), macs) if timeout_s is None else timeout_s
    elf, objects = build_firmware(lib_dir, codes, build_dir, target)
    command = ["qemu-system-arm", "-M", board, *ICOUNT, "-nographic", "-monitor", "none", "-semihosting-config",
               "enable=on,target=native", "-kernel", str(elf)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the {target} firmware did not finish within {timeout_s:g} s on QEMU {board}") from exc
    lines = done.stdout.split()
    if done.returncode != 0 or "status" not in lines:
        raise RuntimeError(f"the {target} firmware failed on QEMU {board} (exit status {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-300:]}")
    outputs = np.array([np.frombuffer(bytes.fromhex(lines[i + 1]), np.int8) for i, word in enumerate(lines)
                        if word == "out"]).reshape(-1, output_size)
    stack = int(lines[lines.index("stack") + 1])
    flash = sum(s.text + s.data for s in objects.values())
    ram = sum(s.data + s.bss for s in objects.values()) + stack
    per_tick = 2 * CALIBRATION_LOOPS / _ticks(lines, "calibration")
    instructions = _ticks(lines, "inference") * per_tick / len(outputs)
    return McuRun(target, board, outputs, flash, ram, stack, round(instructions), objects, elf)


def _ticks(words: list[str], label: str) -> int:
    """A 64-bit tick count the firmware printed as ``label high low``."""
    i = words.index(label)
    return (int(words[i + 1]) << 32) + int(words[i + 2])
