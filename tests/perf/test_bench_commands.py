"""The benchmark commands run end to end (tiny settings; the figures in docs/performance.md come from
the same commands with the settings given there). Timings are not asserted: only that every
contestant trained, that the losses agree, and that the table holds what the docs say it holds."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from engine.cli.main import main


def _table_rows(text: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in row] for row in rows]


def _bench_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "hookmix-bench-*")))


def test_bench_overhead_repeats_fresh_contestants(capsys):
    before = _bench_dirs()
    assert main(["bench", "overhead", "--workload", "mlp", "--steps", "3", "--repeats", "2", "--noop", "2"]) == 0
    out = capsys.readouterr().out
    header, row = _table_rows(out)
    assert header == ["workload", "plain", "plain copy", "hookmix", "hookmix+2", "max loss diff"]
    assert row[0] == "mlp" and row[-1] == "0.0e+00"  # every contestant's loss equals the plain loop's
    per_repeat = [line for line in out.splitlines() if line.startswith("mlp ratios per repeat:")]
    assert len(per_repeat) == 1 and per_repeat[0].count(" ") >= 9  # two ratios for each of 3 contestants
    assert _bench_dirs() <= before  # the engines' temporary run directories are removed


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--repeats", "-1"], ["--repeats", "two"]])
def test_bench_counts_must_be_whole_numbers_from_one(argv, capsys):
    assert main(["bench", "overhead", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a whole number >= 1" in err[0]


def test_bench_ddp_reports_efficiency_and_the_no_communication_ceiling(capsys):
    before = _bench_dirs()
    assert main(["bench", "ddp", "--workload", "mlp", "--steps", "2", "--repeats", "1"]) == 0
    header, row = _table_rows(capsys.readouterr().out)
    values = dict(zip(header, row))
    single, ddp, pair = (
        float(values[k]) for k in ("1 rank step (ms)", "2 ranks DDP step (ms)", "2 independent ranks at once (ms)")
    )
    assert single > 0 and ddp > 0 and pair > 0
    # one repeat: the median of the per-repeat ratios is the ratio of the medians
    assert float(values["weak-scaling efficiency"]) == pytest.approx(single / ddp, rel=0.01)
    assert float(values["ceiling (no communication)"]) == pytest.approx(single / pair, rel=0.01)
    assert _bench_dirs() <= before


def test_bench_overhead_can_rotate_the_order_as_the_earlier_method_did(capsys):
    assert main(["bench", "overhead", "--workload", "tiny", "--steps", "2", "--noop", "0", "--order", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "rotated order" in out
    header, row = _table_rows(out)
    assert header == ["workload", "plain", "plain copy", "hookmix", "max loss diff"] and row[-1] == "0.0e+00"


def test_bench_overhead_interleaves_turns_of_one_step_or_of_a_log_interval(capsys):
    assert main(["bench", "overhead", "--workload", "tiny", "--steps", "3", "--noop", "0"]) == 0
    out = capsys.readouterr().out
    assert "turns of 1 step(s)" in out and _table_rows(out)[1][-1] == "0.0e+00"  # the default
    assert (
        main(["bench", "overhead", "--workload", "tiny", "--steps", "20", "--noop", "0", "--interleave", "block"]) == 0
    )
    out = capsys.readouterr().out
    assert "turns of 10 step(s)" in out and _table_rows(out)[1][-1] == "0.0e+00"


def test_the_trainers_turn_is_the_sum_of_its_steps_times():
    from engine.bench.overhead import turn_times

    step_times = [float(k + 1) for k in range(29)]  # steps 1..29 of a Trainer run of 3 turns of 10 steps
    # round 1 holds steps 10..19, round 2 steps 20..29 (the step after the other contestants' turns first)
    assert turn_times(step_times, 10, range(1, 3)) == [sum(range(10, 20)), sum(range(20, 30))]
    assert turn_times(step_times, 1, range(5, 7)) == [5.0, 6.0]  # turns of one step: as before


def test_bench_overhead_against_lightning_runs_every_contestant(capsys):
    pytest.importorskip("lightning")  # an optional extra (".[bench]"): not installed in CI
    assert (
        main(
            [
                "bench",
                "overhead",
                "--workload",
                "tiny",
                "--steps",
                "20",
                "--noop",
                "1",
                "--against",
                "lightning",
                "--interleave",
                "block",
            ]
        )
        == 0
    )
    header, row = _table_rows(capsys.readouterr().out)
    assert header[1:-1] == ["plain", "plain copy", "hookmix", "hookmix+1", "fabric", "trainer"]
    assert row[-1] == "0.0e+00"  # the Trainer's losses too, turn by turn
