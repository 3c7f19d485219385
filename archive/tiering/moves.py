"""Tier moves: the state machine that moves instances between tiers (and locations) safely.

A move (``TierMove``, planned by ``archive.tiering.planning`` or requested with ``move_request``) goes

    planned -> copying -> verifying -> done            or  -> failed (with the reason)

- claim: one conditional UPDATE takes planned moves, and open moves whose worker's lease ran out,
  for one worker (``claimed_by`` = a token unique to this run, ``claimed_until`` = the lease). Of
  two workers handed the same move only the one whose UPDATE matched acts; every later write is
  conditional on the token, so a worker that lost its lease stops touching the move.
- copying: same location, an in-place tier change (S3: CopyObject onto itself with the target
  storage class; filesystem: a hard link in the target tier's root); another location, a
  streamed copy into it. No step moves bytes through the worker on the same location.
- verifying: a HEAD of the object in the target tier (storage class, size, SHA-256 metadata).
- switch, in ONE transaction per group of verified moves: the instance's tier / location (only
  if it is still where the move started), the study and series bytes per tier, the storage
  ledger (-size from the old tier, +size to the new one), the ``tier.transitions`` event, the
  ``early_deletion`` byte-days owed for leaving a tier before its minimum duration, and the
  move's state ``done``.

The object steps of a batch run in a thread pool and the database steps in the calling thread,
as a pipeline: while one group of moves is advanced to ``verifying`` or switched, the store is
already copying and verifying the next ones, so it is never left waiting for the database (and
the database never for the slowest object of the batch). Every move still passes each state in
order: its HEAD is sent only after ``verifying`` is written, its index switched only after the
HEAD passed.
- finish, after the switch: what the old tier or location still holds is removed (the old copy
  of a cross-location move, the old link on the filesystem; nothing on S3 in place), then
  ``finished_at`` is set. A move that is done but not finished is picked up again like an open
  one, so the old copy is never forgotten and never removed before the index stops naming it.

Every object step is idempotent, so a killed worker's move is repeated from its state by the next
worker; every ledger write has an idempotency key derived from the move, so nothing is counted
twice. Transient store errors are retried with backoff; a refusal (a tier the location cannot
serve, a missing object, a failed verification) or running out of attempts fails the move with
its reason, undoing what the copy did, so that the object stays readable in the tier the
index names.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Count, Exists, F, OuterRef, Q, QuerySet, Sum, Value, When
from django.utils import timezone

from archive.common import threads
from archive.index.selectors import archive_settings_get
from archive.models import TIERS, Instance, Series, StorageLocation, Study, TierMove
from archive.storage import ObjectStore, StorageRefused, StorageUnavailable, store_for, tiers
from archive.storage.filesystem import FilesystemStore
from archive.storage.ops import copy_between
from billing.metering import Delta, Usage, record_usage, record_usage_bulk, storage_delta_bulk
from tenants.errors import Conflict, NotFound, ValidationFailed
from tenants.models import Organization

logger = logging.getLogger(__name__)

State = TierMove.State
OPEN = [State.COPYING, State.VERIFYING]

# Object operations of a batch run in this many threads (each waits on the object store). With
# 16, an S3 server that keeps connections open always has requests waiting while this process
# writes to the database; 8 left it idle in between (bench/tiering.py, keep-alive mode: 75-79%
# of the bare CopyObject rate against 84-95% with 16). The S3 client pools 32 connections.
THREADS = 16
# Object steps queued ahead of the threads, so that they keep the store busy while the calling
# thread writes to the database.
QUEUED = THREADS
# Copied moves are advanced to verifying in groups of at least this many (or whatever is left),
# verified moves switched in groups of at least SWITCH_GROUP: few statements, and the store
# keeps working on the rest of the batch meanwhile.
ADVANCE_GROUP = 25
SWITCH_GROUP = 50
# Tries of one object step against transient store errors, with this first backoff (doubled).
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5
# A move claimed this many times without finishing (its worker died each time) is given up.
MAX_CLAIMS = 5


@dataclass
class MovesResult:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    finished: int = 0
    bytes_moved: int = 0
    errors: dict[int, str] = field(default_factory=dict)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.ARCHIVE_MOVE_LEASE_SECONDS)


def _claimable(now: datetime) -> Q:
    expired = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    return (
        Q(state=State.PLANNED)
        | (Q(state__in=OPEN) & expired)
        | (Q(state=State.DONE, finished_at__isnull=True) & expired)
    )


# --- requests and reads -----------------------------------------------------------------------


def move_request(
    *,
    org: Organization,
    instance: Instance,
    to_tier: str,
    to_location: StorageLocation | None = None,
    origin: str = TierMove.Origin.MANUAL,
) -> TierMove:
    """Plan one move of ``instance`` (a manual move, or a location change).

    Refuses, with a field error, a tier the target location cannot serve, a move that changes
    nothing, and an instance that already has an open move.
    """
    if to_tier not in TIERS:
        raise ValidationFailed(
            f"Unknown tier {to_tier!r}.", fields={"tier": [f"Tiers are {', '.join(TIERS)}."]}
        )
    location = to_location or instance.location
    if location.organization_id != org.pk or instance.organization_id != org.pk:
        raise NotFound("No such instance or location.")
    if not tiers.location_serves(location, to_tier):
        message = (
            f"The location {location.name!r} cannot hold objects in the {to_tier} tier: "
            f"it has no storage class for it."
        )
        raise ValidationFailed(message, fields={"tier": [message]})
    if instance.tier == to_tier and instance.location_id == location.pk:
        message = f"The instance is in the {to_tier} tier of this location already."
        raise ValidationFailed(message, fields={"tier": [message]})
    try:
        with transaction.atomic():
            return TierMove.objects.create(
                organization=org,
                instance=instance,
                study_id=instance.study_id,
                origin=origin,
                from_tier=instance.tier,
                to_tier=to_tier,
                from_location_id=instance.location_id,
                to_location=location,
                size_bytes=instance.size_bytes,
            )
    except IntegrityError:
        raise Conflict("The instance is being moved already.") from None


def move_list(*, org: Organization, state: str | None = None) -> QuerySet[TierMove]:
    moves = TierMove.objects.for_org(org)
    if state:
        moves = moves.filter(state=state)
    return moves


def move_get(*, org: Organization, move_id: int) -> TierMove:
    move = TierMove.objects.for_org(org).filter(pk=move_id).first()
    if move is None:
        raise NotFound("No such tier move.")
    return move


@dataclass(frozen=True)
class MovesSummary:
    # Per state: {"count": n, "bytes": b}; every state present.
    by_state: dict[str, dict[str, int]]
    in_progress: int
    in_progress_bytes: int
    # Of the done moves: bytes that arrived in each tier.
    done_bytes_by_tier: dict[str, int]


def moves_summary(*, org: Organization) -> MovesSummary:
    by_state = {s: {"count": 0, "bytes": 0} for s in State.values}
    for row in (
        TierMove.objects.for_org(org)
        .order_by()
        .values("state")
        .annotate(n=Count("id"), b=Sum("size_bytes"))
    ):
        by_state[row["state"]] = {"count": int(row["n"]), "bytes": int(row["b"] or 0)}
    done = dict.fromkeys(TIERS, 0)
    for row in (
        TierMove.objects.for_org(org)
        .filter(state=State.DONE)
        .order_by()
        .values("to_tier")
        .annotate(b=Sum("size_bytes"))
    ):
        done[row["to_tier"]] = int(row["b"] or 0)
    return MovesSummary(
        by_state=by_state,
        in_progress=sum(by_state[s]["count"] for s in OPEN),
        in_progress_bytes=sum(by_state[s]["bytes"] for s in OPEN),
        done_bytes_by_tier=done,
    )


# --- object steps (run in worker threads; no database access) ---------------------------------


class _Stores:
    """One store per location for a batch: a boto3 client is costly to build, cheap to share."""

    def __init__(self) -> None:
        self._by_location: dict[int, ObjectStore] = {}

    def get(self, location: StorageLocation) -> ObjectStore:
        if location.pk not in self._by_location:
            self._by_location[location.pk] = store_for(location)
        return self._by_location[location.pk]

    def local(self, moves: Iterable[TierMove]) -> bool:
        """Whether every store of ``moves`` is a local filesystem: its object steps (a link, a
        stat, an unlink) take microseconds, less than handing them to a thread."""
        return all(
            isinstance(self.get(loc), FilesystemStore)
            for m in moves
            for loc in (m.from_location, m.to_location)
        )


class _Inline:
    """An executor that runs each step at once in the calling thread (for local stores)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by .result()
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


