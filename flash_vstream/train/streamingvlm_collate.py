r"""StreamingVLM training samples: a chunk record -> the per-second interleaved sequence, labels, video patches.

One chunk of ``R`` seconds (``R`` = 24 in the published recipe) becomes one sample laid out exactly like the
streaming cache at inference (l: tokens, n: vision tokens of one second)::

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>previous text\n{previous text, at most text_sink + text_window tokens}<|im_end|>\n
    R times (second a = video_start + k):
    <|im_start|>user\nTime={a:.1f}-{a+1:.1f}s<|vision_start|><|video_pad|> x n<|vision_end|>{query: round 0}<|im_end|>\n
    <|im_start|>assistant\n[\n{ words} ...<|im_end|>]\n

Only the ``[...]`` text is supervised: from the token after ``<|im_start|>assistant\n`` through ``<|im_end|>``.
Each reply is tokenized on its own, as the streaming session feeds it (the header prefilled, the reply
generated), so its leading newline stays one token; tokenizing the whole sample at once, as the published code
does, lets Qwen's BPE merge it with the header's newline into one ``"\n\n"`` token the session never shows.

A word goes to the second its ASR end time falls in, ``(a, a + 1]`` (the first second also takes earlier
ones), each written ``" " + word``; a silent second is ``"\n ..."``, the learned empty turn. A ``qa_stream``
question asked in a second follows that round's time stamp (``Time=...s {question}``) and its answer opens the
reply (``{answer}\n ...``), as published. The previous-text block is always present (empty for a game's first
chunk), as the inference cache always holds it.

Frames: ``fps`` (2) frames per second of video, the first frame at or after each time ``video_start + j / fps``,
resized once with Qwen-VL's rule (factor 28, ``min_pixels``..``max_pixels``) and cut into one temporal patch per
second, so ``video_grid_thw`` has one ``(1, h, w)`` row per round. The frame settings, the system prompt and the
text sink/window come from the checkpoint's ``streamingvlm_settings`` (what it streams with), else the published
values.

Positions are not computed here: the batch carries ``mm_token_type_ids``, ``video_grid_thw`` and
``second_per_grid_ts``, and the model's own ``get_rope_index`` numbers each full, unpadded sample (text 1-D at
``max + 1``, a second's vision block ``(t0, h, w)`` from its start). With one temporal patch per block the
published modification of ``get_rope_index`` (a fixed temporal scale, float positions) gives the same numbers.

The published code differs in three small ways, not copied: it tokenizes each sample whole (see above), its
rounds after the first write ``"Time=...s "`` with a trailing space (inference writes none), and it allowed one
sample per batch; here batches are padded to their own longest sample and every sample keeps its own positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch.utils.data import Dataset

from flash_vstream.inference.prompts import IGNORE_INDEX
from flash_vstream.train.collate import FlashCollator
from flash_vstream.train.dataset import VIDEO_TOKEN_TYPE, SampleError, SampleTooLongError
from flash_vstream.train.streamingvlm_data import ChunkRecord, StreamingChunks
from flash_vstream.train.templates import RenderedConversation

__all__ = [
    "StreamFormat",
    "StreamingVLMCollator",
    "StreamingVLMDataset",
    "StreamingVLMSampleEncoder",
    "apply_trainable",
    "bin_words",
    "build_streamingvlm_dataset",
    "render_chunk",
]

SETTINGS_KEY = "streamingvlm_settings"
"""``config.json`` key of the checkpoint's streaming settings (written by the StreamingVLM family)."""
TRAINABLE_DEFAULTS = {"vision_trainable": False, "merger_trainable": False, "decoder_trainable": True}
"""The published recipe: the ViT and its merger frozen, the language model (and ``lm_head``) in full."""


@dataclass(frozen=True)
class StreamFormat:
    """How a chunk is laid out and its frames are read (the published values)."""

    fps: float = 2.0
    """Frames per second of video (``fps`` frames must form one temporal patch)."""
    min_pixels: int = 100 * 28 * 28
    """Fewest pixels per frame after resizing (78,400)."""
    max_pixels: int = 768 * 28 * 28
    """Most pixels per frame after resizing (602,112: 720 vision tokens per second for 16:9 video)."""
    system_prompt: str = "You are a helpful assistant."
    """Text of the system turn."""
    text_sink: int = 512
    """Tokens kept from the start of the previous text."""
    text_window: int = 512
    """Tokens kept from the end of the previous text."""
    previous_role: str = "previous text"
    """Role name of the previous-text block."""
    silent: str = " ..."
    """Text that ends every reply (all of a silent second's reply after its newline)."""

    @classmethod
    def for_config(cls, config) -> StreamFormat:
        """The format of a checkpoint: its ``streamingvlm_settings`` where they name a field, else the defaults."""
        saved = getattr(config, SETTINGS_KEY, None) or {}
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def bin_words(words, start: float, rounds: int) -> list[str]:
    """The reply text of each second: ``" w1 w2"`` for the words whose end time is in ``(a, a + 1]``."""
    texts = [[] for _ in range(rounds)]
    for _, end, word in sorted(words, key=lambda w: w[1]):
        k = max(0, math.ceil(end - start) - 1)  # end in (start + k, start + k + 1]; earlier ends go to second 0
        if k < rounds and word.strip():
            texts[k].append(" " + word.strip())
    return ["".join(t) for t in texts]


