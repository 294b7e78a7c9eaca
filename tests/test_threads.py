"""CPU threads: chosen by timing the work (runtime.ThreadTuner), settable with --threads on every
command that runs a model, and refused with one line when out of range. The tuner's choices are
tested with an injected clock: each piece of work costs what the test says it does."""

from __future__ import annotations

import pytest
import torch

from charlstm.config import MAX_THREADS_PER_CORE, TrainConfig, available_cores
from charlstm.errors import OptionError
from charlstm.runtime import (
    CLOSE_THREADS_GAIN,
    ThreadTuner,
    check_threads,
    choose_threads,
    cpu_threads,
    threads_too_close,
    work_done,
)
from tests.tiny import TINY_KWARGS, tiny_args, word_text


class FakeMachine:
    """A clock and a thread setting: a piece of `units` characters takes units / rate[threads]
    seconds, where the rates can change (another program starts or stops)."""

    def __init__(self, rates: dict[int, float], switch_s: float = 0.0) -> None:
        self.rates, self.now, self.threads, self.switches = dict(rates), 0.0, 0, []
        # what a change to more threads costs once: a woken thread first waits for a core
        self.switch_s, self._switched = switch_s, False

    def clock(self) -> float:
        return self.now

    def apply(self, threads: int) -> None:
        self._switched = self._switched or threads > self.threads
        self.threads = threads
        self.switches.append(threads)

    def work(self, tuner: ThreadTuner, pieces: int, units: float = 1000.0) -> None:
        for _ in range(pieces):
            self.now += units / self.rates[self.threads] + self.switch_s * self._switched
            self._switched = False
            tuner.tick(units)


def tuner_on(machine: FakeMachine, **kwargs) -> ThreadTuner:
    return ThreadTuner((2, 1), clock=machine.clock, apply=machine.apply, **kwargs)


def test_the_faster_count_is_kept_and_fewer_threads_must_win_clearly():
    assert choose_threads({2: 10_000.0, 1: 6_000.0}) == 2
    assert choose_threads({2: 3_600.0, 1: 5_400.0}) == 1
    assert choose_threads({2: 10_000.0, 1: 10_500.0}) == 2  # < 1.1x: a noisy trial's margin
    assert choose_threads({8: 1_000.0, 4: 1_500.0, 1: 1_200.0}) == 4
    assert choose_threads({4: 1.0}) == 4
    assert choose_threads({2: 820.0, 1: 876.0}, gain=CLOSE_THREADS_GAIN) == 1  # a second turn
    assert choose_threads({2: 1_000.0, 1: 1_020.0}, gain=CLOSE_THREADS_GAIN) == 2
    assert threads_too_close({2: 820.0, 1: 876.0}) and threads_too_close({2: 1_050.0, 1: 1_000.0})
    assert not threads_too_close({2: 10_000.0, 1: 6_000.0})
    assert not threads_too_close({2: 3_600.0, 1: 5_400.0})


def test_the_trial_times_each_count_on_the_work_and_keeps_the_faster():
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    chosen = []
    tuner = tuner_on(machine, on_choice=lambda t: chosen.append(t.threads))
    assert machine.threads == 2  # the trial begins at all cores
    machine.work(tuner, 40)
    assert tuner.trials == 1 and chosen == [2]
    assert tuner.rates == pytest.approx({2: 10_000.0, 1: 6_000.0})
    assert machine.threads == 2
    # set up, then A B: 1.67x apart, clear on one piece each; 2 threads again
    assert machine.switches == [2, 2, 1, 2]
    assert tuner.describe() == "2 threads (2: 10,000, 1: 6,000 chars/s)"


def test_a_gap_that_is_not_clear_is_timed_a_b_b_a():
    machine = FakeMachine({2: 10_000.0, 1: 7_700.0})
    tuner = tuner_on(machine)
    machine.work(tuner, 40)
    assert tuner.trials == 1 and tuner.threads == 2
    assert machine.switches == [2, 2, 1, 1, 2, 2]  # set up, then A B B A and back: one turn
    assert tuner.rates == pytest.approx({2: 10_000.0, 1: 7_700.0})


