"""edgectl-agent: runs on a device; verifies, swaps in and serves quantized models offline."""

__version__ = "0.1.0"
