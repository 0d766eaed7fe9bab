"""The web app of ``flash-vstream serve`` over HTTP (no browser): the page, the session limit and idle expiry,
the upload limit, bad frames, and a stream of the sample's frames answered exactly as a StreamSession answers."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from flash_vstream.cli import main as cli_main  # noqa: E402
from flash_vstream.inference.streaming import StreamSession  # noqa: E402
from flash_vstream.serve.app import ServeConfig, SessionPool, create_app  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny_star(tmp_path_factory):
    from flash_vstream import load_model

    out = tmp_path_factory.mktemp("tiny") / "star"
    assert cli_main(["make-tiny", "--variant", "star-vicuna", "--out", str(out)]) == 0
    return load_model(out)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def client_for(vs, clock=time.monotonic, **config) -> TestClient:
    config = ServeConfig(**config)
    return TestClient(create_app(vs, config, pool=SessionPool(vs, config, clock=clock)))


def png(frame: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


def test_page_and_info(tiny_star):
    with client_for(tiny_star, model_name="tiny", fps=2.0) as client:
        page = client.get("/")
        assert page.status_code == 200 and '<script src="app.js">' in page.text and 'id="question"' in page.text
        assert "captureTick" in client.get("/app.js").text
        assert client.get("/api/info").json() == {"model": "tiny", "family": "star", "fps": 2.0, "frame_side": 448,
                                                  "max_sessions": 4, "max_upload_mb": 8.0, "max_new_tokens": 32}


def test_session_limit_close_and_idle_expiry(tiny_star):
    clock = Clock()
    with client_for(tiny_star, clock, max_sessions=2, idle_seconds=60) as client:
        first, second = (client.post("/api/sessions").json()["id"] for _ in range(2))
        refused = client.post("/api/sessions")
        assert refused.status_code == 503
        assert "all 2 sessions of this server are in use (--max-sessions 2)" in refused.json()["detail"]
        assert client.post(f"/api/sessions/{first}/close").json() == {"closed": True}
        assert client.get(f"/api/sessions/{first}/timeline").status_code == 404
        third = client.post("/api/sessions").json()["id"]
        clock.now = 30.0
        client.get(f"/api/sessions/{third}/timeline")  # the third stays in use; the second goes idle
        clock.now = 61.0
        fourth = client.post("/api/sessions")
        assert fourth.status_code == 200  # the idle second session made room
        assert client.get(f"/api/sessions/{second}/timeline").status_code == 404
        assert client.get(f"/api/sessions/{third}/timeline").status_code == 200
        assert client.delete(f"/api/sessions/{third}").json() == {"closed": True}
        assert len(client.app.state.pool) == 1


def test_upload_limit_bad_frames_and_unknown_sessions(tiny_star):
    with client_for(tiny_star, max_upload_mb=0.01) as client:  # 10,485 bytes
        key = client.post("/api/sessions").json()["id"]
        big = client.post(f"/api/sessions/{key}/frames?t=0", content=b"\0" * 20_000)
        assert big.status_code == 413 and "limit of 10,485 bytes (--max-upload-mb)" in big.json()["detail"]
        chunked = client.post(f"/api/sessions/{key}/frames?t=0", content=iter([b"\0" * 8_000] * 3))  # no length
        assert chunked.status_code == 413
        bad = client.post(f"/api/sessions/{key}/frames?t=0", content=b"not an image")
        assert bad.status_code == 400 and "not a readable JPEG or PNG" in bad.json()["detail"]
        early = client.post(f"/api/sessions/{key}/ask", json={"question": "what?"})
        assert early.status_code == 409 and "nothing to answer from yet" in early.json()["detail"]
        assert client.post(f"/api/sessions/{key}/ask", json={"question": " "}).status_code == 422
        frame = np.zeros((24, 32, 3), np.uint8)
        assert client.post(f"/api/sessions/{key}/frames?t=2", content=png(frame)).status_code == 200
        back = client.post(f"/api/sessions/{key}/frames?t=1", content=png(frame))
        assert back.status_code == 409 and "must not go backwards" in back.json()["detail"]
        assert client.get("/api/sessions/nope/timeline").status_code == 404
        assert client.get(f"/api/sessions/{key}/thumbnails/0.png").status_code == 404  # no timeline read yet


def test_frames_stream_and_answers_like_a_session(tiny_star):
    from flash_vstream.video import read_video

    clip = read_video(SAMPLE, sampler=tiny_star.sampler)
    with client_for(tiny_star, max_new_tokens=6) as client:
        key = client.post("/api/sessions").json()["id"]
        for frame, seconds in zip(clip.frames, clip.timestamps, strict=True):
            assert client.post(f"/api/sessions/{key}/frames?t={seconds}", content=png(frame)).status_code == 200
        client.app.state.pool.get(key).session.drain()
        answer = client.post(f"/api/sessions/{key}/ask", json={"question": "What moves?"}).json()
        now = client.get(f"/api/sessions/{key}/timeline").json()
        retrieved = answer["timeline"]["retrieved"][0]["thumbnail"]
        picture = client.get(f"/api/sessions/{key}/thumbnails/{retrieved}.png")
        assert client.post(f"/api/sessions/{key}/reset").json() == {"id": key}
        assert client.get(f"/api/sessions/{key}/timeline").json()["timeline"] is None
    with StreamSession(tiny_star, max_new_tokens=6) as session:
        session.push_frames(clip.frames, clip.timestamps)
        session.drain()
        expected = session.ask("What moves?")
    assert answer["answer"] == expected.text and answer["frames_seen"] == 7
    assert answer["stream_time"] == pytest.approx(clip.timestamps[-1], abs=1e-3)
    assert answer["timeline"] == expected.timeline.to_dict() == now["timeline"]
    assert 0 < answer["first_token_seconds"] <= answer["total_seconds"]
    assert now["frames_seen"] == 7 and now["frames_dropped"] == 0
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    assert np.asarray(Image.open(io.BytesIO(picture.content))).shape == (48, 64, 3)


def test_serve_command_refuses_bad_settings_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert cli_main(["serve", "--model", missing, "--max-sessions", "0"]) == 2
    assert "--max-sessions must be a positive integer" in capsys.readouterr().err
    assert cli_main(["serve", "--model", missing, "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert cli_main(["serve", "--model", missing]) == 2  # the model is loaded last
    assert "does not exist" in capsys.readouterr().err


def test_flash_family_streams_through_the_app(tmp_path):
    from flash_vstream import load_model
    from flash_vstream.video import read_video

    out = tmp_path / "flash"
    assert cli_main(["make-tiny", "--variant", "flash-qwen2vl", "--out", str(out)]) == 0
    vs = load_model(out)
    clip = read_video(SAMPLE, sampler=vs.sampler)
    with client_for(vs, max_new_tokens=4) as client:
        key = client.post("/api/sessions").json()["id"]
        for frame, seconds in zip(clip.frames, clip.timestamps, strict=True):
            assert client.post(f"/api/sessions/{key}/frames?t={seconds}", content=png(frame)).status_code == 200
        client.app.state.pool.get(key).session.drain()
        answer = client.post(f"/api/sessions/{key}/ask", json={"question": "What moves?"}).json()
    with StreamSession(vs, max_new_tokens=4) as session:
        session.push_frames(clip.frames, clip.timestamps)
        session.drain()
        expected = session.ask("What moves?")
    # 7 frames: 3 whole temporal patches are in memory; the 7th waits for its partner.
    assert answer["answer"] == expected.text and answer["frames_seen"] == 6
    timeline = answer["timeline"]
    assert timeline == expected.timeline.to_dict() and timeline["family"] == "flash" and timeline["recent"] == []
    times = [round(float(t), 3) for t in clip.timestamps]
    assert [c["seconds"] for c in timeline["clusters"]] == [times[0], times[2], times[4]]
    assert [f["frame"] for f in timeline["retrieved"]] == [0, 2, 4]


def test_serve_without_a_model_serves_the_demo_model(monkeypatch, capsys):
    import uvicorn

    from flash_vstream.data.demo import describe_default

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert cli_main(["serve", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert describe_default() in err and "on http://127.0.0.1:8123/" in err
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert TestClient(served["app"]).get("/").status_code == 200
