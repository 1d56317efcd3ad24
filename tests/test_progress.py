"""The CLI's one progress helper (genre_core/progress.py): plain lines off a terminal, tqdm on one."""

from __future__ import annotations

import io

from genre_core.commands.progress import TerminalProgress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_plain_line_per_tenth_and_no_carriage_returns():
    stream = io.StringIO()
    progress = TerminalProgress("work", stream=stream, bar_stages=None)
    for done in range(0, 101):
        progress({"stage": "prepare", "done": done, "total": 100, "message": "decoding"})
    progress({"stage": "prepare", "done": 100, "total": 100})
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 11
    assert lines[0].startswith("work: 0/100 (0%,") and lines[0].endswith("decoding")
    assert lines[-1].startswith("work: 100/100 (100%,")


def test_training_events_off_a_terminal_throttle_batches_and_keep_every_epoch_summary():
    stream = io.StringIO()
    progress = TerminalProgress(stream=stream, min_seconds=3600)
    for epoch in range(1, 4):
        for batch in range(1, 21):
            progress({"stage": "batch", "done": batch, "total": 20, "message": f"epoch {epoch}, batch {batch}"})
        progress({"stage": "epoch", "done": epoch, "total": 3, "message": f"epoch {epoch}/3: loss 0.5"})
    progress({"stage": "done", "done": 1, "total": 1, "message": "finished: test accuracy 0.900"})
    lines = stream.getvalue().splitlines()
    # The first batch line of the stage prints; later ones wait for min_seconds; every summary prints.
    assert lines == [lines[0], "epoch 1/3: loss 0.5", "epoch 2/3: loss 0.5", "epoch 3/3: loss 0.5",
                     "finished: test accuracy 0.900"]
    assert lines[0].startswith("batch: 1/20 (5%,") and lines[0].endswith("epoch 1, batch 1")


def test_on_a_terminal_a_tqdm_bar_per_stage_and_messages_on_their_own_lines():
    stream = FakeTerminal()
    progress = TerminalProgress(stream=stream)
    for done in range(1, 11):
        progress({"stage": "features", "done": done * 10, "total": 100, "message": "backbone features"})
    progress({"stage": "epoch", "done": 1, "total": 1, "message": "epoch 1/1: loss 0.5"})
    progress.close()
    text = stream.getvalue()
    # tqdm draws the bar in place and clears it when the stage ends; summaries stay as lines.
    assert "\rfeatures:" in text and "/100 [" in text
    assert text.endswith("epoch 1/1: loss 0.5\n")
