"""docs/grafana-dashboard.json stays in step with the metrics Switchboard exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.metrics.instruments import REGISTRY

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
#: Gauges computed at scrape time (app.metrics.exposition), not instruments.
SCRAPE_TIME = {
    "switchboard_queue_depth",
    "switchboard_deliveries_due",
    "switchboard_oldest_due_delivery_age_seconds",
}


def test_every_panel_queries_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = set(SCRAPE_TIME)
    for family in REGISTRY.collect():
        exported |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"switchboard_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    names = {family.name for family in REGISTRY.collect()}
    covered = {re.sub(r"_(total|bucket)$", "", name) for name in used}
    assert names <= covered, names - covered  # every instrument has a panel
