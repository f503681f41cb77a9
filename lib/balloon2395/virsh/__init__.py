"""Virsh access: the only code that runs virsh (commands.py: one process per call; session.py: one
long-lived virsh fed commands, framed by framing.py) and the parsers of what it prints (output.py,
domain_xml.py). Empty on purpose: the decision core imports the parsers' records without loading `sh`."""
