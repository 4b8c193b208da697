"""A model of your own for cnncompress: `--model examples/mymodel.py:build` (see README, "Your own model")."""

from torch import nn


class TinyResNet(nn.Module):
    """A stem, one residual block and a classifier, for 1 x 8 x 8 images (the digits of examples/mydata.py)."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(2 * width, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(x + self.block(x))  # a residual add: pruning keeps the channels on both sides in step
        return self.head(x)


def build(num_classes: int = 10, width: int = 16) -> nn.Module:
    """cnncompress calls this with no arguments (or with the keyword arguments a checkpoint recorded)."""
    return TinyResNet(num_classes, width)
