"""Community quantized checkpoints read as they are: GPTQ, AWQ (GEMM), compressed-tensors
pack-quantized int4, and the official FP8. One small file per format; `detect_format` names it,
the readers give `IntGroupWeight` (exact dequantization), `repack` maps it onto our CPU and GPU
int4 layouts."""

from .detect import checkpoint_facts, detect_format, load_format_config
from .reader import QuantizedTensors
from .repack import Repacked, to_cpu_int4, to_gpu_int4
from .spec import FormatInfo, IntGroupWeight, QuantFormatError

__all__ = ["FormatInfo", "IntGroupWeight", "QuantFormatError", "QuantizedTensors", "Repacked",
           "checkpoint_facts", "detect_format", "load_format_config", "to_cpu_int4", "to_gpu_int4"]
