"""edgectl: declarative edge deployment orchestrator for quantized AI models."""

__version__ = "0.1.0"