def bin_questions(questions, start: float, rounds: int) -> list[tuple[str, str]]:
    """``(question, answer)`` of each second: the ``qa_stream`` items asked in ``(a, a + 1]``, joined by spaces."""
    asked = [([], []) for _ in range(rounds)]
    for time, question, answer in sorted(questions, key=lambda q: q[0]):
        k = max(0, math.ceil(time - start) - 1)
        if k < rounds:
            asked[k][0].append(question.strip())
            asked[k][1].append(answer.strip())
    return [(" ".join(q), " ".join(a)) for q, a in asked]


def render_chunk(record: ChunkRecord, fmt: StreamFormat, vision_tokens: int, previous: str) -> RenderedConversation:
    """The sample text of ``record`` with ``vision_tokens`` placeholders per second, and its supervised spans."""
    rounds = round(record.end - record.start)
    asked = bin_questions(record.questions, record.start, rounds)
    parts = [
        f"<|im_start|>system\n{fmt.system_prompt}<|im_end|>\n",
        f"<|im_start|>{fmt.previous_role}\n{previous}<|im_end|>\n",
    ]
    spans, length = [], sum(len(p) for p in parts)
    video = "<|vision_start|>" + "<|video_pad|>" * vision_tokens + "<|vision_end|>"
    for k, said in enumerate(bin_words(record.words, record.start, rounds)):
        a, (question, answer) = record.start + k, asked[k]
        time = f"Time={a:.1f}-{a + 1:.1f}s" + (f" {question}" if question else "")
        user = f"<|im_start|>user\n{time}{video}{record.query if k == 0 else ''}<|im_end|>\n"
        header, reply = "<|im_start|>assistant\n", f"{answer}\n{said}{fmt.silent}<|im_end|>"
        begin = length + len(user) + len(header)
        spans.append((begin, begin + len(reply)))
        parts.append(user + header + reply + "\n")
        length += len(parts[-1])
    return RenderedConversation("".join(parts), tuple(spans))


