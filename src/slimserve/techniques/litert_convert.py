"""TensorFlow's post-training workflow, as its users write it: load the Keras 3 file on
Keras' TensorFlow backend, convert it with LiteRT's converter (``model.export(path,
format="litert", ...)``, TFLiteConverter underneath), save the ``.tflite``.

Run by ``techniques/edge.py`` in a child process with ``KERAS_BACKEND=tensorflow`` (the
parent runs Keras on torch; a process has one Keras backend):

    python -m slimserve.techniques.litert_convert MODEL.keras OUT.tflite MODE [CALIB.npz]

MODE: float | float16 | dynamic_int8 | int8 (full integer: int8 inputs and outputs, the
representative dataset from CALIB.npz's first array). The file is loaded in Keras' safe
mode: a model that needs arbitrary code is refused.
"""

from __future__ import annotations

import sys
from typing import Any


def converter_options(mode: str, calibration: Any, tf: Any) -> dict[str, Any]:
    """The TFLiteConverter attributes for ``mode`` (Keras passes them through)."""
    if mode == "float":
        return {}
    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if mode == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif mode == "int8":

        def representative() -> Any:
            for row in calibration:
                yield [row[None].astype("float32")]

        options.update(
            representative_dataset=representative,
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
            inference_input_type=tf.int8,
            inference_output_type=tf.int8,
        )
    return options


def main(source: str, target: str, mode: str, calibration_file: str = "") -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    model = keras.saving.load_model(source, compile=False, safe_mode=True)
    calibration = None
    if calibration_file:
        with np.load(calibration_file) as data:
            calibration = data[data.files[0]]
    model.export(target, format="litert", verbose=False, **converter_options(mode, calibration, tf))


if __name__ == "__main__":
    main(*sys.argv[1:])
