"""The option-A shortcut's export form (a strided 1x1 conv) computes exactly what the module does."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.models import PadShortcut


@settings(max_examples=40, deadline=None)
@given(channels=st.integers(1, 12), pad_before=st.integers(0, 6), pad_after=st.integers(0, 6),
       stride=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_export_equivalent_is_exact(channels, pad_before, pad_after, stride, height, width, seed) -> None:
    x = torch.randn(2, channels, height, width, generator=torch.Generator().manual_seed(seed))
    shortcut = PadShortcut(pad_before, pad_after, stride)
    conv = shortcut.export_equivalent(x)
    with torch.no_grad():
        assert torch.equal(conv(x), shortcut(x))
    assert not any(p.requires_grad for p in conv.parameters())
