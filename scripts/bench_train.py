"""Training speed and memory at full size with random weights (speed does not depend on their values).

Three cases, each the published recipe's shapes through this project's Trainer (FlashVStreamTrainer: length
grouping off, bf16, activation checkpointing on, the recipe's trainable parts):

  star_stage1   Vicuna-7B + CLIP ViT-L/14, projector + abstract memory trainable, 32 x (681 visual + 64 text)
  star_stage2   the same model, everything but CLIP trainable, 16 x (681 visual + 320 text); ZeRO-2 (+ offload)
  flash_lora    Qwen2-VL-7B + Flash Memory, LoRA r=64 on the LLM linears and the merger, lm_head trained,
                1 x (11,520 visual + 128 text) from 240 frames at 448x448

Inputs are synthetic batches of exactly these lengths: STAR cases take pre-extracted CLIP features (the published
stage-1/2 data), so CLIP's forward is not timed; the Flash case encodes pixels through the ViT (as published).

    python scripts/bench_train.py --case star_stage1 --out bench_stage1.json
    deepspeed --num_gpus 1 scripts/bench_train.py --case star_stage2 --deepspeed configs/deepspeed/zero2_offload.json
    deepspeed --num_gpus 1 scripts/bench_train.py --case flash_lora --deepspeed configs/deepspeed/zero2.json
    python scripts/bench_train.py --tiny --case all      # tiny models on the CPU: checks the script runs

Reported per case: seconds per optimiser step (forward, backward and optimiser step; the data loader's time is
outside, as the Trainer fetches a step's batches first; spread over the timed steps after warm-up steps), tokens per
second (tokens entering the language model, padding excluded), model FLOPs utilisation by the 6 * N * tokens
convention (N: the language model's parameters; the vision tower and the recomputation of activation
checkpointing are not counted, so this is MFU, not hardware utilisation; peak: the H200's dense bf16 989 TFLOP/s),
and the peak GPU memory. Results go to docs/benchmarks.md by hand, with device, date and command.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from benchlib import environment, peak_gib, report, spread, sync
from torch.utils.data import Dataset
from transformers import TrainerCallback, TrainingArguments

from flash_vstream.train.collate import collator_for
from flash_vstream.train.config import LoraArgs
from flash_vstream.train.start import apply_lora
from flash_vstream.train.trainer import FlashVStreamTrainer

PEAK_BF16_FLOPS = 989e12  # H200 SXM dense bf16 (spec); a measured 8192^3 bf16 matmul reaches about 790e12
VICUNA_7B = dict(
    model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
QWEN2_VL_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=False,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, vision_start_token_id=151652,
    vision_end_token_id=151653, image_token_id=151655, video_token_id=151656,
    vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, in_channels=3,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
)
# case -> (per-device batch, text tokens, frames, frame side in pixels)
CASES = {
    "star_stage1": (32, 64, 26, 224),
    "star_stage2": (16, 320, 26, 224),
    "flash_lora": (1, 128, 240, 448),
}
TINY = {"star_stage1": (2, 16, 26, 224), "star_stage2": (2, 32, 26, 224), "flash_lora": (1, 16, 8, 112)}


# --- setup -------------------------------------------------------------------------------------------------------
def build_star(case: str, tiny: bool, dtype: torch.dtype, layers: int | None = None):
    from flash_vstream.config import FlashVStreamConfig
    from flash_vstream.model.modeling import FlashVStreamForCausalLM
    from flash_vstream.model.tiny import tiny_star_config
    from flash_vstream.vision.clip import clip_vision_config

    if tiny:
        config = tiny_star_config("llama")
    else:
        vision = clip_vision_config("openai/clip-vit-large-patch14")
        text = {**VICUNA_7B, **({"num_hidden_layers": layers} if layers else {})}
        config = FlashVStreamConfig(vision_config=vision.to_dict(), text_config=text, conv_template="plain")
    config.decoder_trainable = case == "star_stage2"
    return FlashVStreamForCausalLM(config).to(dtype)  # random weights; apply_trainable ran in __init__


def build_flash(tiny: bool, dtype: torch.dtype):
    from flash_vstream.model.qwen2vl import FlashVStreamQwen2VLConfig, FlashVStreamQwen2VLForConditionalGeneration
    from flash_vstream.model.tiny_qwen2vl import tiny_flash_config

    config = tiny_flash_config() if tiny else FlashVStreamQwen2VLConfig(**QWEN2_VL_7B)
    model = FlashVStreamQwen2VLForConditionalGeneration(config).to(dtype)
    return apply_lora(model, "flash", LoraArgs(enabled=True, r=64, alpha=32, dropout=0.05))


class SyntheticBatches(Dataset):
    """``count`` identical-length samples in the encoder's format (random ids, features or pixels)."""

    def __init__(self, model, case: str, shape: tuple[int, int, int, int], count: int):
        self.model, self.case, self.count = model, case, count
        _, self.text, self.frames, self.side = shape

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        config = self.model.config
        vocab = config.get_text_config().vocab_size
        if self.case.startswith("star"):
            memory = self.model.memory
            visual = memory.num_tokens(self.frames)
            grid = config.vision_config.image_size // config.vision_config.patch_size
            features = torch.randn(self.frames, grid * grid, config.vision_config.hidden_size, generator=generator)
            ids = torch.randint(3, vocab, (self.text + visual,), generator=generator)
            ids[4 : 4 + visual] = config.image_token_id
            labels = ids.clone()
            labels[: 4 + visual] = -100
            return {"input_ids": ids, "labels": labels, "features": features}
        base = self.model.get_base_model()
        vision = base.config.vision_config
        t, hw = self.frames // vision.temporal_patch_size, self.side // vision.patch_size
        visual = base.flash_memory.num_tokens(self.frames, grid_hw=(hw, hw))
        width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        ids = torch.randint(3, min(vocab, 150000), (self.text + visual,), generator=generator)
        ids[4 : 4 + visual] = base.config.video_token_id
        labels = ids.clone()
        labels[: 4 + visual] = -100
        return {
            "input_ids": ids, "labels": labels, "mm_token_type_ids": (ids == base.config.video_token_id).long() * 2,
            "pixel_values_videos": torch.randn(t * hw * hw, width, generator=generator),
            "video_grid_thw": torch.tensor([[t, hw, hw]]),
        }


