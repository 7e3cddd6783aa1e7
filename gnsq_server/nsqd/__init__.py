"""The nsqd daemon: core state (message .. stats) and its TCP/HTTP glue."""
