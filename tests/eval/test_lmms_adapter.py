"""The lmms-eval plug-in, tested against stubs of lmms-eval's classes (never the real package).

The stubs copy what the adapter meets in lmms-eval 0.7.3: ``lmms`` (rank, world size, ``cache_hook``,
``create_from_arg_string`` with its ``key=value,...`` parsing) and ``Instance`` (``idx``, ``metadata``). The real
package runs in ``scripts/check_lmms_eval.sh``.
"""

import abc
import dataclasses
import importlib.metadata
import subprocess
import sys
import types

import pytest
import torch

import flash_vstream
import flash_vstream.distributed
from flash_vstream_eval import lmms_adapter


def parse_arg_value(value):
    """lmms_eval.utils.handle_arg_string: booleans, then int, then float, else the string."""
    if value.lower() == "true":
        return True
    if value.lower() == "false":
        return False
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class StubCacheHook:
    def __init__(self):
        self.partials = []

    def add_partial(self, attr, req, res):
        self.partials.append((attr, req, res))


class StubLMMs(abc.ABC):
    """Mirrors lmms_eval.api.model.lmms as the adapter and lmms-eval's evaluator use it."""

    is_simple = True

    def __init__(self):
        self._rank = 0
        self._world_size = 1
        self.cache_hook = StubCacheHook()
        self.task_dict = {}

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        """lmms.create_from_arg_string: ``k=v,...`` parsed as lmms-eval does, None-valued extras dropped."""
        pairs = [item.split("=", 1) for item in arg_string.strip().split(",") if item]
        args = {key: parse_arg_value(value) for key, value in pairs}
        extra = {key: value for key, value in (additional_config or {}).items() if value is not None}
        return cls(**args, **extra)

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
    """lmms_eval.api.instance.Instance: idx and metadata are required, metadata unpacks into task/doc_id/repeats."""

    request_type: str
    arguments: tuple
    idx: int
    metadata: dict = dataclasses.field(default_factory=dict)
    resps: list = dataclasses.field(default_factory=list)
    task_name: str = None
    doc_id: str = None
    repeats: str = None

    def __post_init__(self):
        meta = self.metadata
        self.task_name, self.doc_id, self.repeats = meta["task"], meta["doc_id"], meta["repeats"]

    @property
    def args(self):
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


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

    def __init__(self, replies, device="cpu", conv_template=None, tokenizer_template=None):
        self.replies = list(replies)
        self.calls = []
        self.device = torch.device(device)
        self.model = types.SimpleNamespace(config=types.SimpleNamespace(conv_template=conv_template))
        self.tokenizer = types.SimpleNamespace(chat_template=tokenizer_template)

    def answer(self, question, *, frames=None, video=None, timestamps=None, assistant_prefix="",
               max_new_tokens=16):
        self.calls.append({"question": question, "video": video, "frames": frames,
                           "max_new_tokens": max_new_tokens})
        return self.replies.pop(0)


@pytest.fixture
def fake_load(monkeypatch):
    loads = []

    def install(*replies, **model_kwargs):
        model = FakeModel(replies, **model_kwargs)

        def load_model(name_or_path, device=None, dtype=None):
            loads.append((name_or_path, device, dtype))
            return model

        monkeypatch.setattr(flash_vstream, "load_model", load_model, raising=False)
        return model

    install.loads = loads
    return install


DOCS = {"videomme": {"test": {0: {"video": "/data/a.mp4"}, 1: {"video": "/data/b.mp4"}}}}


def instance(args, idx=0):
    """An Instance as lmms-eval's construct_requests builds it."""
    metadata = {"task": args[4], "doc_id": args[3], "repeats": 1, "split": args[5]}
    return StubInstance("generate_until", args, idx=idx, metadata=metadata)


def request(context, gen_kwargs, doc_id, task="videomme", split="test"):
    return instance((context, gen_kwargs, lambda doc: [doc["video"]], doc_id, task, split))


def make(arg_string, **extra):
    """Build the model through lmms-eval's own path: create_from_arg_string with the CLI's extras."""
    config = {"batch_size": 1, "max_batch_size": None, "device": None, **extra}
    return lmms_adapter.FlashVStreamLMM.create_from_arg_string(arg_string, config)


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
    assert len(lines) == 2 and all('pip install -e ".[lmms]"' in line and "docs/eval.md" in line for line in lines)


