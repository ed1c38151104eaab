"""The Kafka ACL plan of the platform, generated from `contracts.catalog`.

    python -m contracts.acl [DIR]        (default: deploy/kafka)

writes `DIR/acl-plan.json`, the plan, and `DIR/acl-plan.sh`, the same plan as calls of
the shell functions of `deploy/kafka/init.sh`, which applies it with Kafka's own tools
when the deployment starts (docs/deploy.md). Both are committed; `make docs` regenerates
them and a test fails when they drift from the catalog.

The catalog says who writes (`producers`) and reads (`consumers`) each topic; the plan
turns every actor into one SASL principal and every right into ACLs:

- each service and the console (`User:cm-{service}`, `User:cm-console`: every process on
  the service runtime): WRITE on the topics it produces, READ on those it consumes, READ
  on its consumer groups (`cm.{service}.{consumer}`, services/runtime/app.py: the prefix
  `cm.{service}.`) and DESCRIBE on every other platform topic, so that
  the runtime's start-up check (`ensure_topics`) sees they exist. Topics are created by
  the deployment's init step, not by the services: no service may create topics, except
- the notifier, which creates, writes and grows (ALTER: partitions) the merchants' own
  topics: the prefix `cm.push.` (`contracts.topics.MERCHANT_TOPIC_PREFIX`);
- operators (`User:cm-operator`), the payment engine (`User:cm-payment-engine`) and the
  agencies' adapters (`User:cm-agency-adapter`): WRITE and READ per the catalog, and READ
  on consumer groups under `cm.operator.`, `cm.payment-engine.`, `cm.agency-adapter.`;
- each merchant (the template `User:merchant-{website_key}`): WRITE on the topics whose
  producers include merchants and which are not platform-only, READ on its own topics and
  consumer groups, both the prefix `cm.push.{website_key}.`, and nothing else.

Every topic and group name gets `CM_TOPIC_PREFIX` in front when the plan is applied.
Producers are never idempotent or transactional (the embedded broker cannot be), so no
cluster right (IDEMPOTENT_WRITE) and no transactional id is granted.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from contracts import catalog
from contracts.topics import MERCHANT_TOPIC_PREFIX, merchant_prefix

DEFAULT_DIR = Path("deploy/kafka")
PLAN_JSON = "acl-plan.json"
PLAN_SHELL = "acl-plan.sh"

#: The SASL mechanism of every platform and merchant user.
SASL_MECHANISM = "SCRAM-SHA-512"
#: Stands for the merchant's website key in the merchant template.
WEBSITE_KEY = "{website_key}"
MERCHANT_USER = f"merchant-{WEBSITE_KEY}"

#: The SASL user of each actor but the merchants (one user per merchant, the template).
USERS: dict[str, str] = {
    **{service: f"cm-{service}" for service in catalog.RUNTIME_SERVICES},
    catalog.OPERATORS: "cm-operator",
    catalog.PAYMENT_ENGINE: "cm-payment-engine",
    catalog.AGENCY_ADAPTERS: "cm-agency-adapter",
}
#: Users that bypass the ACLs: the init step's (topics, users, ACLs) and the controller's
#: (the broker's own requests to its KRaft controller, SASL/PLAIN).
ADMIN_USER = "cm-admin"
CONTROLLER_USER = "cm-controller"

#: Who copies each merchant's records to its own topics (services/notifier/feeds.py), and
#: so creates, writes and grows every topic under `cm.push.`.
MERCHANT_FEED_WRITER = catalog.NOTIFIER

READ = "Read"
WRITE = "Write"
DESCRIBE = "Describe"
CREATE = "Create"
ALTER = "Alter"
DELETE = "Delete"
_IMPLY_DESCRIBE = (READ, WRITE, DELETE, ALTER)

ResourceType = Literal["topic", "group"]
PatternType = Literal["literal", "prefixed"]

_NAME = re.compile(r"[A-Za-z0-9._{}-]+")
#: A merchant with Kafka topics (the envelope's rule without '.': the prefix `cm.push.a.`
#: would cover the topics of merchant `a.b`). deploy/kafka/init.sh checks the same.
MERCHANT_WEBSITE_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, order=True)
class Grant:
    """One ACL: ALLOW `operation` on a topic or group, by exact name or by prefix.

    `name` is the base name; CM_TOPIC_PREFIX goes in front when the plan is applied.
    """

    resource: ResourceType
    pattern: PatternType
    name: str
    operation: str

    def covers(self, resource: ResourceType, name: str) -> bool:
        """Whether this grant applies to the resource `name` (any operation)."""
        if resource != self.resource:
            return False
        return name.startswith(self.name) if self.pattern == "prefixed" else name == self.name


@dataclass(frozen=True)
class Principal:
    """One SASL user and its grants; `required` users must exist for the platform to run."""

    user: str
    actor: str
    password_env: str
    required: bool
    grants: tuple[Grant, ...]

    @property
    def principal(self) -> str:
        return f"User:{self.user}"

    def may(self, operation: str, resource: ResourceType, name: str) -> bool:
        """Whether an ACL grants `operation` (or one that implies it, as Kafka does:
        READ, WRITE, DELETE and ALTER imply DESCRIBE) on the resource `name`."""
        implying = {operation, "All", *(_IMPLY_DESCRIBE if operation == DESCRIBE else ())}
        return any(g.operation in implying and g.covers(resource, name) for g in self.grants)


def password_env(user: str) -> str:
    """The environment variable that holds a platform user's password."""
    return "KAFKA_PASSWORD_" + user.removeprefix("cm-").upper().replace("-", "_")


