"""The benchmark machinery on tiny sizes (timings are not asserted: the machines are shared)."""

import argparse

import pytest

from moe_teach.course import bench


def test_benchmark_reports_every_case_and_the_ratio_line():
    times = bench.run_benchmark(tokens=64, width=8, hidden=16, num_experts=4, top_k=2, repeats=2, rounds=1)
    assert set(times) == {"moe_all_experts", "moe_loop", "moe_grouped", "dense_active"}
    assert all(t > 0 for t in times.values())
    report = bench.format_report(times, top_k=2, num_experts=4)
    last = report.splitlines()[-1]
    r1 = times["moe_grouped"] / times["dense_active"]
    r2 = times["moe_all_experts"] / times["moe_grouped"]
    assert last == f"grouped_vs_dense_active={r1:.3f} all_experts_vs_grouped={r2:.3f}"


def test_cli_arguments_reach_the_benchmark(capsys):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    args = parser.parse_args(["--tokens", "32", "--width", "8", "--hidden", "8", "--experts", "2",
                              "--top-k", "1", "--repeats", "1"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "32 tokens, width 8, expert hidden 8, 2 experts, top-1" in out
    assert out.strip().splitlines()[-1].startswith("grouped_vs_dense_active=")


def test_bad_benchmark_sizes_are_rejected():
    with pytest.raises(ValueError, match="top_k must be between 1 and num_experts=2"):
        bench.run_benchmark(tokens=8, width=4, hidden=4, num_experts=2, top_k=3)


def test_cli_reports_bad_values_in_one_line(capsys):
    from moe_teach.course.cli import main

    assert main(["bench", "--tokens", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "moe-teach bench: error: tokens must be a positive int (1, 2, 3, ...), got -1"


def test_cli_help_shows_defaults(capsys):
    from moe_teach.course.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: 4096)" in capsys.readouterr().out
