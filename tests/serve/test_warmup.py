"""serve's warm-up: a padding-free text model runs every token bucket up to
``warmup_tokens`` before the server is ready; other models are left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

from slimserve.serve.config import ServeConfig
from slimserve.serve.repository import load_repository
from slimserve.serve.warmup import warm_up
from tests.serve.conftest import TEXTS, build_text_artifact, start
from tests.serve.test_text import expected_embeddings


def padding_free_artifact(tiny_bert: Path, out: Path, bucket: int) -> Path:
    steps: list[object] = [{"unpad": {"token_bucket": bucket}}, {"export": {}}]
    return build_text_artifact(tiny_bert, out, "tiny-unpad", steps)


def record_runs(models: dict[str, dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    """Every batch the served model's predictor runs, as it was given."""
    served = models["tiny-unpad"]["1"]
    runs: list[dict[str, np.ndarray]] = []
    predict = served.predictor.predict

    def recorded(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        runs.append(inputs)
        return predict(inputs)  # type: ignore[no-any-return]

    served.predictor.predict = recorded
    return runs


@pytest.fixture(scope="module")
def bucketed(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return padding_free_artifact(tiny_bert, tmp_path_factory.mktemp("unpad8"), 8)


def test_every_token_bucket_up_to_the_limit_runs_once(bucketed: Path) -> None:
    models = load_repository(bucketed)
    assert models["tiny-unpad"]["1"].text.token_bucket == 8  # type: ignore[union-attr]
    runs = record_runs(models)
    assert warm_up(models, ServeConfig(warmup_tokens=100)) == {"tiny-unpad/1": 12}
    real_tokens = [int(run["attention_mask"].sum()) for run in runs]
    assert real_tokens == list(range(8, 97, 8))  # each bucket of 8 up to 100, once
    assert all(run["attention_mask"].shape[1] <= 64 for run in runs)


def test_the_warm_up_stops_at_the_largest_run_the_server_makes(bucketed: Path) -> None:
    models = load_repository(bucketed)
    runs = record_runs(models)
    warm_up(models, ServeConfig(warmup_tokens=1024, max_batch_tokens=40))
    assert max(int(run["attention_mask"].sum()) for run in runs) == 40
    assert warm_up(models, ServeConfig(warmup_tokens=0)) == {}


def test_exact_counts_and_padded_models_are_not_warmed(
    tiny_bert: Path, tmp_path: Path, text_artifact: Path
) -> None:
    exact = load_repository(padding_free_artifact(tiny_bert, tmp_path, 1))
    assert exact["tiny-unpad"]["1"].text.padding_free  # type: ignore[union-attr]
    assert warm_up(exact, ServeConfig()) == {}  # a shape per token count: nothing bounds it
    padded = load_repository(text_artifact)
    assert padded["tiny-text"]["1"].text.token_bucket == 0  # type: ignore[union-attr]
    assert warm_up(padded, ServeConfig()) == {}


def test_a_warmed_server_answers_as_the_model_does(bucketed: Path) -> None:
    import httpx

    srv, thread, url = start(bucketed, warmup_tokens=256)
    try:
        answer = httpx.post(
            f"http://{url}/v1/embeddings", json={"model": "tiny-unpad", "input": TEXTS}
        )
        assert answer.status_code == 200
        got = np.array([d["embedding"] for d in answer.json()["data"]])
        np.testing.assert_allclose(got, expected_embeddings(bucketed, TEXTS), atol=1e-4)
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)


def test_a_negative_warm_up_is_refused_by_the_cli(served_artifact: Path) -> None:
    from typer.testing import CliRunner

    from slimserve.cli import app

    result = CliRunner().invoke(app, ["serve", str(served_artifact), "--warmup-tokens", "-1"])
    assert result.exit_code == 2
    assert "--warmup-tokens" in result.output and "greater than or equal to 0" in result.output
