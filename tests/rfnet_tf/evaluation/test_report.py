"""Report: statistics over pairs, the tables' best-in-bold direction, strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rfnet_tf.evaluation import report


def stats(mean, std=0.1):
    return {"mean": mean, "std": std, "n": 3}


def cells_of(table: str, row_label: str) -> list[str]:
    """The method cells of the markdown row whose label starts with ``row_label``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0].startswith(row_label):
            return cells[1:]
    raise AssertionError(f"no row {row_label!r} in\n{table}")


def test_summarise_is_population_statistics_over_present_values():
    values = [1.0, None, 2.0, 6.0]
    summary = report.summarise(values)
    assert summary["n"] == 3
    assert summary["mean"] == pytest.approx(3.0)
    # Population: sqrt(((1-3)^2 + (2-3)^2 + (6-3)^2) / 3) = sqrt(14 / 3).
    assert summary["std"] == pytest.approx(math.sqrt(14.0 / 3.0))
    assert report.summarise([4.5])["std"] == 0.0
    assert report.summarise([None, None]) == {"mean": None, "std": None, "n": 0}


def test_aggregate_leaves_out_metrics_that_do_not_apply():
    per_image = [
        {"registration": {"a": {"psnr": 10.0, "ssim": 0.5}, "b": {"psnr": 12.0, "ssim": None}}},
        {"registration": {"a": {"psnr": 14.0, "ssim": 0.7}, "b": {"psnr": 16.0, "ssim": 0.9}}},
    ]
    table = report.aggregate(per_image, "registration", ["a", "b"], ["rmse", "psnr", "ssim"])
    assert list(table["a"]) == ["psnr", "ssim"]
    assert table["a"]["psnr"] == {"mean": 12.0, "std": 2.0, "n": 2}
    assert table["b"]["ssim"] == {"mean": 0.9, "std": 0.0, "n": 1}


def test_registration_table_bolds_the_lowest_error_and_the_highest_similarity():
    summary = {
        "rfnet": {"rmse": stats(3.972), "psnr": stats(15.043), "ssim": stats(0.650), "epe": stats(2.0)},
        "identity": {"rmse": stats(47.223), "psnr": stats(11.768), "ssim": stats(0.292), "epe": stats(9.0)},
        "ecc": {"rmse": stats(9.942), "psnr": stats(17.582), "ssim": stats(0.726), "epe": stats(1.0)},
    }
    table = report.format_table(summary, "registration")
    assert cells_of(table, "RMSE") == ["**3.972 ± 0.100**", "47.223 ± 0.100", "9.942 ± 0.100"]
    assert cells_of(table, "EPE") == ["2.000 ± 0.100", "9.000 ± 0.100", "**1.000 ± 0.100**"]
    assert cells_of(table, "PSNR") == ["15.043 ± 0.100", "11.768 ± 0.100", "**17.582 ± 0.100**"]
    assert cells_of(table, "SSIM") == ["0.650 ± 0.100", "0.292 ± 0.100", "**0.726 ± 0.100**"]
    assert table.splitlines()[0].split("|")[2].strip() == "RFNet"


def test_fusion_table_bolds_the_highest_value_of_every_metric():
    summary = {
        "rfnet": {"en": stats(7.325), "std": stats(10.064), "psnr": stats(66.363)},
        "average": {"en": stats(7.5), "std": stats(9.118), "psnr": stats(64.678)},
    }
    table = report.format_table(summary, "fusion")
    assert cells_of(table, "EN") == ["7.325 ± 0.100", "**7.500 ± 0.100**"]
    assert cells_of(table, "STD") == ["**10.064 ± 0.100**", "9.118 ± 0.100"]
    assert cells_of(table, "PSNR") == ["**66.363 ± 0.100**", "64.678 ± 0.100"]


def test_ties_on_the_displayed_value_are_all_bold_and_missing_cells_never_are():
    summary = {
        "a": {"rmse": stats(1.0001), "mae": {"mean": None, "std": None, "n": 0}},
        "b": {"rmse": stats(0.9999), "mae": stats(5.0)},
        "c": {"rmse": stats(2.0)},
    }
    table = report.format_table(summary, "registration")
    assert cells_of(table, "RMSE") == ["**1.000 ± 0.100**", "**1.000 ± 0.100**", "2.000 ± 0.100"]
    # One value alone is not "best" of anything.
    assert cells_of(table, "MAE") == ["n/a", "5.000 ± 0.100", "n/a"]


def test_a_single_method_is_not_marked_best():
    summary = {"average": {"en": stats(7.0), "std": stats(40.0)}}
    assert "**" not in report.format_table(summary, "fusion")


