"""Wall time of kronify on small HF configs (random init, nothing downloaded).

Usage: HF_HUB_OFFLINE=1 python benchmarks/kronify_time.py [--repeats 3] [--threads 1]

Prints the median of ``--repeats`` conversions of a fresh copy of each model per mode.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import transformers

from torchkron import kronify

transformers.logging.set_verbosity_error()


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    vit = transformers.ViTConfig(  # ViT-Tiny/16 at 224 px (timm's vit_tiny_patch16_224)
        image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12,
        num_attention_heads=3, intermediate_size=768, num_labels=1000,
    )  # fmt: skip
    bert = transformers.BertConfig(  # BERT-mini (4 layers, 256 hidden)
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
    )  # fmt: skip
    return {
        "vit-tiny": transformers.ViTForImageClassification(vit),
        "bert-mini": transformers.BertModel(bert),
    }


MODES = {
    "from_dense=False": {"from_dense": False},
    "rank=1": {"rank": 1},
    "rank=8": {"rank": 8},
    "max_error=0.5": {"max_error": 0.5},
    "compression=2": {"compression": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    # On a loaded machine several threads per SVD oversubscribe the cores (10x slower).
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, model in models().items():
        n = sum(p.numel() for p in model.parameters())
        for mode, kwargs in MODES.items():
            times = []
            try:
                for _ in range(args.repeats):
                    fresh = copy.deepcopy(model)
                    start = time.perf_counter()
                    _, report = kronify(fresh, **kwargs)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - start)
            except ValueError as exc:  # e.g. a compression the embeddings make unreachable
                print(f"{name:10s} {n:>10,} params  {mode:17s} raises: {exc}")
                continue
            print(
                f"{name:10s} {n:>10,} params  {mode:17s} median {statistics.median(times):7.3f} s"
                f"  ({len(report.replaced)} layers, -> {report.params_after:,} params)"
            )


if __name__ == "__main__":
    main()
