"""Tracing and the channel dependency graph shared by pruning and analysis."""

from .channels import Binding, ChannelGraph, ChannelGroup, LayerCall, build_channel_graph, format_group
from .trace import KNOWN_LEAVES, GraphTraceError, trace_model, trace_with_shapes

__all__ = ["KNOWN_LEAVES", "Binding", "ChannelGraph", "ChannelGroup", "GraphTraceError", "LayerCall", "trace_model",
           "build_channel_graph", "format_group", "trace_with_shapes"]
