"""Model cards (Mitchell et al., 2019) generated from the registry and the artifact's manifest.

One structure, two renderings: Markdown for reviews and repositories, HTML
(self-contained, the SHAP summary plot embedded) for approvers' browsers.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sira.core.artifacts import MANIFEST
from sira.core.errors import InvalidInput
from sira.features.definitions import get_feature_set

MODEL_PURPOSE = {
    "fraud_detection": "Scores payment events for the probability of fraud, so product services can approve, send to "
                       "review or block them.",
    "churn": "Scores customers or merchants for the probability of churn, so retention teams can act first.",
    "anomaly": "Scores usage for the probability that it is anomalous, so operations can investigate.",
}
METRIC_KEYS = ("n", "positives", "average_precision", "roc_auc", "recall_at_1pct_fpr", "precision_at_100", "brier",
               "log_loss", "expected_calibration_error")


IMPORTANCE_ROWS = 15  # the card lists the most important features; the SHAP plot shows the rest


class Table(NamedTuple):
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""  # printed right above its own table


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    image_png: bytes | None = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "—"
    return str(value)


def _fmt_bound(value: Any) -> str:
    """A window bound as a person reads it: a table's split windows hold microseconds since the epoch (UTC),
    a feature-store set's ISO 8601 times."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1e6, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
        return (at.astimezone(timezone.utc) if at.tzinfo else at).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


FEATURE_STORE_WINDOW_KEYS = ("train_from", "train_to", "test_from", "test_to", "cutoff")


def format_windows(windows: dict[str, Any]) -> str:
    """``train 2026-01-01 00:00:00 UTC → …; test …`` instead of a dict's repr: a table's split windows
    ({name: {from, to}}), or a feature-store training set's (sira.training.windows.Windows: train and test
    windows, the label cut-off and maturity, recorded as {"train": {...}} or on their own)."""
    recorded = windows.get("train") if isinstance(windows.get("train"), dict) else None
    store = recorded if recorded is not None and "train_from" in recorded else windows
    if all(k in store for k in FEATURE_STORE_WINDOW_KEYS):
        maturity = store.get("maturity_days")
        return "; ".join([
            f"train {_fmt_bound(store['train_from'])} → {_fmt_bound(store['train_to'])} (validation: its latest "
            "part)", f"test {_fmt_bound(store['test_from'])} → {_fmt_bound(store['test_to'])}",
            f"labels as known at {_fmt_bound(store['cutoff'])}",
            *([f"label maturity {maturity:g} days"] if isinstance(maturity, (int, float)) else [])])
    parts = []
    for name, window in windows.items():
        if isinstance(window, dict):
            parts.append(f"{name} {_fmt_bound(window.get('from'))} → {_fmt_bound(window.get('to'))}")
        else:
            parts.append(f"{name} {_fmt_bound(window)}")
    return "; ".join(parts)


def top_importance(importance: dict[str, float], n: int = IMPORTANCE_ROWS) -> list[tuple[str, float]]:
    """The ``n`` most important features, most important first (ties by name, so the card is stable)."""
    return sorted(importance.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:n]


def feature_set_line(name: str, version: int | None) -> str:
    """Which feature set the model reads and how its windows read events (they differ between versions)."""
    try:
        fs = get_feature_set(name, version)
    except InvalidInput:
        return f"Features: feature set {name} v{version} (no longer defined in this SIRA)."
    return (f"Features: feature set {fs.name} v{fs.version} ({fs.engine} engine), {len(fs.names())} features; "
            f"window semantics: {fs.window_semantics}.")


