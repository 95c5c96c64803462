"""Reports how its input arrived, Y = X + 1 and INFO = [X is a view of shared memory,
torch's DLPack view of X shares X's memory, X is writable]."""

import mmap

import numpy as np

import triton_python_backend_utils as pb_utils


def _over_mmap(array):
    """Whether the array's memory belongs to an mmap (a shared-memory segment)."""
    obj = array
    while obj is not None:
        if isinstance(obj, mmap.mmap):
            return True
        obj = obj.base if isinstance(obj, np.ndarray) else getattr(obj, "obj", None)
    return False


class TritonPythonModel:
    def execute(self, requests):
        import torch

        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "X")
            x = tensor.as_numpy()
            shared = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
            info = np.array([_over_mmap(x), shared.data_ptr() == x.ctypes.data,
                             x.flags.writeable], dtype=np.bool_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x + 1), pb_utils.Tensor("INFO", info)]))
        return responses
