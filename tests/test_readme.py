"""Every command in README.md runs as written, or with small settings where it is expensive (issue 20).

The test reads every ```bash block of the README (continuation lines joined, ``NAME=value`` variables
expanded, comments dropped) and runs each command in README order, in one working directory laid out
like a fresh clone (``.venv``, ``examples/``, ``results/lenet5.cnnc``, and ``../shared`` beside it where
the real one exists), so commands that read what earlier ones wrote (``train`` -> ``encode``) do so.

``HOW`` says how each command is run, keyed by the command exactly as the README writes it: as written,
with small settings (documented options appended, which argparse lets override the README's values;
where no option exists, fewer images or cheaper fixed settings applied in-process), or, for commands
that need CUDA GPUs or several machines, parsed only (torchrun's own parser and cnncompress's). A
command without an entry fails the test, so a new or edited README command is never silently skipped.
``cnncompress`` commands run in-process through ``cnncompress.cli.main`` (the console script's entry
point; importing torch once instead of once per command); ``torchrun`` and ``make`` run as programs.

The ```python blocks run here too (``PYTHON_HERE``), or in the test named in ``PYTHON_ELSEWHERE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import cnncompress.cli.common as cli_common
import cnncompress.cli.compress as cli_compress
from cnncompress.cli import build_parser, main
from cnncompress.pipeline import CompressOptions, FirmwareCheck
from testsupport import SHARED, SHARED_PRESENT, SHARED_REASON

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # where the console scripts of this environment live


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class AsWritten:
    """Cheap: run exactly as the README writes it."""

    shared: bool = False  # reads ../shared (data or weights): skipped with SHARED_REASON where it is absent


@dataclass(frozen=True)
class Small:
    """Expensive: run with small settings. ``flags`` are documented options appended to the command; the
    rest apply in-process where the command has no option for it: ``train_images``/``test_images`` cap each
    dataset split the command loads (stratified, seeded; compress's validation hold-out shrinks to a quarter
    of the training cap), ``options`` replace fixed ``CompressOptions`` fields (cheaper calibration, fewer
    planner choices, the demo's epochs), ``fit`` replaces the demo baseline's ``TrainConfig`` fields and
    ``mcu_images`` the images the firmware runs in QEMU. ``may_miss_accuracy``: exit 3 passes when the
    only misses are accuracy (what so little fine-tuning costs); the memory limits must still be met."""

    flags: tuple[str, ...] = ()
    shared: bool = False
    train_images: int | None = None
    test_images: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    mcu_images: int | None = None
    may_miss_accuracy: bool = False


@dataclass(frozen=True)
class ParseOnly:
    """Needs what this machine lacks (CUDA GPUs, several machines): every option is checked by torchrun's and
    cnncompress's own parsers instead. ``ellipsis``: ``...`` stands for the previous command's arguments."""

    why: str
    ellipsis: bool = False


@dataclass(frozen=True)
class MakeTarget:
    """A Makefile target: its recipe is read with ``make -n``; ``runs`` is the recipe line this test runs
    (itself an entry of ``HOW``), ``None`` with ``why`` for a target that cannot run inside the suite."""

    runs: str | None
    expect: tuple[str, ...] = ()  # recipe lines the target must have
    why: str = ""


# A quick compress: PTQ calibrated by min-max instead of MSE, one pruning ratio for the planner to try
QUICK = {"calibration": "minmax", "prune_options": (0.5,)}
QUICK_COMPRESS = ("--finetune-epochs", "1", "--qat-epochs", "0", "--max-batches", "2", "--sensitivity-images", "100",
                  "--max-rounds", "1", "--json")
C = "$C"  # the Commands section's `C=.venv/bin/cnncompress`

HOW: dict[str, AsWritten | Small | ParseOnly | MakeTarget] = {
    # Quickstart
    "make demo": MakeTarget(runs=".venv/bin/cnncompress demo"),
    ".venv/bin/cnncompress demo": Small(  # the demo has no epoch options: its baseline and stages are cut here
        ("--json",), fit={"epochs": 3}, mcu_images=10, may_miss_accuracy=True,
        options={**QUICK, "finetune_epochs": 1, "qat_epochs": 0, "max_batches_per_epoch": 4,
                 "sensitivity_images": 100, "max_rounds": 1}),
    "make test": MakeTarget(runs=None, why="the whole suite, which this test is part of",
                            expect=(".venv/bin/ruff check src tests benchmarks", ".venv/bin/python -m pytest -q")),
    # Commands
    f"{C} profile --model resnet56 --json": AsWritten(),
    f"{C} evaluate --model resnet20 --weights ../shared/pretrained/resnet20-12fca82f.th --dataset cifar10 --json":
        Small(("--limit", "200"), shared=True),
    f"{C} train --model lenet5 --dataset mnist --epochs 10 --output runs/lenet5.pt":
        Small(("--epochs", "1"), shared=True, train_images=1000, test_images=500),
    f"{C} benchmark --model resnet20": Small(("--repeats", "2", "--batch-sizes", "1,4")),
    f"{C} prune --model resnet56 --weights ../shared/pretrained/resnet56-4bfd9763.th --target-macs 0.5 "
    "--criterion fpgm --finetune-epochs 1 --dataset cifar10 --output runs/r56-half.pt --json":
        Small(("--max-batches", "2", "--batch-size", "16", "--eval-limit", "100"), shared=True, train_images=500),
    f"{C} encode --model lenet5 --weights runs/lenet5.pt --sparsity 0.92 --bits 5 --output runs/lenet5.cnnc":
        Small(shared=True, test_images=500),
    f"{C} decode results/lenet5.cnnc --evaluate --dataset mnist --json": AsWritten(shared=True),
    f"{C} quantize --model resnet20 --weights ../shared/pretrained/resnet20-12fca82f.th --dataset cifar10 "
    "--weight-bits 8 --act-bits 8 --calibration mse --calib-size 1024 --output runs/r20-int8 --json":
        Small(("--calib-size", "32", "--limit", "100", "--latency-repeats", "2"), shared=True, train_images=500),
    f"{C} compress --model resnet20 --weights ../shared/pretrained/resnet20-12fca82f.th --dataset cifar10 "
    "--device cortex-m7 --flash 128KB --ram 96KB --max-accuracy-drop 3 --output runs/r20-m7":
        Small((*QUICK_COMPRESS, "--sensitivity-images", "20"), shared=True, train_images=400, test_images=10,
              options=QUICK, mcu_images=4, may_miss_accuracy=True),
    # Your own data
    "cnncompress train --model digits_cnn --dataset examples/mydata.py:build --epochs 10 --batch-size 64 "
    "--output runs/mine.pt": Small(("--epochs", "3")),
    "cnncompress evaluate --model digits_cnn --weights runs/mine.pt --dataset examples/mydata.py:build": AsWritten(),
    "cnncompress compress --model digits_cnn --weights runs/mine.pt --dataset examples/mydata.py:build "
    "--flash 8KB --ram 4KiB --max-accuracy-drop 3 --output runs/mine-8k":
        Small(QUICK_COMPRESS, options=QUICK, may_miss_accuracy=True),
    # Your own model
    "cnncompress train --model $MODEL --dataset $DATA --epochs 10 --output runs/mymodel.pt": Small(("--epochs", "3")),
    "cnncompress compress --model $MODEL --weights runs/mymodel.pt --dataset $DATA --flash 8KB --ram 4KiB "
    "--max-accuracy-drop 2 --output runs/mymodel-8k":  # its first plan can miss flash: rounds as written
        Small((*QUICK_COMPRESS, "--max-rounds", "3"), options=QUICK, may_miss_accuracy=True),
    "cnncompress evaluate --model $MODEL --weights runs/mymodel-8k/model.cnnc --dataset $DATA": AsWritten(),
    # Scaling out
    "torchrun --nproc-per-node 8 -m cnncompress compress --model resnet56 --weights r56.th --dataset cifar10 "
    "--torch-device cuda --flash 256KB --max-accuracy-drop 1 --output runs/r56": ParseOnly("8 CUDA GPUs"),
    "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id r56 "
    "-m cnncompress compress ... --torch-device cuda --output /shared/runs/r56":
        ParseOnly("two machines of 8 CUDA GPUs", ellipsis=True),
    "torchrun --standalone --nproc-per-node 2 -m cnncompress train --model digits_cnn --epochs 10 --output runs/d.pt":
        Small(("--epochs", "1")),
}

# ```python blocks, by a line each holds: run here (in README order, in the same working directory) ...
PYTHON_HERE = ('output_dir="runs/api/compress"', 'cc.load_artifact("runs/mymodel-8k/model.cnnc"')
# ... or by the named test
PYTHON_ELSEWHERE = {"def build(split": "tests/data/test_user_datasets.py::test_readme_shows_examples_mydata_as_it_is",
                    "from examples.mydata import build  # from the repository root":
                        "tests/data/test_user_datasets.py::test_readme_python_api_runs"}


# ---------------------------------------------------------------------------------------------- the README


@dataclass(frozen=True)
class Command:
    line: int  # README line the command starts on
    key: str  # as written: continuation lines joined, comment dropped, whitespace collapsed (HOW's key)
    argv: tuple[str, ...]  # variables expanded


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # README line of the block's first code line
    section: str  # the heading above it
    code: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}-{re.sub(r'[^a-z0-9]+', '-', self.section.lower()).strip('-')}"


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block with a language, in README order."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, section, i = [], "", 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        fence = re.fullmatch(r"```(\S*)\s*", lines[i])
        if fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if fence.group(1):
                blocks.append(Block(fence.group(1), i + 2, section, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def block_commands(block: Block) -> list[Command]:
    """The commands of a bash block: ``\\``-continued lines joined, ``NAME=value`` lines expanded in the rest."""
    commands, variables = [], {}
    logical = re.sub(r"\\\n", " ", block.code)  # a continuation keeps its line count in the first line's place
    starts = [block.line + n for n, text in enumerate(block.code.splitlines()) if not _continues(block.code, n)]
    for line, text in zip(starts, logical.splitlines(), strict=True):
        words = shlex.split(text, comments=True)
        if not words:
            continue
        assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", words[0])
        if assignment and len(words) == 1:
            variables[assignment.group(1)] = assignment.group(2)
            continue

        def expand(word: str, line: int = line) -> str:
            def value(match: re.Match) -> str:
                name = match.group(1) or match.group(2)
                assert name in variables, f"README.md:{line}: ${name} is not set earlier in its block"
                return variables[name]
            return VARIABLE.sub(value, word)

        commands.append(Command(line, " ".join(words), tuple(expand(w) for w in words)))
    return commands


def _continues(code: str, n: int) -> bool:
    """Whether line ``n`` of ``code`` continues the line before it (that one ends in a backslash)."""
    lines = code.splitlines()
    return n > 0 and lines[n - 1].endswith("\\")


def readme_commands() -> list[Command]:
    return [c for b in readme_blocks() if b.language == "bash" for c in block_commands(b)]


# ---------------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A working directory laid out as a fresh clone after `make`: .venv, examples/, results/lenet5.cnnc,
    and ../shared beside it where the real one exists."""
    root = tmp_path_factory.mktemp("readme")
    repo = root / "cnncompress"
    (repo / "results").mkdir(parents=True)
    (repo / ".venv").symlink_to(SCRIPTS.parent, target_is_directory=True)
    shutil.copytree(REPO / "examples", repo / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "results" / "lenet5.cnnc", repo / "results")
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED, target_is_directory=True)
    return repo


