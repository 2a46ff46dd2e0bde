"""The bundled ``digits`` example: scikit-learn's 8x8 digits and a small CNN.

The dataset ships with scikit-learn (no download). The CNN trains deterministically in
seconds on 2 cores and is cached in the user cache folder, so it trains once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

CACHE_VERSION = "digits-cnn-v1"
TEST_FRACTION = 0.25
SPLIT_SEED = 0


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a max-pool and two linear layers: ~151 k parameters."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(2 * width * 16, 128)
        self.fc_out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        out: torch.Tensor = self.fc_out(x)
        return out


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 1, 8, 8) in [0, 1] and int64 labels; fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    if split == "train":
        return x_train, y_train
    if split == "test":
        return x_test, y_test
    raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")


def cache_dir() -> Path:
    """``$SLIMSERVE_CACHE`` or the platform's user cache folder."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("SLIMSERVE_CACHE") or user_cache_dir("slimserve"))


def train(epochs: int = 15, seed: int = 0, threads: int = 2) -> DigitsCNN:
    """Train the CNN from scratch, deterministically (Adam, batch 64, cosine LR)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    x, y = load_split("train")
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps_per_epoch = (len(x) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[idx]), labels[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
    return model.eval()


def pretrained(seed: int = 0) -> DigitsCNN:
    """The trained CNN, from the cache when it is there (trained and cached otherwise)."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"{CACHE_VERSION}-seed{seed}.safetensors"
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is retrained, not trusted
    model = train(seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.{time.monotonic_ns()}")
    save_file(model.state_dict(), str(tmp))
    os.replace(tmp, path)
    return model


def build() -> tuple[nn.Module, torch.Tensor]:
    """The model factory behind ``model: {example: digits}``."""
    x, _ = load_split("test")
    return pretrained(), torch.from_numpy(x[:2])