def _in_place(move: TierMove, stores: _Stores) -> bool:
    if move.from_location_id == move.to_location_id:
        return True
    # Two location rows naming the same bucket (or root) are one store: a copy "between" them
    # followed by a delete of the old copy would delete the only one.
    return stores.get(move.from_location).place() == stores.get(move.to_location).place()


def _retrying(action: Callable[[], Any]) -> Any:
    delay = BACKOFF_SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return action()
        except StorageRefused:
            raise
        except StorageUnavailable as exc:
            if attempt == ATTEMPTS:
                raise StorageUnavailable(f"{exc} (gave up after {ATTEMPTS} attempts)") from exc
            logger.warning("Tier move store error (attempt %d): %s", attempt, exc)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _copy(move: TierMove, stores: _Stores) -> None:
    key = move.instance.object_key
    if _in_place(move, stores):
        store = stores.get(move.from_location)
        store.change_tier(
            key=key, from_tier=move.from_tier, to_tier=move.to_tier, size=move.size_bytes
        )
    else:
        copy_between(
            source=stores.get(move.from_location),
            source_tier=move.from_tier,
            target=stores.get(move.to_location),
            target_tier=move.to_tier,
            key=key,
            size=move.instance.size_bytes,
            sha256=move.instance.sha256,
        )


