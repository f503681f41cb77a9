"""balloon-2395 end-to-end tests against real QEMU guests (see harness.py)."""
