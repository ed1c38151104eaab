# Generated from contracts/catalog.py by `make docs` (python -m contracts.acl): do not
# edit. The ACL plan of acl-plan.json as calls of the functions that init.sh defines
# (create_topic, scram_user, allow); names get CM_TOPIC_PREFIX in front there.
# shellcheck shell=bash

plan_topics() {
  create_topic "cm.agency.answers"
  create_topic "cm.agency.requests"
  create_topic "cm.collection.commands"
  create_topic "cm.collection.events"
  create_topic "cm.command.results"
  create_topic "cm.dlq"
  create_topic "cm.invoice.commands"
  create_topic "cm.invoice.events"
  create_topic "cm.invoice.internal"
  create_topic "cm.notifier.commands"
  create_topic "cm.notifier.events"
  create_topic "cm.notifier.internal"
  create_topic "cm.payments.requests"
  create_topic "cm.payments.transactions"
  create_topic "cm.push.invoice"
  create_topic "cm.scheduler.commands"
  create_topic "cm.scheduler.events"
  create_topic "cm.subscription.commands"
  create_topic "cm.subscription.events"
  create_topic "cm.subscription.internal"
}

plan_users() {
  scram_user cm-invoice KAFKA_PASSWORD_INVOICE required
  scram_user cm-scheduler KAFKA_PASSWORD_SCHEDULER required
  scram_user cm-notifier KAFKA_PASSWORD_NOTIFIER required
  scram_user cm-subscription KAFKA_PASSWORD_SUBSCRIPTION required
  scram_user cm-collection KAFKA_PASSWORD_COLLECTION required
  scram_user cm-console KAFKA_PASSWORD_CONSOLE required
  scram_user cm-operator KAFKA_PASSWORD_OPERATOR optional
  scram_user cm-payment-engine KAFKA_PASSWORD_PAYMENT_ENGINE optional
  scram_user cm-agency-adapter KAFKA_PASSWORD_AGENCY_ADAPTER optional
}

