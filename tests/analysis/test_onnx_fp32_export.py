"""fp32 ONNX export: one checked file, fixed I/O names, dynamic batch, numerically equal to torch."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnncompress import prune_channels
from cnncompress.export import export_onnx_fp32
from cnncompress.models import PadShortcut, build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_model("resnet20").train()
    with torch.no_grad():  # non-trivial BN statistics so folding errors would show
        model(torch.randn(8, 3, 32, 32))
    path = export_onnx_fp32(model, tmp_path_factory.mktemp("onnx") / "resnet20.onnx", (3, 32, 32))
    return model, path


def test_single_checked_file_with_named_io(exported: tuple[torch.nn.Module, Path]) -> None:
    model, path = exported
    assert model.training, "export must restore the caller's mode"
    assert sorted(p.name for p in path.parent.iterdir()) == ["resnet20.onnx"]  # no temp or external data
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)


def test_onnxruntime_matches_torch_at_any_batch(exported: tuple[torch.nn.Module, Path]) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (got,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        want = model.eval()(x).numpy()
    model.train()
    assert got.shape == (5, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_option_a_shortcuts_export_as_convs(exported: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    """Slice and Pad would keep onnxruntime's blocked-layout kernels out of the residual stream."""
    model, path = exported
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    shortcuts = sum(isinstance(m, PadShortcut) for m in model.modules())
    assert shortcuts == 2 and "Pad" not in ops and "Slice" not in ops
    assert ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) + shortcuts
    literal = export_onnx_fp32(model, tmp_path / "literal.onnx", (3, 32, 32), equivalents=False)
    assert "Pad" in [node.op_type for node in onnx.load(str(literal)).graph.node]


def test_pruned_shortcuts_export_exactly(tmp_path: Path) -> None:
    """Uneven pad widths, as pruning leaves them, survive the swap; the module itself is untouched."""
    torch.manual_seed(1)
    model = prune_channels(build_model("resnet20"), (3, 32, 32), ratio=0.4).eval()
    assert {(m.pad_before, m.pad_after) for m in model.modules() if isinstance(m, PadShortcut)} - {(8, 8), (16, 16)}
    path = export_onnx_fp32(model, tmp_path / "pruned.onnx", (3, 32, 32))
    x = torch.randn(3, 3, 32, 32)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5, rtol=1e-4)
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2
