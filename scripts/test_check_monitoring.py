"""Unit tests of scripts/check_monitoring.py's parsers (stdlib unittest):

    python3 -m unittest discover -s scripts -p test_check_monitoring.py
"""

import os
import sys
import tempfile
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_monitoring as cm  # noqa: E402


class PromqlMetrics(unittest.TestCase):
    def names(self, expr):
        return sorted(n for n, _ in cm.promql_metrics(expr))

    def test_finds_selectors_inside_functions_and_aggregations(self):
        expr = ('histogram_quantile(0.99, sum by (job, instance, le) '
                '(rate(hub_event_commit_seconds_bucket[5m]))) > 0.05')
        self.assertEqual(self.names(expr), ["hub_event_commit_seconds_bucket"])

    def test_ignores_keywords_grafana_variables_durations_and_numbers(self):
        expr = ('sum by (reason) (rate(edge_fixes_rejected_total{instance=~"$edge"}[$__rate_interval]))'
                ' / on (job, instance) group_left sum(rate(edge_fixes_received_total[10m] offset 1h))'
                ' > 1e3 and on (job) up == 0')
        self.assertEqual(self.names(expr),
                         ["edge_fixes_received_total", "edge_fixes_rejected_total", "up"])

    def test_reads_label_names_of_matchers_not_their_values(self):
        found = cm.promql_metrics('rate(x_total{reason="over{load}", instance!~"a|b"}[5m])')
        self.assertEqual(found, [("x_total", ["reason", "instance"])])

    def test_a_selector_without_a_metric_name_is_refused(self):
        with self.assertRaises(ValueError):
            cm.promql_metrics('{__name__=~"edge_.*"}')


class Exposition(unittest.TestCase):
    TEXT = textwrap.dedent("""\
        # HELP edge_fixes_rejected Fixes turned away, by reason.
        # TYPE edge_fixes_rejected counter
        edge_fixes_rejected_total{reason="speed"} 0
        # TYPE edge_hub_connected gauge
        edge_hub_connected 1
        # TYPE hub_event_commit_seconds histogram
        hub_event_commit_seconds_sum 0.0
        hub_event_commit_seconds_count 0
        hub_event_commit_seconds_bucket{le="0.0001"} 0
        # TYPE hub_consumers_active gauge
        # EOF
        """)

    def test_families_their_series_and_sample_labels(self):
        fams = cm.parse_exposition(self.TEXT)
        self.assertEqual(fams["edge_fixes_rejected"], ("counter", [{"reason"}]))
        self.assertEqual(fams["hub_consumers_active"], ("gauge", []))
        series = cm.series_names(fams)
        for s in ("edge_fixes_rejected_total", "edge_hub_connected", "hub_event_commit_seconds_bucket",
                  "hub_event_commit_seconds_count", "hub_consumers_active"):
            self.assertIn(s, series)
        self.assertNotIn("edge_fixes_rejected", series)
        self.assertNotIn("hub_event_commit_seconds", series)


class Rules(unittest.TestCase):
    def test_reads_plain_block_and_quoted_exprs_and_annotations(self):
        text = textwrap.dedent("""\
            groups:
              - name: g
                rules:
                  - alert: A
                    expr: up{job="x"} == 0
                    for: 1m
                    labels:
                      severity: critical
                    annotations:
                      summary: "A {{ $labels.instance }}"
                      description: >-
                        two
                        lines
                      runbook_url: "https://example.invalid/docs/operations.md#a"
                  - alert: B
                    expr: |
                      rate(b_total[5m])
                        > 0
                    annotations:
                      summary: 'it''s B'
            """)
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(text)
        try:
            rules = cm.rule_entries(f.name)
        finally:
            os.unlink(f.name)
        self.assertEqual([r["name"] for r in rules], ["A", "B"])
        self.assertEqual(rules[0]["expr"], 'up{job="x"} == 0')
        self.assertEqual(rules[0]["annotations"]["description"], "two lines")
        self.assertEqual(rules[0]["annotations"]["summary"], "A {{ $labels.instance }}")
        self.assertNotIn("severity", rules[0]["annotations"])
        self.assertEqual(rules[1]["expr"], "rate(b_total[5m])\n> 0")
        self.assertEqual(rules[1]["annotations"]["summary"], "it's B")

    def test_check_reports_unknown_metrics_labels_and_missing_annotations(self):
        exported = {"edge": cm.parse_exposition(Exposition.TEXT)}
        rules = [{"name": "A", "kind": "alert", "expr": 'rate(edge_fixes_rejected_total{reasn="x"}[5m]) > 0',
                  "annotations": {"summary": "s", "description": "d",
                                  "runbook_url": "https://h/docs/operations.md#nope"}},
                 {"name": "B", "kind": "alert", "expr": "hub_event_commit_seconds > 1",
                  "annotations": {}}]
        problems, _ = cm.check(exported, rules, [("panel 'p'", "edge_hub_connected")], {"a"})
        text = "\n".join(problems)
        self.assertIn("no label `reasn`", text)
        self.assertIn("#nope is not a heading", text)
        self.assertIn("B: no summary annotation", text)
        self.assertIn("use hub_event_commit_seconds_bucket", text)
        self.assertNotIn("panel 'p'", text)


class Dashboard(unittest.TestCase):
    def test_queries_and_structure(self):
        ds = {"type": "prometheus", "uid": "${datasource}"}
        dash = {
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "hub", "type": "query", "datasource": ds,
                 "query": {"query": "label_values(hub_fixes_received_total, instance)"}},
            ]},
            "panels": [
                {"id": 1, "type": "row", "panels": [
                    {"id": 2, "type": "timeseries", "title": "t", "datasource": ds,
                     "targets": [{"expr": "rate(a_total[5m])", "refId": "A"}]}]},
                {"id": 2, "type": "stat", "title": "s", "datasource": {"uid": "prom-1"},
                 "targets": [{"expr": "b", "refId": "A"}]},
                {"id": 3, "type": "text", "title": "about"},
            ],
        }
        problems = []
        queries = cm.dashboard_queries(dash, problems)
        self.assertEqual([q for _, q in queries],
                         ["hub_fixes_received_total", "rate(a_total[5m])", "b"])
        self.assertTrue(any("duplicate panel id 2" in p for p in problems), problems)
        self.assertTrue(any("'s': datasource" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
