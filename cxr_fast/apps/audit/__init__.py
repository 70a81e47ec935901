"""Shortcuts: the audit that asks whether the label shows in what is not the lungs (file facts, the image border, the source)?

core.audit is the entry point (`python -m cxr_fast audit`, `cxr_fast.audit(...)`); file_facts.py, sources.py,
probes.py are its tests; verdict.py turns their numbers into words and audit.md.
"""
