"""balloon-2395: keeps every running QEMU/KVM guest's usable memory inside a band."""

__version__ = "0.1.0"
PROG = "balloon-2395"
