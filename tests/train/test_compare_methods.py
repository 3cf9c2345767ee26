"""benchmarks/compare_methods.py end to end on the tiny pair: one run per method, a table, a chart, JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from test_run import write_config  # the tiny pair's run config, shared with the run tests

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "compare_methods.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_methods_runs_each_method_and_tables_them(tmp_path, pair_dirs, capsys):
    path = write_config(tmp_path, pair_dirs, optim={"max_steps": 1}, eval={"limit": 2})
    module = load_script()
    out = tmp_path / "results.json"
    code = module.main(["--config", str(path), "--methods", "ce", "multilevel_ot:reference", "--root",
                        str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["method"] for r in runs] == ["ce", "multilevel_ot:reference"]
    assert runs[0]["before"] is not None and runs[1]["before"] is None  # the untrained student is evaluated once
    saved = yaml.safe_load((tmp_path / "runs" / "multilevel_ot-reference" / "config.yaml").read_text())
    assert saved["loss"]["method"] == "multilevel_ot" and saved["loss"]["params"]["preset"] == "reference"
    assert "| multilevel_ot:reference |" in printed and "untrained student" in printed
    assert (tmp_path / "runs" / "scores.png").stat().st_size > 0


def test_the_table_reports_differences_and_failures():
    module = load_script()
    common = {"ok": True, "metric": "token_f1", "eval_examples": 40, "first_loss": 2.0, "last_loss": 1.0,
              "steps": 10, "seconds": {"train": 50.0}}
    rows = [{**common, "method": "ce", "before": 20.0, "after": 40.0},
            {**common, "method": "uld", "before": None, "after": 42.5},
            {"method": "dskd", "ok": False, "error": ["ctkd distill: error: out of memory"]}]
    text = module.table(rows)
    assert "| uld | 42.50 | +22.50 | +2.50 |" in text
    assert "| dskd | failed: ctkd distill: error: out of memory |" in text
    assert "untrained student: 20.00 on 40 examples" in text
