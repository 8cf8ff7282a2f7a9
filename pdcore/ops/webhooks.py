"""Webhook operations (SPEC.md §7), with the 3.7 routes."""

from pdcore.ops.schema import Arg, Op, Route, limit_arg

_ID = Arg("id", "str", required=True, max_len=64, where="path", doc="webhook id")
_EVENTS_DOC = "event names (lock.acquire, lock.*, *); default: all (GET /webhooks/events lists them)"

OPS = (
    Op("webhook.register", "webhooks.register", "Register a URL to receive signed POSTs when events happen.",
       args=(
           Arg("url", "str", required=True, max_len=2048, doc="http(s) URL; private/loopback targets are refused"),
           Arg("events", "list", max_len=64, doc=_EVENTS_DOC),
           Arg("secret", "str", max_len=512, doc="HMAC-SHA256 key for the X-PortDaddy-Signature header"),
           Arg("filterPattern", "str", max_len=200, doc="only events whose target matches this glob"),
           Arg("metadata", "dict", max_len=64),
       ),
       reply={"id": "str", "url": "str", "events": "list", "webhook": "dict", "message": "str"},
       durable=True, errors=("invalid_argument", "webhook_target_refused", "webhook_limit"),
       routes=(Route("POST", "/webhooks", v37=True),), cli=("webhook add",), runs_commands=True),
    Op("webhook.list", "webhooks.list", "Registered webhooks, newest first.",
       args=(Arg("active", "bool", where="query"),),
       reply={"webhooks": "list", "count": "int"}, routes=(Route("GET", "/webhooks", v37=True),), cli=("webhook list",)),
    Op("webhook.get", "webhooks.get", "One webhook with its delivery counts.",
       args=(_ID,), reply={"webhook": "dict"}, errors=("not_found",),
       routes=(Route("GET", "/webhooks/{id}", v37=True),), cli=("webhook get",)),
    Op("webhook.update", "webhooks.update", "Change a webhook's URL, events, secret, filter or active flag.",
       args=(
           _ID,
           Arg("url", "str", max_len=2048),
           Arg("events", "list", max_len=64, doc=_EVENTS_DOC),
           Arg("secret", "str", max_len=512, doc="empty string removes the secret"),
           Arg("filterPattern", "str", max_len=200, doc="empty string removes the filter"),
           Arg("active", "bool"),
           Arg("metadata", "dict", max_len=64),
       ),
       reply={"webhook": "dict", "message": "str"}, durable=True,
       errors=("not_found", "invalid_argument", "webhook_target_refused"),
       routes=(Route("PUT", "/webhooks/{id}", v37=True),), cli=("webhook update",), runs_commands=True),
    Op("webhook.delete", "webhooks.delete", "Remove a webhook and its delivery log.",
       args=(_ID,), reply={"id": "str", "deleted": "bool"}, durable=True, errors=("not_found",),
       routes=(Route("DELETE", "/webhooks/{id}", v37=True),), cli=("webhook rm",)),
    Op("webhook.test", "webhooks.test", "Send a webhook.test delivery now and report how the endpoint answered.",
       args=(_ID,), reply={"delivered": "bool", "status": "int", "body": "str", "error": "str", "deliveryId": "str"},
       durable=True, parks=True, errors=("not_found",),
       routes=(Route("POST", "/webhooks/{id}/test", v37=True),), cli=("webhook test",), runs_commands=True),
    Op("webhook.deliveries", "webhooks.deliveries", "A webhook's recent deliveries, newest first.",
       args=(
           _ID,
           limit_arg(50, max=500),
           Arg("status", "str", choices=("pending", "retrying", "delivered", "failed", "refused", "cancelled"),
               where="query"),
       ),
       reply={"deliveries": "list", "count": "int"}, errors=("not_found",),
       routes=(Route("GET", "/webhooks/{id}/deliveries", v37=True),), cli=("webhook deliveries",)),
    Op("webhook.events", "webhooks.events", "The event names webhooks can subscribe to.",
       reply={"events": "list", "wildcards": "list"},
       routes=(Route("GET", "/webhooks/events", v37=True),), cli=("webhook events",)),
)
