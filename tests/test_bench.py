"""The benchmark machinery on tiny sizes (timings are not asserted: the machines are shared)."""

import argparse
import sys

import pytest
import torch

from moe_teach.course import bench

TINY = dict(tokens=64, width=8, hidden=16, num_experts=4, top_k=2, repeats=2, rounds=1)


def test_benchmark_reports_every_case_and_the_ratio_line():
    times = bench.run_benchmark(**TINY, wide_experts=8)
    assert set(times) == {"moe_all_experts", "moe_loop", "moe_grouped", "dense_active", "moe_grouped_e8"}
    assert all(t > 0 for t in times.values())
    report = bench.format_report(times, top_k=2, num_experts=4)
    last = report.splitlines()[-1]
    r1 = times["moe_grouped"] / times["dense_active"]
    r2 = times["moe_all_experts"] / times["moe_grouped"]
    assert last == f"grouped_vs_dense_active={r1:.3f} all_experts_vs_grouped={r2:.3f}"


def test_report_with_every_section_ends_in_all_five_ratios():
    times = {"moe_all_experts": 4.0, "moe_loop": 3.0, "moe_grouped": 2.0, "dense_active": 1.0}
    lesson = {"lesson_moe": 3.0, "lesson_dense_active": 2.0, "lesson_dense_total": 4.0}
    hf = {"ours_swiglu": 2.0, "hf_eager": 3.0, "hf_grouped_mm": 5.0}
    loaded = {"moe_all_experts": 6.0, "moe_loop": 5.0, "moe_grouped": 3.0, "dense_active": 1.0}
    report = bench.format_report(times, 2, 8, peaks={"moe_grouped": 2_000_000}, lesson=lesson, hf=hf, loaded=loaded)
    assert report.splitlines()[-1] == ("grouped_vs_dense_active=2.000 all_experts_vs_grouped=2.000 "
                                       "lesson_moe_vs_dense_active=1.500 lesson_moe_vs_dense_total=0.750 "
                                       "hf_grouped_mm_vs_ours=2.500")
    assert "grouped/dense_active 3.00 (quiet 2.00, x1.50)" in report
    assert next(line for line in report.splitlines() if line.startswith("moe_grouped")).endswith(" 2.0")


def test_peak_memory_counts_live_tensors_not_freed_ones():
    megabytes = 4_000_000  # 1000 x 1000 float32

    def two_in_turn():
        a = torch.ones(1000, 1000)
        del a
        b = torch.ones(1000, 1000)
        return b

    def two_at_once():
        a, b = torch.ones(1000, 1000), torch.ones(1000, 1000)
        return a, b

    assert megabytes <= bench.peak_memory_bytes(two_in_turn) < 1.5 * megabytes
    assert 2 * megabytes <= bench.peak_memory_bytes(two_at_once) < 2.5 * megabytes


def test_peak_memory_of_every_case_includes_fresh_gradients():
    cases = bench.make_cases(64, 8, 16, 4, 2, "relu", seed=0, wide_experts=None)
    peaks = bench.measure_peak_memory(cases)
    assert set(peaks) == set(cases)
    gradient_bytes = 4 * (64 * 8 + 2 * 8 * 32)  # x.grad and the dense layer's two weights
    assert peaks["dense_active"] >= gradient_bytes


def test_lesson_benchmark_times_the_three_lesson_models():
    times = bench.run_lesson_benchmark(repeats=1, steps_per_call=1, rounds=1, documents_per_domain=10)
    assert set(times) == {"lesson_moe", "lesson_dense_active", "lesson_dense_total"}
    assert all(t > 0 for t in times.values())
    assert torch.get_num_threads() >= 1


def test_lesson_config_is_lesson_07s_model():
    config = bench.lesson_config(vocab_size=100)
    assert (config.num_layers, config.block.dim, config.block.hidden_dim) == (2, 64, 64)
    assert (config.block.moe.num_experts, config.block.moe.top_k, config.max_seq_len) == (4, 2, 48)


def test_hugging_face_rows_are_skipped_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    assert bench.hf_mixtral_cases(16, 8, 16, 4, 2) == {}


def test_hugging_face_mixtral_block_matches_ours_when_installed():
    pytest.importorskip("transformers")
    cases = bench.hf_mixtral_cases(32, 8, 16, 4, 2)  # raises if the outputs disagree
    assert {"ours_swiglu", "hf_eager"} <= set(cases)
    for step in cases.values():
        step()


def test_contention_process_runs_inside_the_block_only():
    with bench.cpu_contention() as spinner:
        assert spinner.poll() is None
    assert spinner.poll() is not None


def test_cli_arguments_reach_the_benchmark(capsys):
    parser = argparse.ArgumentParser()
    bench.configure_parser(parser)
    args = parser.parse_args(["--tokens", "32", "--width", "8", "--hidden", "8", "--experts", "2",
                              "--top-k", "1", "--repeats", "1", "--wide-experts", "4", "--no-lesson",
                              "--no-hf", "--contention"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "32 tokens, width 8, expert hidden 8, 2 experts, top-1" in out
    assert "moe_grouped_e4" in out and "with a second CPU-bound process" in out
    assert ("on one thread: grouped/dense_active" in out) == (torch.get_num_threads() > 1)
    assert out.strip().splitlines()[-1].startswith("grouped_vs_dense_active=")


def test_bad_benchmark_sizes_are_rejected():
    with pytest.raises(ValueError, match="top_k must be between 1 and num_experts=2"):
        bench.run_benchmark(tokens=8, width=4, hidden=4, num_experts=2, top_k=3)


def test_cli_reports_bad_values_in_one_line(capsys):
    from moe_teach.course.cli import main

    assert main(["bench", "--tokens", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "moe-teach bench: error: --tokens must be a positive int (1, 2, 3, ...), got -1"


def test_cli_rejects_too_few_wide_experts(capsys):
    from moe_teach.course.cli import main

    assert main(["bench", "--wide-experts", "1"]) == 2
    assert "--wide-experts must be at least top_k=2 (or 0 for no such row), got 1" in capsys.readouterr().err


def test_cli_help_shows_defaults(capsys):
    from moe_teach.course.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "(default: 4096)" in capsys.readouterr().out


def test_the_cpu_clock_does_not_count_time_spent_waiting():
    import time

    from moe_teach.lessons.timing import time_callable

    wall = time_callable(lambda: time.sleep(0.02), repeats=2, warmup=0, clock="wall")
    cpu = time_callable(lambda: time.sleep(0.02), repeats=2, warmup=0, clock="cpu")
    assert wall.median >= 0.02 > 10 * cpu.median
    with pytest.raises(ValueError, match="clock must be one of"):
        time_callable(lambda: None, clock="sundial")


@pytest.mark.parametrize("flag, value", [("--tokens", 10**12), ("--tokens", 10**9), ("--hidden", 10**6),
                                         ("--experts", 10**5)])
def test_huge_sizes_are_refused_at_once(capsys, flag, value):
    from moe_teach.course.cli import main

    assert main(["bench", flag, str(value)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"moe-teach bench: error: {flag} must be at most") and "\n" not in err
