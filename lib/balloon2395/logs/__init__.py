"""The daemon's log: its lines and where they go (lines.py), how they look (style.py), and the journal's
native protocol with structured fields (journald.py)."""
