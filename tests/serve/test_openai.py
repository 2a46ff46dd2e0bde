"""The OpenAI embeddings route on the V2 server: the official ``openai`` client round
trip, OpenAI's error shape, the same embedding as V2, and truncation as configured."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

from tests.serve.conftest import TEXTS, start  # noqa: E402
from tests.serve.test_text import expected_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def server(text_artifact: Path) -> Iterator[str]:
    srv, thread, url = start(text_artifact, max_batch_size=4, max_delay_ms=5)
    yield f"http://{url}"
    srv.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)


def client(url: str) -> object:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_gets_the_models_embeddings(server: str, text_artifact: Path) -> None:
    expected = expected_embeddings(text_artifact, TEXTS)
    api = client(server)
    assert [m.id for m in api.models.list()] == ["tiny-text"]
    # a list of 3 texts on a server whose batches hold 4 rows; a single string
    many = api.embeddings.create(model="tiny-text", input=TEXTS)
    got = np.array([d.embedding for d in many.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.usage.prompt_tokens == many.usage.total_tokens > len(TEXTS)
    one = api.embeddings.create(model="tiny-text", input=TEXTS[1])
    np.testing.assert_allclose(one.data[0].embedding, expected[1], atol=1e-4)


def test_base64_and_a_list_longer_than_a_batch(server: str, text_artifact: Path) -> None:
    texts = TEXTS * 3  # 9 texts: three batcher requests of at most 4 rows
    raw = httpx.post(
        f"{server}/v1/embeddings",
        json={"model": "tiny-text", "input": texts, "encoding_format": "base64"},
    ).json()
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    )
    np.testing.assert_allclose(decoded, expected_embeddings(text_artifact, texts), atol=1e-4)
    # the openai client asks for base64 itself and decodes it
    api = client(server)
    assert len(api.embeddings.create(model="tiny-text", input=texts).data) == 9


def test_a_v2_request_and_an_openai_request_agree(server: str) -> None:
    v2 = httpx.post(
        f"{server}/v2/models/tiny-text/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}]},
    ).json()["outputs"][0]["data"]
    ours = httpx.post(f"{server}/v1/embeddings", json={"model": "tiny-text", "input": TEXTS[0]})
    np.testing.assert_allclose(ours.json()["data"][0]["embedding"], v2, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"model": "nope", "input": "x"}, 404, "model", "Unknown model 'nope'"),
        ({"model": "tiny-text", "input": [[1, 2, 3]]}, 400, "input", "send strings"),
        ({"model": "tiny-text", "input": ""}, 400, "input", "empty string"),
        ({"model": "tiny-text", "input": "x", "dimensions": 8}, 400, "dimensions", "Matryoshka"),
        (
            {"model": "tiny-text", "input": "x", "encoding_format": "int8"},
            400,
            "encoding_format",
            "",
        ),
        (
            {"model": "tiny-text", "input": "x", "temperature": 1},
            400,
            "temperature",
            "Unrecognized",
        ),
        ({"input": "x"}, 400, "model", "'model' is required"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: str,
    body: dict,
    status: int,
    param: str,
    message: str,  # type: ignore[type-arg]
) -> None:
    answer = httpx.post(f"{server}/v1/embeddings", json=body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["param"] == param and message in error["message"]
    assert error["type"] == "invalid_request_error"
    if "model" in body and "temperature" not in body:  # what the client itself can send
        with pytest.raises(openai.APIStatusError) as raised:  # the client raises our message
            client(server).embeddings.create(**body)  # type: ignore[attr-defined]
        assert raised.value.status_code == status and message in str(raised.value)


def test_an_over_long_text_is_cut_or_refused_as_configured(text_artifact: Path) -> None:
    long_text = " ".join(TEXTS * 200)  # far over the model's token limit
    cut, thread, url = start(text_artifact)
    try:
        answer = httpx.post(
            f"http://{url}/v1/embeddings", json={"model": "tiny-text", "input": long_text}
        )
        assert answer.status_code == 200  # truncated to max_length, as OpenAI clients expect
    finally:
        cut.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)
    strict, thread, url = start(text_artifact, truncate_text=False)
    try:
        answer = httpx.post(
            f"http://{url}/v1/embeddings", json={"model": "tiny-text", "input": long_text}
        )
        assert (
            answer.status_code == 400 and "does not truncate" in answer.json()["error"]["message"]
        )
    finally:
        strict.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_a_token_budget_refuses_a_v2_request_over_it_and_splits_openai_lists(
    text_artifact: Path,
) -> None:
    texts = [" ".join(TEXTS)] * 6  # six long texts: over a 64-token budget together
    srv, thread, url = start(text_artifact, max_batch_tokens=64, max_batch_size=8)
    try:
        v2 = httpx.post(
            f"http://{url}/v2/models/tiny-text/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [6], "data": texts}]},
        )
        assert v2.status_code == 413 and "--max-batch-tokens" in v2.json()["error"]
        ours = httpx.post(
            f"http://{url}/v1/embeddings", json={"model": "tiny-text", "input": texts}
        )
        assert ours.status_code == 200, ours.text
        got = np.array([d["embedding"] for d in ours.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, expected_embeddings(text_artifact, texts), atol=1e-4)
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_dimensions_equal_to_the_models_width_are_accepted(server: str) -> None:
    api = client(server)
    width = len(api.embeddings.create(model="tiny-text", input="x").data[0].embedding)
    same = api.embeddings.create(model="tiny-text", input="x", dimensions=width)
    assert len(same.data[0].embedding) == width
    with pytest.raises(openai.BadRequestError, match=f"send {width}"):
        api.embeddings.create(model="tiny-text", input="x", dimensions=width // 2)


def test_the_text_limit_holds_per_request_not_per_chunk(text_artifact: Path) -> None:
    srv, thread, url = start(text_artifact, max_batch_size=4, max_text_chars=2000)
    try:
        api = client(f"http://{url}")
        texts = ["word " * 80] * 8  # 400 characters each: 3,200 in all, 1,600 per 4 rows
        with pytest.raises(openai.APIStatusError, match="3200 characters of text") as refused:
            api.embeddings.create(model="tiny-text", input=texts)
        assert refused.value.status_code == 413
        assert len(api.embeddings.create(model="tiny-text", input=texts[:4]).data) == 4
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_loadtest_drives_the_openai_route(server: str) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app
    from slimserve.serve.loadtest import LoadTestConfig, load_test

    config = LoadTestConfig(concurrency=4, requests=24, batch=3, route="openai")
    result = load_test(server, "tiny-text", config)
    assert result.errors == 0 and result.requests == 24, result.first_error
    refused = CliRunner().invoke(app, ["loadtest", server, "-m", "tiny-text", "--route", "grpc"])
    assert refused.exit_code != 0 and "route" in refused.output and "openai" in refused.output
