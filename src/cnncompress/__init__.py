"""cnncompress: make trained CNNs fit resource-restricted devices.

Public API (more arrives with each stage): models, data, training and the cost profiler.
"""

__version__ = "0.1.0"
