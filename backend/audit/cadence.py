"""Where the periodic checkpoints must be: what `verify` can tell of checkpoints deleted.

The writer signs a periodic checkpoint when the rows since the last one reach
AUDIT_CHECKPOINT_EVERY, and counts those rows in the chain's head (`since_checkpoint`), in the
same transaction as the rows (chain.link). So, whatever the setting was over the trail's life:

- the head's count ends at the last periodic checkpoint: row `last_id - since_checkpoint`
  has one. Checkpoints deleted (a recomputed chain must lose every one after the row it
  changed), or rows deleted from the tail with the head moved back, break that, unless the
  count was forged too;
- fewer rows follow the last one than the setting asks for, or than the widest spacing of the
  signed checkpoints (the setting may have been larger when the last rows were written).

The spacings between checkpoints are not judged: the setting may change at any restart, so a
wide spacing proves nothing (a checkpoint deleted between two others only matters to a chain
recomputed past it, which the checkpoints after it already catch).

Purges delete rows, never checkpoints; anchors and purge checkpoints do not restart the count.
Neither changes any of this. What no local check can tell (`verify` says so, verification.caveat):
the rows after the last signed checkpoint deleted, with the head moved back and its count made
to agree, fewer of them than a checkpoint's worth.
"""


def missing_checkpoint(
    periodic: list[int], last_id: int, since: int, every: int | None
) -> tuple[int, str] | None:
    """The first row where a periodic checkpoint should be and is not, and why; None when the
    periodic checkpoints (their row ids, ascending) agree with the head and with `every`
    (AUDIT_CHECKPOINT_EVERY; None: judge by the checkpoints' own spacing alone)."""
    return min(_tail(periodic, last_id, since, every), default=None)


def _tail(
    periodic: list[int], last_id: int, since: int, every: int | None
) -> list[tuple[int, str]]:
    """The head's count against the last periodic checkpoint, and against the setting."""
    last = periodic[-1] if periodic else 0
    named = f"row {last}" if last else "there is none"
    counted_from = last_id - since
    if counted_from > last:
        return [
            (
                counted_from,
                "missing: no signed checkpoint at this row, where the chain's"
                f" head counts {since} rows since the last periodic one"
                f" ({named}): checkpoints were deleted",
            )
        ]
    if counted_from < last:
        return [
            (
                last_id + 1,
                f"missing: the chain's head counts {since} rows since the last"
                f" periodic checkpoint ({named}), the table {last_id - last}:"
                f" rows {last_id + 1}-{last + since} were deleted and the head"
                " moved back",
            )
        ]
    spacings = [after - before for before, after in zip([0, *periodic], periodic, strict=False)]
    widest = max([*([every] if every else []), *spacings], default=None)
    if widest and since >= widest:
        due = last + (every or widest)
        return [
            (
                due,
                f"missing: no signed checkpoint at this row, where one is due every"
                f" {every or widest} rows (AUDIT_CHECKPOINT_EVERY), and {since} rows"
                f" follow the last periodic one ({named})",
            )
        ]
    return []
