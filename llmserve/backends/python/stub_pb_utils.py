"""triton_python_backend_utils as a model imports it inside a stub process: pb_utils'
public face with custom metrics and model control going through the stub's link."""

from llmserve.backends.python.pb_utils import *  # noqa: F401,F403
from llmserve.backends.python.pb_utils import __all__  # noqa: F401
from llmserve.backends.python.stub_runtime import (  # noqa: F401
    RemoteMetric as Metric,
)
from llmserve.backends.python.stub_runtime import (  # noqa: F401
    RemoteMetricFamily as MetricFamily,
)
from llmserve.backends.python.stub_runtime import (  # noqa: F401
    is_model_ready,
    load_model,
    unload_model,
)
