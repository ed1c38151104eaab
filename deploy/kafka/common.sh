# Shared by broker.sh and init.sh (sourced, bash). See docs/deploy.md.
# shellcheck shell=bash

KAFKA_BIN=${KAFKA_BIN:-/opt/kafka/bin}  # another directory only in tests

fail() {
  echo "kafka: $*" >&2
  exit 1
}

# A password goes into JAAS and SCRAM settings unquoted by Kafka's tools: only letters,
# digits, '_' and '-' (e.g. `openssl rand -hex 32`), and at least 16 of them.
require_password() {
  local variable=$1
  local value=${!variable:-}
  [[ -n $value ]] || fail "$variable is not set (see deploy/.env.example)"
  [[ $value =~ ^[A-Za-z0-9_-]{16,}$ ]] ||
    fail "$variable must be at least 16 characters of [A-Za-z0-9_-] (openssl rand -hex 32)"
}

# Client settings of the super user cm-admin, for Kafka's command-line tools.
write_admin_client_config() {
  local file=$1
  (
    umask 077
    cat >"$file" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="cm-admin" password="$KAFKA_PASSWORD_ADMIN";
EOF
  )
}
