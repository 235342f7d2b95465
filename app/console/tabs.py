"""The console's own tabs: Overview, SSO, Multi-Tenancy and API Gateway (the Webhooks tab
is ``webhook_pages``). Reads and changes go through the REST API as the signed-in user;
the per-minute counts are scoped queries of the tenant shown."""

from __future__ import annotations

from typing import Any

from flask import redirect, request
from flask.typing import ResponseReturnValue

from app.console.charts import bar_chart, per_minute
from app.console.pages import PageRefused, Seat, render
from app.console.webhook_pages import must
from app.gateway.balancer import Upstream, gateway_balancer
from app.store.models import AlertFiring, Delivery, Event


def overview(seat: Seat) -> ResponseReturnValue:
    """Health from /ready, traffic per minute, what is failing now, recent alert firings."""
    ready = seat.api("GET", "/ready")
    tenant_id = seat.tenant.id
    events = per_minute(Event.of(tenant_id), Event.created_at)
    deliveries = Delivery.of(tenant_id).where(Delivery.webhook.is_null(False))
    succeeded = per_minute(deliveries.where(Delivery.status == "succeeded"), Delivery.updated_at)
    failed = per_minute(deliveries.where(Delivery.status == "failed"), Delivery.updated_at)
    done = sum(v or 0 for v in succeeded) + sum(v or 0 for v in failed)
    hooks = must(seat.api("GET", "/webhooks", query={"limit": 100}))["items"]
    failing_hooks = [h for h in hooks if h["status"] == "disabled" or h.get("failing_since")]
    broken = must(seat.api("GET", "/integrations", query={"status": "error", "limit": 50}))
    firings = AlertFiring.of(tenant_id).order_by(AlertFiring.fired_at.desc()).limit(10)
    return render(
        "console/overview.html",
        section="overview",
        ready=ready.body or {},
        ready_ok=ready.ok,
        events_chart=bar_chart(events, max(v or 0 for v in events) or 1, "Events per minute", ""),
        deliveries_chart=bar_chart(
            [(a or 0) + (b or 0) for a, b in zip(succeeded, failed, strict=True)],
            max((a or 0) + (b or 0) for a, b in zip(succeeded, failed, strict=True)) or 1,
            "Deliveries per minute",
            "",
        ),
        events_last_hour=int(sum(v or 0 for v in events)),
        deliveries_last_hour=int(done),
        failure_rate=None if not done else round(100 * sum(v or 0 for v in failed) / done, 1),
        failing_hooks=failing_hooks,
        broken_integrations=broken["items"],
        firings=list(firings),
    )


def sso(seat: Seat) -> ResponseReturnValue:
    """SSO integrations with a test button, and recent sign-ins and refusals."""
    result = None
    if request.method == "POST":
        tested = request.form.get("integration_id", "")
        answer = seat.api("POST", f"/integrations/{tested}/test")
        result = {"id": tested, "ok": answer.ok and answer.body.get("success"), "body": answer}
    integrations = must(seat.api("GET", "/integrations", query={"type": "sso", "limit": 100}))
    logins = []
    for action in ("auth.sso_login", "auth.sso_login_failed", "auth.login", "console.login"):
        page = must(seat.api("GET", "/audit-log", query={"action": action, "limit": 20}))
        logins += page["items"]
    logins.sort(key=lambda e: e["created_at"], reverse=True)
    return render(
        "console/sso.html",
        section="sso",
        integrations=integrations["items"],
        logins=logins[:30],
        result=result,
    )


def _operator(seat: Seat) -> None:
    if not seat.principal.platform:
        raise PageRefused(404, "Not found", "There is no such page.")