def test_a_trial_of_long_steps_runs_one_step_at_the_slower_count():
    """Training idle on 2 cores: steps of ~1 s, 1 thread at 0.56x of 2. The trial's pieces at 1
    thread cost the run; a clear gap needs one (none untimed: fewer threads wake nothing)."""
    machine = FakeMachine({2: 4_890.0, 1: 2_744.0}, switch_s=0.3)
    tuner = tuner_on(machine)
    steps = []
    for _ in range(20):
        steps.append(machine.threads)
        machine.work(tuner, 1, units=4_096.0)
    assert steps.count(1) == 1 and tuner.threads == 2


def test_counts_too_close_to_call_are_timed_a_second_turn():
    """Measured beside one busy process (eval --dynamic): 2: 820 / 1: 876 chars/s. One thread
    is 1.07x faster, inside the 1.1x margin a single turn needs, and 2 threads were kept at
    0.92x of --threads 1. A second turn is timed and the sum decides with a smaller margin."""
    machine = FakeMachine({2: 820.0, 1: 876.0})
    tuner = tuner_on(machine)
    machine.work(tuner, 40, units=100.0)
    assert tuner.trials == 1 and tuner.threads == 1 and machine.threads == 1
    assert machine.switches[:10] == [2, 2, 1, 1, 2, 2, 1, 1, 2, 1]  # A B B A, A B B A, chosen
    assert tuner.rates == pytest.approx({2: 820.0, 1: 876.0})


def test_the_first_piece_after_a_switch_is_not_timed():
    """Beside two busy programs a thread woken at a switch first waits for a core: the trials
    measured 1 thread 1.1-2x faster where fixed runs gave 2 threads 1.03-1.12x (batch-1 eval,
    bench/contention.py). Charged to the new count alone, that wait chose 1 thread."""
    machine = FakeMachine({2: 4_500.0, 1: 4_200.0}, switch_s=0.15)
    tuner = tuner_on(machine)
    machine.work(tuner, 60, units=300.0)
    assert tuner.trials == 1 and tuner.threads == 2
    assert tuner.rates == pytest.approx({2: 4_500.0, 1: 4_200.0})


def test_a_noisy_first_turn_is_outweighed_by_the_second():
    """A 2-thread turn slowed by a passing burst looks no faster than 1 thread; the second
    turn times the counts as they are, and 2 threads are kept."""
    machine = FakeMachine({2: 9_500.0, 1: 10_000.0})
    tuner = tuner_on(machine)
    while len(machine.switches) < 6:  # the first turn's 4 pieces of timing, until the second
        machine.work(tuner, 1)
    machine.rates = {2: 16_000.0, 1: 10_000.0}
    machine.work(tuner, 40)
    assert tuner.trials == 1 and tuner.threads == 2 and machine.threads == 2
    assert 9_500.0 < tuner.rates[2] < 16_000.0 and tuner.rates[1] == pytest.approx(10_000.0)


def test_a_busy_core_is_noticed_and_one_thread_taken():
    """Beside a busy program 2 threads fall to a third of their rate: the observed rate is
    below recheck_below x the measured one, so the counts are timed again."""
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    tuner = tuner_on(machine)
    machine.work(tuner, 40)
    assert tuner.threads == 2
    machine.rates = {2: 3_000.0, 1: 5_500.0}
    machine.work(tuner, 60)
    assert tuner.trials == 2 and tuner.threads == 1 and machine.threads == 1
    assert tuner.rates[1] == pytest.approx(5_500.0)