def _verify(move: TierMove, stores: _Stores) -> None:
    stores.get(move.to_location).verify(
        key=move.instance.object_key,
        tier=move.to_tier,
        size=move.instance.size_bytes,
        sha256=move.instance.sha256,
    )


def _undo(move: TierMove, stores: _Stores) -> str:
    """Put the object back where the index says it is, after a failed copy or verification.

    Returns "" or what could not be undone (appended to the move's error).
    """
    key = move.instance.object_key
    try:
        if _in_place(move, stores):
            store = stores.get(move.from_location)
            store.change_tier(key=key, from_tier=move.to_tier, to_tier=move.from_tier)
            store.change_tier_finish(key=key, from_tier=move.to_tier, to_tier=move.from_tier)
        else:
            stores.get(move.to_location).delete(key=key, tier=move.to_tier)
    except StorageUnavailable as exc:
        logger.warning("Tier move %s: could not undo the copy: %s", move.pk, exc)
        return f" The copy could not be undone: {exc}"
    return ""


def _object_step(
    step: Callable[[TierMove, _Stores], None], move: TierMove, stores: _Stores
) -> str | None:
    """Run one object step with retries; None when it worked, else the failure reason (after
    undoing the copy). Errors other than the store's propagate: a crashed worker's move stays
    claimed, and its lease running out hands it to the next worker."""
    try:
        _retrying(lambda: step(move, stores))
        return None
    except StorageUnavailable as exc:
        return str(exc)[:800] + _undo(move, stores)


def _finish(move: TierMove, stores: _Stores) -> None:
    key = move.instance.object_key
    if _in_place(move, stores):
        stores.get(move.from_location).change_tier_finish(
            key=key, from_tier=move.from_tier, to_tier=move.to_tier
        )
    else:
        stores.get(move.from_location).delete(key=key, tier=move.from_tier)


def _map(
    fn: Callable[[TierMove], Any], moves: list[TierMove], *, inline: bool = False
) -> list[Any]:
    if inline or len(moves) <= 1:
        return [fn(m) for m in moves]
    with threads.Pool(max_workers=min(THREADS, len(moves))) as pool:
        return list(pool.map(fn, moves))


# --- database steps -----------------------------------------------------------------------------


