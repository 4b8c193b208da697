"""Deployment exports: fp32 ONNX, integer (QDQ) ONNX run by onnxruntime, C99 integer code."""

from .c import export_c
from .onnx_fp32 import export_onnx_fp32
from .onnx_qdq import (
    Agreement,
    ExportReport,
    NodeRun,
    OnnxRuntimeModule,
    compare_top1,
    export_onnx,
    export_onnx_report,
    export_plan,
    weight_storage_bytes,
)

__all__ = ["Agreement", "ExportReport", "NodeRun", "OnnxRuntimeModule", "compare_top1", "export_c", "export_onnx",
           "export_onnx_fp32", "export_onnx_report", "export_plan", "weight_storage_bytes"]