def test_a_load_that_went_away_is_found_by_the_periodic_recheck():
    machine = FakeMachine({2: 3_000.0, 1: 5_500.0})
    tuner = tuner_on(machine, recheck_every_s=30.0)
    machine.work(tuner, 30)
    assert tuner.threads == 1
    machine.rates = {2: 10_000.0, 1: 6_000.0}  # one thread runs faster: nothing looks slow
    machine.work(tuner, 300)  # ~50 s of work
    assert tuner.threads == 2 and tuner.trials >= 2


def test_a_steady_answer_is_asked_less_often_and_a_changed_one_soon():
    """The periodic trial comes 10 s after the first, then 20, 40, 80 while the answer stays;
    after a trial that changed the count, 10 s again."""
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    ends = []
    tuner = tuner_on(machine, on_choice=lambda t: ends.append((machine.now, t.threads)))
    while machine.now < 160.0:
        machine.work(tuner, 1, units=200.0)
    gaps = [b[0] - a[0] for a, b in zip(ends, ends[1:], strict=False)]
    # a gap is the interval, the trial's own second, and at most one 2 s window of checking
    assert [g - i for g, i in zip(gaps, [10, 20, 40, 80], strict=False)] == [
        pytest.approx(1.5, abs=1.5)
    ] * 4
    assert {t for _, t in ends} == {2}
    machine.rates = {2: 3_000.0, 1: 5_500.0}  # a busy program: 2 threads look slow, 1 is taken
    start = len(ends)
    while machine.now < 200.0:
        machine.work(tuner, 1, units=200.0)
    assert ends[start][1] == 1 and 10.0 <= ends[start + 1][0] - ends[start][0] <= 14.0


def test_a_long_trial_is_repeated_only_after_ten_times_its_length():
    """Training steps of 2 s: a trial of a few steps each way must not take a fifth of the run."""
    machine = FakeMachine({2: 2_000.0, 1: 1_500.0})
    ends = []
    tuner = tuner_on(machine, on_choice=lambda t: ends.append(machine.now))
    while machine.now < 600.0:
        machine.work(tuner, 1, units=4_000.0)
    assert len(ends) >= 2 and ends[0] >= 10.0
    assert all(b - a >= 10 * ends[0] for a, b in zip(ends, ends[1:], strict=False))


def test_recheck_and_skip():
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    tuner = tuner_on(machine)
    machine.work(tuner, 40)
    trials = tuner.trials
    machine.now += 100.0  # a validation: not the work's time
    tuner.skip()
    tuner.recheck()
    machine.work(tuner, 40)
    assert tuner.trials == trials + 1 and tuner.rates[2] == pytest.approx(10_000.0)


def test_the_slow_first_piece_after_a_validation_is_not_timed():
    """Measured idle: the first training step after a validation ran at half speed, fell on
    2 threads' first turn of the trial, and 1 thread was chosen for the next 10 s (8,381
    against 13,701 chars/s, where 2 threads train at 18,000)."""
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    tuner = tuner_on(machine)
    machine.work(tuner, 40)
    tuner.skip()
    tuner.recheck()
    machine.now += 1000.0 / 1_000.0  # the cold piece: ten times slower than 2 threads' rate
    tuner.tick(1000.0)
    machine.work(tuner, 40)
    assert tuner.trials == 2 and tuner.threads == 2
    assert tuner.rates[2] == pytest.approx(10_000.0)


def test_given_rates_need_no_trial_and_one_candidate_never_switches():
    machine = FakeMachine({2: 10_000.0, 1: 6_000.0})
    tuner = tuner_on(machine, rates={2: 4_000.0, 1: 5_000.0})
    assert machine.threads == 1 and tuner.trials == 0
    single = ThreadTuner((1,), clock=machine.clock, apply=machine.apply)
    machine.work(single, 100)
    assert set(machine.switches[-1:]) == {1} and single.trials == 0


