"""Portal page "Archive policies": the active version, every version, and a rule editor.

The editor is a plain server-rendered form, one fieldset per rule (add, remove, reorder with
buttons that submit the form). "Preview" shows what the edited rules would do today and the
simulated cost next to the active policy, without saving; "Save as new version" writes the next
version (optionally activating it). Errors of ``rules_validate`` are shown at their field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods, require_POST

from archive.analytics.simulator import simulate
from archive.analytics.simulator.results import Simulation
from archive.policies import validate, versions
from archive.policies.preview import PolicyPreview, policy_preview
from archive.storage.tiers import TIER_CATALOG
from archive.tiering import planning
from tenants.errors import NotFound, ServiceError, ValidationFailed
from tenants.portal import PortalContext, org_view
from tenants.roles import Perm

ACTION_CHOICES = [
    ("move:warm", "Move to warm"),
    ("move:cold", "Move to cold"),
    ("move:archive", "Move to archive (restore needed to read)"),
    ("delete", "Delete (to the trash) after a retention period"),
]
RANGE_FIELDS = {
    "days_since_last_access": ("access_min", "access_max"),
    "days_since_study_date": ("study_min", "study_max"),
    "patient_age_years": ("age_min", "age_max"),
}
TEXT_FIELDS = ("name", "modalities", "sop_classes", "description_pattern", "after_days")
CONDITION_LABELS = {
    "days_since_last_access": "Days since last read",
    "days_since_study_date": "Days since study date",
    "patient_age_years": "Patient age at study (years)",
    "modalities": "Modalities",
    "sop_classes": "SOP classes",
    "description_pattern": "Study description",
}


@dataclass
class RuleRow:
    """One rule as the editor shows it: the raw texts typed, and the errors per field."""

    values: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)

    def get(self, key: str) -> str:
        return self.values.get(key, "")


def _empty_row() -> RuleRow:
    return RuleRow(values={"action": "move:cold"})


def rule_to_row(rule: dict[str, Any]) -> RuleRow:
    action = rule["action"]
    values = {
        "name": rule.get("name", ""),
        "action": "delete" if action["type"] == "delete" else f"move:{action['tier']}",
        "after_days": str(action.get("after_days", "")),
    }
    conditions = rule["conditions"]
    for key, (lo, hi) in RANGE_FIELDS.items():
        rng = conditions.get(key, {})
        values[lo] = str(rng.get("min", ""))
        values[hi] = str(rng.get("max", ""))
    values["modalities"] = ", ".join(conditions.get("modalities", []))
    values["sop_classes"] = "\n".join(conditions.get("sop_classes", []))
    values["description_pattern"] = conditions.get("description_pattern", "")
    return RuleRow(values=values)


def _number(text: str) -> Any:
    """An integer when the text is one; else the text itself (the validation names it)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return text


def row_to_rule(row: RuleRow) -> dict[str, Any]:
    v = row.values
    conditions: dict[str, Any] = {}
    for key, (lo, hi) in RANGE_FIELDS.items():
        rng = {
            bound: _number(v.get(name, ""))
            for bound, name in (("min", lo), ("max", hi))
            if v.get(name, "").strip()
        }
        if rng:
            conditions[key] = rng
    if v.get("modalities", "").strip():
        conditions["modalities"] = v["modalities"]
    if v.get("sop_classes", "").strip():
        conditions["sop_classes"] = v["sop_classes"]
    if v.get("description_pattern", "").strip():
        conditions["description_pattern"] = v["description_pattern"]
    action_key = v.get("action", "")
    if action_key == "delete":
        action: dict[str, Any] = {"type": "delete", "after_days": _number(v.get("after_days", ""))}
    elif action_key.startswith("move:"):
        action = {"type": "move", "tier": action_key.removeprefix("move:")}
    else:
        action = {"type": action_key}
    rule: dict[str, Any] = {"conditions": conditions, "action": action}
    if v.get("name", "").strip():
        rule["name"] = v["name"]
    return rule


def rows_from_post(data: Any) -> list[RuleRow]:
    try:
        count = min(int(data.get("rule_count", "0")), validate.MAX_RULES + 1)
    except ValueError:
        count = 0
    keys = ("action", *TEXT_FIELDS, *(n for pair in RANGE_FIELDS.values() for n in pair))
    rows = []
    for i in range(count):
        values = {k: str(data.get(f"rule-{i}-{k}", ""))[:2000] for k in keys}
        rows.append(RuleRow(values=values))
    return rows


