"""The memory contract, run over EVERY registered memory (``flash_vstream.memory.register_memory``).

A new memory gets these tests by registering a tiny builder. What is checked: one mutation rule (``update`` writes
in place and returns the same state, ``read`` is pure, ``clone`` is independent), a fixed-size state over thousands
of updates with a capped bank, ``read`` equal to ``compress`` (one update always while the bank holds the clip;
any chunking up to ``exact_streaming_frames``), bf16 inputs, ``state.to(device)``, and ``num_tokens`` against the
decoder-token count of real outputs.
"""

import copy
import dataclasses
import inspect

import pytest
import torch

from flash_vstream.memory import registered_memories
from tests.memoryfixtures import stream

SPECS = registered_memories()


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: on a loaded 2-core runner, the parallel region ATen opens for every tiny
    softmax waits for a busy core and makes a 2000-update stream take 10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=sorted(SPECS))
def case(request):
    spec = SPECS[request.param]
    torch.manual_seed(0)  # q/k weights of memories that have them
    return spec, spec.build()


def features(case, num_frames, seed=0, dtype=torch.float32):
    spec, memory = case
    generator = torch.Generator().manual_seed(seed)
    return memory.random_features(num_frames, grid_hw=spec.grid_hw, generator=generator, dtype=dtype)


