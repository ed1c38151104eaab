"""deploy/ read as files (no Docker): SASL everywhere, the ACL plan applied at start, no
default passwords, pinned images, one message size limit."""

from __future__ import annotations

import ast
import importlib
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contracts import acl, catalog
from services.runtime.app import build_service
from services.runtime.kafka_auth import KafkaAuthError, broker_security, client_options
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KAFKA_DIR = DEPLOY / "kafka"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]

#: `${VAR:?message}`: compose refuses to start without VAR.
REQUIRED = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):\?[^}]+\}$")
#: `${VAR:-}`: an optional variable without a default value.
OPTIONAL_EMPTY = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):-\}$")
SECRET_NAME = re.compile(r"PASSWORD|SECRET")
#: An exact version (`3.9.1`, `v1.28.2`, `17.6`, `3.11.13-slim-bookworm`) or a digest.
PINNED_TAG = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$")


def properties(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


BROKER = properties(KAFKA_DIR / "server.properties")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif node is not None:
        yield str(node)


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {key: str(value) for key, value in env.items()}


def substituted(value: str, values: dict[str, str]) -> str:
    """A compose value with its `${VAR...}` replaced as compose would, from `values`."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        if match.group(2) == ":?":
            return values[name]
        return values.get(name) or default

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:\?|:-)([^}]*))?\}", one, value)


def platform_principal(user: str) -> acl.Principal:
    (found,) = [p for p in acl.principals() if p.user == user]
    return found


# --- secrets ------------------------------------------------------------------------------


def test_no_secret_has_a_default_or_a_value_in_compose() -> None:
    for service in SERVICES:
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) or key == "CM_SECRET_KEY":
                match = REQUIRED.match(value) or OPTIONAL_EMPTY.match(value)
                assert match, f"{service}.{key}={value!r}: not from a required variable"
    text = (DEPLOY / "compose.yaml").read_text()
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:-[^}]", text), "a default secret"
    database_url = environment("invoice")["DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in database_url


def test_only_partner_and_operator_users_are_optional() -> None:
    optional = {
        key
        for service in SERVICES
        for key, value in environment(service).items()
        if OPTIONAL_EMPTY.match(value) and SECRET_NAME.search(key)
    }
    assert optional == {p.password_env for p in acl.principals() if not p.required}


def test_the_example_env_names_every_required_variable_with_placeholders_only() -> None:
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (DEPLOY / "compose.yaml").read_text()))
    example = properties(DEPLOY / ".env.example")
    assert required <= set(example), sorted(required - set(example))
    for key, value in example.items():
        if SECRET_NAME.search(key) or key == "CM_SECRET_KEY":
            assert value in ("CHANGE_ME", ""), f"{key} has a value in .env.example"
    assert "KAFKA_PASSWORD_CONTROLLER" in example
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, "deploy/.env must be ignored by git"


def test_no_password_is_written_in_the_kafka_files() -> None:
    for path in KAFKA_DIR.iterdir():
        for line in path.read_text().splitlines():
            assert not re.search(r'password="?[A-Za-z0-9]', line), f"{path.name}: {line}"


def test_the_notifier_has_a_required_secret_key_and_no_private_webhooks() -> None:
    env = environment("notifier")
    assert REQUIRED.match(env["CM_SECRET_KEY"])
    for service, spec in SERVICES.items():
        value = spec.get("environment", {}).get("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "false")
        assert str(value).lower() in ("false", "0", "no"), service
    assert REQUIRED.match(env["SMTP_HOST"]) and REQUIRED.match(env["SMTP_FROM"])


# --- images -------------------------------------------------------------------------------


def test_every_image_is_pinned_to_an_exact_version() -> None:
    for service, spec in SERVICES.items():
        image = spec["image"]
        if "build" in spec:
            continue  # built here from deploy/Dockerfile, whose bases are checked below
        assert PINNED_TAG.match(image), f"{service}: {image} is not pinned"
        assert not image.endswith(":latest")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (python_image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert PINNED_TAG.match(python_image), python_image
    assert re.search(r"^ARG UV_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    for base in re.findall(r"^FROM (\S+)", dockerfile, re.M):
        assert base == "${PYTHON_IMAGE}", base


# --- Kafka: authentication, authorization, limits ------------------------------------------


def test_every_listener_authenticates_with_sasl() -> None:
    listeners = {item.split("://")[0] for item in BROKER["listeners"].split(",")}
    protocols = dict(
        item.split(":") for item in BROKER["listener.security.protocol.map"].split(",")
    )
    assert listeners == set(protocols)
    assert all(protocol.startswith("SASL_") for protocol in protocols.values()), protocols
    assert BROKER["sasl.enabled.mechanisms"] == acl.SASL_MECHANISM
    assert BROKER["sasl.mechanism.inter.broker.protocol"] == acl.SASL_MECHANISM
    # The controller listener stays inside the container.
    assert "CONTROLLER://localhost:" in BROKER["listeners"]


def test_the_authorizer_refuses_whatever_no_acl_allows() -> None:
    assert BROKER["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert BROKER["allow.everyone.if.no.acl.found"] == "false"
    plan_super = {row["principal"] for row in acl.build()["super_users"]}
    assert set(BROKER["super.users"].split(";")) == plan_super
    assert BROKER["auto.create.topics.enable"] == "false"


def test_one_message_size_limit_for_broker_and_services() -> None:
    limit = Settings().kafka_max_message_bytes
    assert int(BROKER["message.max.bytes"]) == limit
    assert int(BROKER["replica.fetch.max.bytes"]) >= limit
    for service in catalog.RUNTIME_SERVICES:
        assert int(environment(service)["KAFKA_MAX_MESSAGE_BYTES"]) == limit
    assert "max.message.bytes" not in (KAFKA_DIR / "init.sh").read_text()  # topics inherit it


def test_the_broker_runs_our_start_script_with_its_secrets_from_the_environment() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["entrypoint"] == ["/bin/bash", "/cm/kafka/broker.sh"]
    assert "./kafka:/cm/kafka:ro" in kafka["volumes"]
    env = environment("kafka")
    assert REQUIRED.match(env["KAFKA_PASSWORD_ADMIN"])
    assert REQUIRED.match(env["KAFKA_PASSWORD_CONTROLLER"])
    assert "--command-config" in " ".join(kafka["healthcheck"]["test"])


@pytest.mark.parametrize("service", catalog.RUNTIME_SERVICES)
def test_each_service_logs_in_as_its_own_principal(service: str) -> None:
    spec = SERVICES[service]
    assert spec["command"] == [f"services.{service}"]
    env = environment(service)
    user = acl.USERS[service]
    assert env["KAFKA_SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL")
    assert env["KAFKA_SASL_MECHANISM"] == acl.SASL_MECHANISM
    assert env["KAFKA_SASL_USERNAME"] == user
    match = REQUIRED.match(env["KAFKA_SASL_PASSWORD"])
    assert match and match["var"] == platform_principal(user).password_env
    # The init step sets that user's password from the same variable.
    assert environment("kafka-init")[match["var"]] == env["KAFKA_SASL_PASSWORD"]
    # And the service's settings read it as SASL.
    required = re.findall(r"\$\{([A-Z0-9_]+):\?", " ".join(env.values()))
    values = {name: "x" * 24 for name in required}
    resolved = {key.lower(): substituted(value, values) for key, value in env.items()}
    options = client_options(Settings(**resolved))
    assert options["security_protocol"] == env["KAFKA_SECURITY_PROTOCOL"]
    assert options["sasl_plain_username"] == user


def test_no_two_services_share_a_user() -> None:
    users = [environment(service)["KAFKA_SASL_USERNAME"] for service in catalog.RUNTIME_SERVICES]
    assert len(set(users)) == len(users)


# --- the init step ------------------------------------------------------------------------


def test_the_init_step_runs_before_every_service_and_after_the_broker() -> None:
    init = SERVICES["kafka-init"]
    assert init["entrypoint"] == ["/bin/bash", "/cm/kafka/init.sh"]
    assert init["command"] == ["apply"]
    assert "./kafka:/cm/kafka:ro" in init["volumes"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["image"] == SERVICES["kafka"]["image"]  # Kafka's own tools, same version
    for service in catalog.RUNTIME_SERVICES:
        condition = SERVICES[service]["depends_on"]["kafka-init"]["condition"]
        assert condition == "service_completed_successfully", service
    init_script = (KAFKA_DIR / "init.sh").read_text()
    assert '. "$here/acl-plan.sh"' in init_script


def _stub_tools(directory: Path) -> Path:
    calls = directory / "calls"
    for tool in (
        "kafka-topics.sh",
        "kafka-configs.sh",
        "kafka-acls.sh",
        "kafka-broker-api-versions.sh",
    ):
        stub = directory / tool
        stub.write_text(
            "#!/usr/bin/env bash\n"
            f'printf "%s\\0" {tool} "$@" >> "{calls}"; printf "\\n" >> "{calls}"\n'
            'if [[ " $* " == *" --list "* ]]; then echo pre-cm.dlq; fi\n'
        )
        stub.chmod(0o755)
    return calls


def _run_init(tmp_path: Path, *args: str, **extra: str) -> list[list[str]]:
    calls = _stub_tools(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(tmp_path),
        "CM_TOPIC_PREFIX": "pre-",
        "KAFKA_TOPIC_PARTITIONS": "12",
        "KAFKA_REPLICATION_FACTOR": "1",
        **{p.password_env: "p" * 32 for p in acl.principals() if p.required},
        "KAFKA_PASSWORD_ADMIN": "a" * 32,
        **extra,
    }
    subprocess.run(
        ["bash", str(KAFKA_DIR / "init.sh"), *args], env=env, check=True, capture_output=True
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.split("\0")[:-1] for line in lines]


def _acls_applied(calls: list[list[str]]) -> set[tuple[str, str, str, str, str]]:
    applied = set()
    for call in calls:
        if call[0] != "kafka-acls.sh":
            continue
        assert "--add" in call and "--force" in call
        principal = call[call.index("--allow-principal") + 1]
        pattern = call[call.index("--resource-pattern-type") + 1]
        operation = call[call.index("--operation") + 1]
        for flag, name in itertools.pairwise(call):
            if flag in ("--topic", "--group"):
                applied.add((principal, flag[2:], pattern, operation, name))
    return applied


def _planned(principals: list[acl.Principal], prefix: str) -> set[tuple[str, str, str, str, str]]:
    return {
        (p.principal, g.resource, g.pattern, g.operation, prefix + g.name)
        for p in principals
        for g in p.grants
    }


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_init_step_applies_exactly_the_committed_plan(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "apply", KAFKA_PASSWORD_OPERATOR="o" * 32)
    assert _acls_applied(calls) == _planned(acl.principals(), "pre-")
    created = {c[c.index("--topic") + 1] for c in calls if "--create" in c}
    assert created == {"pre-" + name for name in catalog.TOPICS} - {"pre-cm.dlq"}  # dlq exists
    users = {c[c.index("--entity-name") + 1] for c in calls if c[0] == "kafka-configs.sh"}
    assert users == {f"cm-{s}" for s in catalog.RUNTIME_SERVICES} | {"cm-operator"}
    for call in calls:
        assert call[1:5] == ["--bootstrap-server", "kafka:19092", "--command-config", call[4]]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_init_step_adds_a_merchant_from_the_template(tmp_path: Path) -> None:
    calls = _run_init(tmp_path, "merchant", "shop-1", KAFKA_MERCHANT_PASSWORD="m" * 32)
    assert _acls_applied(calls) == _planned([acl.merchant_principal("shop-1")], "pre-")
    (user_call,) = [c for c in calls if c[0] == "kafka-configs.sh"]
    assert user_call[user_call.index("--entity-name") + 1] == "merchant-shop-1"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("website_key", ["a.b", "", "x" * 65, "a b"])
def test_the_init_step_refuses_a_website_key_unfit_for_a_prefix(
    tmp_path: Path, website_key: str
) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        _run_init(tmp_path, "merchant", website_key, KAFKA_MERCHANT_PASSWORD="m" * 32)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_init_step_refuses_a_weak_or_missing_password(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        _run_init(tmp_path, "apply", KAFKA_PASSWORD_INVOICE="short")
    with pytest.raises(subprocess.CalledProcessError):
        _run_init(tmp_path, "apply", KAFKA_PASSWORD_ADMIN='with"quote' * 3)


# --- every Kafka client of the platform authenticates -------------------------------------

KAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "KafkaBroker"}


def _client_calls() -> list[tuple[str, int, bool]]:
    found = []
    for path in sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("cmcli/*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in KAFKA_CLIENTS:
                authenticated = any(
                    kw.arg is None or kw.arg == "security" for kw in node.keywords
                )  # `**client_options(...)` or `security=broker_security(...)`
                found.append((str(path.relative_to(ROOT)), node.lineno, authenticated))
    return found


@pytest.mark.parametrize(
    "site",
    [pytest.param(site, id=f"{site[0]}:{site[1]}") for site in _client_calls()],
)
def test_every_kafka_client_gets_the_authentication_settings(site: tuple[str, int, bool]) -> None:
    path, line, authenticated = site
    assert authenticated, f"{path}:{line} creates a Kafka client without client_options()"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_broker_formats_with_the_admin_credential_and_adds_the_logins(
    tmp_path: Path,
) -> None:
    calls = tmp_path / "calls"
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        (tmp_path / tool).write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{calls}"\n')
        (tmp_path / tool).chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(tmp_path),
        "CM_KAFKA_RUN_DIR": str(tmp_path),
        "KAFKA_CLUSTER_ID": "cluster-1",
        "KAFKA_PASSWORD_ADMIN": "a" * 32,
        "KAFKA_PASSWORD_CONTROLLER": "c" * 32,
    }
    subprocess.run(["bash", str(KAFKA_DIR / "broker.sh")], env=env, check=True)
    config = tmp_path / "cm-server.properties"
    written = properties(config)
    assert {k: v for k, v in written.items() if k in BROKER} == BROKER
    assert (
        f'password="{"a" * 32}"' in written["listener.name.internal.scram-sha-512.sasl.jaas.config"]
    )
    assert (
        f'password="{"a" * 32}"' in written["listener.name.external.scram-sha-512.sasl.jaas.config"]
    )
    assert (
        f'user_cm-controller="{"c" * 32}"'
        in written["listener.name.controller.plain.sasl.jaas.config"]
    )
    assert config.stat().st_mode & 0o077 == 0
    assert (tmp_path / "cm-admin.properties").stat().st_mode & 0o077 == 0
    storage, start = calls.read_text().splitlines()
    assert storage.startswith("kafka-storage.sh format --ignore-formatted --cluster-id cluster-1")
    assert storage.endswith(f"--add-scram SCRAM-SHA-512=[name=cm-admin,password={'a' * 32}]")
    assert start == f"kafka-server-start.sh {config}"


def test_the_broker_healthcheck_reads_the_client_settings_broker_sh_writes() -> None:
    test = " ".join(SERVICES["kafka"]["healthcheck"]["test"])
    assert "--command-config /tmp/cm-admin.properties" in test


# --- the settings behind it ----------------------------------------------------------------


def test_by_default_clients_connect_without_authentication() -> None:
    # `make run` and the tests: the embedded broker speaks PLAINTEXT only.
    assert client_options(Settings()) == {}
    assert broker_security(Settings()) is None


def test_sasl_without_credentials_is_refused() -> None:
    settings = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="cm-x")
    with pytest.raises(KafkaAuthError):
        client_options(settings)


def test_sasl_ssl_verifies_the_broker() -> None:
    options = client_options(
        Settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="cm-invoice",
            kafka_sasl_password="p" * 32,
        )
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_a_service_broker_logs_in_with_the_settings() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="cm-scheduler",
        kafka_sasl_password="p" * 32,
    )
    definition = importlib.import_module("services.scheduler.app").definition()
    connection = build_service(definition, settings).broker._connection_kwargs
    assert connection["security_protocol"] == "SASL_PLAINTEXT"
    assert connection["sasl_mechanism"] == "SCRAM-SHA-512"
    assert connection["sasl_plain_username"] == "cm-scheduler"


def test_the_container_healthcheck_knows_each_services_default_port() -> None:
    # deploy/healthcheck.py runs every few seconds with the stdlib only, so it keeps its
    # own copy of the table; it must say what the settings say.
    from services.runtime.settings import DEFAULT_HTTP_PORTS  # noqa: PLC0415

    tree = ast.parse((DEPLOY / "healthcheck.py").read_text())
    [table] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "DEFAULT_HTTP_PORTS" for t in node.targets)
    ]
    assert ast.literal_eval(table) == DEFAULT_HTTP_PORTS


# --- compose files against the Compose specification ---------------------------------

COMPOSE_FILES = sorted(DEPLOY.glob("compose*.yaml"))


def _compose_schema() -> dict[str, Any]:
    # The Compose specification's JSON schema, as check-jsonschema ships it.
    from importlib.resources import files  # noqa: PLC0415

    text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_compose_file_follows_the_compose_specification(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(yaml.safe_load(path.read_text()))
    ]
    assert not errors, errors


def test_the_schema_check_catches_a_wrong_compose_file() -> None:
    validator = jsonschema.Draft202012Validator(_compose_schema())
    wrong = {"services": {"kafka": {"image": "apache/kafka:3.9.1", "restart": ["no"]}}}
    assert list(validator.iter_errors(wrong))
    assert list(validator.iter_errors({"services": {"x": {"imagee": "a"}}}))


# --- three brokers (compose.kafka-cluster.yaml on top of compose.yaml) -----------------

CLUSTER_FILE = DEPLOY / "compose.kafka-cluster.yaml"
CLUSTER: dict[str, Any] = yaml.safe_load(CLUSTER_FILE.read_text())
BROKERS = ("kafka", "kafka-2", "kafka-3")


def merged(base: Any, override: Any) -> Any:
    """Two compose files as compose merges them: mappings key by key, the rest replaced
    (sequences such as ports and volumes are appended by compose; not needed here)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    return override


CLUSTERED: dict[str, Any] = merged(COMPOSE, CLUSTER)


def test_the_cluster_file_adds_two_brokers_of_the_same_pinned_image() -> None:
    services_ = CLUSTERED["services"]
    for broker in BROKERS:
        spec = services_[broker]
        assert spec["image"] == SERVICES["kafka"]["image"]
        assert PINNED_TAG.match(spec["image"])
        assert spec["entrypoint"] == ["/bin/bash", "/cm/kafka/broker.sh"]
        assert f"--bootstrap-server {broker}:19092" in " ".join(spec["healthcheck"]["test"])
    node_ids = [services_[b]["environment"]["KAFKA_NODE_ID"] for b in BROKERS]
    assert node_ids == ["1", "2", "3"]
    hosts = [services_[b]["environment"]["KAFKA_NODE_HOST"] for b in BROKERS]
    assert hosts == list(BROKERS)
    for broker in BROKERS[1:]:
        env = services_[broker]["environment"]
        assert env["KAFKA_CLUSTER_ID"] == environment("kafka")["KAFKA_CLUSTER_ID"]
        assert REQUIRED.match(env["KAFKA_PASSWORD_ADMIN"])
        assert REQUIRED.match(env["KAFKA_PASSWORD_CONTROLLER"])
        (published,) = services_[broker]["ports"]
        assert published == f"127.0.0.1:{env['KAFKA_EXTERNAL_PORT']}:9092"


def test_the_clusters_quorum_is_its_three_brokers() -> None:
    cluster = properties(KAFKA_DIR / "cluster.properties")
    voters = dict(v.split("@") for v in cluster["controller.quorum.voters"].split(","))
    services_ = CLUSTERED["services"]
    assert voters == {services_[b]["environment"]["KAFKA_NODE_ID"]: f"{b}:9093" for b in BROKERS}
    assert cluster["default.replication.factor"] == "3"
    assert cluster["min.insync.replicas"] == "2"
    assert cluster["offsets.topic.replication.factor"] == "3"
    assert cluster["transaction.state.log.min.isr"] == "2"
    assert cluster["unclean.leader.election.enable"] == "false"
    # Still SASL everywhere: the cluster file changes where nodes listen, not how.
    assert {item.split("://")[0] for item in cluster["listeners"].split(",")} == {
        item.split("://")[0] for item in BROKER["listeners"].split(",")
    }
    assert not {"listener.security.protocol.map", "sasl.enabled.mechanisms"} & set(cluster)


def test_with_three_brokers_every_topic_gets_three_replicas_and_two_in_sync() -> None:
    services_ = CLUSTERED["services"]
    bootstrap = ",".join(f"{b}:19092" for b in BROKERS)
    for name in ["kafka-init", *catalog.RUNTIME_SERVICES]:
        env = services_[name]["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap, name
        assert env["KAFKA_REPLICATION_FACTOR"] == "3", name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
    for broker in BROKERS[1:]:
        assert services_["kafka-init"]["depends_on"][broker]["condition"] == "service_healthy"
    assert services_["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    settings = Settings(kafka_replication_factor=3, kafka_min_insync_replicas=2)
    assert settings.topic_configs() == {"min.insync.replicas": "2"}
    assert Settings().topic_configs() == {}  # the embedded broker keeps its defaults


def test_every_producer_of_a_service_waits_for_all_in_sync_replicas() -> None:
    definition = importlib.import_module("services.invoice.app").definition()
    assert build_service(definition, Settings()).broker._connection_kwargs["acks"] == "all"
    relay = (ROOT / "services/runtime/outbox.py").read_text()
    assert re.search(r'AIOKafkaProducer\([^)]*acks="all"', relay, re.S)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_init_step_sets_min_insync_replicas_on_the_topics_it_creates(tmp_path: Path) -> None:
    calls = _run_init(
        tmp_path, "apply", KAFKA_REPLICATION_FACTOR="3", KAFKA_MIN_INSYNC_REPLICAS="2"
    )
    creates = [c for c in calls if "--create" in c]
    assert creates
    for call in creates:
        assert call[call.index("--replication-factor") + 1] == "3"
        assert call[call.index("--config") + 1] == "min.insync.replicas=2"
    (tmp_path / "single").mkdir()
    single = _run_init(tmp_path / "single")
    assert all("--config" not in c for c in single if "--create" in c)


def _run_broker(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[bytes]:
    for tool in ("kafka-storage.sh", "kafka-server-start.sh"):
        (tmp_path / tool).write_text("#!/usr/bin/env bash\n")
        (tmp_path / tool).chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(tmp_path),
        "CM_KAFKA_RUN_DIR": str(tmp_path),
        "KAFKA_CLUSTER_ID": "cluster-1",
        "KAFKA_PASSWORD_ADMIN": "a" * 32,
        "KAFKA_PASSWORD_CONTROLLER": "c" * 32,
        **extra,
    }
    return subprocess.run(
        ["bash", str(KAFKA_DIR / "broker.sh")], env=env, check=False, capture_output=True
    )


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_node_of_the_cluster_runs_with_the_cluster_settings_and_its_own_id(
    tmp_path: Path,
) -> None:
    done = _run_broker(
        tmp_path, KAFKA_NODE_ID="2", KAFKA_NODE_HOST="kafka-2", KAFKA_EXTERNAL_PORT="9094"
    )
    assert done.returncode == 0, done.stderr
    effective = properties(tmp_path / "cm-server.properties")  # the last value counts
    for key, value in properties(KAFKA_DIR / "cluster.properties").items():
        assert effective[key] == value, key
    assert effective["node.id"] == "2"
    assert effective["advertised.listeners"] == (
        "INTERNAL://kafka-2:19092,EXTERNAL://localhost:9094"
    )
    assert effective["authorizer.class.name"] == BROKER["authorizer.class.name"]
    assert 'user_cm-controller="' in effective["listener.name.controller.plain.sasl.jaas.config"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_node_without_its_host_or_port_refuses_to_start(tmp_path: Path) -> None:
    assert _run_broker(tmp_path, KAFKA_NODE_ID="2", KAFKA_EXTERNAL_PORT="9094").returncode
    assert _run_broker(
        tmp_path, KAFKA_NODE_ID="x", KAFKA_NODE_HOST="k", KAFKA_EXTERNAL_PORT="1"
    ).returncode