def test_cpu_threads_restores_the_count_and_feeds_the_loops():
    before = torch.get_num_threads()
    with cpu_threads(1, torch.device("cpu")) as tuner:
        assert tuner is None and torch.get_num_threads() == 1
        work_done(100)  # nothing to time: no error
    with cpu_threads(0, torch.device("cpu")) as tuner:
        assert tuner is not None
        work_done(100)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [-1, MAX_THREADS_PER_CORE * available_cores() + 1, 10**9, True,
                                 1.5, "2"])  # fmt: skip
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(OptionError, match="--threads must be a whole number from 0"):
        check_threads(bad)
    with pytest.raises(OptionError, match="--threads"):
        TrainConfig(threads=bad)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from charlstm import tokenize, train

    root = tmp_path_factory.mktemp("threads")
    (root / "corpus.txt").write_text(word_text(3000), encoding="utf-8")
    data = tokenize(root / "corpus.txt", root / "tok").out
    train(data, root / "run", **TINY_KWARGS, steps=4, device="cpu")
    return root


@pytest.mark.parametrize(
    "command",
    [
        ["train", "{root}/tok", "--out", "{root}/new", *tiny_args(steps=2)],
        ["eval", "{root}/run/best.pt"],
        ["eval", "{root}/run/best.pt", "--dynamic", "--dynamic-segment", "20"],
        ["sample", "{root}/run/best.pt", "--length", "5"],
        ["inspect", "{root}/run/best.pt", "--prime", "the cat"],
    ],
    ids=["train", "eval", "eval-dynamic", "sample", "inspect"],
)
def test_every_command_takes_threads_and_refuses_bad_ones(tiny_run, run_cli, command):
    args = [a.format(root=tiny_run) for a in command]
    ok = run_cli(*args, "--threads", "1")
    assert ok.exit_code == 0, ok.stderr
    for bad in ("-1", str(MAX_THREADS_PER_CORE * available_cores() + 1)):
        result = run_cli(*args, "--threads", bad, *(["--force"] if args[0] == "train" else []))
        assert result.exit_code == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--threads" in lines[0] and bad in lines[0], result.stderr
    not_a_number = run_cli(*args, "--threads", "two")
    assert not_a_number.exit_code == 2 and "--threads" in not_a_number.stderr


def test_serve_refuses_bad_threads_before_listening(tiny_run, run_cli):
    result = run_cli("serve", f"{tiny_run}/run/best.pt", "--threads", "-3", "--port", "0")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--threads must be" in result.stderr


def test_eval_reports_the_threads_it_ran_with(tiny_run):
    from charlstm import evaluate

    assert evaluate(tiny_run / "run" / "best.pt", threads=1).threads == 1


def test_the_run_header_says_how_threads_are_chosen(tiny_run, monkeypatch):
    """With 2 threads to choose from, the header names the candidates, and the first trial
    on the real steps says what it chose (a message with both figures). The trial's minimum
    time is set to 0 here, so that it ends after its 4 steps however fast they run."""
    from charlstm import train
    from charlstm.runtime import ThreadTuner

    monkeypatch.setitem(ThreadTuner.__init__.__kwdefaults__, "trial_s", 0.0)

    class Capture:
        def __init__(self):
            self.info, self.messages = None, []

        def start(self, info):
            self.info = info

        def message(self, text):
            self.messages.append(text)

        def __getattr__(self, name):  # the other Reporter methods: not needed here
            return lambda *a, **k: None

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fixed, auto = Capture(), Capture()
        train(tiny_run / "tok", tiny_run / "fixed", **TINY_KWARGS, steps=2, threads=1,
              device="cpu", reporter=fixed)  # fmt: skip
        train(tiny_run / "tok", tiny_run / "auto", **TINY_KWARGS, steps=20, device="cpu",
              eval_every=1000, reporter=auto)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert fixed.info.threads == "1 (--threads)"
    assert auto.info.threads == "2 (auto: 2 and 1 timed on the first steps and at each validation)"
    said = [m for m in auto.messages if m.startswith("threads: ")]
    assert said and "chars/s" in said[0] and ("2: " in said[0] and "1: " in said[0])
