"""The README's numbers about the committed checkpoints are those their records hold.

The README is read before anything runs, so it quotes the MAML checkpoints' test accuracy and
training budget; a retrained checkpoint must not leave it quoting the old run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import maml
from helpers import side_by_side as sbs

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "data" / "checkpoints"


def maml_table() -> list[list[str]]:
    """The cells of each row of the README's table of MAML checkpoints."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| MAML checkpoint |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def shown(result: dict) -> str:
    """A recorded test result as the README writes it: accuracy ± 95 % interval, in percent."""
    return f"{100 * result['accuracy']:.1f} ± {100 * result['ci95']:.1f}"


def test_the_readme_lists_every_committed_maml_omniglot_checkpoint_with_its_recorded_numbers():
    rows = maml_table()
    listed = {row[1].strip("`") for row in rows}
    committed = {  # a run stopped by its --minutes keeps a .resume.pt: run state, not a checkpoint
        p.name for p in CHECKPOINTS.glob("maml_omniglot_*.pt") if not p.name.endswith(".resume.pt")
    }
    assert listed == committed
    for name, file, budget, minutes, per_step, test, one_batch, paper in rows:
        record = json.loads((CHECKPOINTS / file.strip("`")).with_suffix(".json").read_text())
        settings = record["settings"]
        n_way, k_shot = (int(v) for v in re.match(r".*, (\d+)-way (\d+)-shot$", name).groups())
        assert (settings["n_way"], settings["k_shot"]) == (n_way, k_shot), file
        assert settings["first_order"] == name.startswith("first-order"), file
        assert budget == f"{record['meta_steps_done']:,} × {settings['meta_batch']}", file
        assert minutes.startswith(
            f"{sbs.training_record(CHECKPOINTS / file.strip('`')).minutes:.0f} min"
        ), file
        assert per_step == f"{record['seconds_per_meta_step']:.1f}", file
        # the test column: queries scored in batches made like the training query sets
        result = record["results"]["test"]
        assert result["episodes"] >= 600 and result["k_shot"] == k_shot, file
        assert result["query_group"] == settings["n_query"], file
        assert test == shown(result), file
        # ... and the same episodes with all of an episode's queries in one batch
        result = record["results"]["test_one_batch"]
        assert result["episodes"] >= 600 and result["k_shot"] == k_shot, file
        same = ("seed", "n_query", "episodes")  # the same episodes as the test column
        assert result["query_group"] == 0, file
        assert all(result[k] == record["results"]["test"][k] for k in same), file
        assert one_batch == shown(result), file
        assert float(paper) == maml.PAPER_OMNIGLOT_ACCURACY[n_way, k_shot][settings["first_order"]]
