"""Mixtures: strategies give exact counts and seeded selections; YAML is typed and unknown keys are refused."""

from pathlib import Path

import pytest
from trainfixtures import llava_tree, qwen_tree, turn, write_image, write_jsonl

from flash_vstream.train.data import DataError
from flash_vstream.train.mixture import Mixture, SourceSpec, load_mixture, select

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"


def numbered_rows(n, missing_every=0):
    """``n`` rows with ids 0..n-1 on image a.jpg; every ``missing_every``-th row's image is missing."""
    rows = []
    for i in range(n):
        image = "gone.jpg" if missing_every and i % missing_every == missing_every - 1 else "a.jpg"
        rows.append({"id": i, "image": image, "conversations": [turn("human", "Hi"), turn("gpt", f"n{i}")]})
    return rows


@pytest.fixture
def twenty(tmp_path):
    """A JSONL of 30 rows of which 20 are usable (every third image is missing)."""
    write_image(tmp_path / "a.jpg")
    return write_jsonl(tmp_path / "rows.jsonl", numbered_rows(30, missing_every=3))


def ids(source):
    return [int(s.id) for s in source.selected]


USABLE = [i for i in range(30) if i % 3 != 2]


def load_one(path, **spec):
    return load_mixture(Mixture((SourceSpec(path.name, **spec),), seed=5), path.parent).sources[0]


def test_all_and_first_take_exact_counts_from_usable_samples(twenty):
    everything = load_one(twenty)
    assert (everything.data.rows, len(everything.data.samples), ids(everything)) == (30, 20, USABLE)
    first = load_one(twenty, strategy="first", count=7)
    assert ids(first) == USABLE[:7] and first.shortfall == 0


def test_random_is_seeded_exact_and_in_file_order(twenty):
    picks = load_one(twenty, strategy="random", count=8)
    assert len(ids(picks)) == 8 and len(set(ids(picks))) == 8
    assert set(ids(picks)) <= set(USABLE) and ids(picks) == sorted(ids(picks))
    assert ids(load_one(twenty, strategy="random", count=8)) == ids(picks)  # same seed: same selection
    assert ids(load_one(twenty, strategy="random", count=8, seed=5)) == ids(picks)  # the mixture's seed is 5
    others = {tuple(ids(load_one(twenty, strategy="random", count=8, seed=s))) for s in range(6, 12)}
    assert len(others - {tuple(ids(picks))}) >= 5  # other seeds draw other subsets


def test_percent_takes_the_floor_of_the_share(twenty):
    assert len(load_one(twenty, strategy="percent", percent=25).selected) == 5  # 20 * 25%
    assert len(load_one(twenty, strategy="percent", percent=12.5).selected) == 2  # floor(2.5)
    assert len(load_one(twenty, strategy="percent", percent=100).selected) == 20
    assert len(load_one(twenty, strategy="percent", percent=0.1).selected) == 0  # floor(0.02)
    ten = load_one(twenty, strategy="percent", percent=50, seed=3)
    assert ids(ten) == ids(load_one(twenty, strategy="percent", percent=50, seed=3)) and len(ids(ten)) == 10


def test_shortfall_is_reported_and_strict_refuses_it(twenty):
    short = load_one(twenty, strategy="first", count=26)
    assert (len(short.selected), short.shortfall) == (20, 6)
    short = load_one(twenty, strategy="random", count=21)
    assert (len(short.selected), short.shortfall) == (20, 1)
    clean = write_jsonl(twenty.parent / "clean.jsonl", numbered_rows(20))
    with pytest.raises(DataError, match="strategy first 26 asks for 6 more sample.*than the 20 usable"):
        load_mixture(Mixture((SourceSpec(clean.name, strategy="first", count=26),)), clean.parent, strict=True)


def test_select_works_on_any_list():
    samples = list(range(10))
    assert select(samples, SourceSpec("x", strategy="first", count=3), seed=0) == ([0, 1, 2], 0)
    chosen, short = select(samples, SourceSpec("x", strategy="random", count=4, seed=1), seed=0)
    assert short == 0 and chosen == sorted(chosen) and len(set(chosen)) == 4


def test_mixture_yaml_resolves_every_relative_path_against_the_data_root(tmp_path):
    root = llava_tree(tmp_path / "data")
    qwen_tree(root / "qwen")
    mixture_file = tmp_path / "configs" / "mix.yaml"
    mixture_file.parent.mkdir()
    mixture_file.write_text(
        "seed: 3\n"
        "sources:\n"
        "  - path: pretrain/llava_558k_with_webvid.json\n"
        "    image_root: pretrain/image_features\n"
        "    video_root: pretrain/video_features\n"
        "  - path: qwen/trainset.json\n"
        "    media_root: qwen/frames\n"
        "    strategy: first\n"
        "    count: 1\n"
        "    name: qwen\n"
    )
    loaded = load_mixture(mixture_file, root)
    assert [s.spec.label for s in loaded.sources] == ["llava_558k_with_webvid.json", "qwen"]
    assert [s.id for s in loaded.samples] == ["004539375", "1026004934", "v_-5ZX-hQJ1Xs"]
    assert [m.kind for s in loaded.samples for m in s.media] == ["features", "features", "frames"]
    assert loaded.mixture.seed == 3
    # Without a root the mixture file's folder is the data root: nothing is there.
    with pytest.raises(FileNotFoundError, match="llava_558k_with_webvid.json does not exist"):
        load_mixture(mixture_file)


def test_a_single_data_file_is_a_mixture_of_one(twenty):
    loaded = load_mixture(twenty, twenty.parent)
    assert loaded.mixture == Mixture((SourceSpec(twenty.absolute()),))
    assert [int(s.id) for s in loaded.samples] == USABLE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources: []\n", "'sources' must be a non-empty list"),
        ("seed: 1\nsorces: []\n", r"unknown key\(s\) \['sorces'\]"),
        ("sources:\n  - path: a.json\n    stratgy: all\n", r"sources\[0\]: unknown key\(s\) \['stratgy'\]"),
        ("sources:\n  - strategy: all\n", r"sources\[0\] has no 'path'"),
        ("sources:\n  - path: a.json\n    strategy: some\n", "strategy must be one of"),
        ("sources:\n  - path: a.json\n    strategy: first\n", r"count \(strategy 'first'\) must be an integer >= 1"),
        ("sources:\n  - path: a.json\n    count: 3\n", "count is only used by strategies 'first' and 'random'"),
        ("sources:\n  - path: a.json\n    strategy: percent\n    percent: 120\n", r"percent must be in \(0, 100\]"),
        ("sources:\n  - path: a.json\n    strategy: random\n    count: 2\n    seed: -1\n", "seed must be an"),
        ("seed: x\nsources:\n  - path: a.json\n", "mixture seed must be an integer"),
        ("sources:\n  - path: a.json\n  - path: b.json\n    percent: 5\n", r"sources\[1\]: source percent is only"),
        ("- a.json\n", "expected a mapping"),
        ("sources: [\n", "is not valid YAML"),
    ],
)
def test_bad_mixtures_name_the_file_source_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        Mixture.from_file(path)
    assert str(path) in str(err.value)


EXAMPLES = sorted(CONFIGS.glob("*.yaml"))


def test_there_are_example_mixtures():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_mixtures_parse_and_open_with_their_command(path):
    mixture = Mixture.from_file(path)
    assert mixture.sources
    assert path.read_text().startswith(f"# flash-vstream data check --data configs/data/{path.name} --media-root ")
