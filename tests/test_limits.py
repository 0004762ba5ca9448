"""selfspec.limits: the memory bound on work for untrusted input."""
import resource

import pytest

from selfspec.limits import memory_limit


def test_memory_limit_bounds_the_block_and_is_lifted_after_it():
    limits = resource.getrlimit(resource.RLIMIT_AS)
    with memory_limit(64 << 20):
        assert resource.getrlimit(resource.RLIMIT_AS) != limits
        small = bytearray(16 << 20)  # within the bound
        with pytest.raises(MemoryError):
            bytearray(1 << 30)
    assert resource.getrlimit(resource.RLIMIT_AS) == limits
    assert len(bytearray(1 << 30)) + len(small) > 1 << 30  # the same allocation, once the bound is lifted


def test_a_tighter_limit_already_in_place_is_kept():
    with memory_limit(64 << 20):
        inner_before = resource.getrlimit(resource.RLIMIT_AS)
        with memory_limit(1 << 40):
            assert resource.getrlimit(resource.RLIMIT_AS) == inner_before
        assert resource.getrlimit(resource.RLIMIT_AS) == inner_before
