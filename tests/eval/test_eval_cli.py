"""The ``eval`` command through ``flash-vstream``'s own ``main``: summaries, warnings, model flags, one-line errors.

Runs that never need a model (every video missing or broken, or an error before the first item) use a folder
holding only a ``config.json``; one run uses a real tiny Flash checkpoint end to end (the others are ``slow``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from evalfixtures import (
    FakeChatServer,
    chat_reply,
    egoschema_official,
    fake_checkpoint,
    mlvu_flash,
    videomme_lmms_rows,
    videomme_media,
    vstream_rows,
    write_json,
    write_jsonl,
)

from flash_vstream.cli import main
from flash_vstream_eval.model_api import weights_fingerprint

KEY = "sk-test-SECRET-0123456789"
JUDGE_ENV = ("FLASH_VSTREAM_JUDGE_BASE_URL", "OPENAI_BASE_URL", "FLASH_VSTREAM_JUDGE_MODEL",
             "FLASH_VSTREAM_JUDGE_API_KEY", "OPENAI_API_KEY")


def flash_letter(reply: str, item_id: str, n_options: int) -> str:
    """The flash-vstream profile's reading, restated: the first A-E in the reply, else sha256(id) mod n."""
    found = re.search("[A-E]", reply)
    if found:
        return found.group(0)
    return "ABCDEFGH"[int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big") % n_options]


def run_cli(argv, capsys):
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_prints_a_summary_and_writes_results(tmp_path, tiny_video, capsys):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "prediction": "ABCD"[i % 4] if i < 3 else "D"}
                                       for i in range(9)])  # question 9 has no prediction
    argv = ["score", "--benchmark", "mlvu", "--annotations", str(root / "test_qa.json"),
            "--predictions", str(tmp_path / "p.jsonl"), "--profile", "lmms-eval", "--out", str(tmp_path / "r")]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and err == ""
    # 0, 1, 2 right, and 3 and 7 whose answer is D: 5 of the 9 answered; MLVU's task mean over plotQA 4/5, needle 1/4
    assert out.splitlines() == ["mlvu [lmms-eval]: accuracy 55.6, task_mean 52.5 (n=9, missing 1)",
                                f"results: {tmp_path / 'r' / 'results.json'}"]
    code, out, _ = run_cli([*argv, "--json"], capsys)
    assert code == 0 and json.loads(out) == json.loads((tmp_path / "r" / "results.json").read_text())


