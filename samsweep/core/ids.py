"""What a study id looks like: 32 lowercase hex digits (samsweep.core.db.new_id, a UUID4's
hex). The API checks an id against it before any query; the client checks one before
it puts it in a URL, so no id can reach another path, query or host."""

from __future__ import annotations

import re

STUDY_ID = re.compile(r"[0-9a-f]{32}")


def is_study_id(text: str) -> bool:
    return STUDY_ID.fullmatch(text) is not None
