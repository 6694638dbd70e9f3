#!/usr/bin/env python3
"""Writes allsource.json, the Grafana dashboard of the AllSource operator and store nodes.

Run from the repository root: python3 deploy/grafana/generate.py
Metric names live in M below; tests/tests/chart.rs checks that every metric the dashboard
queries is one the operator or the store node registers.
"""
import json
import os

M = {
    "reconciles": "allsource_operator_reconciliations_total",
    "reconcile_errors": "allsource_operator_reconcile_errors_total",
    "reconcile_duration": "allsource_operator_reconcile_duration_seconds",
    "es_replicas": "allsource_operator_eventstore_replicas",
    "es_ready": "allsource_operator_eventstore_ready_replicas",
    "archive_runs": "allsource_operator_archive_runs_total",
    "appends": "allsource_store_appends_total",
    "events": "allsource_store_events_appended_total",
    "bytes": "allsource_store_bytes_appended_total",
    "append_duration": "allsource_store_append_duration_seconds",
    "fsync": "allsource_wal_fsync_seconds",
    "wal_bytes": "allsource_wal_size_bytes",
    "segments": "allsource_segments",
    "tenant_events": "allsource_tenant_events_appended_total",
    "tenant_bytes": "allsource_tenant_storage_bytes",
}

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
_id = [0]


def nid():
    _id[0] += 1
    return _id[0]


def row(title, y):
    panels.append({"type": "row", "id": nid(), "title": title, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})


def ts(title, targets, x, y, unit="short", w=8, h=8, desc=""):
    panels.append({
        "type": "timeseries", "id": nid(), "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": l} for i, (e, l) in enumerate(targets)],
    })


NS = 'namespace=~"$namespace"'
row("Operator", 0)
ts("Reconciles / s by kind", [(f'sum by (kind) (rate({M["reconciles"]}{{{NS}}}[$__rate_interval]))', "{{kind}}")], 0, 1, "ops")
ts("Reconcile errors / s by kind", [(f'sum by (kind) (rate({M["reconcile_errors"]}{{{NS}}}[$__rate_interval]))', "{{kind}}")], 8, 1, "ops")
ts("Reconcile duration p50 / p99 by kind", [
    (f'histogram_quantile(0.5, sum by (le, kind) (rate({M["reconcile_duration"]}_bucket{{{NS}}}[$__rate_interval])))', "p50 {{kind}}"),
    (f'histogram_quantile(0.99, sum by (le, kind) (rate({M["reconcile_duration"]}_bucket{{{NS}}}[$__rate_interval])))', "p99 {{kind}}"),
], 16, 1, "s")
ts("EventStore nodes ready / desired", [
    (f'sum by (name) ({M["es_ready"]}{{{NS}}})', "ready {{name}}"),
    (f'sum by (name) ({M["es_replicas"]}{{{NS}}})', "desired {{name}}"),
], 0, 9, "short", w=12)
ts("Archival runs / h by result", [(f'sum by (name, result) (increase({M["archive_runs"]}{{{NS}}}[1h]))', "{{name}} {{result}}")], 12, 9, "short", w=12)
row("Store nodes", 17)
ts("Appends / s", [(f'sum by (pod) (rate({M["appends"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 0, 18, "ops")
ts("Events / s", [(f'sum by (pod) (rate({M["events"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 8, 18, "ops")
ts("Bytes / s", [(f'sum by (pod) (rate({M["bytes"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 16, 18, "Bps")
ts("Append latency p99", [(f'histogram_quantile(0.99, sum by (le, pod) (rate({M["append_duration"]}_bucket{{{NS}}}[$__rate_interval])))', "{{pod}}")], 0, 26, "s")
ts("WAL fsync latency p50 / p99", [
    (f'histogram_quantile(0.5, sum by (le, pod) (rate({M["fsync"]}_bucket{{{NS}}}[$__rate_interval])))', "p50 {{pod}}"),
    (f'histogram_quantile(0.99, sum by (le, pod) (rate({M["fsync"]}_bucket{{{NS}}}[$__rate_interval])))', "p99 {{pod}}"),
], 8, 26, "s")
ts("WAL size", [(f'sum by (pod) ({M["wal_bytes"]}{{{NS}}})', "{{pod}}")], 16, 26, "bytes")
ts("Parquet segments", [(f'sum by (pod) ({M["segments"]}{{{NS}}})', "{{pod}}")], 0, 34, "short")
row("Tenants", 42)
ts("Top 10 tenants by events / s", [(f'topk(10, sum by (tenant) (rate({M["tenant_events"]}{{{NS}}}[$__rate_interval])))', "{{tenant}}")], 0, 43, "ops", w=12)
ts("Top 10 tenants by stored bytes", [(f'topk(10, sum by (tenant) ({M["tenant_bytes"]}{{{NS}}}))', "{{tenant}}")], 12, 43, "bytes", w=12)

dashboard = {
    "title": "AllSource",
    "uid": "allsource-overview",
    "description": "AllSource operator reconciles and store-node throughput, durability latency, storage and tenants.",
    "tags": ["allsource", "event-store"],
    "timezone": "browser",
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source", "current": {}, "hide": 0},
        {"name": "namespace", "type": "query", "label": "Namespace", "datasource": DS,
         "query": {"query": f"label_values({M['reconciles']}, namespace)", "refId": "ns"},
         "definition": f"label_values({M['reconciles']}, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allsource.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
