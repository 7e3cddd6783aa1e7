"""The nsqlookupd daemon: registration db, TCP protocol V1 and HTTP API."""
