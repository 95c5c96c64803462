"""The tensorflow backend (Triton's TensorFlow backend): SavedModel folders and GraphDef
files run in TensorFlow sessions, one per instance unless MAX_SESSION_SHARE_COUNT says
otherwise."""

from llmserve.backends.tensorflow.backend import load_model

__all__ = ["load_model"]
