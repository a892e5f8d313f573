"""Log lines as `event key=value ...`, with the ids each line concerns."""

from __future__ import annotations

import logging

# Uvicorn adds a copy of each message with terminal colours: not for a log file.
STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


class KeyValueFormatter(logging.Formatter):
    """Append the `extra=` fields of a record to its message."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in STANDARD}
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))


def configure(level: str) -> None:
    """Send the service's logs to stderr at `level`."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
