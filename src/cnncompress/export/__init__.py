"""Deployment exports."""

from .onnx_fp32 import export_onnx_fp32

__all__ = ["export_onnx_fp32"]
