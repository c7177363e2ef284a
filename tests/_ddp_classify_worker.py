"""Run by tests/test_distributed.py under ``torch.distributed.run --nproc_per_node=2``: train a classifier.

usage: _ddp_classify_worker.py DATA_TSV OUT_DIR PARAMS_DIR
"""

from __future__ import annotations

import os
import sys

import torch

from rnnkit.tasks import ClassifyConfig, ClassifyTask
from rnnkit.train import train


def config(data: str) -> ClassifyConfig:
    return ClassifyConfig.from_dict(
        {
            "model": {"hidden_size": 8, "embedding_size": 4, "head_size": 8, "dropout": 0.1},
            "data": {"data": data, "val_fraction": 0.2},
            "train": {"batch_size": 8, "max_steps": 6, "max_minutes": 0, "eval_every": 3, "log_every": 1, "seed": 3},
        }
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    data, out_dir, params_dir = sys.argv[1:4]
    result = train(ClassifyTask(config(data)), out_dir)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    torch.save({"params": state, "last": result.last}, f"{params_dir}/rank{rank}.pt")
