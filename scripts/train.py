"""Train a STAR or Flash model from a YAML config: the same as ``flash-vstream train``, as a script for launchers.

    python scripts/train.py --config configs/train/star_debug.yaml                      # 1 process (CPU or GPU)
    torchrun --nproc_per_node=8 scripts/train.py --config configs/train/star_stage2.yaml
    deepspeed --num_gpus 8 scripts/train.py --config configs/train/flash_qwen2vl_lora.yaml \
        training.deepspeed=configs/deepspeed/zero2.json

Overrides are dotted ``KEY=VALUE`` pairs (``training.learning_rate=1e-4``); see ``flash_vstream/train/config.py``.
"""

from __future__ import annotations

import sys

from flash_vstream.train.train_cli import main

# --- setup -> train -> save/resume -> cleanup all happen in flash_vstream.train.trainer.run_training.
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