plan_acls() {
  # invoice
  allow "User:cm-invoice" group prefixed Read "cm.invoice."
  allow "User:cm-invoice" topic literal Describe "cm.agency.answers" "cm.agency.requests" "cm.collection.commands" "cm.collection.events" "cm.notifier.commands" "cm.notifier.events" "cm.push.invoice" "cm.scheduler.events" "cm.subscription.events" "cm.subscription.internal"
  allow "User:cm-invoice" topic literal Read "cm.invoice.commands" "cm.invoice.internal" "cm.payments.transactions"
  allow "User:cm-invoice" topic literal Write "cm.command.results" "cm.dlq" "cm.invoice.events" "cm.notifier.internal" "cm.payments.requests" "cm.scheduler.commands" "cm.subscription.commands"
  # scheduler
  allow "User:cm-scheduler" group prefixed Read "cm.scheduler."
  allow "User:cm-scheduler" topic literal Describe "cm.agency.answers" "cm.agency.requests" "cm.collection.commands" "cm.collection.events" "cm.invoice.commands" "cm.invoice.events" "cm.notifier.commands" "cm.notifier.events" "cm.payments.requests" "cm.payments.transactions" "cm.push.invoice" "cm.subscription.commands" "cm.subscription.events"
  allow "User:cm-scheduler" topic literal Read "cm.scheduler.commands"
  allow "User:cm-scheduler" topic literal Write "cm.command.results" "cm.dlq" "cm.invoice.internal" "cm.notifier.internal" "cm.scheduler.events" "cm.subscription.internal"
  # notifier
  allow "User:cm-notifier" group prefixed Read "cm.notifier."
  allow "User:cm-notifier" topic literal Describe "cm.agency.answers" "cm.agency.requests" "cm.collection.commands" "cm.invoice.commands" "cm.payments.requests" "cm.payments.transactions" "cm.scheduler.events" "cm.subscription.commands" "cm.subscription.internal"
  allow "User:cm-notifier" topic literal Read "cm.collection.events" "cm.command.results" "cm.invoice.events" "cm.notifier.commands" "cm.notifier.internal" "cm.subscription.events"
  allow "User:cm-notifier" topic literal Write "cm.command.results" "cm.dlq" "cm.invoice.internal" "cm.notifier.events" "cm.push.invoice" "cm.scheduler.commands"
  allow "User:cm-notifier" topic prefixed Alter "cm.push."
  allow "User:cm-notifier" topic prefixed Create "cm.push."
  allow "User:cm-notifier" topic prefixed Write "cm.push."
  # subscription
  allow "User:cm-subscription" group prefixed Read "cm.subscription."
  allow "User:cm-subscription" topic literal Describe "cm.agency.answers" "cm.agency.requests" "cm.collection.commands" "cm.collection.events" "cm.invoice.internal" "cm.notifier.commands" "cm.notifier.events" "cm.notifier.internal" "cm.push.invoice" "cm.scheduler.events"
  allow "User:cm-subscription" topic literal Read "cm.invoice.events" "cm.payments.transactions" "cm.subscription.commands" "cm.subscription.internal"
  allow "User:cm-subscription" topic literal Write "cm.command.results" "cm.dlq" "cm.invoice.commands" "cm.payments.requests" "cm.scheduler.commands" "cm.subscription.events" "cm.subscription.internal"
  # collection
  allow "User:cm-collection" group prefixed Read "cm.collection."
  allow "User:cm-collection" topic literal Describe "cm.invoice.commands" "cm.notifier.commands" "cm.notifier.events" "cm.notifier.internal" "cm.payments.requests" "cm.payments.transactions" "cm.push.invoice" "cm.scheduler.commands" "cm.scheduler.events" "cm.subscription.commands" "cm.subscription.events" "cm.subscription.internal"
  allow "User:cm-collection" topic literal Read "cm.agency.answers" "cm.collection.commands" "cm.invoice.events"
  allow "User:cm-collection" topic literal Write "cm.agency.requests" "cm.collection.events" "cm.command.results" "cm.dlq" "cm.invoice.internal"
  # console
  allow "User:cm-console" group prefixed Read "cm.console."
  allow "User:cm-console" topic literal Describe "cm.agency.answers" "cm.agency.requests" "cm.invoice.internal" "cm.notifier.internal" "cm.payments.requests" "cm.payments.transactions" "cm.push.invoice" "cm.scheduler.commands" "cm.scheduler.events" "cm.subscription.internal"
  allow "User:cm-console" topic literal Read "cm.collection.events" "cm.command.results" "cm.invoice.events" "cm.notifier.events" "cm.subscription.events"
  allow "User:cm-console" topic literal Write "cm.collection.commands" "cm.dlq" "cm.invoice.commands" "cm.notifier.commands" "cm.subscription.commands"
  # operators
  allow "User:cm-operator" group prefixed Read "cm.operator."
  allow "User:cm-operator" topic literal Read "cm.collection.events" "cm.command.results" "cm.dlq" "cm.invoice.events" "cm.notifier.events" "cm.push.invoice" "cm.scheduler.events" "cm.subscription.events"
  allow "User:cm-operator" topic literal Write "cm.scheduler.commands" "cm.subscription.internal"
  # payment-engine
  allow "User:cm-payment-engine" group prefixed Read "cm.payment-engine."
  allow "User:cm-payment-engine" topic literal Read "cm.payments.requests"
  allow "User:cm-payment-engine" topic literal Write "cm.payments.transactions"
  # agency-adapters
  allow "User:cm-agency-adapter" group prefixed Read "cm.agency-adapter."
  allow "User:cm-agency-adapter" topic literal Read "cm.agency.requests"
  allow "User:cm-agency-adapter" topic literal Write "cm.agency.answers"
}

# $1: the merchant's website key (init.sh checks it has no '.').
merchant_acls() {
  allow "User:merchant-$1" group prefixed Read "cm.push.$1."
  allow "User:merchant-$1" topic literal Write "cm.collection.commands" "cm.invoice.commands" "cm.notifier.commands" "cm.subscription.commands"
  allow "User:merchant-$1" topic prefixed Read "cm.push.$1."
}
