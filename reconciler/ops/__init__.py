"""What operators and systemd see of a running agent: Prometheus metrics, the
status socket, sd_notify, and the log format. Imports: specs.
"""