class StepProfiler(TrainerCallback):
    """``torch.profiler`` over one optimiser step (the first timed one); prints the ops by device time."""

    def __init__(self, step: int, rows: int = 25):
        self.step, self.rows, self.profiler = step, rows, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
            print(self.profiler.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=self.rows))
            self.profiler = None


class StepTimer(TrainerCallback):
    """Seconds of every optimiser step, each bracketed by a device synchronisation."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._start = device, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.seconds.append(time.perf_counter() - self._start)


# --- run ---------------------------------------------------------------------------------------------------------
def run_case(case: str, args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.deepspeed and device.type == "cuda" else torch.float32  # DS keeps fp32 masters
    shape = (TINY if args.tiny else CASES)[case]
    with torch.device(device):  # random init on the GPU: seconds, not minutes on the host
        if case == "flash_lora":
            model = build_flash(args.tiny, dtype)
        else:
            model = build_star(case, args.tiny, dtype, args.layers)
    from flash_vstream.model.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("chatml" if case == "flash_lora" else "llama")  # only its pad id is used
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token
    steps = args.warmup + args.steps
    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench_train_"), per_device_train_batch_size=shape[0],
        max_steps=steps, learning_rate=1e-5, bf16=device.type == "cuda", activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": False}, remove_unused_columns=False,
        save_strategy="no", report_to="none", logging_steps=steps, deepspeed=args.deepspeed,
        use_cpu=device.type == "cpu", dataloader_num_workers=2 if device.type == "cuda" else 0,
    )
    timer = StepTimer(device)
    dataset = SyntheticBatches(model, case, shape, count=steps * shape[0] * training.world_size)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trainer = FlashVStreamTrainer(
        model=model, args=training, train_dataset=dataset, data_collator=collator_for(base, tokenizer),
        callbacks=[timer] + ([StepProfiler(args.warmup)] if args.profile else []),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train()
    timed = timer.seconds[args.warmup :]
    tokens = shape[0] * len(dataset[0]["input_ids"]) * training.world_size  # per optimiser step, all ranks
    llm = base.language_model if case != "flash_lora" else base.model.language_model
    n_llm = sum(p.numel() for p in llm.parameters()) + (base.lm_head.weight.numel() if case == "flash_lora" else 0)
    median = spread(timed, scale=1.0)["median"]
    return {
        "case": case, "per_device_batch": shape[0], "sequence_tokens": len(dataset[0]["input_ids"]),
        "processes": training.world_size, "deepspeed": args.deepspeed, "step_seconds": spread(timed, scale=1.0),
        "tokens_per_second": round(tokens / median, 1), "llm_parameters": n_llm,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "mfu_6nt": round(6 * n_llm * tokens / median / (PEAK_BF16_FLOPS * training.world_size), 4),
        "peak_gib": peak_gib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--deepspeed", default=None, help="a configs/deepspeed/*.json file (launch with deepspeed)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimiser steps first")
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: checks the script runs")
    parser.add_argument("--out", default=None, help="write the JSON here too")
    parser.add_argument(
        "--layers", type=int, default=None,
        help="STAR cases: decoder layers (default 32, Vicuna-7B); fewer when the full model's optimizer does not fit",
    )
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one timed step")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args()
    cases = list(CASES) if args.case == "all" else [args.case]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"environment": environment(device), "cases": [run_case(case, args) for case in cases]}
    report(results, args.out)


if __name__ == "__main__":
    main()
