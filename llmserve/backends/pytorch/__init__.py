"""The pytorch backend (TorchScript models, platform pytorch_libtorch): loading on the
instance device, the seed's input/output naming rules, batched forward()."""

from llmserve.backends.pytorch.backend import TorchInstance, TorchModel, load_model

__all__ = ["TorchInstance", "TorchModel", "load_model"]