def test_model_args_go_through_lmms_evals_parser(stub_lmms_eval, fake_load):
    fake_load()
    lmm = make("pretrained=/ckpt/tiny,dtype=bfloat16,max_new_tokens=32", batch_size=2, max_batch_size=4,
               device="cpu")
    assert fake_load.loads == [("/ckpt/tiny", "cpu", "bfloat16")]
    assert (lmm.max_new_tokens, lmm.batch_size, lmm.max_batch_size) == (32, 2, 4)
    assert (lmm.rank, lmm.world_size) == (0, 1) and not hasattr(lmm, "accelerator")
    assert lmm.device == torch.device("cpu")
    make("pretrained=/ckpt/other")  # no --device, --max_batch_size: the None extras are dropped
    assert fake_load.loads[-1] == ("/ckpt/other", None, None)
    with pytest.raises(TypeError, match="conv_template; known: pretrained, device, dtype, max_new_tokens, "
                                        "batch_size, max_batch_size"):
        make("pretrained=p,conv_template=vicuna")
    with pytest.raises(ValueError, match="max_new_tokens=1.5 is not an integer"):
        make("pretrained=p,max_new_tokens=1.5")


def test_generate_until_passes_video_and_question(stub_lmms_eval, fake_load):
    model = fake_load("A red car.\nUSER: more", "B) The dog</s>junk")
    lmm = make("pretrained=/ckpt/tiny")
    lmm.task_dict = DOCS
    first = {"until": ["\nUSER:", "###"], "max_new_tokens": 32}
    out = lmm.generate_until([
        request("What is parked outside?", first, 0),
        request("Which animal? Answer with the option letter.", {"until": "</s>"}, 1),
    ])
    assert out == ["A red car.", "B) The dog"]
    assert model.calls == [
        {"question": "What is parked outside?", "video": "/data/a.mp4", "frames": None, "max_new_tokens": 32},
        {"question": "Which animal? Answer with the option letter.", "video": "/data/b.mp4", "frames": None,
         "max_new_tokens": 16},
    ]
    assert lmm.cache_hook.partials == [
        ("generate_until", ("What is parked outside?", first), "A red car."),
        ("generate_until", ("Which animal? Answer with the option letter.", {"until": "</s>"}), "B) The dog"),
    ]


def test_generate_until_frames_and_text_only(stub_lmms_eval, fake_load):
    model = fake_load("two", "four")
    lmm = make("pretrained=p,max_new_tokens=8")
    lmm.task_dict = {"t": {"s": {0: {}}}}
    pictures = [object(), object()]
    out = lmm.generate_until([
        instance(("How many?", {}, lambda doc: pictures, 0, "t", "s"), idx=0),
        instance(("2+2?", {"max_new_tokens": None}, lambda doc: [], 0, "t", "s"), idx=1),
    ])
    assert out == ["two", "four"]
    assert model.calls[0]["frames"] == pictures and model.calls[0]["video"] is None
    assert model.calls[1]["frames"] is None and model.calls[1]["video"] is None
    assert [c["max_new_tokens"] for c in model.calls] == [8, 8]


def test_several_videos_are_rejected_with_the_doc(stub_lmms_eval, fake_load):
    fake_load("x")
    lmm = make("pretrained=p")
    lmm.task_dict = DOCS
    req = instance(("q", {}, lambda doc: ["/a.mp4", "/b.mp4"], 1, "videomme", "test"))
    with pytest.raises(ValueError, match="doc 1.*one video per question"):
        lmm.generate_until([req])


def test_bad_until_is_rejected(stub_lmms_eval, fake_load):
    fake_load("x")
    lmm = make("pretrained=p")
    lmm.task_dict = DOCS
    with pytest.raises(TypeError, match="until"):
        lmm.generate_until([request("q", {"until": 5}, 0)])


def test_unsupported_calls_and_arguments(stub_lmms_eval, fake_load):
    fake_load()
    with pytest.raises(ValueError, match="dtype='int8'"):
        make("pretrained=p,dtype=int8")
    with pytest.raises(ValueError, match="max_new_tokens='many'"):
        make("pretrained=p,max_new_tokens=many")
    lmm = make("pretrained=p,dtype=auto", batch_size="auto")
    assert fake_load.loads[-1] == ("p", None, "auto")  # load_model reads "auto" as the checkpoint's saved dtype
    lmms_adapter.FlashVStreamLMM(pretrained="p", dtype=torch.float16)
    assert fake_load.loads[-1] == ("p", None, torch.float16)
    with pytest.raises(NotImplementedError, match="log-likelihood"):
        lmm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm.generate_until_multi_round([])