class Runner:
    """Runs one README block's commands in order in ``clone``; collects what it skipped."""

    def __init__(self, clone: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.clone, self.monkeypatch, self.capsys = clone, monkeypatch, capsys
        self.skipped: list[str] = []
        self.previous: list[str] = []  # the last torchrun command's cnncompress arguments (for `...`)

    def run(self, command: Command) -> None:
        where = f"README.md:{command.line}: {command.key}"
        how = HOW.get(command.key)
        assert how is not None, (f"{where}\nhas no entry in tests/test_readme.py HOW: say how the test runs it "
                                 "(AsWritten if cheap, Small with the options that make it quick, or ParseOnly)")
        if getattr(how, "shared", False) and not SHARED_PRESENT:
            self.skipped.append(command.key)
            return
        program = command.argv[0]
        if program == "make":
            self.make(command, how, where)
        elif program == "torchrun":
            self.torchrun(command, how, where)
        elif Path(program).name == "cnncompress":
            self.cnncompress(command, how, where)
        else:
            pytest.fail(f"{where}\nthe test knows how to run cnncompress, torchrun and make, not {program!r}")

    def make(self, command: Command, how: MakeTarget, where: str) -> None:
        assert isinstance(how, MakeTarget), f"{where}: a make command needs a MakeTarget entry"
        recipe = subprocess.run(["make", "-n", *command.argv[1:]], cwd=REPO, capture_output=True, text=True,
                                check=False)
        assert recipe.returncode == 0, f"{where}\nmake -n: {recipe.stderr}"
        lines = recipe.stdout.splitlines()
        missing = [line for line in how.expect if line not in lines]
        assert not missing, f"{where}\nthe Makefile recipe lacks {missing}:\n{recipe.stdout}"
        if how.runs is None:
            self.skipped.append(f"{command.key} ({how.why}; its recipe was checked)")
            return
        assert how.runs in lines, f"{where}\nthe Makefile recipe no longer runs {how.runs!r}:\n{recipe.stdout}"
        self.run(Command(command.line, how.runs, tuple(shlex.split(how.runs))))

    def cnncompress(self, command: Command, how: AsWritten | Small, where: str) -> None:
        assert isinstance(how, AsWritten | Small), f"{where}: a cnncompress command runs AsWritten or Small"
        program = command.argv[0]
        resolved = self.clone / program if "/" in program else SCRIPTS / program  # bare: the venv is on PATH
        assert resolved.is_file() and "cnncompress.cli" in resolved.read_text(errors="replace"), \
            f"{where}\n{program} is not the cnncompress console script here ({resolved})"
        argv = [*command.argv[1:], *(how.flags if isinstance(how, Small) else ())]
        self.monkeypatch.chdir(self.clone)
        with contextlib.ExitStack() as stack:
            if isinstance(how, Small):
                stack.enter_context(self.small_settings(how))
            self.capsys.readouterr()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse refused the command line
                code = exc.code
            out, err = self.capsys.readouterr()
        said = f"{where}\nran as: cnncompress {shlex.join(argv)}\nexit {code}; stderr:\n{err[-3000:]}"
        if code == 3 and getattr(how, "may_miss_accuracy", False):
            assert out.strip(), said  # no result: refused before any stage (an infeasible budget)
            misses = json.loads(out)["verification"]["misses"]
            assert misses and all(m["field"] == "accuracy_drop" for m in misses), f"{said}\nmisses: {misses}"
        else:
            assert code == 0, said
        if "--json" in argv:
            assert isinstance(json.loads(out), dict), said
        if "--output" in argv:
            output = self.clone / _last_value(argv, "--output")
            assert output.exists(), f"{said}\nwrote nothing to {output}"

    @contextlib.contextmanager
    def small_settings(self, how: Small):
        patch = pytest.MonkeyPatch()
        try:
            caps = {"train": how.train_images, "test": how.test_images}
            if any(caps.values()):
                for name in ("load_dataset", "load_user_dataset"):
                    patch.setattr(cli_common, name, _capped(getattr(cli_common, name), caps))
            if how.train_images:
                patch.setattr(cli_compress, "VALIDATION_IMAGES",
                              {k: min(v, how.train_images // 4) for k, v in cli_compress.VALIDATION_IMAGES.items()})
            if how.options:
                patch.setattr(cli_compress, "CompressOptions", lambda **kw: CompressOptions(**{**kw, **how.options}))
            if how.fit:
                real_fit = cli_compress.fit
                patch.setattr(cli_compress, "fit", lambda model, data, config, **kw: real_fit(
                    model, data, replace(config, **how.fit), **kw))
            if how.mcu_images:
                real_init = FirmwareCheck.__init__
                patch.setattr(FirmwareCheck, "__init__", lambda self, target, calibration, images=100:
                              real_init(self, target, calibration, min(images, how.mcu_images)))
            yield
        finally:
            patch.undo()

    def torchrun(self, command: Command, how: Small | ParseOnly, where: str) -> None:
        from torch.distributed.run import get_args_parser

        argv = list(command.argv[1:])
        launch = _parse(get_args_parser(), argv, f"{where}\ntorchrun")
        assert launch.module and launch.training_script == "cnncompress", f"{where}: expected -m cnncompress"
        script = list(launch.training_script_args)
        if isinstance(how, ParseOnly):
            if "..." in script:
                assert how.ellipsis and self.previous, f"{where}: '...' with no command before it to stand for"
                at = script.index("...")
                script[at:at + 1] = self.previous[1:]  # the previous command's options; later ones win
            assert _parse(build_parser(), script, f"{where}\ncnncompress").handler, where
            self.previous = list(launch.training_script_args)
            self.skipped.append(f"{command.key[:60]}... (needs {how.why}; parsed only)")
            return
        assert isinstance(how, Small), f"{where}: a torchrun command runs Small or ParseOnly"
        self.previous = script
        env = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run([str(SCRIPTS / "torchrun"), *argv, *how.flags], cwd=self.clone, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{where}\nexit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if "--output" in script:
            assert (self.clone / _last_value(script, "--output")).exists(), f"{where}\nwrote nothing"


def _last_value(argv: list[str], option: str) -> str:
    """The value of the last ``option`` in ``argv`` (the one argparse keeps)."""
    return argv[len(argv) - argv[::-1].index(option)]


def _capped(load, caps: dict[str, int | None]):
    def load_capped(name, split, *args, **kwargs):
        data = load(name, split, *args, **kwargs)
        cap = caps.get(split)
        return data.take(cap) if cap and cap < len(data) else data
    return load_capped


def _parse(parser, argv: list[str], where: str):
    """``parser.parse_args(argv)``, failing the test with argparse's message instead of exiting."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pass
    pytest.fail(f"{where} refuses {shlex.join(argv)}:\n{err.getvalue()}")


# ---------------------------------------------------------------------------------------------- the tests


def test_every_readme_command_has_an_entry():
    """Fast, and before anything runs: every command is in HOW (and HOW holds no command the README dropped)."""
    commands = readme_commands()
    assert len(commands) >= 15, "the README's bash blocks were not found"
    keys = {c.key for c in commands}
    missing = [f"README.md:{c.line}: {c.key}" for c in commands if c.key not in HOW]
    assert not missing, "README commands without an entry in tests/test_readme.py HOW:\n" + "\n".join(missing)
    made = {h.runs for h in HOW.values() if isinstance(h, MakeTarget) and h.runs}
    stale = [k for k in HOW if k not in keys and k not in made]
    assert not stale, f"HOW has entries for commands no longer in the README: {stale}"
    for key, how in HOW.items():  # exit 3 is judged on the JSON result's misses
        assert not getattr(how, "may_miss_accuracy", False) or "--json" in (*how.flags, *key.split()), key


def test_readme_commands_are_read_as_a_shell_would():
    text = ("## A\n```bash\nC=.venv/bin/x\n$C one --a 1 \\\n     --b 2   # note\n# comment\n\n${C} two 'q r'\n```\n"
            "```python\nprint(1)\n```\n```\nplain\n```\n")
    blocks = readme_blocks(text)
    assert [(b.language, b.line, b.section) for b in blocks] == [("bash", 3, "A"), ("python", 11, "A")]
    commands = block_commands(blocks[0])
    assert [(c.line, c.key, c.argv) for c in commands] == [
        (4, "$C one --a 1 --b 2", (".venv/bin/x", "one", "--a", "1", "--b", "2")),
        (8, "${C} two q r", (".venv/bin/x", "two", "q r"))]


def test_every_python_block_is_run_by_a_test():
    blocks = [b for b in readme_blocks() if b.language == "python"]
    for block in blocks:
        owners = [n for n in (*PYTHON_HERE, *PYTHON_ELSEWHERE) if n in block.code]
        assert len(owners) == 1, f"README.md:{block.line}: python block run by {len(owners)} tests (want 1)"
    for test in PYTHON_ELSEWHERE.values():
        path, name = test.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{test} is gone: run its README block here instead"


STEPS = [b for b in readme_blocks() if b.language == "bash"
         or (b.language == "python" and any(n in b.code for n in PYTHON_HERE))]


@pytest.mark.slow
@pytest.mark.parametrize("block", STEPS, ids=[b.id for b in STEPS])
def test_readme_block_runs(block: Block, clone: Path, monkeypatch, capsys):
    """The block's commands in README order, in the shared clone (blocks run in README order too)."""
    if block.language == "python":
        run_python(block, clone, monkeypatch, capsys)
        return
    runner = Runner(clone, monkeypatch, capsys)
    for command in block_commands(block):
        runner.run(command)
    needs_shared = [k for k in runner.skipped if HOW.get(k) and getattr(HOW[k], "shared", False)]
    if needs_shared:
        pytest.skip(f"{SHARED_REASON}: ran the rest, skipped {needs_shared}")


def run_python(block: Block, clone: Path, monkeypatch, capsys) -> None:
    """A python block, in the clone (the "Your own model" one loads what that section's commands wrote)."""
    monkeypatch.chdir(clone)
    for name in [m for m in sys.modules if m == "examples" or m.startswith("examples.")]:
        monkeypatch.delitem(sys.modules, name)  # `from examples.mydata import ...`: the clone's
    monkeypatch.syspath_prepend(str(clone))
    namespace: dict = {}
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    if "cc.compress(" in block.code:  # the Python API example: a budget it meets, files it names
        result = namespace["result"]
        assert result.fits, result.verification.describe()
        assert (clone / "runs/api/model.onnx").is_file() and (clone / "runs/api/compress/report.html").is_file()
        assert "TOTAL" in out
    else:  # loading what compress wrote, with the user's own factory
        assert namespace["art"].kind == "deployable" and namespace["top1"] > 0.5 and "top-1" in out, out