def group_prefix(user: str) -> str:
    """The consumer groups a platform user may use: `cm.invoice.` for `cm-invoice`."""
    return f"cm.{user.removeprefix('cm-')}."


def _catalog_grants(actor: str) -> set[Grant]:
    grants: set[Grant] = set()
    for spec in catalog.TOPICS.values():
        if actor in spec.producers:
            grants.add(Grant("topic", "literal", spec.name, WRITE))
        if actor in spec.consumers:
            grants.add(Grant("topic", "literal", spec.name, READ))
    return grants


def _principal(actor: str) -> Principal:
    user = USERS[actor]
    grants = _catalog_grants(actor)
    service = actor in catalog.RUNTIME_SERVICES
    if service:
        # ensure_topics (services/runtime/app.py) lists the topics at start and creates
        # what it cannot see: let it see them all, so that it has nothing to create.
        named = {g.name for g in grants}
        grants |= {
            Grant("topic", "literal", name, DESCRIBE)
            for name in catalog.TOPICS
            if name not in named
        }
    if actor == MERCHANT_FEED_WRITER:
        grants |= {
            Grant("topic", "prefixed", MERCHANT_TOPIC_PREFIX, operation)
            for operation in (CREATE, WRITE, ALTER)
        }
    if service or any(g.operation == READ for g in grants):
        grants.add(Grant("group", "prefixed", group_prefix(user), READ))
    return Principal(user, actor, password_env(user), service, tuple(sorted(grants)))


def principals() -> list[Principal]:
    """Every platform and partner user (not the merchants: see `merchant_template`)."""
    return [_principal(actor) for actor in USERS]


def merchant_template() -> Principal:
    """The grants of `User:merchant-{website_key}`, one such user per merchant."""
    grants: set[Grant] = set()
    for spec in catalog.TOPICS.values():
        if catalog.MERCHANTS in spec.consumers:
            # A shared topic carries every merchant's records: a merchant reads only its own
            # topics, which the notifier fills.
            raise ValueError(f"{spec.name}: merchants read only cm.push.{{website_key}}.*")
        if catalog.MERCHANTS in spec.producers and not spec.platform_only:
            grants.add(Grant("topic", "literal", spec.name, WRITE))
    own = merchant_prefix(WEBSITE_KEY)
    grants.add(Grant("topic", "prefixed", own, READ))
    grants.add(Grant("group", "prefixed", own, READ))
    return Principal(MERCHANT_USER, catalog.MERCHANTS, "", False, tuple(sorted(grants)))


def merchant_principal(website_key: str) -> Principal:
    """The template filled in for one merchant (a website key without '.')."""
    if not MERCHANT_WEBSITE_KEY.fullmatch(website_key):
        raise ValueError(f"website key {website_key!r} cannot have a principal of its own")
    template = merchant_template()
    return Principal(
        template.user.replace(WEBSITE_KEY, website_key),
        template.actor,
        template.password_env,
        template.required,
        tuple(
            Grant(g.resource, g.pattern, g.name.replace(WEBSITE_KEY, website_key), g.operation)
            for g in template.grants
        ),
    )


# --- output -------------------------------------------------------------------------------


def _calls(grants: Iterable[Grant]) -> dict[tuple[str, str, str], list[str]]:
    """The grants by (resource, pattern, operation): one `kafka-acls.sh --add` each."""
    calls: dict[tuple[str, str, str], list[str]] = {}
    for g in sorted(grants):
        calls.setdefault((g.resource, g.pattern, g.operation), []).append(g.name)
    return dict(sorted(calls.items()))


