"""Factories for the evaluation tests: tiny videos and frame folders, synthetic benchmarks in every layout.

Imported by the test modules; the pytest fixtures live in conftest.py.

Every synthetic benchmark has 10 questions; question ``i`` has the stem ``Q{i}: what happens?``, options
``opt{i}{k}`` and the answer ``i % n_options``, so expected accuracies can be computed by hand.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

LETTERS = "ABCDE"
N = 10


def make_video(path: Path, frames: int = 8, fps: int = 4, size: int = 64) -> Path:
    """Write a tiny MPEG-4 video (frame ``t`` gray level ``10 * t``); decord2 cannot decode widths below 64."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.full((size, size, 3), 10 * t, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_frames(folder: Path, frames: int = 6, size: int = 16, first: int = 1) -> Path:
    """Write a folder of PNG frames numbered from ``first``."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        Image.fromarray(np.full((size, size, 3), 20 * t, dtype=np.uint8)).save(folder / f"{t + first:05d}.png")
    return folder


def fake_checkpoint(folder: Path, model_type: str = "flash_vstream_qwen2_vl", extra: dict | None = None) -> Path:
    """A folder with only a ``config.json``: enough for a run's identity when no item needs the model."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, **(extra or {})}), encoding="utf-8")
    return folder


def link_video(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(source, target)


def stem(i: int) -> str:
    return f"Q{i}: what happens?"


def options(i: int, n: int = 4) -> list[str]:
    return [f"opt{i}{k}" for k in range(n)]


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def paren(i: int, n: int = 4) -> str:
    return "\n".join(f"({LETTERS[k]}) {o}" for k, o in enumerate(options(i, n)))


# --- synthetic benchmarks, one writer per (benchmark, layout); each returns the data root -------------------


def egoschema_official(root: Path, video: Path) -> Path:
    rows = [{"q_uid": f"uid{i}", "google_drive_id": "x", "question": stem(i),
             **{f"option {k}": o for k, o in enumerate(options(i, 5))}} for i in range(N)]
    write_json(root / "questions.json", rows)
    write_json(root / "subset_answers.json", {f"uid{i}": i % 5 for i in range(6)})
    for i in range(N):
        link_video(video, root / "videos" / f"uid{i}.mp4")
    return root


def egoschema_lmms_rows() -> list[dict]:
    return [{"question_idx": str(i), "video_idx": f"uid{i}", "question": stem(i),
             "option": [f"{LETTERS[k]}. {o}" for k, o in enumerate(options(i, 5))],
             "answer": str(i % 5) if i < 6 else None} for i in range(N)]


def egoschema_flash(root: Path, video: Path) -> Path:
    rows = [{"video_id": f"uid{i}", "id": i, "duration": 180.0, "answer": i % 5,
             "question": "Select the best answer to the following question based on the egocentric video.\n"
                         f"Question: {stem(i)}\n{paren(i, 5)}\nOnly give the best option."} for i in range(N)]
    write_json(root / "test_qa.json", rows)
    for i in range(N):
        link_video(video, root / "videos" / f"uid{i}.mp4")
    return root


MLVU_TASKS = ["plotQA"] * 5 + ["needle"] * 5


def mlvu_official(root: Path, video: Path) -> Path:
    for task_file, task, ids in (("1_plotQA", "plotQA", range(5)), ("2_needle", "needle", range(5, 10))):
        rows = [{"video": f"v{i}.mp4", "duration": 2, "question": stem(i), "candidates": options(i),
                 "answer": options(i)[i % 4], "question_type": task} for i in ids]
        write_json(root / "json" / f"{task_file}.json", rows)
        for i in ids:
            link_video(video, root / "video" / task_file / f"v{i}.mp4")
    write_json(root / "json" / "8_sub_scene.json", [{"video": "x.mp4", "question": "describe"}])
    return root


def mlvu_lmms_rows() -> list[dict]:
    return [{"video_name": f"{MLVU_TASKS[i]}/v{i}.mp4", "question": f"{stem(i)}\n{paren(i)}",
             "candidates": options(i), "answer": LETTERS[i % 4], "task_type": MLVU_TASKS[i]} for i in range(N)]


def mlvu_flash(root: Path, video: Path) -> Path:
    rows = [{"id": i, "video_id": f"v{i}.mp4", "type": MLVU_TASKS[i], "answer": i % 4,
             "question": f"{stem(i)}\nOptions:\n{paren(i)}\n"} for i in range(N)]
    write_json(root / "test_qa.json", rows)
    for i in range(N):
        link_video(video, root / "videos" / f"v{i}.mp4")
    return root


LVBENCH_TYPES = [["reasoning"], ["reasoning", "summarization"], ["summarization"]]


def lvbench_official(root: Path, video: Path) -> Path:
    lines = []
    for key, ids in (("vidA", range(5)), ("vidB", range(5, 10))):
        qa = [{"uid": str(i), "question": f"{stem(i)}\n{paren(i)}", "answer": LETTERS[i % 4],
               "question_type": LVBENCH_TYPES[i % 3], "time_reference": "00:01-00:02"} for i in ids]
        lines.append({"key": key, "type": "cartoon" if key == "vidA" else "sport",
                      "video_info": {"duration_minutes": 0.1}, "qa": qa})
        link_video(video, root / "videos" / f"{key}.mp4")
    write_jsonl(root / "video_info.meta.jsonl", lines)
    return root


def lvbench_lmms_rows() -> list[dict]:
    return [{"uid": str(i), "video_path": f"vid{'AB'[i // 5]}.mp4", "question": f"{stem(i)}\n{paren(i)}",
             "answer": LETTERS[i % 4], "question_type": LVBENCH_TYPES[i % 3]} for i in range(N)]


MVBENCH_LAYOUT = (("action_sequence", range(4)), ("object_shuffle", range(4, 7)), ("episodic_reasoning", range(7, 10)))


def mvbench_official(root: Path, video: Path) -> Path:
    for task, ids in MVBENCH_LAYOUT:
        rows = []
        for i in ids:
            row = {"video": f"m{i}.mp4", "question": stem(i), "candidates": options(i), "answer": options(i)[i % 4]}
            if task == "action_sequence":
                row |= {"start": 0.5, "end": 1.5}
                link_video(video, root / "video" / "star" / "Charades_segment" / f"m{i}.mp4")
            elif task == "object_shuffle":
                link_video(video, root / "video" / "perception" / "videos" / f"m{i}.mp4")
            else:
                row |= {"video": f"ep{i}", "start": 0.0, "end": 1.0}
                make_frames(root / "video" / "tvqa" / "frames_fps3_hq" / f"ep{i}")
            rows.append(row)
        write_json(root / "json" / f"{task}.json", rows)
    return root


VIDEOMME_DURATIONS = ["short"] * 4 + ["medium"] * 3 + ["long"] * 3
SRT = ('1\n00:00:00,000 --> 00:00:00,600\n<font color="white" size=".72c">Hello there</font>\n\n'
       '2\n00:00:05,000 --> 00:00:06,000\n<font color="white" size=".72c">Never shown</font>\n\n')


def videomme_lmms_rows() -> list[dict]:
    return [{"video_id": f"{i // 3:03d}", "duration": VIDEOMME_DURATIONS[i], "domain": "Knowledge",
             "sub_category": "History", "url": "u", "videoID": f"yt{i // 3}", "question_id": f"{i // 3:03d}-{i}",
             "task_type": "Counting Problem" if i % 2 else "OCR", "question": stem(i),
             "options": [f"{LETTERS[k]}. {o}" for k, o in enumerate(options(i))], "answer": LETTERS[i % 4]}
            for i in range(N)]


def videomme_media(root: Path, video: Path) -> Path:
    for v in range(4):
        link_video(video, root / "data" / f"yt{v}.mp4")
    (root / "subtitle").mkdir(parents=True, exist_ok=True)
    (root / "subtitle" / "yt0.srt").write_text(SRT, encoding="utf-8")
    return root


def vstream_rows(realtime: bool) -> list[dict]:
    rows = []
    for i in range(N):
        row = {"video_id": f"{i // 5:06d}", "question": f"What did I do {i}?", "id": f"q{i}",
               "answer": f"thing {i}", "answer_type": "object" if i % 2 else "action", "duration": 2}
        if realtime:
            row |= {"start_time": 100 + i, "end_time": 101 + i / 10}
        rows.append(row)
    return rows


def vstream_root(root: Path, video: Path) -> Path:
    write_json(root / "vstream" / "test_qa_ego4d.json", vstream_rows(False))
    write_json(root / "vstream-realtime" / "test_qa_ego4d.json", vstream_rows(True))
    write_json(root / "vstream-realtime" / "rvs_ego.json",
               [{"video_id": f"{v:06d}", "original_video": "x", "start_time": 100, "end_time": 102} for v in (0, 1)])
    for v in (0, 1):
        link_video(video, root / "vstream" / "ego4d_videos" / f"{v:06d}.mp4")
        make_frames(root / "vstream-realtime" / "ego4d_frames_online" / f"{v:06d}", frames=3, first=0)
    return root


class FakeModel:
    """Scripted model: replies by the question number found in the prompt, and records every call."""

    def __init__(self, replies: dict[int, str] | None = None, default: str = "A") -> None:
        self.replies = replies or {}
        self.default = default
        self.calls: list[dict] = []

    def answer(self, question, *, frames=None, video=None, timestamps=None, assistant_prefix="",
               max_new_tokens=16):
        self.calls.append({"question": question, "frames": None if frames is None else frames.shape,
                           "timestamps": timestamps, "prefix": assistant_prefix, "video": video})
        for number, reply in self.replies.items():
            if f"Q{number}:" in question or f"do {number}?" in question:
                return reply
        return self.default


class SlowModel(FakeModel):
    """`FakeModel` that takes ``delay`` seconds per answer (a run to kill part way); same class when resumed."""

    def __init__(self, replies: dict[int, str] | None = None, default: str = "A", delay: float = 0.0) -> None:
        super().__init__(replies, default)
        self.delay = delay

    def answer(self, question, **kwargs):
        time.sleep(self.delay)
        return super().answer(question, **kwargs)


def lvbench_flash(root: Path, video: Path) -> Path:
    rows = [{"id": i, "video_id": f"vid{'AB'[i // 5]}", "question": f"{stem(i)}\n{paren(i)}", "answer": i % 4,
             "type": "cartoon", "question_type": LVBENCH_TYPES[i % 3], "time_reference": "00:01-00:02"}
            for i in range(N)]
    write_json(root / "test_qa.json", rows)
    for key in "AB":
        link_video(video, root / "videos" / f"vid{key}.mp4")
    return root


def mvbench_flash(root: Path, video: Path) -> Path:
    rows = [{"id": i, "video_id": f"sta/sta_video_segment/clip{i}", "task_type": "action_localization" if i < 5
             else "scene_transition", "answer": i % 4,
             "question": f"Question: {stem(i)}\nOptions:\n{paren(i)}"} for i in range(N)]
    write_json(root / "test_qa.json", rows)
    for i in range(N):
        link_video(video, root / "videos" / "sta" / "sta_video_segment" / f"clip{i}.mp4")
    return root


def videomme_flash(root: Path, video: Path) -> Path:
    rows = [{"id": i, "video_id": f"yt{i // 3}", "duration": VIDEOMME_DURATIONS[i], "domain": "Knowledge",
             "sub_category": "History", "task_type": "OCR", "answer": i % 4,
             "question": f"{stem(i)}\n" + "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(options(i)))}
            for i in range(N)]
    write_json(root / "test_qa.json", rows)
    return videomme_media(root, video)


def videomme_official(root: Path, video: Path) -> Path:
    rows = videomme_lmms_rows()
    grouped = [{"video_id": f"{v:03d}", "duration_category": rows[3 * v]["duration"], "video_category": "Knowledge",
                "video_subcategory": "History", "videoID": f"yt{v}",
                "questions": [{"question_id": r["question_id"], "task_type": r["task_type"], "question": r["question"],
                               "options": r["options"], "answer": r["answer"]} for r in rows[3 * v: 3 * v + 3]]}
               for v in range(4)]
    write_json(root / "output_test_template.json", grouped)
    return videomme_media(root, video)


class FakeChatServer:
    """An OpenAI-compatible ``POST /v1/chat/completions`` endpoint on 127.0.0.1 for judge tests.

    ``respond(body, headers)`` returns ``(status, payload bytes)``, or ``(status, payload bytes, response
    headers)``, for each request; every request is kept in ``requests`` as ``{"path", "headers", "json"}``.
    """

    def __init__(self, respond) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                status, payload, *extra = respond(body, self.headers)
                self.send_response(status)
                for name, value in (extra[0] if extra else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def chat_reply(content: str) -> bytes:
    """The payload of a chat completion whose one message says ``content``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
