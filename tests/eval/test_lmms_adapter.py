"""The lmms-eval plug-in, tested against a stub of lmms-eval's base class (never the real package)."""

import abc
import dataclasses
import importlib.metadata
import subprocess
import sys
import types

import pytest
import torch

import flash_vstream
from flash_vstream_eval import lmms_adapter


class StubLMMs(abc.ABC):
    """Mirrors what the adapter relies on in lmms_eval.api.model.lmms."""

    is_simple = True

    def __init__(self):
        self._rank = 0
        self._world_size = 1
        self.task_dict = {}

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    @abc.abstractmethod
    def loglikelihood(self, requests): ...

    @abc.abstractmethod
    def generate_until(self, requests): ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests): ...


@dataclasses.dataclass(frozen=True)
class StubManifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
    aliases: tuple = ()


@dataclasses.dataclass
class StubInstance:
    request_type: str
    arguments: tuple

    @property
    def args(self):
        return self.arguments


@pytest.fixture
def stub_lmms_eval(monkeypatch):
    modules = {name: types.ModuleType(name) for name in (
        "lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.api.instance",
        "lmms_eval.models", "lmms_eval.models.registry_v2",
    )}
    modules["lmms_eval.api.model"].lmms = StubLMMs
    modules["lmms_eval.api.instance"].Instance = StubInstance
    modules["lmms_eval.models.registry_v2"].ModelManifest = StubManifest
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