def _place_errors(rows: list[RuleRow], exc: ServiceError) -> list[str]:
    """Put ``rules[i]...`` field errors on their rule's field; return the ones for the page."""
    general: list[str] = []
    for key, msgs in exc.fields.items():
        if not key.startswith("rules["):
            general += msgs
            continue
        index_text, _, rest = key[len("rules[") :].partition("]")
        try:
            row = rows[int(index_text)]
        except (ValueError, IndexError):
            general += msgs
            continue
        rest = rest.lstrip(".")
        if rest.startswith("conditions."):
            target = rest.removeprefix("conditions.")
            if target not in CONDITION_LABELS:
                target = "conditions"
        elif rest.startswith("action"):
            target = "after_days" if rest.endswith("after_days") else "action"
        elif rest == "name":
            target = "name"
        else:
            target = "conditions" if rest == "conditions" else "rule"
        row.errors.setdefault(target, []).extend(msgs)
    return general


def is_prefetch(rule: Any) -> bool:
    """The prefetch rule: the editor keeps it as it is (it is written through the API)."""
    return isinstance(rule, dict) and (rule.get("action") or {}).get("type") == validate.PREFETCH


def prefetch_summary(rule: dict[str, Any]) -> str:
    """The prefetch rule in one sentence, e.g. "Prefetch: the last 3 priors … → readable 14 days"."""
    # Defensive: a tampered copy of the rule is shown back with its errors.
    raw_c, raw_a = rule.get("conditions"), rule.get("action")
    c: dict[str, Any] = raw_c if isinstance(raw_c, dict) else {}
    a: dict[str, Any] = raw_a if isinstance(raw_a, dict) else {}
    which = []
    if c.get("same_modality"):
        which.append("same modality")
    if c.get("same_body_part"):
        which.append("same body part")
    if "last_studies" in c:
        which.append(f"the last {c['last_studies']} studies")
    if "within_years" in c:
        which.append(f"within {c['within_years']} years")
    name = f"{rule['name']}: " if rule.get("name") else ""
    return (
        f"{name}prefetch priors ({', '.join(which)}) when a study arrives or an order is posted "
        f"→ readable {a.get('keep_days', '?')} days, at most {a.get('monthly_cap', '?')} a month"
    )


def rule_summary(rule: dict[str, Any]) -> str:
    """A rule in one sentence, e.g. "CT or MR, not read for 90 days or more → cold"."""
    if is_prefetch(rule):
        return prefetch_summary(rule)
    parts = []
    order = ("modalities", "sop_classes", "description_pattern", "patient_age_years")
    conditions = rule["conditions"]
    for key in sorted(conditions, key=lambda k: order.index(k) if k in order else len(order)):
        value = conditions[key]
        if key in RANGE_FIELDS:
            unit = "years" if key == "patient_age_years" else "days"
            label = {
                "days_since_last_access": "not read for",
                "days_since_study_date": "study date",
                "patient_age_years": "patient aged",
            }[key]
            if "min" in value and "max" in value:
                bounds = f"{value['min']}–{value['max']} {unit}"
            elif "min" in value:
                bounds = f"{value['min']}+ {unit}"
            else:
                bounds = f"at most {value['max']} {unit}"
            parts.append(f"{label} {bounds}" + (" ago" if key == "days_since_study_date" else ""))
        elif key == "modalities":
            parts.append(" or ".join(value))
        elif key == "sop_classes":
            parts.append(f"SOP class {' or '.join(value)}")
        elif key == "description_pattern":
            parts.append(f"description like “{value}”")
    action = rule["action"]
    if action["type"] == "move":
        outcome = f"move to {TIER_CATALOG[action['tier']].label.lower()}"
    else:
        outcome = f"delete {action['after_days']} days after the study date (via the trash)"
    name = f"{rule['name']}: " if rule.get("name") else ""
    return f"{name}{', '.join(parts)} → {outcome}"


def _versions(ctx: PortalContext) -> list[dict[str, Any]]:
    active = versions.policy_active(org=ctx.org)
    return [
        {
            "version": v,
            "active": active is not None and v.pk == active.pk,
            "summaries": [rule_summary(r) for r in v.rules],
        }
        for v in versions.policy_version_list(org=ctx.org)[:50]
    ]


def _page(
    request: HttpRequest,
    ctx: PortalContext,
    *,
    rows: list[RuleRow],
    note: str = "",
    activate: bool = False,
    general_errors: list[str] | None = None,
    preview: PolicyPreview | None = None,
    simulation: Any = None,
    status: int = 200,
    prefetch: dict[str, Any] | None = None,
) -> HttpResponse:
    active = versions.policy_active(org=ctx.org)
    context = {
        "prefetch_json": json.dumps(prefetch) if prefetch is not None else "",
        "prefetch_summary": prefetch_summary(prefetch) if prefetch is not None else "",
        "ctx": ctx,
        "active_section": "policies",
        "active": active,
        "active_summaries": [rule_summary(r) for r in active.rules] if active else [],
        "versions": _versions(ctx),
        "rows": rows,
        "rule_count": len(rows),
        "max_rules": validate.MAX_RULES,
        "action_choices": ACTION_CHOICES,
        "note": note,
        "activate": activate,
        "general_errors": general_errors or [],
        "row_errors": any(row.errors for row in rows),
        "preview": preview,
        "simulation": simulation,
        "show_simulation": simulation is not None,
    }
    response = render(request, "archive/policies.html", context, status=status)
    add_never_cache_headers(response)
    return response