def _acls_json(grants: Iterable[Grant]) -> list[dict[str, Any]]:
    return [
        {"resource": resource, "pattern": pattern, "operation": operation, "names": names}
        for (resource, pattern, operation), names in _calls(grants).items()
    ]


def _principal_json(p: Principal) -> dict[str, Any]:
    row: dict[str, Any] = {"principal": p.principal, "actor": p.actor}
    if p.password_env:
        row["password_env"] = p.password_env
        row["required"] = p.required
    row["acls"] = _acls_json(p.grants)
    return row


def build() -> dict[str, Any]:
    """The plan as a JSON-ready dict (deterministic)."""
    everyone = principals()
    topics = []
    for name in sorted(catalog.TOPICS):
        spec = catalog.TOPICS[name]
        topics.append(
            {
                "name": name,
                "platform_only": spec.platform_only,
                "writers": sorted(USERS.get(a, MERCHANT_USER) for a in spec.producers),
                "readers": sorted(USERS.get(a, MERCHANT_USER) for a in spec.consumers),
            }
        )
    return {
        "about": (
            "Generated from contracts/catalog.py by `make docs` (python -m contracts.acl); do "
            "not edit. Applied by deploy/kafka/init.sh (through acl-plan.sh) at every start "
            "of deploy/compose.yaml; docs/deploy.md explains it."
        ),
        "name_prefix": "CM_TOPIC_PREFIX goes in front of every topic and group name below",
        "sasl_mechanism": SASL_MECHANISM,
        "super_users": [
            {
                "principal": f"User:{ADMIN_USER}",
                "password_env": password_env(ADMIN_USER),
                "purpose": "the init step: creates the topics, the users and these ACLs",
            },
            {
                "principal": f"User:{CONTROLLER_USER}",
                "password_env": password_env(CONTROLLER_USER),
                "purpose": "the broker's own requests to its KRaft controller (SASL/PLAIN)",
            },
        ],
        "topics": topics,
        "principals": [_principal_json(p) for p in everyone],
        "merchant_template": {
            **_principal_json(merchant_template()),
            "password": "one per merchant, set when the user is added (docs/deploy.md)",
            "website_key": f"{MERCHANT_WEBSITE_KEY.pattern}: no '.', so that no merchant's "
            "prefix covers another's topics",
        },
    }


def render_json() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _shell_word(name: str) -> str:
    """A topic, group or user name in double quotes, `{website_key}` as `$1`."""
    if not _NAME.fullmatch(name.removeprefix("User:")):
        raise ValueError(f"not a plain Kafka name: {name!r}")
    return '"' + name.replace(WEBSITE_KEY, "$1") + '"'


def _allow_lines(p: Principal) -> list[str]:
    return [
        f"  allow {_shell_word(p.principal)} {resource} {pattern} {operation} "
        + " ".join(_shell_word(name) for name in names)
        for (resource, pattern, operation), names in _calls(p.grants).items()
    ]


def render_shell() -> str:
    everyone = principals()
    lines = [
        "# Generated from contracts/catalog.py by `make docs` (python -m contracts.acl): do not",
        "# edit. The ACL plan of acl-plan.json as calls of the functions that init.sh defines",
        "# (create_topic, scram_user, allow); names get CM_TOPIC_PREFIX in front there.",
        "# shellcheck shell=bash",
        "",
        "plan_topics() {",
        *(f"  create_topic {_shell_word(name)}" for name in sorted(catalog.TOPICS)),
        "}",
        "",
        "plan_users() {",
        *(
            f"  scram_user {p.user} {p.password_env} {'required' if p.required else 'optional'}"
            for p in everyone
        ),
        "}",
        "",
        "plan_acls() {",
    ]
    for p in everyone:
        lines.append(f"  # {p.actor}")
        lines.extend(_allow_lines(p))
    lines += [
        "}",
        "",
        "# $1: the merchant's website key (init.sh checks it has no '.').",
        "merchant_acls() {",
        *_allow_lines(merchant_template()),
        "}",
    ]
    return "\n".join(lines) + "\n"


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((PLAN_JSON, render_json()), (PLAN_SHELL, render_shell())):
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in {"-h", "--help"}):
        sys.stderr.write("usage: python -m contracts.acl [DIR]   (default: deploy/kafka)\n")
        return 2
    write(Path(args[0]) if args else DEFAULT_DIR)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