def tenant_list(seat: Seat) -> ResponseReturnValue:
    """Every tenant with its quotas and 14 days of usage (operators only)."""
    _operator(seat)
    status = request.args.get("status", "")
    page = must(seat.api("GET", "/tenants", query={"limit": 100, "status": status}))
    rows = []
    for tenant in page["items"]:
        usage = seat.api("GET", f"/tenants/{tenant['id']}/usage", query={"days": 14})
        days = usage.body.get("days", []) if usage.ok else []
        requests = [float(d["requests"]) for d in days]
        events = [float(d["events"]) for d in days]
        rows.append(
            {
                "tenant": tenant,
                "requests_chart": bar_chart(
                    list(requests), max(requests, default=0) or 1, "API requests per day", ""
                ),
                "events_chart": bar_chart(
                    list(events), max(events, default=0) or 1, "Events per day", ""
                ),
            }
        )
    return render(
        "console/tenants.html",
        section="tenants",
        rows=rows,
        status_filter=status,
        done=request.args.get("done"),
    )


def tenant_action(seat: Seat, tenant_id: str, action: str) -> ResponseReturnValue:
    """suspend, resume, delete (GET: its confirmation page) and portal (open the tenant's
    portal in a new session)."""
    _operator(seat)
    tenant = must(seat.api("GET", f"/tenants/{tenant_id}"))
    if action == "delete" and request.method == "GET":
        return render("console/tenant_delete.html", section="tenants", tenant=tenant)
    if request.method != "POST" or action not in ("suspend", "resume", "delete", "portal"):
        raise PageRefused(404, "Not found", "There is no such page.")
    if action == "portal":
        body = {"tenant": tenant["id"], "expires_in": 3600}
        return redirect(must(seat.api("POST", "/portal-sessions", json=body))["url"], 303)
    if action == "delete":
        if request.form.get("confirm") != tenant["external_id"]:
            return render(
                "console/tenant_delete.html",
                422,
                section="tenants",
                tenant=tenant,
                problem="Type the tenant's external id exactly to confirm.",
            )
        answer = seat.api("DELETE", f"/tenants/{tenant['id']}")
    else:
        answer = seat.api("POST", f"/tenants/{tenant['id']}/{action}")
    done = f"{tenant['name']}: {action} done." if answer.ok else answer.detail
    return redirect(seat.url("tenants", done=done), 303)


def _upstream_health(integration: dict[str, Any]) -> list[dict[str, Any]]:
    """The balancer's view of each upstream of a gateway integration."""
    weights: dict[str, int] = {}
    for upstream in (integration.get("config") or {}).get("upstreams") or []:
        if isinstance(upstream, dict) and isinstance(upstream.get("url"), str):
            weights[upstream["url"]] = weights.get(upstream["url"], 0) + int(
                upstream.get("weight", 1)
            )
    upstreams = [Upstream(url, weight) for url, weight in weights.items()]
    return gateway_balancer().state(integration["id"], upstreams) if upstreams else []


def gateway(seat: Seat) -> ResponseReturnValue:
    """Keys with hourly usage, gateway integrations with upstream health, the gateway log."""
    keys = must(seat.api("GET", "/api-keys", query={"limit": 50}))["items"]
    key_rows = []
    for key in keys:
        usage = seat.api("GET", f"/api-keys/{key['id']}/usage", query={"window": "24h"})
        buckets = usage.body.get("buckets", []) if usage.ok else []
        counts = [float(b["requests"]) for b in buckets]
        key_rows.append(
            {
                "key": key,
                "requests": int(sum(counts)),
                "chart": bar_chart(counts, max(counts, default=0) or 1, "Requests per hour", ""),
            }
        )
    integrations = must(seat.api("GET", "/integrations", query={"type": "api", "limit": 50}))
    gateways = [{"integration": i, "upstreams": _upstream_health(i)} for i in integrations["items"]]
    filters = {
        "integration_id": request.args.get("integration_id", ""),
        "status": request.args.get("status", ""),
    }
    log = seat.api("GET", "/logs", query={**filters, "event_type": "gateway.request", "limit": 50})
    return render(
        "console/gateway.html",
        section="gateway",
        key_rows=key_rows,
        gateways=gateways,
        filters=filters,
        log=log.body.get("items", []) if log.ok else [],
        problem=None if log.ok else log.detail,
    )
