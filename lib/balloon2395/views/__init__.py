"""What an operator reads: the status table and JSON (status.py), `status --watch` and `explain`
(watch.py), and the state file the running daemon leaves its last cycle in for them (statefile.py)."""
