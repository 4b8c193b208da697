"""Weight sharing, entropy coding and the ``.cnnc`` container (Deep Compression's storage half)."""

from .container import (
    CnncFormatError,
    EncodeReport,
    TensorStats,
    bit_equal_states,
    decode_model,
    decode_state,
    dense_param_count,
    encode_model,
    read_cnnc,
    write_cnnc,
)
from .pipeline import DeepCompressionConfig, DeepCompressionRecord, deep_compress
from .share import SharedLayer, finalize_sharing, kmeans_1d, round_vectors, share_weights

__all__ = [
    "CnncFormatError", "DeepCompressionConfig", "DeepCompressionRecord", "EncodeReport", "SharedLayer",
    "TensorStats", "bit_equal_states", "decode_model", "decode_state", "deep_compress", "dense_param_count",
    "encode_model", "finalize_sharing", "kmeans_1d", "read_cnnc", "round_vectors", "share_weights", "write_cnnc",
]
