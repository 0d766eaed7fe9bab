"""The web app of ``flash-vstream serve``: a FastAPI app with one :class:`StreamSession` per browser tab.

The page (``static/index.html``) plays a video file chosen in the browser, or the webcam, and sends frames of it
to the server at the configured rate (a canvas capture, JPEG-encoded, ``fps`` frames per second of video time);
nothing else of the file leaves the browser. Each tab opens its own session; questions are answered from that
session's memory as it is at that moment, and the page polls the memory timeline.

HTTP API (JSON unless noted; errors are ``{"detail": message}``):

| route | what |
|---|---|
| ``GET /`` | the page |
| ``GET /api/info`` | model, family, limits, frame rate and frame size the page should send |
| ``POST /api/sessions`` | a new session ``{"id"}``; 503 when ``max_sessions`` are open |
| ``POST /api/sessions/{id}/frames?t=SECONDS`` | one JPEG/PNG frame (body); 413 over ``max_upload_mb`` |
| ``POST /api/sessions/{id}/ask`` | ``{"question"}`` -> the answer with its stream time, latency and timeline |
| ``GET /api/sessions/{id}/timeline`` | the memory timeline now and the session's counters |
| ``GET /api/sessions/{id}/thumbnails/{frame}.png`` | a thumbnail named by the last timeline |
| ``POST /api/sessions/{id}/reset`` | a new stream in the same session (a new video) |
| ``POST /api/sessions/{id}/close``, ``DELETE /api/sessions/{id}`` | frees the session (a closed tab) |

A session unused for ``idle_seconds`` is closed when a new one is asked for, so tabs that vanished without
closing do not hold their slots for ever.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from flash_vstream.inference.streaming import StreamError, StreamSession

__all__ = ["ServeConfig", "SessionPool", "create_app"]

MAX_FRAME_PIXELS = 4096 * 4096  # a decoded frame above this is refused before its pixels are decoded


@dataclass
class ServeConfig:
    """Limits and stream settings of the web app.

    Attributes:
        max_sessions: most sessions (browser tabs) open at once.
        max_upload_mb: most megabytes of one uploaded frame.
        fps: frames per second of video time the page sends (the rate the memory is fed).
        frame_side: the longer side, in pixels, of the frames the page sends.
        max_new_tokens: generation budget of an answer.
        idle_seconds: a session unused this long is closed when a new one is asked for.
        model_name: shown on the page.
        session_options: further ``StreamSession`` arguments (``queue_frames``, ``drop_policy``, ...).
    """

    max_sessions: int = 4
    max_upload_mb: float = 8.0
    fps: float = 1.0
    frame_side: int = 448
    max_new_tokens: int = 32
    idle_seconds: float = 600.0
    model_name: str = ""
    session_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("max_sessions", "frame_side", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("max_upload_mb", "fps", "idle_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(self, name)!r}")


@dataclass
class _Tab:
    """One browser tab's session, the thumbnails its last timeline named, and when it was last used."""

    session: StreamSession
    used: float
    thumbnails: dict = field(default_factory=dict)  # frame -> Thumbnail, from the last timeline
    previous: dict = field(default_factory=dict)  # and the one before (the page may still be fetching those)


class SessionPool:
    """The open sessions, at most ``config.max_sessions``; thread-safe.

    Args:
        vs: the loaded model every session streams into.
        config: the limits.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, vs, config: ServeConfig, clock=time.monotonic):
        self.vs, self.config, self.clock = vs, config, clock
        self._tabs: dict[str, _Tab] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tabs)

    def open(self) -> str:
        """A new session's id.

        Raises:
            HTTPException: 503 when every slot is in use by a session used within ``idle_seconds``.
        """
        now = self.clock()
        with self._lock:
            idle = [key for key, tab in self._tabs.items() if now - tab.used > self.config.idle_seconds]
            stale = [self._tabs.pop(key) for key in idle]
            full = len(self._tabs) >= self.config.max_sessions
        for tab in stale:
            tab.session.close()
        if full:
            n = self.config.max_sessions
            raise HTTPException(503, f"all {n} session{'s' if n > 1 else ''} of this server are in use "
                                     f"(--max-sessions {n}): close another tab, or restart the server with a larger "
                                     "--max-sessions")
        session = StreamSession(self.vs, max_new_tokens=self.config.max_new_tokens, **self.config.session_options)
        key = secrets.token_urlsafe(12)
        with self._lock:
            self._tabs[key] = _Tab(session, now)
        return key

    def get(self, key: str) -> _Tab:
        """The tab of ``key``, marked used now.

        Raises:
            HTTPException: 404 for an unknown or closed session.
        """
        with self._lock:
            tab = self._tabs.get(key)
            if tab is None:
                raise HTTPException(404, f"no open session {key!r}: it was closed or expired; reload the page")
            tab.used = self.clock()
            return tab

    def close(self, key: str) -> bool:
        """Close a session; False when it was not open."""
        with self._lock:
            tab = self._tabs.pop(key, None)
        if tab is not None:
            tab.session.close()
        return tab is not None

    def close_all(self) -> None:
        with self._lock:
            tabs, self._tabs = list(self._tabs.values()), {}
        for tab in tabs:
            tab.session.close()


class Question(BaseModel):
    question: str


def _decode_frame(data: bytes) -> np.ndarray:
    """A JPEG/PNG upload as ``(H, W, 3)`` uint8 RGB."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.size[0] * image.size[1] > MAX_FRAME_PIXELS:
            raise HTTPException(413, f"the frame is {image.size[0]}x{image.size[1]} pixels; send at most "
                                     f"{MAX_FRAME_PIXELS} pixels")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise HTTPException(400, f"the frame is not a readable JPEG or PNG image ({err})") from None


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    message = f"the upload exceeds this server's limit of {limit:,} bytes (--max-upload-mb)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, message)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, message)
    return bytes(body)


