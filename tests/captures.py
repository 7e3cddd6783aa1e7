"""Where the bytes captured from the real nsqd and nsqlookupd 1.3.0 live.

`../shared/` sits beside the repository, for developers and CI alike.
"""

from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "nsqd-1.3.0"