def _simulate(ctx: PortalContext, rules: list[dict[str, Any]]) -> Simulation:
    """The cost simulator for the candidate rules."""
    return simulate(org=ctx.org, candidate_rules=rules)


@org_view(Perm.POLICIES_MANAGE)
@require_http_methods(["GET", "POST"])
def policies_page(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    if request.method == "GET":
        source = versions.policy_active(org=ctx.org)
        if request.GET.get("from"):
            try:
                source = versions.policy_version_get(org=ctx.org, number=request.GET["from"])
            except NotFound:
                raise Http404("Policy version not found.") from None
        rules = list(source.rules) if source else []
        rows = [rule_to_row(r) for r in rules if not is_prefetch(r)]
        kept = next((r for r in rules if is_prefetch(r)), None)
        return _page(request, ctx, rows=rows or [_empty_row()], prefetch=kept)

    rows = rows_from_post(request.POST)
    prefetch = _prefetch_from_post(request.POST)
    note = request.POST.get("note", "")[:500]
    activate = request.POST.get("activate") == "on"
    intent = request.POST.get("intent", "preview")
    if intent == "add":
        if len(rows) < validate.MAX_RULES:
            rows.append(_empty_row())
        return _page(request, ctx, rows=rows, note=note, activate=activate, prefetch=prefetch)
    for verb, shift in (("remove", 0), ("up", -1), ("down", 1)):
        if intent.startswith(f"{verb}-"):
            try:
                i = int(intent.removeprefix(f"{verb}-"))
            except ValueError:
                break
            if 0 <= i < len(rows):
                if verb == "remove":
                    rows.pop(i)
                elif 0 <= i + shift < len(rows):
                    rows[i], rows[i + shift] = rows[i + shift], rows[i]
            return _page(request, ctx, rows=rows, note=note, activate=activate, prefetch=prefetch)

    rules = [row_to_rule(row) for row in rows] + ([prefetch] if prefetch is not None else [])
    try:
        if intent == "save":
            version = versions.policy_save(
                org=ctx.org, actor=ctx.actor, rules=rules, note=note, activate=activate
            )
            messages.success(
                request,
                f"Saved as version {version.number}"
                + (", now active." if activate else ". It is not active yet."),
            )
            return redirect("portal-policies", ctx.org.slug)
        preview = policy_preview(org=ctx.org, rules=rules)
    except ValidationFailed as exc:
        general = _place_errors(rows, exc)
        if not general and not any(row.errors for row in rows):
            general = [exc.message]
        return _page(
            request,
            ctx,
            rows=rows,
            note=note,
            activate=activate,
            general_errors=general,
            status=400,
            prefetch=prefetch,
        )
    return _page(
        request,
        ctx,
        rows=[rule_to_row(r) for r in preview.rules if not is_prefetch(r)] or [_empty_row()],
        note=note,
        activate=activate,
        preview=preview,
        simulation=_simulate(ctx, preview.rules),
        prefetch=next((r for r in preview.rules if is_prefetch(r)), None),
    )


def _prefetch_from_post(data: Any) -> dict[str, Any] | None:
    """The prefetch rule the form carries unchanged (validated with the rules like any rule)."""
    raw = str(data.get("prefetch_rule", ""))[:2000]
    if not raw.strip():
        return None
    try:
        rule = json.loads(raw)
    except ValueError:
        return {"conditions": None, "action": {"type": validate.PREFETCH}}
    return (
        rule
        if isinstance(rule, dict)
        else {"conditions": None, "action": {"type": validate.PREFETCH}}
    )


@org_view(Perm.POLICIES_MANAGE)
@require_POST
def policy_activate(request: HttpRequest, ctx: PortalContext, number: int) -> HttpResponse:
    try:
        version = versions.policy_version_get(org=ctx.org, number=number)
    except NotFound:
        raise Http404("Policy version not found.") from None
    try:
        versions.policy_activate(org=ctx.org, actor=ctx.actor, version=version)
    except ServiceError as exc:
        messages.error(request, f"Version {number} cannot be activated: {exc.message}")
        return redirect("portal-policies", ctx.org.slug)
    messages.success(
        request, f"Version {number} is active; the engine applies it within 15 minutes."
    )
    return redirect("portal-policies", ctx.org.slug)


@org_view(Perm.POLICIES_MANAGE)
@require_POST
def policy_plan_now(request: HttpRequest, ctx: PortalContext) -> HttpResponse:
    planned = planning.moves_plan(org=ctx.org)
    messages.success(request, f"{planned} tier moves planned; workers carry them out now.")
    return redirect("portal-policies", ctx.org.slug)
