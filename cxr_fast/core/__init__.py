"""The core every layer may import: errors, JSON files and atomic writes, the machine, the version, activations.

Nothing here imports torch-heavy or data modules, so `import cxr_fast.core.jsonio` stays light.
"""
