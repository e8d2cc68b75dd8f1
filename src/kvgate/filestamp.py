"""What tells an edited file from the one last read, for every config-file watch (the gateway's and
``kvgate epp``'s config, the clusters file).

The modification time alone misses an edit within one timestamp tick (kernels before 6.13 stamp files with
a coarse clock, 1-10 ms), e.g. a half-written file read by a poll (invalid) and completed in the same tick
(review s29-qa29 Q2); the size tells those two apart, the inode a copy renamed into place. The change time
(ctime) is the only one a ``chmod`` / ``chown`` moves: a file refused as unreadable and then made readable
is read again (review s29-rev-a29; before, never until an edit or a SIGHUP).
"""

from __future__ import annotations

import os

FileStamp = tuple[int, int, int, int]


def file_stamp(path: str | os.PathLike[str]) -> FileStamp | None:
    """``(st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of ``path``; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