def _counters(session: StreamSession) -> dict:
    stats = session.stats()
    return {"frames_seen": stats.frames_seen, "frames_queued": stats.frames_queued,
            "frames_dropped": stats.frames_dropped, "stream_time": round(stats.stream_time, 3),
            "ingest_fps": round(stats.ingest_fps, 2)}


def _timeline_json(tab: _Tab, timeline) -> dict | None:
    """The timeline as JSON; remembers its thumbnails so the page can fetch them by frame."""
    if timeline is None:
        return None
    frames = [*timeline.retrieved, *timeline.recent]
    tab.previous, tab.thumbnails = tab.thumbnails, {f.thumbnail.frame: f.thumbnail for f in frames
                                                    if f.thumbnail is not None}
    return timeline.to_dict()


def _session_call(call):
    """Run a session call, turning its errors into HTTP answers."""
    try:
        return call()
    except ValueError as err:
        raise HTTPException(409, str(err)) from None
    except StreamError as err:
        raise HTTPException(500, f"{err}; start a new stream (choose the video again)") from None


def create_app(vs, config: ServeConfig | None = None, *, pool: SessionPool | None = None) -> FastAPI:
    """The FastAPI app serving the page and the API above, for the loaded model ``vs``.

    Args:
        vs: a loaded model (``flash_vstream.load_model``).
        config: limits and stream settings (defaults: :class:`ServeConfig`).
        pool: the session pool (default: a new one; tests pass their own).
    """
    config = config or ServeConfig()
    pool = SessionPool(vs, config) if pool is None else pool
    app = FastAPI(title="flash-vstream", docs_url=None, redoc_url=None)
    app.state.pool = pool
    app.router.add_event_handler("shutdown", pool.close_all)
    static = files("flash_vstream.serve") / "static"
    limit = int(config.max_upload_mb * 2**20)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return static.joinpath("index.html").read_text(encoding="utf-8")

    @app.get("/app.js")
    def script():
        return Response(static.joinpath("app.js").read_text(encoding="utf-8"), media_type="text/javascript")

    @app.get("/api/info")
    def info():
        return {"model": config.model_name, "family": vs.family, "fps": config.fps, "frame_side": config.frame_side,
                "max_sessions": config.max_sessions, "max_upload_mb": config.max_upload_mb,
                "max_new_tokens": config.max_new_tokens}

    @app.post("/api/sessions")
    def open_session():
        return {"id": pool.open()}

    @app.post("/api/sessions/{key}/frames")
    async def frames(key: str, request: Request, t: float):
        tab = pool.get(key)
        frame = _decode_frame(await _read_capped(request, limit))
        _session_call(lambda: tab.session.push_frames(frame, t))  # copies the frame and returns at once
        return _counters(tab.session)

    @app.post("/api/sessions/{key}/ask")
    def ask(key: str, body: Question):
        tab = pool.get(key)
        if not body.question.strip():
            raise HTTPException(422, "the question is empty; type a question")
        answer = _session_call(lambda: tab.session.ask(body.question))
        return {"question": answer.question, "answer": answer.text, "stream_time": round(answer.stream_time, 3),
                "frames_seen": answer.num_frames, "frames_dropped": answer.frames_dropped,
                "first_token_seconds": round(answer.first_token_seconds, 4),
                "total_seconds": round(answer.total_seconds, 4), "timeline": _timeline_json(tab, answer.timeline)}

    @app.get("/api/sessions/{key}/timeline")
    def timeline(key: str):
        tab = pool.get(key)
        return {"timeline": _timeline_json(tab, _session_call(tab.session.timeline)), **_counters(tab.session)}

    @app.get("/api/sessions/{key}/thumbnails/{frame}.png")
    def thumbnail(key: str, frame: int):
        tab = pool.get(key)
        thumb = tab.thumbnails.get(frame) or tab.previous.get(frame)
        if thumb is None:
            raise HTTPException(404, f"frame {frame} has no thumbnail in this session's last timeline")
        out = io.BytesIO()
        Image.fromarray(thumb.image).save(out, format="PNG")
        return Response(out.getvalue(), media_type="image/png")

    @app.post("/api/sessions/{key}/reset")
    def reset(key: str):
        tab = pool.get(key)
        _session_call(tab.session.reset)
        tab.thumbnails, tab.previous = {}, {}
        return {"id": key}

    @app.post("/api/sessions/{key}/close")
    @app.delete("/api/sessions/{key}")
    def close(key: str):
        return {"closed": pool.close(key)}

    return app