def _claim(org: Organization, move_ids: Iterable[int], token: str, now: datetime) -> list[TierMove]:
    """Claim the claimable moves among ``move_ids``: one conditional UPDATE for the batch."""
    ids = list(move_ids)
    TierMove.objects.for_org(org).filter(pk__in=ids).filter(_claimable(now)).update(
        state=Case(When(state=State.PLANNED, then=Value(State.COPYING)), default=F("state")),
        attempts=Case(When(state=State.DONE, then=F("attempts")), default=F("attempts") + 1),
        claimed_by=token,
        claimed_until=_lease(now),
    )
    moves = list(
        TierMove.objects.for_org(org)
        .filter(pk__in=ids, claimed_by=token)
        .select_related("instance")
        # The object steps need the key, size and hash, never the DICOM attributes.
        .defer("instance__metadata")
        .order_by("id")
    )
    # A batch names one or two locations: load each once, not twice per move.
    wanted = {m.from_location_id for m in moves} | {m.to_location_id for m in moves}
    locations = StorageLocation.objects.in_bulk(wanted)
    for move in moves:
        move.from_location = locations[move.from_location_id]
        move.to_location = locations[move.to_location_id]
    return moves


def _fail(moves: dict[int, str], token: str, now: datetime) -> None:
    for pk, reason in moves.items():
        TierMove.objects.filter(pk=pk, claimed_by=token, state__in=OPEN).update(
            state=State.FAILED, error=reason[:1000], finished_at=now, claimed_until=None
        )


def _advance(moves: list[TierMove], token: str, now: datetime) -> list[TierMove]:
    """copying -> verifying for the moves still claimed by this run."""
    if not moves:
        return []
    ids = [m.pk for m in moves]
    updated = TierMove.objects.filter(pk__in=ids, claimed_by=token, state=State.COPYING).update(
        state=State.VERIFYING, claimed_until=_lease(now)
    )
    if updated == len(ids):
        # Only the holder of the token changes a claimed move's state: every one was ours.
        return moves
    ours = set(
        TierMove.objects.filter(pk__in=ids, claimed_by=token, state=State.VERIFYING).values_list(
            "pk", flat=True
        )
    )
    return [m for m in moves if m.pk in ours]


def _bytes_shift(table: str, shifts: dict[int, dict[str, int]]) -> None:
    """Add per-tier byte deltas to study or series rows: one statement per 500 rows."""
    rows = [(pk, *(d.get(t, 0) for t in TIERS)) for pk, d in shifts.items() if any(d.values())]
    quote = connection.ops.quote_name
    names = ", ".join(f"d_{t}" for t in TIERS)
    sets = ", ".join(f"{quote('bytes_' + t)} = {quote('bytes_' + t)} + v.d_{t}" for t in TIERS)
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
        # Identifiers come from the code; values are parameters.
        sql = (
            f"WITH v(id, {names}) AS (VALUES {values}) "  # noqa: S608
            f"UPDATE {quote(table)} SET {sets} FROM v WHERE {quote(table)}.{quote('id')} = v.id"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [x for row in chunk for x in row])


