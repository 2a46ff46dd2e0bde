"""A minimal ONNX Runtime model for Seldon MLServer (it ships no ONNX runtime), used by
benchmarks/serve.py to serve the same ONNX file as slimserve, in MLServer's own venv."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        uri = await get_model_uri(self._settings)
        self.session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = self.session.run(None, feeds)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name=n, payload=v)
                for n, v in zip(self.output_names, outputs, strict=True)
            ],
        )
