"""What only the tests and the benchmarks use, never the daemon: fault injection and the safety
checker (faults.py), the real-guest harness (guests.py, guest_channel.py, daemon_process.py,
virsh_cli.py, prepared.py, waiting.py) and the Debian guest (debian_image.py, debian_guest.py). The
calibration that drives the harness lives under bench/calibration/."""
