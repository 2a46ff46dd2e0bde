"""Where a decoder LM artifact's prompts run, measured in the run: ONNX Runtime (the
model's own runtime, which decodes) or OpenVINO on the same file (float32, or bf16 where the
CPU has bf16 kernels; runtime/openvino_prefill.py). Each OpenVINO precision's next-token
fidelity is measured on the eval windows (a window is one prompt: what a prefill computes)
and must meet the recipe's goal; among those that do, the fastest time to first token on a
prompt of the eval text wins when it beats ONNX Runtime's by ``WIN_MARGIN``. The manifest
records every candidate's figures (``llm_prefill``), so the choice is the machine's that
built the artifact, and the report says it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from slimserve.measure.llm import Reference
    from slimserve.models.llm import LlmModel
    from slimserve.recipe import Recipe
    from slimserve.stages import Stage

PROMPT_TOKENS = 256
WIN_MARGIN = 0.9  # OpenVINO must take at most 90 % of ONNX Runtime's time to first token
ROUNDS = 3


def choose_llm_prefill(
    recipe: Recipe,
    baseline: Stage,
    served: Stage,
    llm: LlmModel,
    reference: Reference,
    threads: int,
) -> tuple[dict[str, Any] | None, str]:
    """The manifest's ``llm_prefill`` record (None: prompts stay in ONNX Runtime) and the
    report's line on what was measured and decided."""
    from slimserve.core.errors import MissingExtraError
    from slimserve.core.metrics import next_token_metrics
    from slimserve.measure.timing import run_rounds
    from slimserve.runtime.openvino_prefill import OpenvinoPrefill, prefill_precisions
    from slimserve.serving_runtime import goal_verdict
    from slimserve.stages import Stage

    try:
        precisions = prefill_precisions()
    except MissingExtraError as exc:
        return None, f"Prompts run in ONNX Runtime: {exc}"
    prompt = _prompt(reference.windows)
    calls = {"onnxruntime": _onnxruntime_prefill(llm, threads, prompt)}
    fidelity: dict[str, dict[str, float]] = {}
    refused: list[str] = []
    for precision in precisions:
        name = f"openvino {precision}"
        try:
            full = OpenvinoPrefill(llm.folder, precision, threads, last_only=False)
            logits = np.concatenate([full.logits(w)[:-1] for w in reference.windows])
            del full
            fidelity[name] = next_token_metrics(
                np.concatenate(reference.logits), logits, reference.targets
            )
        except Exception as exc:  # OpenVINO cannot read or run this graph: keep ONNX Runtime
            refused.append(f"{name} failed ({str(exc).splitlines()[0][:200]})")
            continue
        check = Stage(name, llm, {**served.metrics, **fidelity[name]})
        if not goal_verdict(recipe, baseline, check).met:
            refused.append(
                f"{name} misses the goal ({recipe.goal.metric} "
                f"{fidelity[name].get(recipe.goal.metric, float('nan')):.4f})"
            )
            continue
        runner = OpenvinoPrefill(llm.folder, precision, threads)
        calls[name] = lambda runner=runner: runner.run(prompt)
    timed = run_rounds(calls, rounds=ROUNDS, calls_per_pass=1, warmup=2)
    ttft = {name: round(float(np.median(t.round_s)) * 1000, 2) for name, t in timed.items()}
    ranked = sorted((n for n in calls if n != "onnxruntime"), key=lambda n: ttft[n])
    times = ", ".join(f"{n} {ms:,.1f} ms" for n, ms in ttft.items())
    why_not = f"; {'; '.join(refused)}" if refused else ""
    head = f"Prompts of {len(prompt)} tokens to their first token, interleaved: {times}{why_not}."
    if not ranked or ttft[ranked[0]] > WIN_MARGIN * ttft["onnxruntime"]:
        return None, f"{head} Prompts run in ONNX Runtime with the decode steps."
    best = ranked[0]
    record = {
        "runtime": "openvino",
        "precision": best.split()[-1],
        "prompt_tokens": len(prompt),
        "ttft_ms": ttft,
        "fidelity": fidelity,
    }
    return record, (
        f"{head} Prompts run in {best} ({ttft['onnxruntime'] / ttft[best]:.2f}x faster to the "
        f"first token; {recipe.goal.metric} {fidelity[best][recipe.goal.metric]:.4f} on the "
        "eval windows), the decode steps in ONNX Runtime, on the same model file."
    )


def _prompt(windows: list[list[int]]) -> list[int]:
    """``PROMPT_TOKENS`` tokens of the eval text (fewer when the windows hold fewer)."""
    tokens = [t for w in windows for t in w]
    return tokens[:PROMPT_TOKENS]


def _onnxruntime_prefill(llm: LlmModel, threads: int, prompt: list[int]) -> Any:
    """A call running ``prompt`` through the model in ONNX Runtime as the engine does: one
    sequence, no cache before it."""
    import onnxruntime as ort

    decoder = llm.config()["model"]["decoder"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(llm.folder / decoder["filename"]), options, providers=["CPUExecutionProvider"]
    )
    empty = np.zeros(
        (1, int(decoder["num_key_value_heads"]), 0, int(decoder["head_size"])), np.float32
    )
    feed: dict[str, Any] = {
        "input_ids": np.asarray([prompt], np.int64),
        "attention_mask": np.ones((1, len(prompt)), np.int64),
    }
    for layer in range(int(decoder["num_hidden_layers"])):
        for kind in ("key", "value"):
            feed[f"past_key_values.{layer}.{kind}"] = empty
    return lambda: session.run(["logits"], feed)
