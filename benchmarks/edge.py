"""The TensorFlow post-training workflow to a device, and PyTorch's, measured.

    python benchmarks/edge.py [--update BENCHMARKS.md] [--repeats 200]

A Keras 3 digits CNN (conv 32, conv 64, max-pool, dense 128, dense 10 — the digits example's
shape, NHWC) is trained with TF-MOT's pruning API as slimserve.keras gives it:
``prune_low_magnitude`` with ``PolynomialDecay(0 -> 0.5, steps 0-1000)``,
``UpdatePruningStep``, ``strip_pruning``, saved as .keras; then converted to LiteRT in
every mode (TensorFlow's converter) and, through ONNX, to ONNX Runtime static int8. The
PyTorch digits CNN (the bundled example) goes to ExecuTorch float and int8 (XNNPACK) and
ONNX Runtime static int8. Every build: accuracy on the 450 test digits, file size, and
batch-1 latency, all predictors of a family timed in one interleaved run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _record import update

import slimserve.keras as sparsity
from slimserve.core.context import Context
from slimserve.core.cpu import cpu_features
from slimserve.data import Dataset
from slimserve.examples.digits import load_split
from slimserve.measure.bench import bench_interleaved
from slimserve.measure.evaluate import evaluate
from slimserve.measure.report import human_bytes, markdown_table
from slimserve.models.keras import import_keras
from slimserve.runtime import load_predictor


def pruned_keras_cnn(folder: Path) -> tuple[Path, float]:
    """The TF-MOT scenario on Keras 3: prune 0 -> 50% over steps 0-1000, strip, save."""
    keras = import_keras()
    keras.utils.set_random_seed(0)
    x, y = load_split("train")
    x = x.transpose(0, 2, 3, 1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=1000
    )
    pruning = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruning.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    epochs = -(-1000 // -(-len(x) // 32)) + 2  # past step 1000, then two more epochs
    pruning.fit(
        x, y, batch_size=32, epochs=epochs, callbacks=[sparsity.UpdatePruningStep()], verbose=0
    )
    stripped = sparsity.strip_pruning(pruning)
    path = folder / "pruned.keras"
    stripped.save(path)
    x_test, y_test = load_split("test")
    logits = stripped.predict(x_test.transpose(0, 2, 3, 1), verbose=0)
    return path, float((logits.argmax(1) == y_test).mean())


def measure(builds: dict[str, Any], data: Dataset, repeats: int) -> list[list[str]]:
    predictors = {name: load_predictor(model) for name, model in builds.items()}
    timings = bench_interleaved(predictors, data, (1,), warmup=20, repeats=repeats)
    base = next(iter(builds))
    rows = []
    for name, model in builds.items():
        size = len(model.to_bytes())
        accuracy = evaluate(predictors[name], data)["accuracy"]
        p50 = timings[name][1].p50_ms
        rows.append(
            [
                name,
                f"{accuracy:.4f}",
                human_bytes(size),
                f"{size / len(builds[base].to_bytes()):.0%}",
                f"{p50 * 1000:.0f}",
                f"{timings[base][1].p50_ms / p50:.2f}x",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--update", type=Path)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    import slimserve as ss
    from slimserve.techniques.edge import ExecuTorchExportConfig, LiteRtExportConfig

    headers = ["build", "accuracy", "size", "of float", "b1 p50 µs", "vs float"]
    x_train, _ = load_split("train")
    x_test, y_test = load_split("test")
    from slimserve.recipe import validate_step

    static = validate_step("quantize", {"mode": "static"})
    with tempfile.TemporaryDirectory() as folder:
        path, keras_accuracy = pruned_keras_cnn(Path(folder))
        model = ss.load_model(str(path))
        nhwc = Context(data={"calibration": Dataset({"input": x_train.transpose(0, 2, 3, 1)})})
        keras_builds: dict[str, Any] = {}
        for mode in ("float", "float16", "dynamic_int8", "int8"):
            keras_builds[f"LiteRT {mode}"] = LiteRtExportConfig(quantize=mode).apply(model, nhwc)
        onnx = ss.ExportConfig().apply(model, nhwc)
        keras_builds["ONNX Runtime static int8"] = static.apply(onnx, nhwc)
        keras_rows = measure(
            keras_builds, Dataset({"input": x_test.transpose(0, 2, 3, 1)}, y_test), args.repeats
        )
    torch_model = ss.load_model("example:digits")
    nchw = Context(data={"calibration": Dataset({"input": x_train})})
    torch_builds: dict[str, Any] = {
        "ExecuTorch float": ExecuTorchExportConfig().apply(torch_model, nchw),
        "ExecuTorch int8": ExecuTorchExportConfig(quantize="int8").apply(torch_model, nchw),
    }
    torch_builds["ONNX Runtime static int8"] = static.apply(
        ss.ExportConfig().apply(torch_model, nchw), nchw
    )
    torch_rows = measure(torch_builds, Dataset({"input": x_test}, y_test), args.repeats)
    flags = ", ".join(sorted(cpu_features()))
    body = (
        "Command: `python benchmarks/edge.py --update BENCHMARKS.md` (run by `make bench`). "
        f"CPU flags: {flags}. 2 threads (LiteRT's interpreter and ONNX Runtime; ExecuTorch's "
        "XNNPACK threadpool as it comes); 450 test digits; batch-1 medians of interleaved "
        "rounds, each family in one run. LiteRT and ExecuTorch run here on the host CPU "
        "(x86), not on a phone: the ratios say what each format's kernels do on this CPU.\n\n"
        "**Keras 3 -> LiteRT** (the TF-MOT scenario: pruned with PolynomialDecay 0 -> 50% over "
        f"steps 0-1000, stripped; the Keras model's own accuracy {keras_accuracy:.4f}):\n\n"
        + markdown_table(headers, keras_rows)
        + "\n\n**PyTorch -> ExecuTorch** (the bundled digits CNN):\n\n"
        + markdown_table(headers, torch_rows)
    )
    print(body)
    if args.update:
        update(args.update, "edge", body)


if __name__ == "__main__":
    main()
