"""What each dataset is: shapes, classes, normalisation constants, files, checksums and URLs.

The MD5s are the published ones (see ../shared/data/README.md); they are the only thing that
decides whether a file on disk is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

DIGIT_NAMES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset; ``mean``/``std`` are per channel on pixels scaled to [0, 1].

    ``crop_pad``/``hflip`` define training augmentation: random crop after zero padding, and
    horizontal flip only where a mirrored image is still the same class (not for digits).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_pad: int = 0
    hflip: bool = False


DATASETS: dict[str, DatasetInfo] = {
    # sklearn's bundled 8x8 digits. Constants measured once on our train split (1347 images,
    # see load._digits) after rescaling 0..16 to 0..255; dataset-specific values keep inputs
    # centred like the other datasets rather than the arbitrary 0.5/0.5.
    "digits": DatasetInfo("digits", 10, (1, 8, 8), (0.306201,), (0.376138,), DIGIT_NAMES,
                          crop_pad=1),
    # Train-split statistics published in the data README.
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.130660,), (0.308108,), DIGIT_NAMES,
                         crop_pad=2),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 10, (1, 28, 28), (0.286041,), (0.353024,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        crop_pad=2,
    ),
    # ImageNet constants, not CIFAR's own: the shared pretrained CIFAR ResNets were trained with
    # them (../shared/pretrained/README.md), so evaluating those weights needs exactly these.
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        crop_pad=4, hflip=True,
    ),
}

ALIASES = {"fashion": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
           "cifar-10": "cifar10", "cifar_10": "cifar10"}

# Sub-directories of a data dir that may hold a dataset; "." = files directly in the data dir.
SUBDIRS = {
    "mnist": ("mnist", "MNIST/raw", "."),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "."),
    "cifar10": ("cifar-10", "."),
}


@dataclass(frozen=True)
class IdxFile:
    """One MNIST-family idx file: MD5 of the official ``.gz`` and of its decompressed content."""

    stem: str
    gz_md5: str
    raw_md5: str


IDX_FILES: dict[str, dict[str, tuple[IdxFile, IdxFile]]] = {  # dataset -> split -> (images, labels)
    "mnist": {
        "train": (IdxFile("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                          "6bbc9ace898e44ae57da46a324031adb"),
                  IdxFile("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432",
                          "a25bea736e30d166cdddb491f175f624")),
        "test": (IdxFile("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3",
                         "2646ac647ad5339dbf082846283269ea"),
                 IdxFile("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c",
                         "27ae3e4e09519cfbb04c329615203637")),
    },
    "fashion-mnist": {
        "train": (IdxFile("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                          "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                  IdxFile("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe",
                          "9018921c3c673c538a1fc5bad174d6f9")),
        "test": (IdxFile("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79",
                         "8181f5470baa50b63fa0f6fddb340f0a"),
                 IdxFile("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310",
                         "15d484375f8d13e6eb1aabb0c3f46965")),
    },
}

IDX_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# CIFAR-10: members of the "binary version" and of the "python version", split -> {member: MD5}.
CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_BIN_MEMBERS = {
    "train": {"data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
              "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
              "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
              "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
              "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d"},
    "test": {"test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d"},
}
CIFAR_PY_DIR = "cifar-10-batches-py"
CIFAR_PY_MEMBERS = {
    "train": {"data_batch_1": "c99cafc152244af753f735de768cd75f",
              "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
              "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
              "data_batch_4": "634d18415352ddfa80567beed471001a",
              "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb"},
    "test": {"test_batch": "40351d587109b95175f43aff81a1287e"},
}
# Archives, in the order they are looked for: file name -> (MD5, member format).
CIFAR_ARCHIVES = {
    "cifar-10-binary.tar.gz": ("c32a1d4ab5d03f1284b67883e8d87530", "bin"),
    "cifar-10-binary.tar.xz": ("0a37f5eec7527648eed97c8c818c4b65", "bin"),  # repack in ../shared/data
    "cifar-10-python.tar.gz": ("c58f30108f718f92721af3b95e74349a", "py"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
