import json
import traceback

import triton_python_backend_utils as pb_utils
from lib.triton_decoder import TritonDecoder


class TritonPythonModel:

    def initialize(self, args):
        model_config = json.loads(args['model_config'])
        params = model_config['parameters']

        accumulate_tokens_str = ''
        if 'accumulate_tokens' in params:
            accumulate_tokens_str = params['accumulate_tokens']['string_value']
        self.accumulate_tokens = accumulate_tokens_str.lower() in ['true', 'yes', '1', 't']

        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.logger = pb_utils.Logger

        default_tensorrt_llm_model_name = 'tensorrt_llm'
        self.llm_model_name = model_config['parameters'].get(
            'tensorrt_llm_model_name', {}).get('string_value', default_tensorrt_llm_model_name)
        if self.llm_model_name in ('', '${tensorrt_llm_model_name}'):
            self.llm_model_name = default_tensorrt_llm_model_name

        self.decoder = TritonDecoder(streaming=self.decoupled,
                                     accumulate=self.accumulate_tokens,
                                     preproc_model_name="preprocessing",
                                     postproc_model_name="postprocessing",
                                     llm_model_name=self.llm_model_name)

    def execute(self, requests):
        responses = []
        for request in requests:
            if self.decoupled:
                response_sender = request.get_response_sender()
            try:
                req = self.decoder.convert_triton_request(request)
                req.validate()
                res_gen = self.decoder.decode(req)
                for res in res_gen:
                    triton_response = self.decoder.create_triton_response(res)
                    if self.decoupled:
                        response_sender.send(triton_response)
                    else:
                        responses.append(triton_response)
                if self.decoupled:
                    response_sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:
                self.logger.log_error(traceback.format_exc())
                error_response = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(traceback.format_exc()))
                if self.decoupled:
                    response_sender.send(error_response)
                    response_sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    responses.append(error_response)
            self.decoder.reset_decoder()
        if self.decoupled:
            return None
        assert len(responses) == len(requests)
        return responses

    def finalize(self):
        print('Cleaning up...')
