"""Helpers shared by the command-line and training tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import click
from click.testing import CliRunner, Result


def invoke(command: click.Command, *args, ok: bool = True) -> Result:
    """Run ``command`` in this process with ``args`` (each turned into a string); unless
    ``ok`` is False, assert that it exited with status 0, showing its output if not."""
    result = CliRunner().invoke(command, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """The (step, value) pairs of every scalar tag of the TensorBoard event files in ``folder``,
    read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
