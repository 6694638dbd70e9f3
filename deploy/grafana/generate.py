#!/usr/bin/env python3
"""Writes allsource.json, the Grafana dashboard of the AllSource operator and store nodes.

Run from the repository root: python3 deploy/grafana/generate.py
Metric names live in M below; tests/tests/chart.rs checks that every allsource_* metric the
dashboard and the alert rules query is registered by the operator or the store node.
"""
import json
import os

M = {
    # operator (operator/src/telemetry.rs)
    "reconciles": "allsource_operator_reconciles_total",
    "reconcile_errors": "allsource_operator_reconcile_errors_total",
    "reconcile_duration": "allsource_operator_reconcile_duration_seconds",
    "api_writes": "allsource_operator_api_writes_total",
    "leader": "allsource_operator_leader",
    # store node (store-node/src/metrics.rs)
    "appends": "allsource_appends_total",
    "events": "allsource_events_appended_total",
    "bytes": "allsource_bytes_appended_total",
    "events_read": "allsource_events_read_total",
    "append_duration": "allsource_append_duration_seconds",
    "http_requests": "allsource_http_requests_total",
    "quota_rejections": "allsource_quota_rejections_total",
    "subscriptions": "allsource_subscriptions",
    "registry_tenants": "allsource_registry_tenants",
    "wal_bytes": "allsource_wal_bytes_written",
    # kube-state-metrics (StatefulSet of the store nodes)
    "sts_replicas": "kube_statefulset_replicas",
    "sts_ready": "kube_statefulset_status_replicas_ready",
    "sts_labels": "kube_statefulset_labels",
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
STORE_STS = (f'on (namespace, statefulset) group_left() {M["sts_labels"]}'
             '{label_app_kubernetes_io_name="allsource", label_app_kubernetes_io_component="store-node"}')
row("Operator", 0)
ts("Reconciles / s by kind", [(f'sum by (kind) (rate({M["reconciles"]}[$__rate_interval]))', "{{kind}}")], 0, 1, "ops")
ts("Reconcile errors / s by kind and error", [(f'sum by (kind, error) (rate({M["reconcile_errors"]}[$__rate_interval]))', "{{kind}} {{error}}")], 8, 1, "ops")
ts("Reconcile duration p50 / p99 by kind", [
    (f'histogram_quantile(0.5, sum by (le, kind) (rate({M["reconcile_duration"]}_bucket[$__rate_interval])))', "p50 {{kind}}"),
    (f'histogram_quantile(0.99, sum by (le, kind) (rate({M["reconcile_duration"]}_bucket[$__rate_interval])))', "p99 {{kind}}"),
], 16, 1, "s")
ts("API writes / s by resource and verb (0 in steady state)", [(f'sum by (resource, verb) (rate({M["api_writes"]}[$__rate_interval]))', "{{verb}} {{resource}}")], 0, 9, "ops", w=12)
ts("Leader replicas (should be 1)", [(f'sum({M["leader"]})', "leaders")], 12, 9, "short", w=12)
row("EventStores", 17)
ts("Store nodes ready / desired (kube-state-metrics)", [
    (f'sum by (namespace, statefulset) ({M["sts_ready"]}{{{NS}}} * {STORE_STS})', "ready {{namespace}}/{{statefulset}}"),
    (f'sum by (namespace, statefulset) ({M["sts_replicas"]}{{{NS}}} * {STORE_STS})', "desired {{namespace}}/{{statefulset}}"),
], 0, 18, "short", w=12)
ts("HTTP requests / s by status", [(f'sum by (status) (rate({M["http_requests"]}{{{NS}}}[$__rate_interval]))', "{{status}}")], 12, 18, "reqps", w=12)
ts("Appends / s", [(f'sum by (pod) (rate({M["appends"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 0, 26, "ops")
ts("Events appended / s", [(f'sum by (pod) (rate({M["events"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 8, 26, "ops")
ts("Bytes appended / s", [(f'sum by (pod) (rate({M["bytes"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 16, 26, "Bps")
ts("Append latency p50 / p99 (includes the fsync wait)", [
    (f'histogram_quantile(0.5, sum by (le, pod) (rate({M["append_duration"]}_bucket{{{NS}}}[$__rate_interval])))', "p50 {{pod}}"),
    (f'histogram_quantile(0.99, sum by (le, pod) (rate({M["append_duration"]}_bucket{{{NS}}}[$__rate_interval])))', "p99 {{pod}}"),
], 0, 34, "s")
ts("Events read / s", [(f'sum by (pod) (rate({M["events_read"]}{{{NS}}}[$__rate_interval]))', "{{pod}}")], 8, 34, "ops")
ts("Open subscriptions and registered tenants", [
    (f'sum by (pod) ({M["subscriptions"]}{{{NS}}})', "subscriptions {{pod}}"),
    (f'max by (pod) ({M["registry_tenants"]}{{{NS}}})', "tenants {{pod}}"),
], 16, 34, "short")
ts("WAL bytes written / s (engine)", [(f'sum by (pod) (deriv({M["wal_bytes"]}{{{NS}}}[5m]))', "{{pod}}")], 0, 42, "Bps", w=12)
ts("WAL bytes written since the engine opened", [(f'sum by (pod) ({M["wal_bytes"]}{{{NS}}})', "{{pod}}")], 12, 42, "bytes", w=12)
row("Tenants", 50)
ts("Top 10 tenants by events / s", [(f'topk(10, sum by (tenant) (rate({M["events"]}{{{NS}}}[$__rate_interval])))', "{{tenant}}")], 0, 51, "ops")
ts("Top 10 tenants by bytes / s", [(f'topk(10, sum by (tenant) (rate({M["bytes"]}{{{NS}}}[$__rate_interval])))', "{{tenant}}")], 8, 51, "Bps")
ts("Quota rejections / s by tenant and quota", [(f'sum by (tenant, quota) (rate({M["quota_rejections"]}{{{NS}}}[$__rate_interval]))', "{{tenant}} {{quota}}")], 16, 51, "ops")

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
         "query": {"query": f"label_values({M['appends']}, namespace)", "refId": "ns"},
         "definition": f"label_values({M['appends']}, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allsource.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
