"""balloon-2395 end-to-end tests against real QEMU guests (the harness: lib/balloon2395_testkit/guests.py)."""
