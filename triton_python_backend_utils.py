"""The module Python models import as `pb_utils`; re-exports llmserve's implementation."""

from llmserve.backends.python.pb_utils import *  # noqa: F401,F403
