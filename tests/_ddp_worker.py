"""Run by tests/test_distributed.py under ``torch.distributed.run --nproc_per_node=2``: train, save this rank's params.

usage: _ddp_worker.py TEXT_FILE OUT_DIR PARAMS_DIR
"""

from __future__ import annotations

import os
import sys

import torch

from rnnkit.tasks.language_model import LMConfig
from rnnkit.tasks.language_model import LMDataConfig as DataConfig
from rnnkit.tasks.language_model import LMModelConfig as ModelConfig
from rnnkit.tasks.language_model import LMTrainConfig as TrainConfig
from rnnkit.train import train_lm


def config(text_file: str, batch_size: int) -> LMConfig:
    return LMConfig(
        ModelConfig(mode="gru", embedding_size=8, hidden_size=16),
        DataConfig(data=text_file, val_fraction=0.1),
        TrainConfig(
            batch_size=batch_size,
            bptt=10,
            max_steps=6,
            max_minutes=0,
            eval_every=3,
            log_every=1,
            seed=3,
            lr=1e-2,
            warmup_steps=0,
            precision="fp32",  # the LM's default is auto; bf16 rounds differently for different row splits
        ),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    text_file, out_dir, params_dir = sys.argv[1:4]
    events = []
    result = train_lm(config(text_file, batch_size=2), out_dir, on_event=events.append)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    summary = {"events": len(events), "val_bpc": result.last["bpc"], "items_per_s": result.items_per_second}
    summary["items"] = torch.load(f"{out_dir}/last.pt", weights_only=True)["metrics"]["items"] if rank == 0 else 0
    summary["rank_items"] = 6 * 2 * 10  # this rank's: 6 steps of 2 rows x bptt 10 characters
    torch.save({"params": state, **summary}, f"{params_dir}/rank{rank}.pt")
