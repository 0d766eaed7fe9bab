"""Write a tiny plain LLaMA (with tokenizer) and a tiny CLIP vision tower: the STAR stage-1 debug start point.

python scripts/make_tiny_parts.py --out runs/tiny      # -> runs/tiny/llm, runs/tiny/clip
flash-vstream train --config configs/train/star_stage1_debug.yaml
"""

from __future__ import annotations

import argparse

from flash_vstream.train.tiny_parts import make_tiny_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write llm/ and clip/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    llm, clip = make_tiny_parts(args.out, seed=args.seed)
    print(f"wrote a tiny LLaMA to {llm} and a tiny CLIP vision tower to {clip}")


if __name__ == "__main__":
    main()
