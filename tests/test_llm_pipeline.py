"""A decoder LM through the recipe: built for onnxruntime-genai in float32 and int4/int8,
every build measured against the float model (perplexity, KL, top-1) and for decode
speed, the artifact hashed and run by `slimserve generate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")

from typer.testing import CliRunner

import slimserve as ss
from slimserve.cli import app
from slimserve.core.errors import ArtifactError, RecipeError
from slimserve.core.metrics import next_token_metrics
from slimserve.measure.llm import torch_logits
from slimserve.runtime.generation import GenerationParams


def recipe_for(folder: Path, prose: Path, steps: list[list[dict[str, object]]]) -> ss.Recipe:
    return ss.parse_recipe(
        {
            "name": "tiny-llm",
            "model": {"hf": str(folder)},
            "data": {"eval": {"text": str(prose), "max_length": 64, "samples": 3}},
            "alternatives": steps,
            "goal": {"metric": "kl_divergence", "max_drop": 10.0},
            "bench": {"repeats": 3},
        }
    )


@pytest.fixture(scope="module")
def built(tiny_llama: Path, prose: Path, tmp_path_factory: pytest.TempPathFactory) -> ss.RunResult:
    steps = [
        [{"quantize": {"mode": "llm", "weights": "fp32"}}],
        [{"quantize": {"mode": "llm", "weights": "int8"}}],
        [{"quantize": {"mode": "llm", "weights": "int4", "group_size": 16, "head": "float"}}],
    ]
    return ss.run_recipe(recipe_for(tiny_llama, prose, steps), tmp_path_factory.mktemp("llm"))


def test_every_build_is_measured_against_the_float_model(built: ss.RunResult) -> None:
    baseline, fp32, int8, int4 = built.stages
    assert baseline.metrics["kl_divergence"] == 0 and baseline.metrics["top1_agreement"] == 1
    # the float build is the same model: the same next-token distributions
    assert fp32.metrics["kl_divergence"] < 1e-6 and fp32.metrics["top1_agreement"] == 1
    assert fp32.metrics["greedy_agreement"] == 1 and baseline.metrics["greedy_agreement"] == 1
    assert 0 <= int4.metrics["greedy_agreement"] <= 1
    assert fp32.metrics["perplexity"] == pytest.approx(baseline.metrics["perplexity"], rel=1e-4)
    assert int8.metrics["kl_divergence"] < int4.metrics["kl_divergence"]  # fewer bits, more loss
    for stage in built.stages:
        assert stage.metrics["decode_tokens_per_s"] > 0
    assert max(int4.size_bytes, int8.size_bytes) < fp32.size_bytes  # int4 keeps its head float
    manifest = built.artifact.manifest
    assert manifest.runtime == "onnxruntime-genai" and manifest.text["task"] == "text-generation"  # type: ignore[index]
    assert any("windows of 64 tokens of the file prose.txt" in n for n in manifest.notes)
    assert "kl_divergence" in (built.artifact.path / "report.md").read_text()


def test_the_float_build_generates_what_transformers_generates(
    built: ss.RunResult, tiny_llama: Path
) -> None:
    from transformers import AutoModelForCausalLM

    fp32 = built.stages[1].model
    generator = ss.Generator(fp32)  # type: ignore[arg-type]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [generator.encode(t) for t in ("the cat sat", "a longer prompt, of more words")]
    greedy = GenerationParams(max_new_tokens=12)
    batched = generator.generate(prompts, greedy)
    for prompt, tokens in zip(prompts, batched, strict=True):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            expected = hf.generate(ids, max_new_tokens=12, do_sample=False)[0, len(prompt) :]
        assert tokens == [t for t in expected.tolist() if t != 2][: len(tokens)]
        assert generator.generate([prompt], greedy)[0] == tokens  # batched equals alone
    model = ss.load_model(tiny_llama)
    np.testing.assert_allclose(
        generator.logits(prompts[1]),
        torch_logits(model, prompts[1]),
        atol=1e-4,  # type: ignore[arg-type]
    )


def test_the_artifact_generates_and_refuses_a_tampered_file(
    built: ss.RunResult, tmp_path: Path
) -> None:
    import shutil

    path = Path(shutil.copytree(built.artifact.path, tmp_path / "copy"))
    generator = ss.load_generator(path)
    assert generator.chat_prompt("hi").endswith("assistant:")
    sampled = GenerationParams(max_new_tokens=8, temperature=0.8, seed=7)
    prompt = generator.encode("seeded")
    assert generator.generate([prompt], sampled) == generator.generate([prompt], sampled)
    result = CliRunner().invoke(app, ["generate", str(path), "hello", "--max-tokens", "5"])
    assert result.exit_code == 0, result.output
    chat = CliRunner().invoke(app, ["generate", str(path), "hello", "--chat", "--max-tokens", "5"])
    assert chat.exit_code == 0, chat.output
    config = path / "llm" / "genai_config.json"
    config.write_text(config.read_text().replace('"temperature": 1.0', '"temperature": 9.0'))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        ss.load_generator(path)
    tampered = CliRunner().invoke(app, ["generate", str(path), "hello"])
    assert tampered.exit_code != 0 and "sha256 mismatch" in tampered.output


def test_next_token_metrics_equal_a_hand_computation() -> None:
    reference = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits = np.array([[0.5, 1.0, 0.0], [0.0, 2.0, 0.0]])
    targets = np.array([0, 1])
    p = np.exp(reference) / np.exp(reference).sum(1, keepdims=True)
    q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    kl = (p * np.log(p / q)).sum(1).mean()
    perplexity = np.exp(-np.log(q[[0, 1], targets]).mean())
    got = next_token_metrics(reference, logits, targets)
    assert got["kl_divergence"] == pytest.approx(kl)
    assert got["perplexity"] == pytest.approx(perplexity)
    assert got["top1_agreement"] == 0.5  # row 0: 0 against 1; row 1: 1 and 1
    same = next_token_metrics(reference, reference, targets)
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-12) and same["top1_agreement"] == 1


def test_greedy_agreement_is_the_common_prefix_share() -> None:
    from slimserve.measure.llm import greedy_agreement

    # 2 of 4 before the first departure (the later match does not count); 2 of 2
    assert greedy_agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6, 7]]) == 0.75
    assert greedy_agreement([[1, 2]], [[]]) == 0.0


def test_bad_configs_name_the_fix(tiny_llama: Path, prose: Path, tmp_path: Path) -> None:
    wide = [[{"quantize": {"mode": "llm", "weights": "int4", "group_size": 128}}]]
    with pytest.raises(RecipeError, match="does not divide the model's width 64.*16 or 32 or 64"):
        ss.run_recipe(recipe_for(tiny_llama, prose, wide), tmp_path)
    with pytest.raises(RecipeError, match="'rtn' or 'k_quant'"):
        recipe_for(tiny_llama, prose, [[{"quantize": {"mode": "llm", "method": "gptq"}}]])
    with pytest.raises(RecipeError, match="does not take a decoder LM.*mode llm"):
        recipe_for(tiny_llama, prose, [[{"quantize": {"mode": "static"}}]])


def test_one_line_quantize_of_a_decoder_lm_prints_its_recipe(tiny_llama: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["quantize", str(tiny_llama), "--weights", "int4", "--group-size", "64", "--print-recipe"],
    )
    assert result.exit_code == 0, result.output
    assert "mode: llm" in result.output and "group_size: 64" in result.output
    assert "metric: kl_divergence" in result.output and "split: other" in result.output


def test_eval_measures_an_llm_artifact_against_its_source(built: ss.RunResult, prose: Path) -> None:
    result = CliRunner().invoke(
        app, ["eval", str(built.artifact.path), "--data", f"text:{prose}", "--json"]
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    # against the float model it was made from: the float build is that model
    float_build = built.artifact.manifest.precision == "fp32"
    assert (measured["kl_divergence"] < 1e-6) == float_build
    assert measured["window_tokens"] == 256 and measured["perplexity"] > 1


def test_inspect_shows_the_layers_by_precision(built: ss.RunResult) -> None:
    result = CliRunner().invoke(app, ["inspect", str(built.artifact.path)])
    assert result.exit_code == 0, result.output
    assert "Weight layers by precision" in result.output and "Decoder LM" in result.output
    precision = built.artifact.manifest.precision
    assert ("float32" if precision == "fp32" else f"{precision} (groups of") in result.output


def test_an_llm_artifact_is_not_served_as_tensors(built: ss.RunResult) -> None:
    with pytest.raises(ArtifactError, match="decoder LM artifact"):
        ss.load_predictor(built.artifact.path)
    assert json.loads((built.artifact.path / "manifest.json").read_text())["precision"] in (
        "fp32",
        "int8",
        "int4",
    )


def test_tune_keeps_the_fastest_mode_within_the_kl_budget(
    tiny_llama: Path, prose: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from slimserve import tune_llm

    # two of the candidates, to keep the test short; the search is the same
    monkeypatch.setattr(tune_llm, "CANDIDATES", ({"weights": "int8"}, {"weights": "int4"}))
    result = CliRunner().invoke(
        app,
        [
            "tune",
            str(tiny_llama),
            "--data",
            f"text:{prose}",
            "--max-drop",
            "100",
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tune: every candidate" in result.output and "Best recipe" in result.output
    best = yaml.safe_load((tmp_path / "best-recipe.yaml").read_text())
    assert best["goal"] == {"metric": "kl_divergence", "max_drop": 100.0}
    (step,) = best["steps"]
    assert step["quantize"]["mode"] == "llm"
    rebuilt = ss.parse_recipe(best)  # it parses, and names the winner's mode
    assert rebuilt.steps[0].weights == ss.load_artifact(tmp_path / "tuned").manifest.precision


def test_errors_a_user_can_cause_name_the_fix(
    built: ss.RunResult, digits_onnx: ss.OnnxModel, tmp_path: Path
) -> None:
    from slimserve.core.errors import DataError
    from slimserve.core.specs import DataSpec
    from slimserve.measure.llm import eval_text, token_windows
    from tests.conftest import manifest_for

    cnn = tmp_path / "digits"
    ss.save_artifact(cnn, digits_onnx, manifest_for(digits_onnx))
    with pytest.raises(ArtifactError, match="is not an artifact: give the folder"):
        ss.load_generator(tmp_path / "nothing")
    with pytest.raises(ArtifactError, match="not a decoder LM artifact"):
        ss.load_generator(cnn)  # the digits CNN: it serves tensors
    too_long = CliRunner().invoke(
        app, ["generate", str(built.artifact.path), "word " * 400, "--max-tokens", "2"]
    )
    assert too_long.exit_code != 0 and "the model's context is 512" in too_long.output
    with pytest.raises(DataError, match="measured on prose"):
        eval_text(DataSpec(example="digits"))
    with pytest.raises(DataError, match="fewer than one window of 64"):
        token_windows([1, 2, 3], 64, None)
    with pytest.raises(DataError, match="does not exist"):
        eval_text(DataSpec(text=tmp_path / "missing.txt"))


def test_an_int4_build_that_misses_the_goal_names_its_costliest_layers(
    tiny_llama: Path, prose: Path, tmp_path: Path
) -> None:
    int4 = [[{"quantize": {"mode": "llm", "weights": "int4", "group_size": 16}}]]
    recipe = recipe_for(tiny_llama, prose, int4).model_copy(
        update={"goal": ss.parse_recipe(
            {"name": "g", "model": {"hf": str(tiny_llama)},
             "goal": {"metric": "kl_divergence", "max_drop": 1e-6}}
        ).goal}
    )  # fmt: skip
    notes = ss.run_recipe(recipe, tmp_path).artifact.manifest.notes
    why = next(n for n in notes if n.startswith("Why int4 got worse"))
    assert "layers.0" in why and "layers.1" in why and "int4_share" in why
