"""ImageSet sampling, batching, normalisation and augmentation (synthetic sets and sklearn digits)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncompress.data import DATASETS, ImageSet


def _indexed(n: int, name: str = "digits", num_labels: int = 10) -> ImageSet:
    """A set whose image i stores i in its first two bytes, so subsets reveal their indices."""
    info = DATASETS[name]
    images = torch.randint(0, 256, (n, *info.input_shape), dtype=torch.uint8, generator=torch.Generator())
    flat = images.view(n, -1)
    flat[:, 0], flat[:, 1] = torch.arange(n) // 256, torch.arange(n) % 256
    return ImageSet(images, torch.arange(n) % num_labels, info)


def _ids(s: ImageSet) -> list[int]:
    flat = s.images.flatten(1).long()
    return (flat[:, 0] * 256 + flat[:, 1]).tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_split_is_deterministic_disjoint_and_complete(n, frac, seed):
    data = _indexed(n, num_labels=7)
    holdout_size = int(frac * n)
    rest, holdout = data.split(holdout_size, seed=seed)
    again_rest, again_holdout = data.split(holdout_size, seed=seed)
    assert _ids(holdout) == _ids(again_holdout) and _ids(rest) == _ids(again_rest)
    assert len(holdout) == holdout_size and sorted(_ids(rest) + _ids(holdout)) == list(range(n))
    assert _ids(data.take(holdout_size, seed=seed)) == _ids(holdout)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 400), seed=st.integers(0, 1000))
def test_take_is_stratified(digits_train, n, seed):
    taken = digits_train.take(n, seed=seed)
    share = torch.bincount(digits_train.labels, minlength=10).double() / len(digits_train)
    counts = torch.bincount(taken.labels, minlength=10).double()
    assert (counts - n * share).abs().max() < 1.5


def test_take_depends_on_seed_and_validates(digits_train):
    assert _ids(_indexed(500).take(50, seed=1)) != _ids(_indexed(500).take(50, seed=2))
    with pytest.raises(ValueError, match="cannot hold out"):
        digits_train.take(len(digits_train) + 1)


def test_digits_splits_partition_sklearn_digits(digits_train, digits_test):
    from sklearn.datasets import load_digits

    assert (len(digits_train), len(digits_test)) == (1347, 450)
    assert digits_train.images.shape[1:] == (1, 8, 8) and digits_train.images.dtype == torch.uint8
    full = torch.from_numpy(load_digits().data).round().long()
    ours = torch.cat([digits_train.images, digits_test.images]).view(-1, 64).long()
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, (full * 255 / 16).round().long().tolist()))
    assert set(torch.bincount(digits_test.labels).tolist()) <= {44, 45, 46}


def test_digits_normalisation_constants_match_train_split(digits_train):
    x, y = digits_train.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 120), batch_size=st.integers(1, 50), drop_last=st.booleans(),
       shuffle=st.booleans())
def test_batches_cover_the_set(n, batch_size, drop_last, shuffle):
    data = _indexed(n)
    batches = list(data.batches(batch_size, shuffle=shuffle, seed=3, drop_last=drop_last))
    assert len(batches) == data.num_batches(batch_size, drop_last)
    assert all(len(x) == len(y) <= batch_size and x.dtype == torch.float32 for x, y in batches)
    seen = torch.cat([y for _, y in batches]) if batches else torch.empty(0, dtype=torch.long)
    assert len(seen) == (n // batch_size * batch_size if drop_last else n)
    if not shuffle and not drop_last:
        x_all, y_all = data.tensors()
        assert torch.equal(torch.cat([x for x, _ in batches]), x_all) and torch.equal(seen, y_all)


def test_shuffled_batches_follow_the_seed(digits_test):
    def labels(seed):
        return torch.cat([y for _, y in digits_test.batches(64, shuffle=True, augment=True, seed=seed)])

    assert torch.equal(labels(5), labels(5)) and not torch.equal(labels(5), labels(6))
    assert sorted(labels(5).tolist()) == sorted(digits_test.labels.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(digits_test.batches(0))


def _crops(image: torch.Tensor, pad: int, flips: bool) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    h, w = image.shape[1:]
    crops = [padded[:, t:t + h, s:s + w] for t, s in itertools.product(range(2 * pad + 1), repeat=2)]
    return crops + [c.flip(-1) for c in crops] if flips else crops


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10"])
def test_augment_is_a_padded_crop_and_flips_only_cifar(name):
    data = _indexed(64, name)
    info = data.info
    assert info.crop_pad == {32: 4, 28: 2, 8: 1}[info.input_shape[1]] and info.hflip == (name == "cifar10")
    x, _ = next(data.batches(64, augment=True, seed=0))
    assert x.shape == data.images.shape
    unflipped, flipped = 0, 0
    for image, out in zip(data.images, x, strict=True):
        plain = [data.normalize(c) for c in _crops(image, info.crop_pad, flips=False)]
        mirrored = [data.normalize(c) for c in _crops(image, info.crop_pad, flips=True)[len(plain):]]
        unflipped += any(torch.equal(out, c) for c in plain)
        flipped += any(torch.equal(out, c) for c in mirrored)
    assert unflipped + flipped == 64
    assert (flipped > 10) if info.hflip else (flipped == 0)


def test_augment_changes_images_and_is_seeded(digits_test):
    def first(seed):
        return next(digits_test.batches(128, augment=True, seed=seed))[0]

    plain = next(digits_test.batches(128))[0]
    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), plain)


def test_imageset_validation_and_helpers(digits_test):
    info = DATASETS["digits"]
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.float64), torch.zeros(2, dtype=torch.long), info)
    with pytest.raises(ValueError, match="labels outside"):
        ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 10]), info)
    with pytest.raises(TypeError, match="uint8"):
        digits_test.normalize(torch.zeros(1, 1, 8, 8))
    assert len(digits_test.subset(slice(0, 10))) == 10 and len(digits_test.subset([3, 1])) == 2
    assert torch.equal(digits_test.subset(digits_test.labels == 4).labels.unique(), torch.tensor([4]))
    assert repr(digits_test) == "ImageSet('digits', n=450, shape=(1, 8, 8))"
    assert digits_test.normalize(digits_test.images[0]).shape == (1, 8, 8)
