"""Every YAML under configs/ loads and validates; presets reach the model through ``ask --config``."""

from pathlib import Path

import pytest

from flash_vstream.families import families, load_preset
from flash_vstream.train.mixture import Mixture

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(ROOT.rglob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_names_its_command(path):
    kind = path.relative_to(ROOT).parts[0]
    if kind == "data":  # training-data mixtures
        assert Mixture.from_file(path).sources
    elif kind == "train":  # training runs: the whole typed tree (base files, TrainingArguments) must resolve
        from flash_vstream.train.config import load_train_config

        config = load_train_config(path)
        assert config.data.data and config.training.output_dir
    else:
        assert kind == "models", f"{path}: no test knows how to load configs/{kind}/; add it here"
        family, options = load_preset(path)
        assert family in families() and isinstance(options, dict)
    assert path.read_text().startswith("# flash-vstream "), "each config opens with the command that uses it"


def test_bad_presets_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: star\noptions:\n  retreival: paper\n")
    with pytest.raises(ValueError, match="retreival"):
        load_preset(bad)
    bad.write_text("family: flash\noptions:\n  rope_mode: sideways\n")
    with pytest.raises(ValueError, match="rope_mode"):
        load_preset(bad)
    bad.write_text("famly: star\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_preset(bad)


def test_ask_with_config_preset(tmp_path, capsys):
    import json

    from flash_vstream.cli import main

    model = tmp_path / "tiny"
    assert main(["make-tiny", "--variant", "star-vicuna", "--out", str(model)]) == 0
    preset = tmp_path / "p.yaml"
    preset.write_text("family: star\noptions:\n  retrieved_frames: 1\n")
    sample = Path(__file__).resolve().parents[1] / "assets" / "sample.mp4"
    assert (
        main(
            [
                "ask",
                "--model",
                str(model),
                "--video",
                str(sample),
                "q",
                "--config",
                str(preset),
                "--json",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # 7 frames at 1 fps -> 6 history frames: abstract 6 + temporal 6*16 + retrieved 1*64 (not the default 3) + 64
    assert payload["num_visual_tokens"] == 6 + 6 * 16 + 1 * 64 + 64