class FakeModel:
    """Scripted stand-in for FlashVStream: records each answer() call and returns the next scripted reply."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def answer(self, question, *, frames=None, video=None, timestamps=None, assistant_prefix="",
               max_new_tokens=16):
        self.calls.append({"question": question, "video": video, "frames": frames,
                           "max_new_tokens": max_new_tokens})
        return self.replies.pop(0)


@pytest.fixture
def fake_load(monkeypatch):
    loads = []

    def install(*replies):
        model = FakeModel(replies)

        def load_model(name_or_path, device=None, dtype=None):
            loads.append((name_or_path, device, dtype))
            return model

        monkeypatch.setattr(flash_vstream, "load_model", load_model, raising=False)
        return model

    install.loads = loads
    return install


DOCS = {"videomme": {"test": {0: {"video": "/data/a.mp4"}, 1: {"video": "/data/b.mp4"}}}}


def request(context, gen_kwargs, doc_id, task="videomme", split="test"):
    args = (context, gen_kwargs, lambda doc: [doc["video"]], doc_id, task, split)
    return StubInstance("generate_until", args)


def test_manifest_names_the_class(stub_lmms_eval):
    manifest = lmms_adapter.manifest()
    assert isinstance(manifest, StubManifest)
    assert manifest.model_id == "flash_vstream"
    assert manifest.simple_class_path == "flash_vstream_eval.lmms_adapter.FlashVStreamLMM"
    assert manifest.chat_class_path is None


def test_entry_point_is_declared():
    entries = importlib.metadata.entry_points(group="lmms_eval.models")
    (entry,) = [ep for ep in entries if ep.name == "flash_vstream"]
    assert entry.value == "flash_vstream_eval.lmms_adapter:manifest"
    assert entry.load() is lmms_adapter.manifest


def test_class_path_resolves_like_lmms_eval_does(stub_lmms_eval):
    module_name, class_name = lmms_adapter.manifest().simple_class_path.rsplit(".", 1)
    cls = getattr(sys.modules[module_name], class_name)
    assert issubclass(cls, StubLMMs) and cls.is_simple and not cls.__abstractmethods__
    assert cls.__name__ == "FlashVStreamLMM" and cls.__module__ == "flash_vstream_eval.lmms_adapter"
    assert lmms_adapter.FlashVStreamLMM is cls  # built once per base class


def test_import_without_lmms_eval():
    code = (
        "import sys; sys.modules['lmms_eval'] = None\n"
        "import flash_vstream_eval.lmms_adapter as a\n"
        "try:\n    a.FlashVStreamLMM\nexcept ImportError as e:\n    print('ERR', e)\n"
        "try:\n    a.manifest()\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all('pip install "flash-vstream[lmms]"' in line for line in lines)


def test_generate_until_passes_video_and_question(stub_lmms_eval, fake_load):
    model = fake_load("A red car.\nUSER: more", "B) The dog</s>junk")
    lmm = lmms_adapter.FlashVStreamLMM(pretrained="/ckpt/tiny", device="cpu", dtype="bfloat16")
    assert fake_load.loads == [("/ckpt/tiny", "cpu", "bfloat16")]
    lmm.task_dict = DOCS
    out = lmm.generate_until([
        request("What is parked outside?", {"until": ["\nUSER:", "###"], "max_new_tokens": 32}, 0),
        request("Which animal? Answer with the option letter.", {"until": "</s>"}, 1),
    ])
    assert out == ["A red car.", "B) The dog"]
    assert model.calls == [
        {"question": "What is parked outside?", "video": "/data/a.mp4", "frames": None, "max_new_tokens": 32},
        {"question": "Which animal? Answer with the option letter.", "video": "/data/b.mp4", "frames": None,
         "max_new_tokens": 16},
    ]


def test_generate_until_frames_and_text_only(stub_lmms_eval, fake_load):
    model = fake_load("two", "four")
    lmm = lmms_adapter.FlashVStreamLMM(pretrained="p", max_new_tokens="8")
    lmm.task_dict = {"t": {"s": {0: {}}}}
    pictures = [object(), object()]
    out = lmm.generate_until([
        StubInstance("generate_until", ("How many?", {}, lambda doc: pictures, 0, "t", "s")),
        StubInstance("generate_until", ("2+2?", {"max_new_tokens": None}, lambda doc: [], 0, "t", "s")),
    ])
    assert out == ["two", "four"]
    assert model.calls[0]["frames"] == pictures and model.calls[0]["video"] is None
    assert model.calls[1]["frames"] is None and model.calls[1]["video"] is None
    assert [c["max_new_tokens"] for c in model.calls] == [8, 8]


def test_several_videos_are_rejected_with_the_doc(stub_lmms_eval, fake_load):
    fake_load("x")
    lmm = lmms_adapter.FlashVStreamLMM(pretrained="p")
    lmm.task_dict = DOCS
    req = StubInstance("generate_until", ("q", {}, lambda doc: ["/a.mp4", "/b.mp4"], 1, "videomme", "test"))
    with pytest.raises(ValueError, match="doc 1.*one video per question"):
        lmm.generate_until([req])


def test_bad_until_is_rejected(stub_lmms_eval, fake_load):
    fake_load("x")
    lmm = lmms_adapter.FlashVStreamLMM(pretrained="p")
    lmm.task_dict = DOCS
    with pytest.raises(TypeError, match="until"):
        lmm.generate_until([request("q", {"until": 5}, 0)])


def test_unsupported_calls_and_arguments(stub_lmms_eval, fake_load):
    fake_load()
    with pytest.raises(TypeError, match="conv_template"):
        lmms_adapter.FlashVStreamLMM(pretrained="p", conv_template="vicuna")
    with pytest.raises(ValueError, match="dtype='int8'"):
        lmms_adapter.FlashVStreamLMM(pretrained="p", dtype="int8")
    with pytest.raises(ValueError, match="max_new_tokens='many'"):
        lmms_adapter.FlashVStreamLMM(pretrained="p", max_new_tokens="many")
    lmm = lmms_adapter.FlashVStreamLMM(pretrained="p", batch_size="auto", dtype="auto")
    assert fake_load.loads[-1] == ("p", None, "auto")  # load_model reads "auto" as the checkpoint's saved dtype
    lmms_adapter.FlashVStreamLMM(pretrained="p", dtype=torch.float16)
    assert fake_load.loads[-1] == ("p", None, torch.float16)
    with pytest.raises(NotImplementedError, match="log-likelihood"):
        lmm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm.generate_until_multi_round([])


@pytest.mark.parametrize(
    "text, stops, expected",
    [("abc###def", ["###"], "abc"), ("a</s>b###", ["###", "</s>"], "a"), ("plain", [], "plain"),
     ("keep", [""], "keep")],
)
def test_cut_at_stops(text, stops, expected):
    assert lmms_adapter.cut_at_stops(text, stops) == expected