def _switch(
    org: Organization, moves: list[TierMove], token: str, now: datetime
) -> tuple[list[TierMove], dict[int, str]]:
    """Switch the index for verified moves: one transaction for the group (see the module doc).

    Set-based: a few statements per group whatever its size (the instances per target, the
    study and series bytes, the metering), none per move. Returns the moves switched (now
    done, not yet finished) and those failed with a reason.
    """
    if not moves:
        return [], {}
    with transaction.atomic():
        ours = set(
            TierMove.objects.select_for_update()
            .filter(pk__in=[m.pk for m in moves], claimed_by=token, state=State.VERIFYING)
            .values_list("pk", flat=True)
        )
        moves = [m for m in moves if m.pk in ours]
        # Locked until the end of the transaction: the check below holds when the UPDATE runs.
        rows = {
            r[0]: r
            for r in Instance.objects.select_for_update()
            .filter(organization=org, pk__in=[m.instance_id for m in moves])
            .values_list(
                "pk",
                "tier",
                "location_id",
                "tier_changed_at",
                "received_at",
                "study_id",
                "series_id",
                "size_bytes",
            )
        }
        switched: list[TierMove] = []
        failed: dict[int, str] = {}
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        studies: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        series: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        out_bytes: dict[str, int] = defaultdict(int)
        in_bytes: dict[str, int] = defaultdict(int)
        arrived: dict[str, int] = defaultdict(int)
        owed_by_tier: dict[str, int] = defaultdict(int)
        for move in moves:
            row = rows.get(move.instance_id)
            if row is None or row[1] != move.from_tier or row[2] != move.from_location_id:
                failed[move.pk] = (
                    f"The instance left the {move.from_tier} tier of its location while it was "
                    f"being moved; the index was not switched."
                )
                continue
            _, _, _, changed_at, received_at, study_id, series_id, size = row
            source, target = move.from_tier, move.to_tier
            groups[(target, move.to_location_id)].append(move.instance_id)
            for shift in (studies[study_id], series[series_id]):
                shift[source] -= size
                shift[target] += size
            out_bytes[source] += size
            in_bytes[target] += size
            arrived[target] += 1
            owed_by_tier[source] += tiers.early_deletion_byte_days(
                size=size, tier=source, since=changed_at or received_at, left_at=now
            )
            move.size_bytes = size
            switched.append(move)
        for (tier, location_id), instance_ids in groups.items():
            Instance.objects.filter(pk__in=instance_ids).update(
                tier=tier, location_id=location_id, tier_changed_at=now
            )
        _bytes_shift(Study._meta.db_table, studies)
        _bytes_shift(Series._meta.db_table, series)
        if switched:
            _meter(org, [m.pk for m in switched], now, out_bytes, in_bytes, arrived, owed_by_tier)
        # Done, not finished: the lease is kept so that nobody else finishes it meanwhile.
        TierMove.objects.filter(pk__in=[m.pk for m in switched]).update(
            state=State.DONE, error="", claimed_until=_lease(now)
        )
        _fail(failed, token, now)
    return switched, failed


def _meter(
    org: Organization,
    move_ids: list[int],
    now: datetime,
    out_bytes: dict[str, int],
    in_bytes: dict[str, int],
    arrived: dict[str, int],
    owed_by_tier: dict[str, int],
) -> None:
    """The metering of one switched group, summed per tier: one ledger delta per tier and sign,
    one ``tier.transitions`` event per target tier, one ``early_deletion`` event per left tier.

    Precondition: called in the transaction that marks exactly these moves done. The keys are
    derived from the group (its first and last move and its size): the group's moves leave the
    verifying state in that same transaction, so no later switch, rerun or other worker can
    form a group with the same first and last move again, and a rolled-back switch wrote none
    of these rows. Each key is therefore written once, as a per-move key would be. The deltas
    carry the switch time, so the byte-hours integrated per tier are the same as per move.
    """
    group = f"moves:{min(move_ids)}-{max(move_ids)}:{len(move_ids)}"
    deltas = [Delta(t, -b, now, f"{group}:{t}:out") for t, b in sorted(out_bytes.items())]
    deltas += [Delta(t, b, now, f"{group}:{t}:in") for t, b in sorted(in_bytes.items())]
    events = [
        Usage("tier.transitions", n, now, f"{group}:{t}", {"tier": t})
        for t, n in sorted(arrived.items())
    ]
    events += [
        Usage("early_deletion", owed, now, f"{group}:{t}:early", {"tier": t})
        for t, owed in sorted(owed_by_tier.items())
        if owed
    ]
    storage_delta_bulk(org=org, deltas=deltas)
    record_usage_bulk(org=org, events=events)


def _finished(moves: list[TierMove], token: str, now: datetime) -> None:
    TierMove.objects.filter(
        pk__in=[m.pk for m in moves], claimed_by=token, state=State.DONE
    ).update(finished_at=now, claimed_until=None)


def _finishable(org: Organization, moves: list[TierMove]) -> list[TierMove]:
    """The done moves whose old copy may go: the index names neither it nor (after a later
    move back) the old tier at the old location."""
    where = {
        pk: (tier, location_id)
        for pk, tier, location_id in Instance.objects.filter(
            organization=org, pk__in=[m.instance_id for m in moves]
        ).values_list("pk", "tier", "location_id")
    }
    return [m for m in moves if where.get(m.instance_id) != (m.from_tier, m.from_location_id)]


# --- the pipeline ----------------------------------------------------------------------------