def tokenize_pieces(tokenizer, conversation: RenderedConversation) -> tuple[list[int], list[int]]:
    r"""Ids and labels, each reply tokenized on its own (labels = its ids), the text between them on its own.

    The streaming session prefills ``<|im_start|>assistant\n`` and then generates the reply, so the reply's
    first newline is a token of its own there; tokenizing the whole sample at once would let Qwen's BPE merge it
    with the header's newline (``"\n\n"`` is one token), and the model would learn a context it never sees.
    """
    ids: list[int] = []
    labels: list[int] = []
    cut = 0
    for start, end in [*conversation.spans, (len(conversation.text), len(conversation.text))]:
        for begin, stop, supervised in ((cut, start, False), (start, end, True)):
            if stop > begin:
                piece = tokenizer(conversation.text[begin:stop], add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if supervised else [IGNORE_INDEX] * len(piece)
        cut = end
    return ids, labels


class StreamingVLMSampleEncoder:
    """Chunk records -> the tensors of one sample (see the module docstring).

    ``encoder(record)`` returns ``input_ids``, ``labels``, ``mm_token_type_ids`` ``(l,)``,
    ``pixel_values_videos`` ``(R*h*w, c*tp*p*p)``, ``video_grid_thw`` ``(R, 3)`` and ``second_per_grid_ts`` ``(R,)``.

    Args:
        tokenizer: the model's fast tokenizer (with the Qwen-VL vision specials).
        vision_config: the model's ``vision_config`` (patch, merge and temporal patch sizes).
        fmt: the layout and frame settings.
        max_length: a longer sample is an error (a chunk is never cut: every second is one round).

    Raises:
        ValueError: when ``fps`` frames are not one temporal patch, or the tokenizer lacks a vision special.
    """

    family = "streamingvlm"

    def __init__(self, tokenizer, vision_config, fmt: StreamFormat | None = None, *, max_length: int = 32768):
        from flash_vstream.vision.qwen2vl import FlashFrameProcessor

        self.tokenizer, self.fmt, self.max_length = tokenizer, fmt or StreamFormat(), max_length
        self.temporal = vision_config.temporal_patch_size
        if abs(self.fmt.fps - self.temporal) > 1e-9:
            raise ValueError(
                f"StreamingVLM trains one temporal patch per second: fps must be {self.temporal} (the model's "
                f"temporal_patch_size), got {self.fmt.fps}"
            )
        self.merge = vision_config.spatial_merge_size
        self.processor = FlashFrameProcessor(
            max_pixels=self.fmt.max_pixels,
            min_pixels=self.fmt.min_pixels,
            patch_size=vision_config.patch_size,
            merge_size=self.merge,
            temporal_patch_size=self.temporal,
            pool_size=1,  # no half-resolution pathway: one resize with factor patch * merge (28)
            loader_factor=vision_config.patch_size * self.merge,
        )
        self.video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
        for token in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
            if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
                raise ValueError(f"the tokenizer has no {token} token; use the checkpoint's Qwen-VL tokenizer")
        self._probes: dict[Path, object] = {}  # video -> VideoInfo

    @classmethod
    def for_model(cls, model, tokenizer, *, max_length: int = 32768) -> StreamingVLMSampleEncoder:
        """The encoder of a Qwen2.5-VL model, with the format saved in its config."""
        return cls(tokenizer, model.config.vision_config, StreamFormat.for_config(model.config), max_length=max_length)

    @classmethod
    def for_checkpoint(cls, path: str | Path, *, max_length: int = 32768) -> StreamingVLMSampleEncoder:
        """The encoder of a checkpoint folder, from its ``config.json`` and tokenizer (no weights are read).

        Raises:
            ValueError: for a config that is not Qwen2.5-VL's, or a folder without a loadable tokenizer.
        """
        from transformers import AutoTokenizer, Qwen2_5_VLConfig

        config = Qwen2_5_VLConfig.from_pretrained(str(path))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path} holds no loadable tokenizer ({reason}); save it beside the weights") from None
        return cls(tokenizer, config.vision_config, StreamFormat.for_config(config), max_length=max_length)

    def __call__(self, record: ChunkRecord) -> dict[str, torch.Tensor]:
        """The tensors of ``record``.

        Raises:
            SampleError: naming the record's ``file:line`` for an unreadable or too short video, or a sample over
                ``max_length`` tokens.
        """
        try:
            return self.encode(record)
        except SampleError:
            raise
        except ValueError as err:  # VideoError and friends: name the record
            raise SampleError(f"{record.where}: {err}") from err

    def probe(self, record: ChunkRecord):
        """The ``VideoInfo`` of ``record``'s video (container metadata, cached per video).

        Raises:
            SampleError: when the chunk ends after the video does.
            VideoError: for a video whose container cannot be read.
        """
        from flash_vstream.video.reader import probe_video

        if record.video not in self._probes:
            self._probes[record.video] = probe_video(record.video)
        info = self._probes[record.video]
        if record.end > info.num_frames / info.fps + 1e-6:
            raise SampleError(
                f"{record.where}: the chunk ends at {record.end} s but {record.video} holds "
                f"{info.num_frames / info.fps:.2f} s; rebuild the chunks with the game's real duration"
            )
        return info

    def length(self, record: ChunkRecord) -> int:
        """Tokens of ``record``'s sample, ``len(self(record)["input_ids"])``, with no frame decoded.

        Raises:
            SampleError: when the chunk ends after the video does.
            VideoError: for a video whose container cannot be read.
        """
        info = self.probe(record)
        _, h, w = self.processor.grid_thw(self.temporal, info.height, info.width)
        per_second = h * w // (self.merge * self.merge)
        conversation = render_chunk(record, self.fmt, per_second, self.previous_text(record.previous))
        return len(tokenize_pieces(self.tokenizer, conversation)[0])

    def frames(self, record: ChunkRecord):
        """``(R * fps, H, W, 3)`` uint8: the first frame at or after every ``video_start + j / fps``."""
        from flash_vstream.video.reader import read_video

        info = self.probe(record)
        native, total = info.fps, info.num_frames
        count = round((record.end - record.start) * self.fmt.fps)
        times = [record.start + j / self.fmt.fps for j in range(count)]
        indices = [min(math.ceil(t * native - 1e-6), total - 1) for t in times]
        return read_video(record.video, indices=indices).frames

    def previous_text(self, text: str) -> str:
        """``text`` cut to its first ``text_sink`` and last ``text_window`` tokens (the builder already did)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        sink, window = self.fmt.text_sink, self.fmt.text_window
        if len(ids) <= sink + window:
            return text
        kept = ids[:sink] + ids[len(ids) - window :]
        return self.tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def encode(self, record: ChunkRecord) -> dict[str, torch.Tensor]:
        rounds = round(record.end - record.start)
        frames = self.frames(record)
        patches, grid = self.processor(frames)  # (R*h*w, c*tp*p*p), (1, 3) with t = R
        _, h, w = (int(v) for v in grid[0])
        per_second = h * w // (self.merge * self.merge)
        conversation = render_chunk(record, self.fmt, per_second, self.previous_text(record.previous))
        ids, labels = tokenize_pieces(self.tokenizer, conversation)
        input_ids, labels = torch.tensor(ids), torch.tensor(labels)
        is_video = input_ids == self.video_id
        if int(is_video.sum()) != rounds * per_second:
            raise ValueError(
                f"the tokenized sample holds {int(is_video.sum())} <|video_pad|> tokens, expected {rounds} x "
                f"{per_second}; the tokenizer must keep <|video_pad|> as one special token"
            )
        if len(input_ids) > self.max_length:
            raise SampleTooLongError(
                f"{record.where}: the chunk is {len(input_ids)} tokens, over data.max_length {self.max_length}; "
                "raise data.max_length, lower max_pixels or build shorter windows"
            )
        return {
            "input_ids": input_ids,
            "labels": labels,
            "mm_token_type_ids": is_video.long() * VIDEO_TOKEN_TYPE,
            "pixel_values_videos": patches,
            "video_grid_thw": torch.tensor([[1, h, w]] * rounds),
            "second_per_grid_ts": torch.full((rounds,), self.temporal / self.fmt.fps),
        }


class StreamingVLMCollator(FlashCollator):
    """StreamingVLM batches: the Flash keys (padded text, concatenated patches and grids) + ``second_per_grid_ts``."""

    def visual(self, samples):
        out = super().visual(samples)
        times = [s["second_per_grid_ts"] for s in samples if "second_per_grid_ts" in s]
        if times:
            out["second_per_grid_ts"] = torch.cat(times)
        return out


class StreamingVLMDataset(Dataset):
    """Chunk records encoded on access: ``dataset[i] == encoder(chunks[i])``.

    ``lengths`` is ``None`` (a chunk's length depends on its video's frame size): the Trainer samples at random.
    """

    lengths = None
    may_hold_text_only = False
    """Every chunk holds a video, so the trainer's text-only check need not read the whole file."""

    def __init__(self, chunks: StreamingChunks, encoder: StreamingVLMSampleEncoder):
        self.chunks, self.encoder = chunks, encoder

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.encoder(self.chunks[index])

    @property
    def samples(self):
        """The chunk records (each has one video), for the trainer's data checks."""
        return [self.chunks[i] for i in range(len(self.chunks))]


