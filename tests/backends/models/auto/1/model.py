import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "A", "data_type": "TYPE_INT64", "dims": [2]})
        config.add_output({"name": "B", "data_type": "TYPE_INT64", "dims": [2]})
        config.set_max_batch_size(4)
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("B", pb_utils.get_input_tensor_by_name(r, "A").as_numpy() * 10)])
            for r in requests]
