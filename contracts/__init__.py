"""The wire of the credit-management platform: envelope, topics and every message.

Everything another system publishes to the platform, or consumes from it, is defined
here as pydantic v2 models. Services import these models; nothing else defines a
message shape.
"""
