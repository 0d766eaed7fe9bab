"""AM-RoPE position ids: the paper layout (no overlap) and the published code's layout, batched."""

import pytest
import torch

from flash_vstream.model.qwen2vl_rope import (
    MemoryLayout,
    batch_position_ids,
    memory_position_ids,
    sequence_position_ids,
)


def layout(dam_times=(5, 2, 9), csm_times=(0, 1, 4, 8, 11), dam_grid=(2, 3), csm_grid=(1, 2)) -> MemoryLayout:
    return MemoryLayout(torch.tensor(dam_times), torch.tensor(csm_times), dam_grid, csm_grid)


def slow_ids(lay: MemoryLayout, start: int, shift_csm: int = 0) -> list[tuple[int, int, int]]:
    """Token-by-token statement of AM-RoPE: DAM (t=true index, h, w) then CSM (t=rounded stamp, h, w) + offsets."""
    ids = []
    for t in lay.dam_times.tolist():
        for h in range(lay.dam_grid[0]):
            for w in range(lay.dam_grid[1]):
                ids.append((start + t, start + h, start + w))
    for t in lay.csm_times.tolist():
        for h in range(lay.csm_grid[0]):
            for w in range(lay.csm_grid[1]):
                ids.append((start + shift_csm + t, start + shift_csm + h, start + shift_csm + w))
    return ids


def test_paper_ids_follow_memory_times():
    lay = layout()
    ids, next_id = memory_position_ids(lay, start=7, mode="paper")
    assert ids.shape == (3, lay.num_tokens) == (3, 3 * 6 + 5 * 2)
    assert [tuple(c) for c in ids.T.tolist()] == slow_ids(lay, 7)
    assert next_id == int(ids.max()) + 1 == 7 + 11 + 1


def test_reference_ids_reproduce_published_layout():
    lay = layout()
    ids, next_id = memory_position_ids(lay, start=7, mode="reference")
    spa_size = 3 * 6  # DAM token count
    assert [tuple(c) for c in ids.T.tolist()] == slow_ids(lay, 7, shift_csm=spa_size)
    # Text after the video follows the virtual grid: start + |DAM| + max(N_csm, h_csm, w_csm).
    assert next_id == 7 + spa_size + max(5, 1, 2)
    # ...which late CSM timestamps overtake: the overlap the published code has.
    assert int(ids.max()) >= next_id


def test_text_after_video_is_monotone_unique_and_above_visual_ids():
    lay = layout(csm_times=(0, 3, 40, 90, 120))
    types = torch.tensor([0] * 4 + [2] * lay.num_tokens + [0] * 6)
    ids = sequence_position_ids(types, [lay], "paper")
    visual, text_after = ids[:, 4 : 4 + lay.num_tokens], ids[:, 4 + lay.num_tokens :]
    assert ids[:, :4].tolist() == [[0, 1, 2, 3]] * 3
    assert bool((text_after[:, 1:] - text_after[:, :-1] == 1).all())  # monotone, unique
    assert int(text_after.min()) > int(visual.max())  # never overlaps a visual id
    ref = sequence_position_ids(types, [lay], "reference")
    assert int(ref[:, 4 + lay.num_tokens :].min()) <= int(ref[:, 4 : 4 + lay.num_tokens].max())


def test_batch_with_left_padding_equals_single_samples():
    a, b = layout(), layout(dam_times=(1,), csm_times=(0, 3), dam_grid=(1, 1), csm_grid=(1, 1))
    seq_a = torch.tensor([0] * 3 + [2] * a.num_tokens + [0] * 2)
    seq_b = torch.tensor([0] * 2 + [2] * b.num_tokens + [0] * 4)
    length = max(len(seq_a), len(seq_b))
    types = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    for row, seq in enumerate((seq_a, seq_b)):
        types[row, length - len(seq) :] = seq
        mask[row, length - len(seq) :] = 1
    for mode in ("paper", "reference"):
        ids, deltas = batch_position_ids(types, [a, b], mask, mode)
        for row, (seq, lay) in enumerate(((seq_a, a), (seq_b, b))):
            single = sequence_position_ids(seq, [lay], mode)
            assert torch.equal(ids[:, row, length - len(seq) :], single)
            assert int(deltas[row]) == int(single[0, -1]) + 1 - len(seq)
            assert bool((ids[:, row, : length - len(seq)] == 0).all())


def test_mismatched_video_run_raises():
    lay = layout()
    with pytest.raises(ValueError, match="Flash Memory produced"):
        sequence_position_ids(torch.tensor([0, 2, 2, 0]), [lay])
    with pytest.raises(ValueError, match="no <\\|video_pad\\|> run"):
        batch_position_ids(torch.zeros(1, 3, dtype=torch.long), [lay])
    with pytest.raises(ValueError, match="rope_mode"):
        memory_position_ids(lay, 0, "virtual")


def test_deltas_continue_after_the_video_block():
    """Generation continues where the video block's layout says, also when the prompt ends on the video."""
    lay = layout()
    for tail in (0, 3):
        types = torch.tensor([[0] * 2 + [2] * lay.num_tokens + [0] * tail])
        paper_ids, paper_delta = batch_position_ids(types, [lay], mode="paper")
        assert int(paper_delta) == int(paper_ids.max()) + 1 - types.shape[1]
        _, ref_delta = batch_position_ids(types, [lay], mode="reference")
        # start 2 + |DAM| 18 + max(N_csm, h_csm, w_csm) 5, then the tail of text
        assert int(ref_delta) == 2 + 18 + 5 + tail - types.shape[1]
