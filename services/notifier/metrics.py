"""Retries and give-ups of the notifier's deliveries, by channel (docs/deploy.md).

`channel` is one of `email`, `sms`, `letter` (messages to debtors), `webhook` (pushes to
merchants) or `none` (a message job that failed outside any channel): a closed set.

- a *retry*: a delivery postponed to be tried again (its provider or endpoint did not
  answer, or the job failed outside its channels);
- a *give-up*: a delivery abandoned after its last try (the message goes on with its
  next channel, if any; a webhook push ends `failed`, with `WebhookDeliveryFailed`).

A channel that fails for good at once (a refused address) is neither: it counts in
`cm_notifier_channel_results_total{result="failed"}`.
"""

from __future__ import annotations

from prometheus_client import Counter

RETRIES = Counter(
    "cm_notifier_retries_total", "Deliveries postponed to be tried again, by channel", ["channel"]
)
GIVE_UPS = Counter(
    "cm_notifier_give_ups_total",
    "Deliveries abandoned after their last try, by channel",
    ["channel"],
)

#: The `channel` label of a failure outside any channel.
NO_CHANNEL = "none"
WEBHOOK = "webhook"
