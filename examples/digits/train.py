"""Train the digits example: a small CNN on scikit-learn's bundled 8×8 digits, exported to ONNX.

    python examples/digits/train.py [--out examples/digits/build]

Writes `digits.onnx` (input `image` FP32 [-1, 1, 8, 8], output `logits` FP32 [-1, 10]),
`train.npz` (the training split, with labels: for pruning and distillation), `calibration.npz`
(held-out images) and `eval.npz` (other held-out images, with labels). Needs the
`train` extra (torch, scikit-learn); runs in seconds on a CPU, nothing is downloaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    train_x, held_x, train_y, held_y = train_test_split(images, digits.target, test_size=0.4, random_state=0, stratify=digits.target)
    calib_x, eval_x, _, eval_y = train_test_split(held_x, held_y, test_size=0.75, random_state=0, stratify=held_y)

    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(eval_x)).argmax(1).numpy() == eval_y).mean()

    args.out.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter at opset 17: graphs from the torch.export-based one (opset 18+,
    # Reshape with allowzero) are beyond onnx2torch, which the pruned and distilled variants use.
    torch.onnx.export(
        model, (torch.zeros(2, 1, 8, 8),), str(args.out / "digits.onnx"), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    np.savez(args.out / "train.npz", image=train_x, labels=train_y.astype(np.int64))
    np.savez(args.out / "calibration.npz", image=calib_x)
    np.savez(args.out / "eval.npz", image=eval_x, labels=eval_y.astype(np.int64))
    print(f"digits CNN: top-1 {accuracy:.4f} on {len(eval_y)} held-out images; wrote {args.out}")


if __name__ == "__main__":
    main()