def build_card(model: dict[str, Any], version: dict[str, Any], manifest: dict[str, Any],
               history: list[dict[str, Any]], shap_png: bytes | None) -> list[Section]:
    """The card's sections, in Mitchell et al.'s order."""
    name, number = model["name"], version["version"]
    metrics = manifest.get("metrics", {})
    dataset = manifest.get("dataset", {})
    details = Section("Model details", [
        f"{name} v{number}, a LightGBM gradient-boosted tree model ({model['model_type']}), status "
        f"**{version['status']}**, created by {version['created_by']} on {str(version['created_at'])[:10]}.",
        f"Training run {manifest.get('run_id')}; {manifest.get('code_version')}; LightGBM "
        f"{manifest.get('lightgbm_version')}; seed {manifest.get('seed')}, {manifest.get('num_threads')} thread(s), "
        f"{manifest.get('best_iteration')} trees. Scores are calibrated probabilities "
        f"({(manifest.get('calibration') or {}).get('method')} calibration).",
        f"Artifact {version['artifact_uri']} ({MANIFEST} sha256 {version['artifact_sha256']}).",
    ])
    details.tables.append(Table(["parameter", "value"], [[k, _fmt(v)] for k, v in sorted((manifest.get("params") or {}).items())
                                                         if k not in ("verbosity",)]))
    intended = Section("Intended use", [
        MODEL_PURPOSE.get(model["model_type"], "Scores events for risk."),
        model.get("description") or "",
        "Intended users: product services calling `POST /v1/score`, analysts and risk teams reviewing decisions. "
        "Out of scope: decisions about people without human review where law requires it; populations, "
        "products or countries absent from the training data.",
    ])
    segments = ((metrics.get("test") or {}).get("segments") or {})
    features = {f["name"] for f in manifest.get("feature_schema") or []}
    used = sorted(set(segments) & features)
    factors = Section("Factors", [
        "Performance is reported by the segments present in the data: " + (", ".join(segments) or "none") + ". "
        + (f"Of these, {', '.join(used)} {'is a feature' if len(used) == 1 else 'are features'} of the model. "
           if used else "None of them is a feature of the model. ")
        + "No protected attribute (sex, ethnicity, religion, age) is collected or used.",
    ])
    thresholds = version.get("thresholds") or manifest.get("thresholds") or {}
    metric_rows = [[key] + [_fmt((metrics.get(part) or {}).get(key)) for part in ("validation", "test")]
                   for key in METRIC_KEYS]
    decisions = (metrics.get("test") or {}).get("decisions") or {}
    metric_section = Section("Metrics", [
        f"Decision thresholds, chosen on validation data: review at score ≥ {_fmt(thresholds.get('review'))}, "
        f"block at score ≥ {_fmt(thresholds.get('block'))}. On the test window they sent "
        f"{_fmt(decisions.get('review_rate'))} of events to review or block, with precision "
        f"{_fmt(decisions.get('precision_flagged'))} and recall {_fmt(decisions.get('recall_flagged'))}.",
    ], [Table(["metric", "validation", "test"], metric_rows)])
    windows = dataset.get("windows") or {}
    evaluation = Section("Evaluation data", [
        f"A held-out test window the model and its thresholds never saw ({dataset.get('split')} split): "
        f"{_fmt((metrics.get('test') or {}).get('n'))} events, {_fmt((metrics.get('test') or {}).get('positives'))} "
        "positive. It was evaluated once.",
    ] + ([f"Windows: {format_windows(windows)}."] if windows else [])
      # what the run said of its windows (a test window far richer in positives than training: flattering metrics)
      + [f"Warning, said when it was trained: {said}" for said in dataset.get("warnings") or []])
    training = Section("Training data", [
        f"Source: {dataset.get('source')}; {dataset.get('rows')} labelled rows, {dataset.get('positives')} positive; "
        f"content sha256 {dataset.get('content_sha256')}.",
        "Labels follow SIRA's rules: positive when a fraud label was known by the cut-off, negative once older "
        "than the model's label maturity; younger unlabelled events are left out.",
    ])
    if dataset.get("feature_set"):
        training.paragraphs.append(feature_set_line(dataset["feature_set"], dataset.get("feature_set_version")))
    if dataset.get("features_from_log"):
        training.paragraphs.append(f"The vectors of {dataset['features_from_log']:,} of the {dataset.get('rows', 0):,} "
                                   "rows were computed from the event log: the feature set stored no row for them.")
    if dataset.get("dropped_columns"):
        training.tables.append(Table(["column not used", "why"], [[k, v] for k, v in dataset["dropped_columns"].items()]))
    analyses = Section("Quantitative analyses")
    rows = [[seg, value, _fmt(m.get("n")), _fmt(m.get("positives")), _fmt(m.get("average_precision")),
             _fmt(m.get("roc_auc"))] for seg, values in segments.items() for value, m in values.items()]
    analyses.tables.append(Table(["segment", "value", "n", "positives", "AP", "ROC AUC"], rows,
                                 "Test metrics by segment (segments with at least 200 events):"
                                 if rows else "No segment had at least 200 test events."))
    importance = (manifest.get("importance") or {}).get("mean_abs_shap") or {}
    top = top_importance(importance)
    analyses.tables.append(Table(["feature", "mean |SHAP|"], [[k, _fmt(v)] for k, v in top],
                                 f"Global importance: the {len(top)} most important of {len(importance)} features, "
                                 "by mean |SHAP| on validation rows (the `shap` package):"))
    analyses.image_png = shap_png
    ethics = Section("Ethical considerations", [
        "Personal data (card numbers, emails, phones, IPs, device ids) is tokenised with a keyed HMAC before "
        "storage; names and addresses are dropped. Features are aggregates of tokens and amounts.",
        "Blocking a legitimate payment harms a customer: automatic blocks require the block precision target, "
        "and every decision carries reason codes and is stored for audit and appeal.",
    ])
    caveats = Section("Caveats and recommendations", [
        "Fraud patterns shift: watch drift and live performance, retrain when they degrade. Labels arrive late "
        "(chargebacks take weeks), so live metrics lag.",
        "Production needs the model's required approvals; rollback returns to the previous version in one step.",
    ])
    if history:
        caveats.tables.append(Table(["when", "from", "to", "how", "who", "why"],
                               [[h["at"][:19], _fmt(h["from"]), _fmt(h["to"]), h["via"], h["actor"], h["reason"] or ""]
                                for h in history]))
    return [details, intended, factors, metric_section, evaluation, training, analyses, ethics, caveats]