def build_streamingvlm_dataset(config, start) -> StreamingVLMDataset:
    """The dataset of ``config.data`` for a StreamingVLM start point (the trainer's per-family hook).

    ``data.data`` is a chunk JSONL file (``flash-vstream data build-streamingvlm``); ``data.media_root`` the
    folder its video paths start in (default: the file's folder); ``data.strict`` reads every record first.

    Raises:
        FileNotFoundError: for a missing file or media root.
        DataError: for a record that is not a chunk record (with ``strict``: the first one).
    """
    from flash_vstream.train.start import FAMILY_TRAINING

    data = config.data
    if str(data.data).endswith((".yaml", ".yml")):
        raise ValueError(
            f"data.data {data.data}: StreamingVLM trains on one chunk JSONL file (flash-vstream data "
            "build-streamingvlm writes it), not a mixture"
        )
    chunks = StreamingChunks(data.data, data.media_root or Path(data.data).parent)
    if data.strict:
        chunks.check_all()
    max_length = data.max_length or FAMILY_TRAINING["streamingvlm"].max_length
    model = start.model.get_base_model() if hasattr(start.model, "get_base_model") else start.model
    return StreamingVLMDataset(
        chunks, StreamingVLMSampleEncoder.for_model(model, start.tokenizer, max_length=max_length)
    )


def apply_trainable(model) -> None:
    """Set ``requires_grad`` from the config's ``*_trainable`` flags (missing ones get the published recipe's).

    The family is transformers' own class, which has no ``apply_trainable``; the flags live in its config (and so
    in the saved ``config.json``), and this is the one place they are applied.
    """
    config = model.config
    for name, default in TRAINABLE_DEFAULTS.items():
        if getattr(config, name, None) is None:
            setattr(config, name, default)
    model.model.visual.requires_grad_(config.vision_trainable)
    model.model.visual.merger.requires_grad_(config.merger_trainable)
    model.model.language_model.requires_grad_(config.decoder_trainable)
    model.lm_head.requires_grad_(config.decoder_trainable)
