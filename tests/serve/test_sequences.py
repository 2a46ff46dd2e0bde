"""One request must never break the model for the next: token sequences longer than the
model's positions or of no tokens are refused per request (400 naming the limit), over
HTTP and gRPC, and an OpenVINO model whose run failed serves the next request."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("openvino")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

import slimserve as ss  # noqa: E402
from tests.serve.conftest import TEXTS, running  # noqa: E402

POSITIONS = 128  # the tiny BERT's position table (examples/tiny_bert.py)


@pytest.fixture(scope="module")
def openvino_artifact(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT padding-free, served by OpenVINO (the runtime the MiniLM recipe
    picked when one 513-token request broke every later one)."""
    out = tmp_path_factory.mktemp("ov")
    texts = out / "texts.txt"
    texts.write_text("\n".join(TEXTS * 4))
    recipe = {
        "name": "tiny-ov",
        "model": {"hf": str(tiny_bert)},
        "data": {"eval": {"text": str(texts)}},
        "steps": [{"unpad": {}}, {"export": {}}],
        "goal": {"metric": "cosine_mean"},
        "runtimes": {"candidates": ["openvino"]},
        "bench": {"batch_sizes": [1], "repeats": 3, "warmup": 1},
    }
    ss.run_recipe(ss.parse_recipe(recipe), out)
    return out / "tiny-ov"


@pytest.fixture(scope="module")
def ov_server(openvino_artifact: Path) -> Iterator[tuple[str, str]]:
    options = {"grpc_port": 0, "max_batch_size": 16, "max_delay_ms": 5}
    with running(openvino_artifact, **options) as (server, url):
        state = server.config.app.state.slimserve  # type: ignore[attr-defined]
        yield url, f"127.0.0.1:{state.grpc_port}"


def token_inputs(module: object, length: int) -> list[object]:
    ids = np.full((1, length), 5, dtype=np.int64)
    ids[:, :1] = 2  # [CLS], when there is a token
    tensors = []
    for name, array in (
        ("input_ids", ids),
        ("attention_mask", np.ones_like(ids)),
        ("token_type_ids", np.zeros_like(ids)),
    ):
        tensor = module.InferInput(name, list(array.shape), "INT64")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def text_input(module: object) -> list[object]:
    tensor = module.InferInput("text", [1], "BYTES")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.array([TEXTS[1].encode()], dtype=object))
    return [tensor]


def test_the_served_model_knows_its_position_limit(openvino_artifact: Path) -> None:
    from slimserve.serve.repository import load_repository

    served = load_repository(openvino_artifact)["tiny-ov"]["1"]
    assert ss.load_artifact(openvino_artifact).manifest.runtime == "openvino"
    assert served.max_tokens == POSITIONS


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_a_sequence_over_the_positions_is_refused_and_the_next_request_succeeds(
    ov_server: tuple[str, str], module: object
) -> None:
    url = ov_server[0] if module is httpclient else ov_server[1]
    client = module.InferenceServerClient(url)  # type: ignore[attr-defined]
    good = client.infer("tiny-ov", text_input(module)).as_numpy("embeddings")
    limit = f"{POSITIONS + 1} tokens, over the model's {POSITIONS}-token limit"
    with pytest.raises(InferenceServerException, match=limit):
        client.infer("tiny-ov", token_inputs(module, POSITIONS + 1))
    again = client.infer("tiny-ov", text_input(module)).as_numpy("embeddings")
    np.testing.assert_allclose(again, good, atol=1e-6)
    at_limit = client.infer("tiny-ov", token_inputs(module, POSITIONS)).as_numpy("embeddings")
    assert at_limit.shape[0] == 1


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_a_sequence_of_no_tokens_is_refused(ov_server: tuple[str, str], module: object) -> None:
    url = ov_server[0] if module is httpclient else ov_server[1]
    client = module.InferenceServerClient(url)  # type: ignore[attr-defined]
    with pytest.raises(InferenceServerException, match="0 tokens: send at least one"):
        client.infer("tiny-ov", token_inputs(module, 0))
    assert client.infer("tiny-ov", text_input(module)).as_numpy("embeddings").shape[0] == 1


def test_an_openvino_model_whose_run_failed_runs_the_next_input(openvino_artifact: Path) -> None:
    # The server refuses what would fail; this is the runtime's own guard for whatever
    # still does: the failed run must not leave the compiled model failing.
    from slimserve.models.hf import load_tokenizer, tokenize

    predictor = ss.load_predictor(openvino_artifact)
    good = tokenize(load_tokenizer(openvino_artifact / "tokenizer"), TEXTS)
    expected = predictor.predict(good)[0]
    too_long = {k: np.ones((1, POSITIONS * 4 + 1), dtype=np.int64) for k in good}
    with contextlib.suppress(Exception):  # failing is fine; what matters is the next run
        predictor.predict(too_long)
    np.testing.assert_allclose(predictor.predict(good)[0], expected, atol=1e-5)
