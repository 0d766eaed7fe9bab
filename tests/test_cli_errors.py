"""A new user's mistakes end in one line on stderr that names the thing and the fix, with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flash_vstream.cli import main
from flash_vstream.model.tiny import make_tiny_star

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_star(tmp_path_factory.mktemp("tiny") / "star", variant="star-vicuna")


def ask(model, *extra) -> list[str]:
    return ["ask", "--model", str(model), "--video", str(SAMPLE), "What moves?", "--max-new-tokens", "1", *extra]


def one_error_line(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--dtype", "float64x"], "--dtype 'float64x' is not supported; use bfloat16, float16, float32 or auto"),
        (["--device", "gpu"], "--device 'gpu' is not a device; use cpu, cuda, cuda:N or auto"),
    ],
)
def test_bad_dtype_and_device_strings(tiny, capsys, flags, expected):
    assert expected in one_error_line(capsys, main(ask(tiny, *flags)))


def test_cuda_without_a_gpu(tiny, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    line = one_error_line(capsys, main(ask(tiny, "--device", "cuda")))
    assert "--device cuda needs a CUDA GPU, but torch sees none" in line and "--device cpu" in line


def broken_copy(tiny: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "broken"
    target.mkdir()
    for item in tiny.iterdir():
        (target / item.name).symlink_to(item)
    (target / "config.json").unlink()
    config = json.loads((tiny / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_wrongly_typed_config_field(tiny, tmp_path, capsys):
    broken = broken_copy(tiny, tmp_path, lambda c: c["text_config"].update(hidden_size="thirty-two"))
    line = one_error_line(capsys, main(ask(broken)))
    assert "config.json is invalid" in line and "hidden_size" in line and "thirty-two" in line


def test_impossible_config_field(tiny, tmp_path, capsys):
    broken = broken_copy(tiny, tmp_path, lambda c: c["text_config"].update(num_attention_heads=5))
    line = one_error_line(capsys, main(ask(broken)))
    assert "config.json is invalid" in line and "not a multiple of the number of attention heads (5)" in line


def test_hub_id_while_offline(capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    line = one_error_line(capsys, main(ask("no-such-org/no-such-model")))
    assert "cannot get 'no-such-org/no-such-model' from the Hugging Face Hub" in line
    assert "huggingface-cli download no-such-org/no-such-model --local-dir DIR" in line and "--model DIR" in line


def test_preset_for_the_other_family(tiny, capsys):
    preset = Path(__file__).resolve().parent.parent / "configs" / "models" / "flash-qwen-reference-rope.yaml"
    line = one_error_line(capsys, main(ask(tiny, "--config", str(preset))))
    assert "are for the flash family" in line and "is a star checkpoint" in line


def test_make_tiny_refuses_to_overwrite_without_force(tiny, capsys):
    line = one_error_line(capsys, main(["make-tiny", "--variant", "star-vicuna", "--out", str(tiny)]))
    assert "already holds files; pass --force" in line
    assert main(["make-tiny", "--variant", "star-vicuna", "--out", str(tiny), "--force"]) == 0


@pytest.mark.parametrize("layout", ["own", "released"])
def test_make_tiny_bin_format_is_honoured_for_every_star_layout(tmp_path, capsys, layout):
    out = tmp_path / layout
    flags = ["--variant", "star-vicuna", "--layout", layout, "--format", "bin", "--out", str(out)]
    assert main(["make-tiny", *flags]) == 0
    assert list(out.glob("*.safetensors")) == [] and list(out.glob("pytorch_model-*.bin"))
    assert main(ask(out, "--json")) == 0
    # 7 frames: abstract 6 + temporal 6 x 16 + retrieved 3 x 64 + spatial 64.
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_visual_tokens"] == 358


def test_version_help_and_flag_errors_import_nothing_heavy():
    code = (
        "import sys, contextlib, io\n"
        "from flash_vstream.cli import main\n"
        "codes = []\n"
        "for argv in (['--version'], ['--help'], ['ask', '--modle', 'x']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as exit:\n"
        "            codes.append(f'{argv[0]} {exit.code}')\n"
        "print(*codes, sep='\\n')\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'av') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["--version 0", "--help 0", "ask 2", "[]"], result.stderr
    version = subprocess.run(
        [sys.executable, "-m", "flash_vstream.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.stdout.strip() == "flash-vstream 0.1.0"


def test_ask_json_stdout_holds_only_the_answer_when_a_library_prints(tiny, capsys, monkeypatch):
    import flash_vstream.inference.pipeline as pipeline

    real = pipeline.load_model

    def noisy_load(*args, **kwargs):
        print("[WARNING] Setting accelerator to CPU.")  # what DeepSpeed prints to stdout when transformers imports it
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "load_model", noisy_load)
    assert main(ask(tiny, "--json")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_visual_tokens"] == 358
    assert "Setting accelerator to CPU" in captured.err
