#!/usr/bin/env bash
# The entrypoint of the kafka container of deploy/compose.yaml (docs/deploy.md):
# server.properties plus the SASL logins, the storage formatted once (with the SCRAM
# credential of the super user cm-admin, which must exist before anyone can log in), then
# the broker. Needs KAFKA_PASSWORD_ADMIN, KAFKA_PASSWORD_CONTROLLER and KAFKA_CLUSTER_ID;
# as one node of three (compose.kafka-cluster.yaml), KAFKA_NODE_ID, KAFKA_NODE_HOST and
# KAFKA_EXTERNAL_PORT too.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

require_password KAFKA_PASSWORD_ADMIN
require_password KAFKA_PASSWORD_CONTROLLER
: "${KAFKA_CLUSTER_ID:?KAFKA_CLUSTER_ID is not set}"

run_dir=${CM_KAFKA_RUN_DIR:-/tmp}  # another directory only in tests
config=$run_dir/cm-server.properties
umask 077
{
  cat "$here/server.properties"
  if [[ -n ${KAFKA_NODE_ID:-} ]]; then
    # One node of the three-broker cluster (compose.kafka-cluster.yaml): its overrides.
    [[ $KAFKA_NODE_ID =~ ^[1-9][0-9]*$ ]] || fail "KAFKA_NODE_ID must be a number"
    : "${KAFKA_NODE_HOST:?KAFKA_NODE_HOST is not set}"
    : "${KAFKA_EXTERNAL_PORT:?KAFKA_EXTERNAL_PORT is not set}"
    echo
    cat "$here/cluster.properties"
    echo "node.id=$KAFKA_NODE_ID"
    echo "advertised.listeners=INTERNAL://$KAFKA_NODE_HOST:19092,EXTERNAL://localhost:$KAFKA_EXTERNAL_PORT"
  fi
  echo
  echo "# Added by broker.sh."
  echo "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"cm-controller\" password=\"$KAFKA_PASSWORD_CONTROLLER\" user_cm-controller=\"$KAFKA_PASSWORD_CONTROLLER\";"
  for listener in internal external; do
    echo "listener.name.$listener.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"cm-admin\" password=\"$KAFKA_PASSWORD_ADMIN\";"
  done
} >"$config"
# For the container's healthcheck (compose.yaml).
write_admin_client_config "$run_dir/cm-admin.properties"

"$KAFKA_BIN/kafka-storage.sh" format --ignore-formatted \
  --cluster-id "$KAFKA_CLUSTER_ID" --config "$config" \
  --add-scram "SCRAM-SHA-512=[name=cm-admin,password=$KAFKA_PASSWORD_ADMIN]"

exec "$KAFKA_BIN/kafka-server-start.sh" "$config"
