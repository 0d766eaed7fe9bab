"""One DDP training step per model family, run by ``tests/test_ddp.py`` under ``torchrun`` with 2 gloo processes.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR VARIANT [VARIANT ...]

For each ``make-tiny`` variant: build the tiny checkpoint, load it, wrap the model in DDP WITHOUT
``find_unused_parameters`` and run two steps on rank-specific clips (a 1-frame clip, where the STAR memory's
attention is not part of the algorithm, then a long one). DDP itself raises on the second step if a trainable
parameter got no gradient in the first. Each rank writes ``OUT_DIR/rank{r}.json`` with, per variant, the losses,
the names of trainable parameters without a gradient, and a checksum of the averaged gradients.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from flash_vstream import load_model
from flash_vstream.distributed import cleanup_distributed, init_distributed
from flash_vstream.families import tiny_variants

IGNORE_INDEX = -100


def training_inputs(vs, frames: np.ndarray) -> dict:
    """Builder inputs with labels on the text tokens (assistant-only labels where the builder makes them)."""
    if vs.family == "star":
        return vs.input_builder("What happens?", frames=frames, answer="A cat walks by.")
    inputs = vs.input_builder("What happens?", frames=frames, assistant_prefix="A cat walks by.")
    text = inputs["mm_token_type_ids"] == 0
    inputs["labels"] = torch.where(text, inputs["input_ids"], torch.full_like(inputs["input_ids"], IGNORE_INDEX))
    return inputs


def run_variant(variant: str, rank: int, work: Path) -> dict:
    checkpoint = work / variant
    if rank == 0:  # save_pretrained writes on the main process only
        tiny_variants()[variant].resolve("make_tiny")(
            checkpoint, variant=variant, layout="own", weights_format="safetensors", seed=0
        )
    torch.distributed.barrier()
    vs = load_model(checkpoint, device="cpu", dtype="float32")
    model = vs.model.train()
    ddp = DistributedDataParallel(model)  # no find_unused_parameters: every trainable parameter must get a grad
    rng = np.random.default_rng(100 + rank)
    losses, ungraded = [], set()
    for num_frames in (1, 30):
        frames = rng.integers(0, 256, (num_frames, 56, 56, 3), dtype=np.uint8)
        ddp.zero_grad(set_to_none=True)
        loss = ddp(**training_inputs(vs, frames)).loss
        loss.backward()
        losses.append(loss.item())
        ungraded |= {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    grads = [p.grad.double().sum().item() for p in model.parameters() if p.grad is not None]
    return {
        "losses": losses,
        "ungraded": sorted(ungraded),
        "grad_checksum": sum(grads),
        "num_trainable": sum(p.requires_grad for p in model.parameters()),
    }


def main() -> None:
    out, variants = Path(sys.argv[1]), sys.argv[2:]
    rank, _, world_size, _ = init_distributed(backend="gloo")
    assert world_size == 2, world_size
    results = {variant: run_variant(variant, rank, out) for variant in variants}
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    cleanup_distributed(wait=True)


if __name__ == "__main__":
    main()
