"""The report: targets with pass/miss/n-a, mean/std over seeds, strict JSON, Markdown tables."""

from __future__ import annotations

import json
import math

from dermagan.training.metrics.report import Target, json_safe, merge_markdown, render_markdown, summarise


def test_target_checks_absolute_relative_and_missing():
    means = {"a": 0.5, "b": 0.2, "c": float("nan")}
    assert Target("a", ">=", 0.4).check(means)["result"] == "pass"
    assert Target("a", "<=", ref="b", factor=2).check(means)["result"] == "miss"  # 0.5 > 0.4
    assert Target("c", ">=", 0.1).check(means)["result"] == "n/a"
    assert Target("missing", ">=", 0.1).check(means)["result"] == "n/a"


def test_summarise_and_strict_json():
    s = summarise([{"x": 1.0, "y": float("nan")}, {"x": 3.0, "y": float("nan")}])
    assert s["x"] == {"mean": 2.0, "std": 1.0, "values": [1.0, 3.0]}
    assert math.isnan(s["y"]["mean"])
    assert "NaN" not in json.dumps(json_safe(s), allow_nan=False)


def test_markdown_puts_floors_next_to_their_metric():
    metrics = summarise([{"eczema.kid.inproj": 0.5, "eczema.kid_floor.inproj": 0.01, "inside.psnr": 30.0}])
    doc = {"created": "now", "settings": {"n": 10, "seeds": 1, "size": 32, "inpainting_baselines": ["biharmonic"]},
           "split": {"train_seeds": "a", "eval_seeds": "b"}, "feature_spaces": {},
           "models": {"m": {"task": "generate", "version": "1", "resolution": [32, 32], "metrics": metrics,
                            "targets": [Target("inside.psnr", ">=", 28, text="psnr").check({"inside.psnr": 30.0})]}}}
    md = render_markdown(doc)
    assert "| `eczema.kid.inproj` | 0.5 ± 0 | 0.01 ± 0 |" in md
    assert "kid_floor" not in md.split("| metric | mean ± std")[1]
    assert "**pass**" in md


def test_markdown_names_the_feature_spaces_clean_held_out_accuracy_and_the_labels_left_out():
    doc = {"created": "now", "settings": {"n": 10, "seeds": 1, "size": 32, "inpainting_baselines": []},
           "split": {"train_seeds": "a", "eval_seeds": "b"},
           "feature_spaces": {"inproj": {"name": "old", "input_size": 64, "val_accuracy": 0.891},
                              "new": {"name": "new", "input_size": 64, "val_accuracy": 0.9,
                                      "val_accuracy_unseen_seeds": 0.8, "n_val_unseen_seeds": 55}},
           "models": {"m": {"task": "generate", "version": "1", "resolution": [32, 32], "metrics": {}, "targets": [],
                            "skipped_labels": ["MEL", "NV"]}}}
    md = render_markdown(doc)
    # an extractor without the clean number (the shipped one) reads as before
    assert "`inproj` = old (64 px, held-out accuracy 0.891);" in md
    assert "`new` = new (64 px, held-out accuracy 0.900 (0.800 on the 55 held-out images of renderer seeds it never saw))" in md
    assert "Not evaluated: `MEL`, `NV` (not a kind of the procedural renderer" in md


def test_a_target_missed_by_a_hair_is_printed_with_the_digits_that_show_it():
    from dermagan.training.metrics.report import target_rows

    rows = target_rows([{"rule": "area ≥ 80 %", "metric": "a", "mean": 0.7998990561, "threshold": 0.8, "result": "miss"},
                        {"rule": "psnr", "metric": "p", "mean": 35.39956, "threshold": 23.6567, "result": "pass"}])
    assert rows[2] == "| area ≥ 80 % | `a` | 0.7999 | 0.8 | **miss** |"
    assert rows[3] == "| psnr | `p` | 35.4 | 23.7 | **pass** |"


def _summary(created, sections, n=200):
    head = [f"# dermagan evaluate — {created}", "", f"n = {n} per set, 2 evaluation seeds.", "Split: test split.", "",
            "Feature spaces: `inproj`.", "", "A paragraph written by hand.", ""]
    body = [line for name, value in sections for line in (f"## {name} (task, v1, 128x128)", "", f"| `m` | {value} |", "")]
    return "\n".join(head + body)


def test_merge_markdown_replaces_the_sections_in_place_and_says_where_they_come_from():
    summary = _summary("T0", [("a", 1), ("b", 2), ("c", 3)])
    later = _summary("T1", [("b", 20), ("d", 40)])
    merged = merge_markdown(summary, later, ["b", "d"])
    assert [line for line in merged.splitlines() if line.startswith(("## ", "| "))] == [
        "## a (task, v1, 128x128)", "| `m` | 1 |", "## b (task, v1, 128x128)", "| `m` | 20 |",
        "## c (task, v1, 128x128)", "| `m` | 3 |", "## d (task, v1, 128x128)", "| `m` | 40 |"]
    assert merged.startswith("# dermagan evaluate — T0") and "A paragraph written by hand." in merged
    assert "- Updated: the b section comes from a later run with the same settings and split (T1)." in merged
    assert "- Updated: the d section" in merged and "- Updated: the a section" not in merged
    again = merge_markdown(merged, _summary("T2", [("b", 200)]), ["b"])  # b's line follows it; d's stays
    notes = [line for line in again.splitlines() if line.startswith("- Updated:")]
    assert notes == ["- Updated: the d section comes from a later run with the same settings and split (T1).",
                     "- Updated: the b section comes from a later run with the same settings and split (T2)."]
    assert "| `m` | 200 |" in again and "| `m` | 20 |" not in again
    assert "\n\n\n" not in again and again.endswith("|\n")


def test_merge_markdown_refuses_numbers_measured_with_other_settings():
    assert merge_markdown(_summary("T0", [("a", 1)]), _summary("T1", [("a", 2)], n=500), ["a"]) is None
