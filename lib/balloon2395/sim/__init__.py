"""An embedded simulated KVM host: a guest and host memory model in virtual time that speaks virsh.

`--simulate` runs the real daemon against it; `bench/control.py` measures
control quality with it. Nothing here touches a real hypervisor.
"""