def _pipeline(
    org: Organization,
    token: str,
    stores: _Stores,
    *,
    copying: list[TierMove],
    verifying: list[TierMove],
) -> tuple[list[TierMove], dict[int, str]]:
    """Copy, verify and switch the claimed moves: object steps in the pool, database steps here.

    ``copying`` moves are copied, advanced to verifying (``_advance``), verified, switched;
    ``verifying`` moves (copied by an earlier run) start at the HEAD. Verifications are queued
    ahead of copies, so that moves reach the switch early and their groups are switched while
    the pool works on the others. A failed object step fails its move at once (its copy undone).
    Errors other than the store's propagate after the running steps end; the moves stay claimed
    until their lease runs out, as when the worker dies.

    Returns the moves switched (done, not finished) and the failed ones with their reasons.
    """
    to_copy, to_verify = deque(copying), deque(verifying)
    copied: list[TierMove] = []  # copied, still in the copying state
    verified: list[TierMove] = []  # verified, waiting for the switch
    running: dict[Future[str | None], tuple[bool, TierMove]] = {}  # (is a copy, move)
    switched: list[TierMove] = []
    failed: dict[int, str] = {}
    advance_group, switch_group = ADVANCE_GROUP, SWITCH_GROUP
    pool: ThreadPoolExecutor | _Inline
    if stores.local([*copying, *verifying]):
        # Steps done inline leave no store to keep busy: one advance and one switch for all.
        pool = _Inline()
        advance_group = switch_group = len(copying) + len(verifying)
    else:
        pool = threads.Pool(max_workers=THREADS, thread_name_prefix="tier-move")
    try:
        while to_copy or to_verify or running or copied or verified:
            while len(running) < THREADS + QUEUED and (to_verify or to_copy):
                is_copy = not to_verify
                move = to_copy.popleft() if is_copy else to_verify.popleft()
                step = _copy if is_copy else _verify
                running[pool.submit(_object_step, step, move, stores)] = (is_copy, move)
            bad: dict[int, str] = {}
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    is_copy, move = running.pop(future)
                    reason = future.result()
                    if reason is not None:
                        bad[move.pk] = reason
                    else:
                        (copied if is_copy else verified).append(move)
            if bad:
                _fail(bad, token, timezone.now())
                failed.update(bad)
            copies_left = bool(to_copy) or any(is_copy for is_copy, _ in running.values())
            if copied and (len(copied) >= advance_group or not copies_left):
                to_verify.extend(_advance(copied, token, timezone.now()))
                copied = []
            if verified and (
                len(verified) >= switch_group or not (running or to_copy or to_verify or copied)
            ):
                done_now, gone = _switch(org, verified, token, timezone.now())
                switched += done_now
                failed.update(gone)
                verified = []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return switched, failed


# --- the service -----------------------------------------------------------------------------


