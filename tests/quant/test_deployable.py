"""The integer deployable (.cnnc of weight codes) and quantized checkpoints rebuild pruned models exactly."""

from __future__ import annotations

import pytest
import torch

from cnncompress.encode import CnncFormatError, write_cnnc
from cnncompress.models import ModelSpec, build_model
from cnncompress.prune import prune_channels
from cnncompress.quant import load_quantized, quantize, save_quantized
from cnncompress.quant.deployable import integer_state, read_deployable, write_deployable
from cnncompress.quant.graph import quant_layers

SPEC = ModelSpec("resnet20")


@pytest.fixture(scope="module")
def pruned_quantized():
    torch.manual_seed(0)
    pruned = prune_channels(SPEC.build().eval(), (3, 32, 32), ratio=0.3)  # changes the shortcut pads
    x = torch.randn(32, 3, 32, 32)
    return quantize(pruned, x, weight_bits=4, act_bits=8, layer_bits={"conv1": 8, "linear": 8}), x


def test_weights_are_stored_as_codes_in_their_bit_range(pruned_quantized):
    qmodel, _ = pruned_quantized
    state = integer_state(qmodel)
    for name, layer in quant_layers(qmodel):
        codes = state[f"{name}.weight"]
        spec = layer.weight_quant.spec
        assert torch.equal(codes, codes.round()) and codes.min() >= spec.qmin and codes.max() <= spec.qmax
        assert len(codes.unique()) <= 2 ** spec.bits


def test_deployable_and_checkpoint_rebuild_the_same_function(tmp_path, pruned_quantized):
    qmodel, x = pruned_quantized
    assert qmodel.module_attrs["layer2.0.shortcut"] != {"pad_before": 8, "pad_after": 8}
    from_file, _, header = read_deployable(write_deployable(tmp_path / "m.cnnc", qmodel, SPEC, (3, 32, 32)))
    from_ckpt, _, _ = load_quantized(save_quantized(tmp_path / "m.pt", qmodel, SPEC))
    with torch.no_grad():
        expected = qmodel(x)
        assert torch.equal(from_file(x), expected)
        assert torch.equal(from_ckpt(x), expected)
    assert header["meta"]["quant_config"]["weight_bits"] == 4
    # 4-bit codes of ~190k weights: far below the 1 byte per weight of an int8 file
    assert (tmp_path / "m.cnnc").stat().st_size < 0.6 * sum(p.numel() for p in qmodel.parameters())


def test_corrupt_or_float_files_are_refused(tmp_path, pruned_quantized):
    qmodel, _ = pruned_quantized
    path = write_deployable(tmp_path / "m.cnnc", qmodel, SPEC)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.cnnc").write_bytes(bytes(data))
    with pytest.raises(CnncFormatError):
        read_deployable(tmp_path / "bad.cnnc")
    write_cnnc(tmp_path / "float.cnnc", build_model("lenet300"), ModelSpec("lenet300"))
    with pytest.raises(CnncFormatError, match="not a quantized deployable"):
        read_deployable(tmp_path / "float.cnnc")
