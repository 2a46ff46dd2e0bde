import numpy as np
import pytest

from slimserve.core.metrics import cosine, fidelity


def test_cosine_on_known_vectors() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine(a, b), [0.0, 1.0, 1.0, 0.0])


def test_fidelity_on_known_outputs() -> None:
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    cand = np.array([[3.0, 1.5, 0.0], [0.0, 1.0, 2.0]])
    stats = fidelity(ref, cand)
    assert stats["top1_agreement"] == 0.5
    assert stats["max_abs_error"] == pytest.approx(1.0)
    assert stats["cosine_min"] == pytest.approx(4 / 5)


def test_neighbour_agreement_counts_kept_neighbours() -> None:
    from slimserve.core.metrics import nearest_neighbours, neighbour_agreement

    angles = np.radians([0, 10, 30, 60, 100, 150])
    ref = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert nearest_neighbours(ref, 1)[:, 0].tolist() == [1, 0, 1, 2, 3, 4]
    assert neighbour_agreement(ref, ref * 3.0, k=2) == 1.0  # scale does not matter
    moved = ref.copy()
    moved[5] = [1.0, 0.05]  # row 5 jumps next to rows 0 and 1
    agreement = neighbour_agreement(ref, moved, k=1)
    assert 0 < agreement < 1
    kept = nearest_neighbours(moved, 1)[:, 0] == [1, 0, 1, 2, 3, 4]
    assert agreement == pytest.approx(np.mean(kept))


def test_embeddings_are_scored_by_neighbours_not_by_their_largest_coordinate() -> None:
    import torch

    import slimserve as ss
    from slimserve.measure.evaluate import evaluate
    from slimserve.runtime import TorchPredictor

    torch.manual_seed(0)
    encoder = torch.nn.Linear(8, 16).eval()
    data = ss.Dataset({"input": np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)})
    with torch.no_grad():
        reference = encoder(torch.from_numpy(data.inputs["input"])).numpy()
    example = (torch.zeros(2, 8),)
    as_embeddings = ss.TorchModel(encoder, example, ("input",), ("embeddings",))
    as_scores = ss.TorchModel(encoder, example, ("input",), ("logits",))
    metrics = evaluate(TorchPredictor(as_embeddings), data, reference)
    assert metrics["top5_neighbours"] == pytest.approx(1.0)
    assert "top1_agreement" not in metrics and "top5_agreement" not in metrics
    scores = evaluate(TorchPredictor(as_scores), data, reference)
    assert scores["top1_agreement"] == 1.0 and "top5_neighbours" not in scores


def test_a_torch_text_model_is_evaluated_in_length_order_on_trimmed_batches(tiny_bert) -> None:  # type: ignore[no-untyped-def]
    import slimserve as ss
    from slimserve.examples.minilm import english_sentences
    from slimserve.models.hf import load_hf, load_tokenizer, tokenize
    from slimserve.runtime import TorchPredictor, predict_all

    model = load_hf(tiny_bert)
    sentences = english_sentences(70)
    encoded = tokenize(load_tokenizer(tiny_bert), [*sentences, " ".join(["word"] * 100)], 128)
    data = ss.Dataset({n: encoded[n] for n in model.input_names})
    full = encoded["input_ids"].shape[1]
    widths: list[int] = []
    model.module.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
    predictor = TorchPredictor(model)
    outputs = predict_all(predictor, data)
    expected = predictor.predict(data.inputs)[0]  # one batch at the split's full width
    np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=1e-4)
    assert widths[-1] == full and max(widths[:-1]) == full  # the long one, once
    assert widths[0] < full / 3  # the 32 shortest sentences: cut short
