"""selfspec.errors: the error classes."""
from selfspec.errors import CheckpointError, InputError


def test_checkpoint_error_is_input_error():
    assert issubclass(CheckpointError, InputError)
