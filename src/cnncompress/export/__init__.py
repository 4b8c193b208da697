"""Deployment exports: fp32 ONNX, integer (QDQ) ONNX run by onnxruntime."""

from .onnx_fp32 import export_onnx_fp32
from .onnx_qdq import Agreement, OnnxRuntimeModule, compare_top1, export_onnx, weight_storage_bytes

__all__ = ["Agreement", "OnnxRuntimeModule", "compare_top1", "export_onnx", "export_onnx_fp32",
           "weight_storage_bytes"]