def test_text_style_marks_the_best_with_a_star():
    summary = {"rfnet": {"rmse": stats(1.0)}, "identity": {"rmse": stats(2.0)}}
    row = [line for line in report.format_table(summary, "registration", "text").splitlines() if line.startswith("RMSE")][0]
    assert "1.000 ± 0.100 *" in row and "2.000 ± 0.100 *" not in row and "**" not in row


def test_results_markdown_has_title_conventions_tables_and_notes():
    summary = {
        "registration": {"identity": {"psnr": stats(12.0)}, "ecc": {"psnr": stats(11.0)}},
        "fusion": {"average": {"en": stats(7.0)}},
    }
    text = report.results_markdown("SIMULATED demo", summary, "standard", ["a note"], 4)
    assert text.startswith("# RFNet evaluation: SIMULATED demo")
    assert "standard" in text and "- a note" in text
    assert "## Registration (paper Table 1)" in text and "## Fusion (paper Table 2)" in text
    assert "**12.000 ± 0.100**" in text


def test_write_json_is_strict(tmp_path):
    path = report.write_json(tmp_path / "r.json", {"a": [1.0, None]})
    assert json.loads(path.read_text()) == {"a": [1.0, None]}
    with pytest.raises(ValueError):
        report.write_json(tmp_path / "bad.json", {"a": float("nan")})
    with pytest.raises(ValueError):
        report.write_json(tmp_path / "bad.json", {"a": np.inf})
    assert not (tmp_path / "bad.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def shares(count, n):
    """The summary of a success rate: ``count`` of ``n`` pairs."""
    values = [1.0] * count + [0.0] * (n - count)
    return report.summarise(values)


def test_success_rates_show_count_and_share_and_the_highest_is_best():
    summary = {
        "sift": {"success_2px": shares(7, 8), "success_5px": shares(8, 8)},
        "identity": {"success_2px": shares(0, 8), "success_5px": shares(1, 8)},
    }
    table = report.format_table(summary, "registration")
    assert cells_of(table, "pairs < 2 px") == ["**7/8 (87.5%)**", "0/8 (0.0%)"]
    assert cells_of(table, "pairs < 5 px") == ["**8/8 (100.0%)**", "1/8 (12.5%)"]
    assert "pairs < 2 px ↑" in table


def test_category_table_has_a_row_per_category_and_metric_with_its_pair_count():
    by_category = {
        "field": {"sift": {"rmse": stats(0.5), "success_2px": shares(2, 2)},
                  "identity": {"rmse": stats(40.0), "success_2px": shares(0, 2)}},
        "water": {"sift": {"rmse": stats(12.0), "success_2px": shares(0, 3)},
                  "identity": {"rmse": stats(9.0), "success_2px": shares(0, 3)}},
    }
    by_category["field"]["sift"]["rmse"]["n"] = 2
    by_category["field"]["identity"]["rmse"]["n"] = 2
    table = report.format_category_table(by_category)
    labels = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert labels == [
        "field (n=2): RMSE (px) ↓", "field (n=2): pairs < 2 px ↑",
        "water (n=3): RMSE (px) ↓", "water (n=3): pairs < 2 px ↑",
    ]
    assert cells_of(table, "field (n=2): RMSE") == ["**0.500 ± 0.100**", "40.000 ± 0.100"]
    assert cells_of(table, "field (n=2): pairs") == ["**2/2 (100.0%)**", "0/2 (0.0%)"]
    assert cells_of(table, "water (n=3): RMSE") == ["12.000 ± 0.100", "**9.000 ± 0.100**"]
    # A tie is bold in every cell, as in every table.
    assert cells_of(table, "water (n=3): pairs") == ["**0/3 (0.0%)**", "**0/3 (0.0%)**"]


def test_results_markdown_shows_the_plot_and_the_category_table_under_table_1():
    summary = {"registration": {"identity": {"rmse": stats(3.0)}}, "fusion": {}}
    by_category = {"a": {"identity": {"rmse": stats(2.0)}}, "b": {"identity": {"rmse": stats(4.0)}}}
    text = report.results_markdown("t", summary, "standard", [], 2, by_category, "plot.png")
    table_1 = text.index("## Registration (paper Table 1)")
    assert table_1 < text.index("](plot.png)") < text.index("### Registration by category")
    assert text.index("### Registration by category") < text.index("## Fusion (paper Table 2)")
    assert "](plot.png)" not in report.results_markdown("t", summary, "standard", [], 2)
    terminal = report.terminal_report("t", summary, "standard", [], by_category)
    assert "Registration by category" in terminal and "a (n=3): RMSE (px)" in terminal