def test_bad_input_gives_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "run", "--benchmark", "nope", "--model", "m", "--data", ".", "--out", "o"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "run", "--benchmark", "mlvu", "--model", "m", "--data", ".", "--out", "o", "--limit", "0"])
    assert "expected a positive integer" in capsys.readouterr().err
    code, out, err = run_cli(["score", "--benchmark", "mlvu", "--annotations", str(tmp_path / "missing.json"),
                              "--predictions", str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and out == ""
    assert err == f"error: annotations {tmp_path / 'missing.json'} do not exist; pass an existing file or folder " \
                  "as --annotations.\n"


def test_vstream_score_needs_judge_key(tmp_path, monkeypatch, capsys):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    ann = write_json(tmp_path / "vstream" / "test_qa_ego4d.json",
                     [{"video_id": "1", "question": "q?", "id": "a", "answer": "x"}])
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prediction": "x"}])
    code, _, err = run_cli(["score", "--benchmark", "vs_ego", "--annotations", str(ann),
                            "--predictions", str(tmp_path / "p.jsonl"), "--judge-model", "m"], capsys)
    assert code == 2 and err.startswith("error: no judge API key") and err.count("\n") == 1


def test_score_skips_a_malformed_record_and_strict_names_it(tmp_path, capsys):
    rows = [{"id": i, "video_id": f"v{i}", "question": f"Q{i}?\n(A) yes\n(B) no", "answer": i % 2} for i in range(8)]
    rows[3] = {"id": 3, "video_id": "v3", "question": "Q3?\n(A) the only option", "answer": 0}
    rows[5] = {"id": 5, "video_id": "v5", "question": "Q5?\n(A) yes\n(B) no"}  # no answer
    ann = write_json(tmp_path / "mlvu" / "test_qa.json", rows)
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "prediction": "A"} for i in range(8)])
    argv = ["score", "--benchmark", "mlvu", "--annotations", str(ann), "--predictions", str(tmp_path / "p.jsonl")]
    code, out, err = run_cli(argv, capsys)
    # Scored: 0 1 2 3 4 6 7; "A" is right for the even ones and for the one-option question 3 -> 5 of 7.
    assert code == 0
    assert out == "mlvu [flash-vstream]: accuracy 71.4 (n=7, malformed records 1)\n"
    line = [n for n, text in enumerate(ann.read_text().splitlines(), start=1) if text == ' {'][5]
    assert err == (f"warning: skipped malformed record {ann} line {line} (record 5) (id 5): missing field(s) "
                   "['answer']; present: ['id', 'question', 'video_id']. Check that the file matches the "
                   "benchmark's layout (docs/eval.md).\n")
    code, out, err = run_cli([*argv, "--strict"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {ann} line {line} (record 5): missing field(s) ['answer']") and err.count("\n") == 1


class JudgingServer(FakeChatServer):
    """An OpenAI-compatible endpoint on 127.0.0.1 that says "yes" (score 5) when prediction == reference."""

    def __init__(self) -> None:
        super().__init__(self._respond)

    @staticmethod
    def _respond(body, headers):
        user = body["messages"][-1]["content"]
        reference = re.search(r"Reference answer: (.*)\n", user).group(1)
        predicted = re.search(r"Predicted answer: (.*)\n", user).group(1)
        verdict = "{'pred': 'yes', 'score': 5}" if reference == predicted else "{'pred': 'no', 'score': 1}"
        return 200, chat_reply(verdict)


def vstream_qa_download(root: Path) -> Path:
    """The ``IVGSZ/VStream-QA`` folder as downloaded: annotations and clip definitions, no media needed to score."""
    write_json(root / "vstream" / "test_qa_ego4d.json", vstream_rows(False))
    write_json(root / "vstream-realtime" / "test_qa_ego4d.json", vstream_rows(True))
    write_json(root / "vstream-realtime" / "rvs_ego.json",
               [{"video_id": f"{v:06d}", "original_video": "x", "start_time": 100, "end_time": 102} for v in (0, 1)])
    return root


def test_readme_vstream_score_command_with_a_fake_judge(tmp_path, monkeypatch, capsys):
    for name in JUDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    data = vstream_qa_download(tmp_path / "data" / "VStream-QA")
    runs = tmp_path / "runs" / "rvs"
    # Questions 0, 2, 4, 6, 8 answered exactly; "thing" answers are "object" for odd ids, "action" for even.
    write_jsonl(runs / "predictions.jsonl",
                [{"id": f"q{i}", "prediction": f"thing {i}" if i % 2 == 0 else "no idea"} for i in range(10)])
    judge = JudgingServer()
    try:
        monkeypatch.setenv("FLASH_VSTREAM_JUDGE_API_KEY", KEY)
        monkeypatch.setenv("FLASH_VSTREAM_JUDGE_BASE_URL", judge.base_url)
        # The README's command, with its paths under tmp_path.
        argv = ["score", "--benchmark", "rvs_ego", "--annotations", str(data), "--predictions",
                str(runs / "predictions.jsonl"), "--judge-model", "gpt-3.5-turbo-0125",
                "--judge-cache", str(runs / "verdicts.jsonl")]
        code, out, err = run_cli(argv, capsys)
        assert (code, err) == (0, "")
        assert out == "rvs_ego [flash-vstream]: accuracy 50.0, score 3.00 (n=10)\n"
        assert len(judge.requests) == 10
        assert {r["path"] for r in judge.requests} == {"/v1/chat/completions"}
        assert {r["json"]["model"] for r in judge.requests} == {"gpt-3.5-turbo-0125"}
        assert {r["headers"]["Authorization"] for r in judge.requests} == {f"Bearer {KEY}"}
        assert "Question: What did I do 3?\n" in judge.requests[3]["json"]["messages"][-1]["content"]
        cache = (runs / "verdicts.jsonl").read_text()
        assert len(cache.splitlines()) == 10 and KEY not in cache
        # Scoring again is answered from the verdict cache: no request, same numbers.
        code, again, _ = run_cli([*argv, "--json"], capsys)
        assert code == 0 and len(judge.requests) == 10
        results = json.loads(again)
        assert results["metrics"] == {"accuracy": 50.0, "score": 3.0}
        assert results["breakdowns"]["answer_type"]["action"] == {"accuracy": 100.0, "n": 5, "score": 5.0}
    finally:
        judge.close()


UNREACHABLE = """
import sys, time
time.sleep = lambda seconds: None  # the retries' backoff, skipped to keep the test fast
from flash_vstream.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_unreachable_judge_is_one_line_on_stderr(tmp_path):
    data = vstream_qa_download(tmp_path / "VStream-QA")
    write_jsonl(tmp_path / "p.jsonl", [{"id": f"q{i}", "prediction": "x"} for i in range(10)])
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    env = {k: v for k, v in __import__("os").environ.items() if k not in JUDGE_ENV}
    env.update(FLASH_VSTREAM_JUDGE_API_KEY=KEY, FLASH_VSTREAM_JUDGE_BASE_URL=url)
    argv = ["eval", "score", "--benchmark", "vs_ego", "--annotations", str(data), "--predictions",
            str(tmp_path / "p.jsonl"), "--judge-model", "m"]
    done = subprocess.run([sys.executable, "-c", UNREACHABLE, *argv], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot reach the judge at {url} (")
    assert "after 6 attempts; check --judge-base-url / FLASH_VSTREAM_JUDGE_BASE_URL" in done.stderr
    assert KEY not in done.stderr and "Traceback" not in done.stderr


def test_a_broken_video_shared_by_ten_questions_is_one_warning(tmp_path, tiny_video, capsys):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    rows = json.loads((root / "test_qa.json").read_text())
    write_json(root / "test_qa.json", [{**row, "video_id": "shared.mp4"} for row in rows])
    (root / "videos" / "shared.mp4").write_bytes(b"not a video")
    argv = ["run", "--benchmark", "mlvu", "--model", str(fake_checkpoint(tmp_path / "ckpt")), "--data", str(root),
            "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0
    (warning,) = err.splitlines()
    assert warning.startswith("warning: unreadable video: videos/shared.mp4 (")
    assert warning.endswith("); 10 questions skipped")
    assert out.splitlines() == ["mlvu [flash-vstream]: accuracy - (n=0, skipped 10: unreadable video)",
                                f"results: {tmp_path / 'out' / 'results.json'}"]


def test_model_flag_errors_are_one_line_and_nothing_is_written(tmp_path, tiny_video, capsys):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    ckpt = fake_checkpoint(tmp_path / "ckpt")  # a Flash-family config.json
    preset = tmp_path / "star.yaml"
    preset.write_text("family: star\noptions:\n  retrieval: paper\n")
    base = ["run", "--benchmark", "mlvu", "--model", str(ckpt), "--data", str(root), "--out", str(tmp_path / "out")]
    cases = [
        (["--option", "rope_mode=sideways"], "rope_mode must be one of"),
        (["--option", "nonsense"], "--option expects KEY=VALUE, got 'nonsense'"),
        (["--dtype", "float64"], "--dtype 'float64' is not supported"),
        (["--config", str(preset)], "the --config preset is for the star family but"),
        (["--config", str(tmp_path / "none.yaml")], "none.yaml does not exist"),
        (["--device", "gpu"], "--device 'gpu' is not a device"),
        (["--model", str(tmp_path / "nowhere")], "does not exist"),
    ]
    for flags, message in cases:
        code, out, err = run_cli([*base, *flags], capsys)
        assert (code, out) == (2, ""), flags
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (flags, err)
    assert not (tmp_path / "out" / "run_config.json").exists()


def test_config_preset_merges_under_option_and_is_recorded(tmp_path, tiny_video, capsys):
    root = mlvu_flash(tmp_path / "data", tiny_video)
    for i in range(10):
        (root / "videos" / f"v{i}.mp4").unlink()  # nothing to answer: no model is loaded
    preset = tmp_path / "flash.yaml"
    preset.write_text("family: flash\noptions:\n  rope_mode: paper\n  fidelity: reference\n")
    argv = ["run", "--benchmark", "mlvu", "--model", str(fake_checkpoint(tmp_path / "ckpt")), "--data", str(root),
            "--out", str(tmp_path / "out"), "--config", str(preset), "--option", "rope_mode=reference",
            "--dtype", "auto", "--device", "cpu", "--no-progress"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and out.startswith("mlvu [flash-vstream]: accuracy - (n=0, skipped 10: missing video)\n")
    assert err.splitlines()[0] == "warning: missing video: frames/v0.mp4; 1 question skipped"
    model = json.loads((tmp_path / "out" / "run_config.json").read_text())["model"]
    assert model["family"] == "flash" and model["dtype"] == "float32"  # auto: the config.json names no dtype
    assert model["options"] == {"fidelity": "reference", "rope_mode": "reference"}  # --option overrides the preset


@pytest.fixture(scope="module")
def tiny_streamingvlm(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "streamingvlm"
    assert main(["make-tiny", "--variant", "streamingvlm", "--out", str(checkpoint)]) == 0
    return checkpoint


def test_a_streamingvlm_checkpoint_is_recorded_as_its_family_with_its_options(tmp_path, tiny_video,
                                                                              tiny_streamingvlm, capsys):
    """Its config.json has model_type qwen2_5_vl (a Flash type) and the streamingvlm marker: the marker wins."""
    root = mlvu_flash(tmp_path / "data", tiny_video)
    for i in range(10):
        (root / "videos" / f"v{i}.mp4").unlink()  # nothing to answer: no model is loaded
    argv = ["run", "--benchmark", "mlvu", "--model", str(tiny_streamingvlm), "--data", str(root),
            "--out", str(tmp_path / "out"), "--option", "do_sample=false", "--device", "cpu", "--no-progress"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    model = json.loads((tmp_path / "out" / "run_config.json").read_text())["model"]
    assert (model["family"], model["options"]) == ("streamingvlm", {"do_sample": False})
    # A Flash option is now the unknown one, named in one line.
    code, out, err = run_cli([*argv, "--option", "rope_mode=paper"], capsys)
    assert (code, out) == (2, "") and "unknown StreamingVLM option(s) ['rope_mode']" in err


def test_spec_identity_honours_the_requested_family_then_the_marker_then_the_model_type(tmp_path):
    import torch

    from flash_vstream_eval.model_api import ModelSpec

    cpu = torch.device("cpu")
    plain = fake_checkpoint(tmp_path / "plain", model_type="qwen2_5_vl")  # the released StreamingVLM layout
    marked = fake_checkpoint(tmp_path / "marked", model_type="qwen2_5_vl",
                             extra={"flash_vstream_family": "streamingvlm"})
    assert ModelSpec(str(plain)).identity(cpu)["family"] == "flash"
    assert ModelSpec(str(plain), family="streamingvlm").identity(cpu)["family"] == "streamingvlm"
    assert ModelSpec(str(marked)).identity(cpu)["family"] == "streamingvlm"
    assert ModelSpec(str(marked), family="flash").identity(cpu)["family"] == "flash"
    with pytest.raises(ValueError, match="unknown Flash-family option"):
        ModelSpec(str(plain), options={"do_sample": False}).identity(cpu)
    for path, native in ((plain, "flash"), (marked, "streamingvlm")):
        with pytest.raises(ValueError, match=f"the --config preset is for the star family but {path} is a "
                                             f"{native} checkpoint; use a preset made for {native} models"):
            ModelSpec(str(path), family="star").identity(cpu)


@pytest.fixture(scope="module")
def tiny_flash(tmp_path_factory):
    from flash_vstream.model.tiny_qwen2vl import make_tiny_flash

    return make_tiny_flash(tmp_path_factory.mktemp("ckpt") / "flash", seed=0)


def test_run_tiny_flash_with_model_flags_resumes_and_refuses_another_model(tmp_path, tiny_video, tiny_flash, capsys):
    """The one fast end-to-end run with a real model: flags recorded, resume free, another model refused."""
    root = mlvu_flash(tmp_path / "data", tiny_video)
    out = tmp_path / "out"
    argv = ["run", "--benchmark", "mlvu", "--model", str(tiny_flash), "--data", str(root), "--out", str(out),
            "--limit", "2", "--max-new-tokens", "3", "--option", "rope_mode=reference", "--dtype", "float32",
            "--device", "cpu", "--no-progress"]
    code, printed, err = run_cli(argv, capsys)
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == ["0", "1"] and all(p["frames"] == 4 for p in predictions)
    assert results["counts"]["scored"] == 2
    assert results["metrics"]["accuracy"] == 100 * sum(
        flash_letter(p["prediction"], p["id"], 4) == "ABCD"[int(p["id"]) % 4] for p in predictions) / 2
    assert printed.splitlines()[0].startswith("mlvu [flash-vstream]: accuracy ")
    assert printed.splitlines()[0].endswith(" (n=2)")
    config = json.loads((out / "run_config.json").read_text())
    assert config["model"] == {
        "resolved": str(tiny_flash.resolve()),
        "config_sha256": hashlib.sha256((tiny_flash / "config.json").read_bytes()).hexdigest(),
        "weights": weights_fingerprint(tiny_flash),
        "family": "flash",
        "options": {"rope_mode": "reference"},
        "dtype": "float32",
    }
    assert config["max_new_tokens"] == 3 and config["device"] == "cpu"
    # The same command again resumes: nothing is asked, the results are the same.
    shard = (out / "predictions.rank0-of-1.jsonl").read_text()
    assert run_cli(argv, capsys)[0] == 0
    assert (out / "predictions.rank0-of-1.jsonl").read_text() == shard
    assert json.loads((out / "results.json").read_text()) == results
    # Another model (a copy elsewhere) or other options into the same folder: refused in one line, nothing touched.
    other = Path(shutil.copytree(tiny_flash, tmp_path / "other"))
    swapped = [str(other) if arg == str(tiny_flash) else arg for arg in argv]
    for flags, differs in ((swapped, "model.resolved: "), ([*argv, "--option", "rope_mode=paper"], "model.options")):
        code, printed, err = run_cli(flags, capsys)
        assert (code, printed) == (2, "")
        assert err.startswith(f"error: {out} holds predictions of a different run (") and err.count("\n") == 1
        assert differs in err and "pass --overwrite to start over" in err
    assert json.loads((out / "results.json").read_text()) == results


def test_tiny_flash_spec_hands_the_options_to_load_model(tiny_flash):
    import torch

    from flash_vstream_eval.model_api import ModelSpec

    model = ModelSpec(str(tiny_flash), options={"rope_mode": "reference"}).load(torch.device("cpu"))
    assert model.model.config.rope_mode == "reference"
    assert ModelSpec(str(tiny_flash)).load(torch.device("cpu")).model.config.rope_mode == "paper"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["star-vicuna", "flash-qwen2vl"])
def test_run_command_with_make_tiny_checkpoint(tmp_path, tiny_video, variant, capsys):
    checkpoint = tmp_path / "ckpt"
    assert main(["make-tiny", "--variant", variant, "--out", str(checkpoint)]) == 0
    write_jsonl(tmp_path / "data" / "videomme" / "test.jsonl", videomme_lmms_rows())
    root = videomme_media(tmp_path / "data", tiny_video)
    argv = ["run", "--benchmark", "videomme_sub", "--model", str(checkpoint), "--data", str(root),
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert run_cli(argv, capsys)[0] == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["counts"]["items"] == 10 and results["counts"]["skipped"] == 0
    assert sorted(results["breakdowns"]["duration"]) == ["long", "medium", "short"]
    predictions = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 10
    # A rerun finds everything done, loads no model, and reproduces the same results.
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results


@pytest.mark.slow
def test_egoschema_run_through_cli_writes_submission(tmp_path, tiny_video, capsys):
    checkpoint = tmp_path / "ckpt"
    assert main(["make-tiny", "--variant", "star-qwen2", "--out", str(checkpoint)]) == 0
    root = egoschema_official(tmp_path / "data", tiny_video)
    argv = ["run", "--benchmark", "egoschema", "--model", str(checkpoint), "--data", str(root),
            "--out", str(tmp_path / "out"), "--limit", "3", "--no-progress"]
    assert run_cli(argv, capsys)[0] == 0
    lines = (tmp_path / "out" / "submission.csv").read_text().splitlines()
    assert lines[0] == "q_uid,answer" and [line.split(",")[0] for line in lines[1:]] == ["uid0", "uid1", "uid2"]