def moves_execute(
    *, org: Organization, move_ids: Iterable[int], worker: str | None = None
) -> MovesResult:
    """Run the given moves of ``org`` as far as they go: claim, copy, verify, switch, finish.

    Safe to call twice with the same ids, concurrently or after a crash: only claimable moves
    (planned, or open / unfinished with an expired lease) are taken. Object operations of the
    batch run concurrently, pipelined with the database steps (``_pipeline``); the index is
    switched in one transaction per group of verified moves.
    """
    cpu_started = time.process_time()
    token = f"{worker or worker_name()}#{uuid.uuid4().hex[:10]}"
    now = timezone.now()
    result = MovesResult()
    claimed = _claim(org, move_ids, token, now)
    result.claimed = len(claimed)
    if not claimed:
        return result
    stores = _Stores()
    failed: dict[int, str] = {}
    active: list[TierMove] = []
    for move in claimed:
        if move.state in OPEN and move.attempts > MAX_CLAIMS:
            failed[move.pk] = (
                f"The move was interrupted {move.attempts - 1} times; given up."
                + _undo(move, stores)
            )
        elif move.state in OPEN and not tiers.location_serves(move.to_location, move.to_tier):
            failed[move.pk] = (
                f"The location {move.to_location.name!r} cannot hold objects in the "
                f"{move.to_tier} tier: it has no storage class for it."
            )
        else:
            active.append(move)

    _fail(failed, token, timezone.now())
    result.failed += len(failed)
    result.errors.update(failed)

    switched, errors = _pipeline(
        org,
        token,
        stores,
        copying=[m for m in active if m.state == State.COPYING],
        verifying=[m for m in active if m.state == State.VERIFYING],
    )
    result.done = len(switched)
    result.bytes_moved = sum(m.size_bytes for m in switched)
    result.failed += len(errors)
    result.errors.update(errors)

    to_finish = switched + [m for m in active if m.state == State.DONE]
    finishable = _finishable(org, to_finish)
    # In-place finishes send no request (S3: the copy replaced the object; the filesystem
    # unlinks a local file), and neither does any step on local stores: no threads for them.
    inline = stores.local(finishable) or all(_in_place(m, stores) for m in finishable)
    outcomes = _map(lambda m: _finish_step(m, stores), finishable, inline=inline)
    finished = [m for m, ok in zip(finishable, outcomes, strict=True) if ok]
    keep = {m.pk for m in finishable}
    _finished(finished + [m for m in to_finish if m.pk not in keep], token, timezone.now())
    result.finished = len(finished)

    seconds = math.ceil(time.process_time() - cpu_started)
    if seconds > 0:
        # Worker CPU of this run (object steps are waits, so this is mostly bookkeeping),
        # rounded up once per run, as ingest does per request.
        record_usage(
            org=org,
            meter="compute.seconds",
            quantity=seconds,
            at=timezone.now(),
            idempotency_key=f"compute:moves:{token}"[:200],
        )
    logger.info(
        "Tier moves of org %s: %d claimed, %d done, %d failed, %d finished",
        org.pk,
        result.claimed,
        result.done,
        result.failed,
        result.finished,
    )
    return result


def _finish_step(move: TierMove, stores: _Stores) -> bool:
    """Remove the old copy; False leaves the move unfinished (picked up again after its lease)."""
    try:
        _retrying(lambda: _finish(move, stores))
        return True
    except StorageUnavailable as exc:
        logger.warning("Tier move %s: old copy not removed yet: %s", move.pk, exc)
        return False


# --- dispatching -----------------------------------------------------------------------------

DISPATCH_BATCH = 100


def moves_dispatch(*, now: datetime | None = None) -> dict[int, int]:
    """Beat, every minute: per organization, hand at most ``moves_per_minute`` moves to the
    tiering workers, ``DISPATCH_BATCH`` ids per task. Returns {organization id: moves handed}.

    Taken: planned moves never handed out, planned moves handed out longer than a lease ago (the
    task was lost), and open or unfinished moves whose worker's lease ran out.
    """
    # Deferred: archive.tiering.tasks imports this module (a task runs the moves, the dispatcher
    # queues that task).
    from archive.tiering.tasks import tier_moves_execute

    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.ARCHIVE_MOVE_LEASE_SECONDS)
    expired = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    due = (
        Q(state=State.PLANNED, dispatched_at__isnull=True)
        | Q(state=State.PLANNED, dispatched_at__lt=stale)
        | (Q(state__in=OPEN) & expired)
        | (Q(state=State.DONE, finished_at__isnull=True) & expired)
    )
    # Organizations with work, one index probe each (not a scan of every move).
    org_ids = list(
        Organization.objects.filter(
            Exists(
                TierMove.objects.filter(
                    organization=OuterRef("pk"), state__in=[State.PLANNED, *OPEN]
                )
            )
            | Exists(
                TierMove.objects.filter(
                    organization=OuterRef("pk"), state=State.DONE, finished_at__isnull=True
                )
            )
        ).values_list("pk", flat=True)
    )
    handed: dict[int, int] = {}
    for org_id in org_ids:
        budget = archive_settings_get(org=org_id).moves_per_minute
        ids = list(
            TierMove.objects.filter(organization_id=org_id)
            .filter(due)
            .order_by("id")
            .values_list("pk", flat=True)[:budget]
        )
        if not ids:
            continue
        with transaction.atomic():
            TierMove.objects.filter(pk__in=ids).update(dispatched_at=now)
            for start in range(0, len(ids), DISPATCH_BATCH):
                chunk = ids[start : start + DISPATCH_BATCH]
                transaction.on_commit(partial(tier_moves_execute.delay, org_id, chunk))
        handed[org_id] = len(ids)
    return handed
