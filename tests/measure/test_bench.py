import numpy as np

import slimserve as ss
from slimserve.measure.bench import bench_interleaved, sample_batch
from slimserve.measure.summary import model_size


def test_sample_batch_repeats_short_data() -> None:
    data = ss.Dataset({"input": np.arange(3, dtype="f4")[:, None]})
    batch = sample_batch(data, 8)
    assert batch["input"].shape == (8, 1)
    np.testing.assert_array_equal(batch["input"][:, 0], [0, 1, 2, 0, 1, 2, 0, 1])


def test_interleaved_timings_have_every_model_and_batch(
    digits_torch, digits_onnx, digits_test
) -> None:  # type: ignore[no-untyped-def]
    predictors = {"torch": ss.load_predictor(digits_torch), "onnx": ss.load_predictor(digits_onnx)}
    result = bench_interleaved(predictors, digits_test, (1, 8), warmup=1, repeats=5)
    for name in predictors:
        assert set(result[name]) == {1, 8}
        timing = result[name][8]
        assert 0 < timing.p50_ms <= timing.p95_ms <= timing.p99_ms
        assert timing.items_per_s == 8 / (timing.p50_ms / 1e3)


def test_compressed_size_shows_zeros(digits_torch) -> None:  # type: ignore[no-untyped-def]
    import copy

    import torch

    raw, compressed = model_size(digits_torch)
    zeroed = copy.deepcopy(digits_torch.module)
    with torch.no_grad():
        zeroed.fc1.weight.mul_((torch.rand_like(zeroed.fc1.weight) > 0.9).float())
    raw2, compressed2 = model_size(digits_torch.with_module(zeroed))
    assert raw2 == raw
    assert compressed2 < 0.6 * compressed


def test_sample_batch_pads_text_to_its_own_longest_sentence() -> None:
    # 4 sentences padded to 10 positions; the first two use at most 3 of them
    mask = np.zeros((4, 10), dtype="int64")
    for row, length in enumerate((2, 3, 10, 5)):
        mask[row, :length] = 1
    data = ss.Dataset({"input_ids": mask * 7, "attention_mask": mask})
    batch = sample_batch(data, 2)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 3)
    assert sample_batch(data, 4)["attention_mask"].shape == (4, 10)
