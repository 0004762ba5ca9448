"""selfspec.errors: the error classes, and how entry points end."""
import os
import signal

import pytest

from selfspec.errors import CheckpointError, InputError, run_main
from selfspec.folder import output_folder


def test_checkpoint_error_is_input_error():
    assert issubclass(CheckpointError, InputError)


def test_sigterm_ends_an_entry_point_and_removes_what_it_was_writing(tmp_path):
    def main():
        with output_folder(tmp_path / "out") as partial:
            (partial / "half.bin").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` sends it
            pytest.fail("SIGTERM did not end the entry point")

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert info.value.code == 143 and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back


def test_a_closed_stdout_or_stderr_is_no_traceback(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr("sys.stdout", None)  # as `>&-` starts a program
    assert run_main(lambda: ran.append(1)) == 2 and ran == []  # nothing could be printed: nothing is run
    assert capsys.readouterr().err == "error: standard output is closed\n"
    monkeypatch.undo()

    def bad_input():
        raise InputError("bad")

    monkeypatch.setattr("sys.stderr", None)  # `2>&-`: the error line is dropped, not printed into stdout
    assert run_main(bad_input) == 2
    assert capsys.readouterr().out == ""