def chunkings(n):
    """Ways to split ``n`` input rows into update calls: one by one, pairs, uneven, all at once."""
    uneven, left, size = [], n, 1
    while left:
        uneven.append(min(size, left))
        left -= uneven[-1]
        size = size % 3 + 1
    return [[1] * n, [2] * (n // 2) + [n % 2] * (n % 2), uneven, [n]]


def walk(value):
    """Every tensor inside a state (dataclass fields, nested dataclasses, tuples, lists)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from walk(item)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from walk(getattr(value, f.name))


def assert_same_state(a, b, where="state"):
    """Recursively: tensors equal in value, dtype and device; dataclasses field by field; the rest ==."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same_state(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_output(a, b):
    assert a.segments == b.segments
    assert a.tokens.dtype == b.tokens.dtype
    torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=0)
    if a.positions is None:
        assert b.positions is None
    else:
        assert torch.equal(a.positions, b.positions)


def rows_per_frames(case, num_frames):
    return len(features(case, num_frames))


# --- the mutation rule ------------------------------------------------------------------------------------------


def test_same_init_state_signature(case):
    _, memory = case
    assert list(inspect.signature(memory.init_state).parameters) == ["device", "dtype"]


def test_update_returns_the_state_and_read_leaves_it_unchanged(case):
    _, memory = case
    state = memory.init_state()
    with pytest.raises(ValueError, match="empty"):
        memory.read(state)
    feats = features(case, 30, seed=1)
    assert memory.update(state, feats[:5]) is state
    assert memory.update(state, feats[5:]) is state
    snapshot = state.clone()
    first, second = memory.read(state), memory.read(state)
    assert_same_state(state, snapshot)
    assert_same_output(first, second)


def test_clone_is_independent_of_later_updates(case):
    _, memory = case
    feats = features(case, 30, seed=2)
    state = stream(memory, feats[:7], [3, 4])
    before, witness = state.clone(), state.clone()
    storages = {t.untyped_storage().data_ptr() for t in walk(state) if t.numel()}
    assert not storages & {t.untyped_storage().data_ptr() for t in walk(before) if t.numel()}
    stream(memory, feats[7:], [1] * (len(feats) - 7), state)
    assert state.frames_seen > before.frames_seen
    assert_same_state(before, witness)
    assert_same_output(memory.read(before), memory.read(stream(memory, feats[:7], [7])))


# --- fixed size over a long stream ------------------------------------------------------------------------------


def test_fixed_size_state_and_capped_bank_over_2000_updates(case, one_thread):
    spec, memory = case
    feats = features(case, 2 * 2000, seed=3)[:2000]  # 2000 input rows (frames, or temporal patches)
    state = memory.init_state()
    full = rows_per_frames(case, memory.exact_streaming_frames())  # the clusters are full from here on
    cap = memory.bank_capacity
    device_sizes, bank_sizes, bank_entries = [], [], []
    for row in range(2000):
        memory.update(state, feats[row:row + 1])
        device_sizes.append(state.device_nbytes())
        bank_sizes.append(state.bank_nbytes())
        bank_entries.append(state.bank_entries)
    assert len(set(device_sizes[full:])) == 1
    assert device_sizes == sorted(device_sizes)  # grows while filling, never shrinks
    first_full_bank = next(i for i in range(2000) if bank_sizes[i] == max(bank_sizes))
    assert first_full_bank < 2 * cap and len(set(bank_sizes[first_full_bank:])) == 1
    assert max(bank_entries) == cap  # the bank fills up to its cap and never beyond
    out = memory.read(state)
    assert memory.decoder_tokens(out) == memory.num_tokens(state.frames_seen, spec.grid_hw)


# --- streaming vs offline ---------------------------------------------------------------------------------------


def test_one_update_of_a_whole_clip_reads_like_compress(case):
    _, memory = case
    for num_frames in (1, 2, 3, memory.exact_streaming_frames(), memory.exact_streaming_frames() + 5):
        feats = features(case, num_frames, seed=num_frames)
        assert len(feats) <= memory.bank_capacity  # the bank still holds the whole clip
        state = memory.update(memory.init_state(), feats)
        assert_same_output(memory.read(state), memory.compress(feats))


def test_any_chunking_reads_like_compress_up_to_exact_streaming_frames(case):
    _, memory = case
    limit = memory.exact_streaming_frames()
    clip = features(case, limit, seed=4)
    for num_rows in range(1, len(clip) + 1):
        feats = clip[:num_rows]
        offline = memory.compress(feats)
        for chunks in chunkings(num_rows):
            assert_same_output(memory.read(stream(memory, feats, chunks)), offline)


def test_num_tokens_counts_the_decoder_tokens_of_compress(case):
    spec, memory = case
    for num_frames in (1, 2, 3, 4, 7, 12, 40):
        out = memory.compress(features(case, num_frames, seed=num_frames))
        assert memory.decoder_tokens(out) == memory.num_tokens(num_frames, spec.grid_hw), num_frames
        assert sum(out.segments.values()) == out.num_tokens
    if spec.grid_hw is None:  # the config fixes the grid: optional, and a different one is an error
        assert memory.num_tokens(5) == memory.num_tokens(5, None)
        with pytest.raises(ValueError, match="grid_hw"):
            memory.num_tokens(5, (3, 3))
    else:  # the grid depends on the frame size: required
        with pytest.raises(ValueError, match="grid_hw"):
            memory.num_tokens(5)


def test_streamed_token_count_and_frames_seen(case):
    spec, memory = case
    feats = features(case, 36, seed=5)
    state = stream(memory, feats, chunkings(len(feats))[2])
    assert state.frames_seen == 36
    assert memory.decoder_tokens(memory.read(state)) == memory.num_tokens(36, spec.grid_hw)


# --- dtypes and devices -----------------------------------------------------------------------------------------


def test_bf16_inputs_give_bf16_tokens(case):
    _, memory = case
    for num_frames in (1, 4, memory.exact_streaming_frames(), memory.exact_streaming_frames() + 5):
        half = features(case, num_frames, seed=6, dtype=torch.bfloat16)
        offline = memory.compress(half)
        assert offline.tokens.dtype == torch.bfloat16  # compress: the dtype of the features
        state = memory.update(memory.init_state(dtype=torch.bfloat16), half)
        assert_same_output(memory.read(state), offline)  # read: the state's dtype
        if num_frames <= memory.exact_streaming_frames():  # no clustering decision to flip
            full = memory.compress(half.to(dtype=torch.float32))
            assert offline.segments == full.segments
            torch.testing.assert_close(offline.tokens.float(), full.tokens, rtol=2e-2, atol=2e-2)


def test_state_to_moves_every_tensor_and_returns_itself(case):
    _, memory = case
    feats = features(case, 20, seed=7)
    state = stream(memory, feats, [3, 3, len(feats) - 6])
    moved = state.clone()
    assert moved.to("meta") is moved
    tensors = list(walk(moved))
    assert len(tensors) == len(list(walk(state))) and all(t.device.type == "meta" for t in tensors)
    assert all(t.device.type == "cpu" for t in walk(state))
    back = state.clone().to("cpu")
    assert_same_state(back, state)


@pytest.mark.gpu
def test_cuda_round_trip(case):
    _, memory = case
    feats = features(case, 30, seed=8)
    cpu_state = stream(memory, feats[:6], [6])
    gpu_memory = copy.deepcopy(memory).cuda()
    gpu_state = cpu_state.clone().to("cuda")
    assert all(t.is_cuda for t in walk(gpu_state))
    rest = feats[6:]
    gpu_memory.update(gpu_state, rest.to(device="cuda"))
    memory.update(cpu_state, rest)
    on_gpu, on_cpu = gpu_memory.read(gpu_state), memory.read(cpu_state)
    assert on_gpu.tokens.is_cuda and on_gpu.segments == on_cpu.segments
    torch.testing.assert_close(on_gpu.tokens.cpu(), on_cpu.tokens, rtol=1e-5, atol=1e-5)
    home = gpu_state.to("cpu")
    torch.testing.assert_close(memory.read(home).tokens, on_cpu.tokens, rtol=1e-5, atol=1e-5)