def to_markdown(title: str, sections: list[Section], image_ref: str | None = None) -> str:
    out = [f"# Model card: {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        out += [p + "\n" for p in section.paragraphs if p]
        for headers, rows, caption in section.tables:
            if caption:
                out += [caption, ""]
            if not rows:
                continue
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("")
        if section.image_png is not None and image_ref:
            out += [f"![SHAP summary]({image_ref})", ""]
    return "\n".join(out).rstrip() + "\n"


def to_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    body = [f"<h1>Model card: {esc(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        for p in section.paragraphs:
            if p:
                text = esc(p).replace("**", "")
                body.append(f"<p>{text}</p>")
        for headers, rows, caption in section.tables:
            if caption:
                body.append(f"<p>{esc(caption)}</p>")
            if not rows:
                continue
            body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead><tbody>")
            body += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows]
            body.append("</tbody></table>")
        if section.image_png is not None:
            data = base64.b64encode(section.image_png).decode()
            body.append(f'<img alt="SHAP summary" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


async def render_card(conn: Any, settings: Any, identity: Any, model_name: str, version: int,
                      fmt: str = "md") -> str:
    """The card of a version, read from the registry and its verified artifact."""
    from sira.core.artifacts import ArtifactRef, load_artifact
    from sira.core.auth import authorize
    from sira.core.errors import invalid_format
    from sira.registry import models as registry

    if fmt not in ("md", "html"):
        raise invalid_format(fmt, ("md", "html"))
    authorize(identity, "models.read")
    row = await registry.get_version(conn, model_name, version)
    model = dict(await registry.get_model(conn, model_name))
    ref = ArtifactRef(row["artifact_uri"], row["artifact_sha256"])
    loaded = load_artifact(settings, ref)
    png = loaded.files.get("shap_summary.png")
    history = await registry.production_history(conn, model_name)
    sections = build_card(model, dict(row), loaded.manifest, history, png)
    title = f"{model_name} v{version}"
    return to_html(title, sections) if fmt == "html" else to_markdown(title, sections, f"{ref.uri}/shap_summary.png")
