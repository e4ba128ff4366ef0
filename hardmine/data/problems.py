"""Validation problems: what a dataset reader or `hardmine data check` found, with the file and
record at fault, how severe it is and what skipping it would drop.

Readers collect problems in a `ProblemLog` instead of stopping at the first one, so a user fixes a
broken export in one round. Without a log of its own a reader raises one `DataError` listing every
error; `hardmine.data.check` passes its own log and reports errors and warnings instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardmine.errors import DataError

#: At most this many problems are spelled out in one DataError; the rest are counted.
MAX_LISTED = 20

ERROR = "error"
WARNING = "warning"

#: Scopes: what a problem makes unusable, i.e. what `data.on_invalid=skip` drops.
DATASET = "dataset"  # the file or split as a whole: nothing can be skipped, training cannot start
IMAGE = "image"  # one image record: skipping drops the image with all its annotations
ANNOTATION = "annotation"  # one box: skipping drops the box (the readers already leave it out)


@dataclass(frozen=True)
class Problem:
    """One finding. `file` is the file at fault (annotation file, VOC XML or image file), `record`
    the record in it ("image id 3 (a.png)", "annotation id 7 (image id 3)", "object 2 (dog)"), empty
    when the whole file is at fault. `kind` is a short stable name for counting ("box",
    "image-missing", ...); `image_id` the image the problem belongs to, when known."""

    message: str
    file: str = ""
    record: str = ""
    severity: str = ERROR
    scope: str = DATASET
    kind: str = ""
    image_id: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def describe(self, context: str = "") -> str:
        """`file: record: message`, without the file when it is `context` (the file being reported)."""
        parts = [self.file] if self.file and self.file != context else []
        if self.record:
            parts.append(self.record)
        return ": ".join([*parts, self.message])


class SplitsProblems:
    """`errors` and `warnings` of a class that keeps its problems in `self.problems`."""

    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]


class ProblemLog(SplitsProblems):
    """Collects the problems of one source (`context`: its path) for one report or one DataError."""

    def __init__(self, context: str) -> None:
        self.context = context
        self.problems: list[Problem] = []

    def add(
        self,
        message: str,
        *,
        record: str = "",
        file: str = "",
        scope: str = DATASET,
        kind: str = "",
        image_id: int | None = None,
        severity: str = ERROR,
    ) -> None:
        """Record one problem; `file` defaults to the log's context."""
        self.problems.append(Problem(message, file or self.context, record, severity, scope, kind, image_id))

    def warn(
        self, message: str, *, record: str = "", file: str = "", kind: str = "", image_id: int | None = None
    ) -> None:
        """Record a warning: suspicious but usable; training goes on whatever the policy."""
        self.add(message, record=record, file=file, kind=kind, image_id=image_id, severity=WARNING)

    def raise_if_any(self) -> None:
        """Raise one DataError naming `context` and listing the first `MAX_LISTED` errors."""
        if self.errors:
            raise DataError(format_errors(self.context, self.errors))


def format_errors(context: str, errors: list[Problem]) -> str:
    """`context: problem` for one error; else a count and the first `MAX_LISTED`, one per line."""
    if len(errors) == 1:
        return f"{context}: {errors[0].describe(context)}"
    lines = [f"{context}: {len(errors)} problems found"]
    lines += [f"  - {p.describe(context)}" for p in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_LISTED} more")
    return "\n".join(lines)
