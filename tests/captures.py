"""Where the bytes captured from the real nsqd and nsqlookupd 1.3.0 live: inside the repository.

`tests/fixtures/nsqd-1.3.0/README.md` says what each file is and how it was made.
"""

from pathlib import Path

CAPTURES = Path(__file__).resolve().parent / "fixtures" / "nsqd-1.3.0"
