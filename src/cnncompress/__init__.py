"""cnncompress: make trained CNNs fit resource-restricted devices.

The public API, one name per stage; each takes a model and returns a model (plus a record where
the stage has one to give). See README.md for the command line.
"""

__version__ = "0.1.0"

from .analysis import CostReport, count_macs, measure_latency, profile
from .artifacts import Artifact, load_artifact
from .data import ImageSet, as_image_set, load_dataset
from .encode import read_cnnc, write_cnnc
from .export import export_c, export_onnx, export_onnx_fp32
from .models import ModelSpec, build_model, load_model, save_checkpoint
from .pipeline import BudgetInfeasible, CompressionResult, CompressOptions, compress
from .plan import Budget, DeviceProfile, Infeasible, Plan, list_devices, load_device
from .prune import make_permanent, prune_channels, prune_weights
from .quant import qat, quantize
from .train import TrainConfig, evaluate, fit

__all__ = [
    "Artifact", "Budget", "BudgetInfeasible", "CompressOptions", "CompressionResult", "CostReport", "DeviceProfile",
    "ImageSet", "Infeasible", "ModelSpec", "Plan", "TrainConfig", "__version__", "as_image_set", "build_model",
    "compress", "count_macs", "evaluate", "export_c", "export_onnx", "export_onnx_fp32", "fit", "list_devices",
    "load_artifact", "load_dataset", "load_device", "load_model", "make_permanent", "measure_latency", "profile",
    "prune_channels", "prune_weights", "qat", "quantize", "read_cnnc", "save_checkpoint", "write_cnnc",
]
