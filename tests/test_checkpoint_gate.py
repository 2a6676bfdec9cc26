"""The trainable's checkpoint gate: no state checkpoint in a trial's first interval, then at most one per interval."""
from orchestrator.run.trainable import MIN_CHECKPOINT_INTERVAL_S, CheckpointGate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_checkpoint_before_the_first_interval_then_one_per_interval():
    clock = FakeClock()
    due = CheckpointGate(30.0, clock)
    offered = []
    for t in (0.0, 5.0, 29.9, 30.0, 45.0, 59.9, 60.1, 61.0, 200.0):
        clock.now = 100.0 + t
        offered.append(due())
    assert offered == [False, False, False, True, False, False, True, False, True]


def test_a_short_trial_saves_no_training_state():
    clock = FakeClock()
    due = CheckpointGate(clock=clock)
    clock.now += MIN_CHECKPOINT_INTERVAL_S - 0.5  # a trial shorter than one interval
    assert not due()
