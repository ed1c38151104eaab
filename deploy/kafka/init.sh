#!/usr/bin/env bash
# The kafka-init step of deploy/compose.yaml (docs/deploy.md), as the super user cm-admin:
#
#   init.sh [apply]                   wait for the broker, then create the platform topics,
#                                     the SCRAM users and the ACLs of the plan (acl-plan.sh,
#                                     generated from contracts/catalog.py); idempotent, it
#                                     runs at every `docker compose up`
#   init.sh merchant WEBSITE_KEY      add a merchant's user `merchant-WEBSITE_KEY` (password
#                                     in KAFKA_MERCHANT_PASSWORD; again to change it) and
#                                     the ACLs of the plan's merchant template
#   init.sh remove-merchant WEBSITE_KEY   remove them
#
# Every topic and group name gets CM_TOPIC_PREFIX in front.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
# shellcheck source=acl-plan.sh
. "$here/acl-plan.sh"

BOOTSTRAP=${KAFKA_BOOTSTRAP_SERVERS:-kafka:19092}
PREFIX=${CM_TOPIC_PREFIX:-}
ACTION=--add
EXISTING_TOPICS=""

require_password KAFKA_PASSWORD_ADMIN
ADMIN_CONFIG=$(mktemp)
trap 'rm -f "$ADMIN_CONFIG"' EXIT
write_admin_client_config "$ADMIN_CONFIG"

# Runs a Kafka tool as cm-admin; its chatter is shown only when it fails.
kafka_tool() {
  local tool=$1 output
  shift
  if ! output=$("$KAFKA_BIN/$tool" --bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG" "$@" 2>&1); then
    echo "$output" >&2
    fail "$tool failed"
  fi
}

wait_for_broker() {
  local attempt
  for attempt in $(seq 1 60); do
    if "$KAFKA_BIN/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP" \
      --command-config "$ADMIN_CONFIG" >/dev/null 2>&1; then
      return 0
    fi
    echo "waiting for the broker at $BOOTSTRAP (attempt $attempt)"
    sleep 2
  done
  fail "no broker at $BOOTSTRAP"
}

# --- the functions acl-plan.sh calls ---------------------------------------------------

create_topic() {
  local topic=$PREFIX$1
  if grep -qxF -- "$topic" <<<"$EXISTING_TOPICS"; then
    return 0
  fi
  local settings=()
  if [[ -n ${KAFKA_MIN_INSYNC_REPLICAS:-} ]]; then
    settings=(--config "min.insync.replicas=$KAFKA_MIN_INSYNC_REPLICAS")
  fi
  echo "topic $topic"
  kafka_tool kafka-topics.sh --create --if-not-exists --topic "$topic" \
    --partitions "${KAFKA_TOPIC_PARTITIONS:?}" --replication-factor "${KAFKA_REPLICATION_FACTOR:?}" \
    "${settings[@]}"
}

# scram_user USER PASSWORD_VARIABLE required|optional: sets the user's SCRAM credential
# (again at every run: changing the variable changes the password).
scram_user() {
  local user=$1 variable=$2 need=$3
  if [[ -z ${!variable:-} && $need == optional ]]; then
    echo "user $user: $variable is not set, user not added"
    return 0
  fi
  require_password "$variable"
  echo "user $user"
  kafka_tool kafka-configs.sh --alter --entity-type users --entity-name "$user" \
    --add-config "SCRAM-SHA-512=[password=${!variable}]"
}

# allow PRINCIPAL topic|group literal|prefixed OPERATION NAME...: one ALLOW ACL per name.
allow() {
  local principal=$1 resource=$2 pattern=$3 operation=$4 name
  shift 4
  local resources=()
  for name in "$@"; do
    resources+=("--$resource" "$PREFIX$name")
  done
  echo "${ACTION#--} $principal $operation on $pattern $resource(s): $*"
  kafka_tool kafka-acls.sh "$ACTION" --force --allow-principal "$principal" \
    --resource-pattern-type "$pattern" --operation "$operation" "${resources[@]}"
}

# ---------------------------------------------------------------------------------------

website_key() {
  local key=${1:-}
  # No '.': the prefix cm.push.a. would cover the topics of merchant a.b.
  [[ $key =~ ^[A-Za-z0-9_-]{1,64}$ ]] ||
    fail "a website key with Kafka topics is 1-64 characters of [A-Za-z0-9_-], got '$key'"
  echo "$key"
}

command=${1:-apply}
case $command in
  apply)
    wait_for_broker
    EXISTING_TOPICS=$("$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" \
      --command-config "$ADMIN_CONFIG" --list)
    plan_topics
    plan_users
    plan_acls
    echo "the ACL plan is applied"
    ;;
  merchant)
    key=$(website_key "${2:-}")
    require_password KAFKA_MERCHANT_PASSWORD
    wait_for_broker
    scram_user "merchant-$key" KAFKA_MERCHANT_PASSWORD required
    merchant_acls "$key"
    echo "merchant $key: user merchant-$key may write its commands and read ${PREFIX}cm.push.$key.*"
    ;;
  remove-merchant)
    key=$(website_key "${2:-}")
    wait_for_broker
    ACTION=--remove
    merchant_acls "$key"
    kafka_tool kafka-configs.sh --alter --entity-type users --entity-name "merchant-$key" \
      --delete-config SCRAM-SHA-512
    echo "merchant $key: user and ACLs removed (its topics stay; delete them by hand)"
    ;;
  *)
    fail "usage: init.sh [apply | merchant WEBSITE_KEY | remove-merchant WEBSITE_KEY]"
    ;;
esac