@pytest.mark.parametrize(
    "conv_template, tokenizer_template, expected",
    [("vicuna_v1", "{{ chatml }}", "vicuna_v1"), ("plain", None, "plain"),
     ("chat_template", "{{ chatml }}", "{{ chatml }}"), (None, "{{ qwen }}", "{{ qwen }}"), (None, None, "")],
)
def test_chat_template_names_what_answers_are_prompted_with(stub_lmms_eval, fake_load, conv_template,
                                                            tokenizer_template, expected):
    fake_load(conv_template=conv_template, tokenizer_template=tokenizer_template)
    assert make("pretrained=p").chat_template == expected


def test_apply_chat_template_gives_the_plain_question(stub_lmms_eval, fake_load):
    model = fake_load("yes")
    lmm = make("pretrained=p")
    lmm.task_dict = DOCS
    # What lmms-eval builds without --apply_chat_template: the system prompt directly followed by the question.
    plain = "Answer briefly. " + "Is it red?"
    chat = [{"role": "system", "content": "Answer briefly. "}, {"role": "user", "content": "Is it red?"}]
    context = lmm.apply_chat_template(chat)
    assert context == plain
    assert lmm.apply_chat_template([{"role": "user", "content": "Is it red?"}]) == "Is it red?"
    lmm.generate_until([request(context, {}, 0)])
    assert model.calls[0]["question"] == plain  # the model's own template is applied once, inside answer()
    few_shot = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}]
    with pytest.raises(ValueError, match=r"turns \['user', 'assistant', 'user'\].*one question"):
        lmm.apply_chat_template(few_shot)
    with pytest.raises(ValueError, match="text chat turns"):
        lmm.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "q"}]}])


class FakeAccelerator:
    def __init__(self, kind, num_processes, device="cpu"):
        self.distributed_type = types.SimpleNamespace(name=kind)
        self.num_processes = num_processes
        self.device = torch.device(device)


@pytest.fixture
def fake_dist(monkeypatch):
    """Set what init_distributed returns and the Accelerator lmms-eval's launcher would have set up."""
    import accelerate

    def install(rank, world_size, kind="MULTI_CPU", num_processes=None, accel_device="cpu"):
        info = flash_vstream.distributed.DistInfo(rank, rank, world_size, torch.device("cpu"))
        monkeypatch.setattr(flash_vstream.distributed, "init_distributed", lambda: info)
        accelerator = FakeAccelerator(kind, world_size if num_processes is None else num_processes, accel_device)
        monkeypatch.setattr(accelerate, "Accelerator", lambda: accelerator)
        return accelerator

    return install


def test_data_parallel_rank_takes_its_device(stub_lmms_eval, fake_load, fake_dist):
    fake_load()
    accelerator = fake_dist(rank=1, world_size=2)
    lmm = make("pretrained=p")
    assert (lmm.rank, lmm.world_size) == (1, 2) and lmm.accelerator is accelerator
    assert fake_load.loads[-1] == ("p", torch.device("cpu"), None)  # the rank's device from accelerate
    fake_dist(rank=1, world_size=2, kind="MULTI_GPU", accel_device="cuda:1")
    for given, placed in [(None, torch.device("cuda:1")), ("cuda", torch.device("cuda:1")), ("cpu", "cpu"),
                          ("cuda:0", "cuda:0")]:
        make("pretrained=p", device=given)
        assert fake_load.loads[-1] == ("p", placed, None)


@pytest.mark.parametrize(
    "kind, num_processes, message",
    [("NO", 1, "WORLD_SIZE=2 but accelerate sees 1 process.*ACCELERATE_USE_CPU=1"),
     ("FSDP", 2, "data-parallel only.*set up for FSDP"), ("DEEPSPEED", 2, "set up for DEEPSPEED")],
)
def test_unsupported_launches_are_one_clear_error(stub_lmms_eval, fake_load, fake_dist, kind, num_processes,
                                                  message):
    fake_load()
    fake_dist(rank=0, world_size=2, kind=kind, num_processes=num_processes)
    with pytest.raises(ValueError, match=message):
        make("pretrained=p")
    assert fake_load.loads == []  # refused before any weights are read


@pytest.mark.parametrize(
    "text, stops, expected",
    [("abc###def", ["###"], "abc"), ("a</s>b###", ["###", "</s>"], "a"), ("plain", [], "plain"),
     ("keep", [""], "keep")],
)
def test_cut_at_stops(text, stops, expected):
    assert lmms_adapter.cut_at_stops(text, stops) == expected
