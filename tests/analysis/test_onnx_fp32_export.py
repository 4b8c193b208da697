"""fp32 ONNX export: one checked file, fixed I/O names, dynamic batch, numerically equal to torch."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cnncompress.export import export_onnx_fp32
from cnncompress.models import build_model


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
