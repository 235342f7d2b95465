"""The webhook pages shared by ``/portal`` and the console's Webhooks tab: endpoints,
deliveries and test events, each acting through the REST API as the seat."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, g, redirect, request
from flask.typing import ResponseReturnValue

from app.console import live
from app.console.charts import endpoint_health
from app.console.delegate import Answer
from app.console.pages import PageRefused, Seat, check_csrf, count_request, render
from app.store import jsoncodec

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
DELIVERY_STATUSES = ("pending", "succeeded", "failed", "held", "discarded", "queued")


def is_colour(value: str) -> bool:
    return bool(_COLOUR.match(value))


def check_write(seat: Seat) -> None:
    """Count the request; a state change also needs the session's CSRF token and a session
    that may change things."""
    count_request(seat)
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    check_csrf(seat)
    if seat.read_only:
        raise PageRefused(
            403,
            "Read-only",
            "This session is read-only: it shows everything but cannot change anything.",
        )


def must(answer: Answer) -> Any:
    """The body of a successful answer; a failed one becomes a plain error page."""
    if not answer.ok:
        titles = {404: "Not found", 403: "Not allowed", 429: "Slow down"}
        raise PageRefused(
            answer.status, titles.get(answer.status, "Something went wrong"), answer.detail
        )
    return answer.body


def _catalog(seat: Seat) -> list[dict[str, Any]]:
    items = must(seat.api("GET", "/event-types"))["items"]
    for item in items:
        examples = item.get("examples") or []
        item["example_json"] = jsoncodec.dumps(examples[0], indent=2) if examples else ""
    return items


def _integrations(seat: Seat) -> list[dict[str, Any]]:
    answer = seat.api("GET", "/integrations", query={"type": "webhook", "limit": 100})
    return list(must(answer)["items"])


def endpoint_list(seat: Seat) -> ResponseReturnValue:
    """Every endpoint of the tenant, newest first."""
    page = must(seat.api("GET", "/webhooks", query={"limit": 100}))
    return render("webhooks/list.html", endpoints=page["items"], section="endpoints")


def _endpoint_form() -> tuple[dict[str, Any], dict[str, str]]:
    """The endpoint form as API fields, and errors the API would not word for a form."""
    form, errors = request.form, {}
    data: dict[str, Any] = {
        "url": form.get("url", "").strip(),
        "description": form.get("description", "").strip(),
        "events": form.getlist("events"),
    }
    limit = form.get("rate_limit_per_second", "").strip()
    if limit:
        if limit.isdigit():
            data["rate_limit_per_second"] = int(limit)
        else:
            errors["rate_limit_per_second"] = "Enter a whole number of deliveries per second."
    else:
        data["rate_limit_per_second"] = None
    if not data["events"]:
        errors["events"] = "Pick at least one event type."
    return data, errors


def _form_page(seat: Seat, **context: Any) -> ResponseReturnValue:
    status = 422 if context.get("errors") or context.get("problem") else 200
    return render(
        "webhooks/form.html",
        status,
        catalog=_catalog(seat),
        integrations=_integrations(seat),
        section="endpoints",
        **context,
    )


def endpoint_create(seat: Seat) -> ResponseReturnValue:
    """The new-endpoint form; on success the signing secret is shown once."""
    if request.method == "GET":
        return _form_page(seat, values={"events": []}, errors={})
    data, errors = _endpoint_form()
    integrations = _integrations(seat)
    chosen = request.form.get("integration_id") or (integrations[0]["id"] if integrations else "")
    data["integration_id"] = chosen
    if not chosen:
        errors["integration_id"] = "This account has no webhook integration to attach to."
    if errors:
        return _form_page(seat, values=data, errors=errors)
    answer = seat.api("POST", "/webhooks", json=data)
    if not answer.ok:
        return _form_page(seat, values=data, errors=answer.field_errors, problem=answer.detail)
    return render(
        "webhooks/secret.html",
        201,
        endpoint=answer.body,
        secret=answer.body["secret"],
        created=True,
        section="endpoints",
    )


def endpoint_detail(seat: Seat, webhook_id: str) -> ResponseReturnValue:
    """One endpoint with its settings form (POST saves it) and actions."""
    current = must(seat.api("GET", f"/webhooks/{webhook_id}"))
    if request.method == "GET":
        return _detail_page(seat, current, current, {})
    data, errors = _endpoint_form()
    if errors:
        return _detail_page(seat, current, data, errors)
    answer = seat.api("PATCH", f"/webhooks/{webhook_id}", json=data)
    if not answer.ok:
        return _detail_page(seat, current, data, answer.field_errors, answer.detail)
    return redirect(seat.url("endpoint", webhook_id=webhook_id, saved=1), 303)


def _detail_page(
    seat: Seat,
    endpoint: dict[str, Any],
    values: dict[str, Any],
    errors: dict[str, str],
    problem: str | None = None,
) -> ResponseReturnValue:
    return render(
        "webhooks/detail.html",
        422 if errors or problem else 200,
        endpoint=endpoint,
        values=values,
        errors=errors,
        problem=problem,
        catalog=_catalog(seat),
        saved=request.args.get("saved"),
        done=request.args.get("done"),
        section="endpoints",
    )


def endpoint_action(seat: Seat, webhook_id: str, action: str) -> ResponseReturnValue:
    """disable, enable, rotate-secret, recover and delete (GET: its confirmation page)."""
    if action == "delete":
        endpoint = must(seat.api("GET", f"/webhooks/{webhook_id}"))
        if request.method == "GET":
            return render("webhooks/delete.html", endpoint=endpoint, section="endpoints")
        must(seat.api("DELETE", f"/webhooks/{webhook_id}"))
        return redirect(seat.url("endpoints", deleted=webhook_id), 303)
    if request.method != "POST" or action not in ("disable", "enable", "rotate-secret", "recover"):
        raise PageRefused(404, "Not found", "There is no such page.")
    if action == "rotate-secret":
        body = must(seat.api("POST", f"/webhooks/{webhook_id}/rotate-secret"))
        endpoint = must(seat.api("GET", f"/webhooks/{webhook_id}"))
        return render(
            "webhooks/secret.html",
            endpoint=endpoint,
            secret=body["secret"],
            previous_until=body["previous_secret_until"],
            section="endpoints",
        )
    if action == "disable":
        answer = seat.api("PATCH", f"/webhooks/{webhook_id}", json={"status": "disabled"})
        done = "Disabled: new deliveries are held until you enable it."
    elif action == "enable":
        held = request.form.get("held", "send")
        answer = seat.api("POST", f"/webhooks/{webhook_id}/enable", json={"held": held})
        done = "Enabled."
        if answer.ok:
            done += f" {answer.body['sent']} held deliveries sent, {answer.body['discarded']} "
            done += f"discarded, {answer.body['recovered']} failed ones re-queued."
    else:
        since = _local_time(request.form.get("since", ""))
        answer = seat.api("POST", f"/webhooks/{webhook_id}/recover", json={"since": since})
        done = f"{answer.body.get('requeued', 0)} failed deliveries re-queued." if answer.ok else ""
    if not answer.ok:
        endpoint = must(seat.api("GET", f"/webhooks/{webhook_id}"))
        return _detail_page(seat, endpoint, endpoint, {}, answer.detail)
    return redirect(seat.url("endpoint", webhook_id=webhook_id, done=done), 303)


def _local_time(value: str) -> str:
    """A ``datetime-local`` form value (read as UTC) as the API's ISO 8601; else unchanged,
    so the API names what is wrong with it."""
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return value


def delivery_list(seat: Seat) -> ResponseReturnValue:
    """Deliveries of one endpoint, filtered by status, event type and time, with attempts."""
    endpoints = must(seat.api("GET", "/webhooks", query={"limit": 100}))["items"]
    args = request.args
    chosen = args.get("webhook") or (endpoints[0]["id"] if endpoints else "")
    filters = {k: args.get(k, "") for k in ("status", "event_type", "since", "until")}
    page: dict[str, Any] = {"items": [], "next_cursor": None}
    problem = None
    if chosen:
        query = {
            **filters,
            "since": _local_time(filters["since"]) if filters["since"] else "",
            "until": _local_time(filters["until"]) if filters["until"] else "",
            "cursor": args.get("cursor", ""),
            "limit": 25,
        }
        answer = seat.api("GET", f"/webhooks/{chosen}/deliveries", query=query)
        if answer.ok:
            page = answer.body
        elif answer.status == 404:
            raise PageRefused(404, "Not found", answer.detail)
        else:
            problem = answer.detail
    return render(
        "webhooks/deliveries.html",
        422 if problem else 200,
        endpoints=endpoints,
        chosen=chosen,
        filters=filters,
        statuses=DELIVERY_STATUSES,
        catalog=_catalog(seat),
        page=page,
        problem=problem,
        done=args.get("done"),
        section="deliveries",
    )


def delivery_resend(seat: Seat, delivery_id: str) -> ResponseReturnValue:
    answer = seat.api("POST", f"/deliveries/{delivery_id}/retry")
    if answer.status == 404:
        raise PageRefused(404, "Not found", answer.detail)
    done = "Resent: it is queued for delivery now." if answer.ok else answer.detail
    back = request.form.get("webhook", "")
    return redirect(seat.url("deliveries", webhook=back, done=done), 303)


def send_test_event(seat: Seat) -> ResponseReturnValue:
    """Publish an event of a catalog type with an editable payload (its example)."""
    catalog = _catalog(seat)
    values = {"type": request.form.get("type", ""), "payload": request.form.get("payload", "")}
    errors: dict[str, str] = {}
    problem = result = None
    if request.method == "POST":
        try:
            data = jsoncodec.loads(values["payload"] or "{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            errors["payload"] = 'The payload must be a JSON object, such as {"id": 1}.'
        else:
            answer = seat.api("POST", "/events", json={"type": values["type"], "data": data})
            if answer.ok:
                result = answer.body
            else:
                errors, problem = answer.field_errors, answer.detail
    return render(
        "webhooks/test_event.html",
        422 if errors or problem else 200,
        catalog=catalog,
        values=values,
        errors=errors,
        problem=problem,
        result=result,
        section="test",
    )


def live_page(seat: Seat) -> ResponseReturnValue:
    """Delivery attempts as they arrive (htmx asks ``live_feed`` every two seconds)."""
    return render("webhooks/live.html", after=live.latest_id(), section="live")


def live_feed(seat: Seat) -> ResponseReturnValue:
    rows, after = live.deliveries_after(seat.tenant.id, request.args.get("after", ""))
    return render("webhooks/live_rows.html", rows=rows, after=after)


def health(seat: Seat) -> ResponseReturnValue:
    """Success rate and latency per endpoint over 24 hours or 7 days, as SVG charts."""
    window = request.args.get("window", "24h")
    span = timedelta(days=7) if window == "7d" else timedelta(hours=24)
    charts = endpoint_health(seat, span)
    return render("webhooks/health.html", charts=charts, window=window, section="health")


#: (rule, view name, function, methods): the same pages in the portal and the console.
PAGES = (
    ("/endpoints", "endpoints", endpoint_list, ["GET"]),
    ("/endpoints/new", "new_endpoint", endpoint_create, ["GET", "POST"]),
    ("/endpoints/<webhook_id>", "endpoint", endpoint_detail, ["GET", "POST"]),
    ("/endpoints/<webhook_id>/<action>", "endpoint_action", endpoint_action, ["GET", "POST"]),
    ("/deliveries", "deliveries", delivery_list, ["GET"]),
    ("/deliveries/<delivery_id>/resend", "resend", delivery_resend, ["POST"]),
    ("/test-event", "test_event", send_test_event, ["GET", "POST"]),
    ("/live", "live_page", live_page, ["GET"]),
    ("/live/feed", "live_feed", live_feed, ["GET"]),
    ("/health", "health", health, ["GET"]),
)


def add_webhook_pages(bp: Blueprint, prefix: str = "") -> None:
    """Register :data:`PAGES` on ``bp`` under ``prefix``, each called with ``g.seat``."""
    for rule, name, page, methods in PAGES:

        def view(_page: Any = page, **values: Any) -> ResponseReturnValue:
            return _page(g.seat, **values)

        bp.add_url_rule(prefix + rule, name, view, methods=methods)
