"""Facts read once per domain lifetime from `virsh dumpxml`: identity, guest OS, balloon device
and its features, and what keeps a balloon from giving memory back (passthrough, hugepages, locking).

Windows is recognised by libosinfo metadata or Hyper-V enlightenments, not
by grepping the XML for "microsoft" (which also matches disk paths).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Optional, Tuple

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
# The project's own per-domain settings:
#   virsh metadata DOM --uri https://balloon-2395.example/ns/1 --key b2395 \
#       --set '<settings minimal="20" headroom="512MiB"/>' --live --config
SETTINGS_NS = "https://balloon-2395.example/ns/1"


@dataclass(frozen=True)
class DomainFacts:
    uuid: Optional[str] = None
    domain_id: Optional[str] = None
    windows: Optional[str] = None  # why we think it is Windows, or None
    balloon_model: Optional[str] = None  # 'virtio', 'none', or None when absent
    stats_period_s: Optional[int] = None  # from <memballoon><stats period>
    # <memballoon autodeflate='on'>: out of memory, the guest takes balloon pages back instead of killing
    autodeflate: bool = False
    # <memballoon freePageReporting='on'>: pages the guest frees go back to the host without a setmem
    free_page_reporting: bool = False
    settings: Tuple[Tuple[str, str], ...] = ()  # attributes of our <settings/> metadata
    # PCI devices passed through with VFIO (<hostdev type='pci'>, <interface type='hostdev'>), by address:
    # their DMA pins all guest memory, so a balloon inflates without the host getting a page back
    passthrough: Tuple[str, ...] = ()
    hugepages: bool = False  # <memoryBacking><hugepages/>: 4 KiB balloon pages cannot free a huge page
    locked: bool = False  # <memoryBacking><locked/>: guest memory mlocked on the host


def parse_domain_xml(text: str) -> DomainFacts:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"dumpxml is not XML: {exc}") from None
    if root.tag != "domain":
        raise ValueError(f"dumpxml root is <{root.tag}>, not <domain>")
    return DomainFacts(
        uuid=root.findtext("uuid"),
        domain_id=root.get("id"),
        windows=_windows_reason(root),
        balloon_model=_balloon_model(root),
        stats_period_s=_stats_period(root),
        autodeflate=_balloon_switch(root, "autodeflate"),
        free_page_reporting=_balloon_switch(root, "freePageReporting"),
        settings=_settings(root),
        passthrough=_passthrough(root),
        hugepages=root.find("memoryBacking/hugepages") is not None,
        locked=root.find("memoryBacking/locked") is not None,
    )


def _windows_reason(root: ET.Element) -> Optional[str]:
    for os_el in root.iterfind(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os"):
        os_id = os_el.get("id", "")
        if os_id.startswith(("http://microsoft.com/win", "https://microsoft.com/win")):
            return f"libosinfo os {os_id}"
    if root.find("features/hyperv") is not None:
        return "hyperv enlightenments in <features>"
    return None


def _settings(root: ET.Element) -> Tuple[Tuple[str, str], ...]:
    element = root.find(f"metadata/{{{SETTINGS_NS}}}settings")
    return () if element is None else tuple(sorted(element.attrib.items()))


def _balloon_model(root: ET.Element) -> Optional[str]:
    balloon = root.find("devices/memballoon")
    return None if balloon is None else balloon.get("model")


def _balloon_switch(root: ET.Element, attribute: str) -> bool:
    """An on/off attribute of the (first) balloon device: libvirt writes 'on' or 'off', or nothing
    for its default, off; anything else is not 'on'."""
    balloon = root.find("devices/memballoon")
    return balloon is not None and balloon.get(attribute) == "on"


def _stats_period(root: ET.Element) -> Optional[int]:
    stats = root.find("devices/memballoon/stats")
    period = None if stats is None else stats.get("period")
    return int(period) if period and period.isdigit() else None


def _passthrough(root: ET.Element) -> Tuple[str, ...]:
    devices = [*root.iterfind("devices/hostdev[@type='pci']"), *root.iterfind("devices/interface[@type='hostdev']")]
    return tuple(_pci_address(device.find("source/address")) for device in devices)


def _pci_address(address: Optional[ET.Element]) -> str:
    """`0000:01:00.0`, as lspci shows it, from libvirt's hex attributes."""
    try:
        parts = [int(address.get(key, ""), 16) for key in ("domain", "bus", "slot", "function")] \
            if address is not None else []
    except ValueError:
        parts = []
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts) if parts else "a PCI device (no readable address)"
