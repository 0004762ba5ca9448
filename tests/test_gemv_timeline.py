"""bench/gemv_timeline.py's reading of the GEMV blocks' stamps (synthetic stamps, no GPU)."""
import pytest
import torch

from bench.gemv_timeline import launches, phases, tiling_changes, timer_tick_ns
from selfspec.errors import InputError

# Per kind, two blocks a launch: (start, wait returned, x ready, end) in microseconds from the layer's start.
LAYER = {
    "W_pack": [(0, 2, 3, 10), (1, 2.5, 3.5, 12)],
    "o_proj": [(30, 32, 33, 36), (30, 32, 33, 36)],
    "gate_up": [(35, 37, 38, 50), (35, 37, 38.5, 50)],
    "down": [(49, 51, 52, 60), (49, 51, 52, 61)],
}

TILES = {"W_pack": (1, 2)}  # tiles each block takes; one elsewhere


def stamped(layers=2, layer_us=100):
    """(kind, blocks) as read_stamps gives them (ns; SM 0; W_pack's first block two tiles, the rest one)."""
    return [(kind, torch.tensor([[int((layer * layer_us + t) * 1000) for t in block] + [0, tiles]
                                 for layer in range(layers) for block, tiles in zip(blocks, TILES.get(kind, (1, 1)))],
                                dtype=torch.int64))
            for kind, blocks in LAYER.items()]


def test_launches_are_split_per_layer_and_ordered_by_their_wait():
    out = launches(stamped(), layers=2)
    assert [launch["kind"] for launch in out] == ["W_pack", "o_proj", "gate_up", "down"] * 2
    w_pack = out[4]  # the second layer's
    assert w_pack["start"] == pytest.approx(100) and w_pack["waited"] == pytest.approx(102)
    assert w_pack["last_waited"] == pytest.approx(102.5) and w_pack["end"] == pytest.approx(112)
    assert w_pack["body"] == pytest.approx(7.75) and w_pack["body_max"] == pytest.approx(8.5)


def test_phases_are_medians_over_launches_with_the_gap_from_the_gemv_before():
    rows = phases([launches(stamped(), layers=2)], {kind: 1.0 for kind in LAYER})
    # gap: the first layer's down ends at 61, the second W_pack's wait returns at 102
    assert rows["W_pack"] == dict(early=2, gap=41, release=0.5, prologue=1, body=7.75, body_max=8.5, tiles=2,
                                  extra_tile=1.5, span=10, floor=1.0, tail=1)
    assert rows["o_proj"]["tiles"] == 1 and rows["o_proj"]["extra_tile"] is None
    assert rows["o_proj"]["gap"] == 20  # W_pack's last block end to o_proj's wait: the attention between
    assert rows["gate_up"]["gap"] == 1 and rows["gate_up"]["prologue"] == 1.25
    assert rows["down"]["gap"] == 1 and rows["down"]["tail"] == 0.5


def test_a_block_count_that_does_not_fit_the_layers_is_an_error():
    with pytest.raises(RuntimeError, match="not a multiple of 3 layers"):
        launches(stamped(layers=2), layers=3)


def test_tiling_changes_are_fields_of_the_tiling():
    assert tiling_changes(["blocks_per_sm=4", "launch_next_early=0"]) == dict(blocks_per_sm=4, launch_next_early=False)
    for bad in ("stages=2", "rows", "rows=two"):
        with pytest.raises(InputError, match="FIELD=INTEGER"):
            tiling_changes([bad])


def test_the_timer_tick_is_the_smallest_step_between_stamps():
    blocks = torch.tensor([[1000, 1032, 1064, 2000, 0, 1], [1000, 1096, 1160, 2000, 0, 1]])
    assert timer_tick_ns([blocks]) == 32
