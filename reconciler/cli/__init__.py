"""The `compliance-agent` command: parsers and renderers for operators and
auditors. Imports every wing and the composition root (`service`).
"""
