"""The label database (SQLAlchemy; sqlite by default, any SQLAlchemy URL).

Tables
------
``objects``  one row per queued object: ``object_id`` (key), ``queue_bin``, ``queue_position``,
             ``queue`` (the queue file it came from) and ``row`` (the queue row as JSON, so that an
             export can rebuild the manifest without the queue file).
``labels``   the *current* label of each (task, object, labeller): several labellers never
             overwrite each other; a labeller relabelling an object updates their own row. A label
             is one of the task's classes (:data:`galmorph.tasks.TASKS`) or ``unsure``
             (:mod:`galmorph.labelling.choices`); anything else is refused.
``events``   append-only history: every label set (with the label it replaced) and every undo.

``tokens``   labeller access tokens for the app, stored as SHA-256 hashes only (the token itself
             is shown once, by ``galmorph label token add``).

Undo reverts the labeller's most recent not-yet-undone ``set`` event: the previous label is
restored, or the label row is deleted when there was none.

Concurrency: every write is one transaction that first locks what it reads (``BEGIN IMMEDIATE`` on
sqlite, ``SELECT ... FOR UPDATE`` on the object row elsewhere), the label row is written with an
upsert, and an undo marks its event with a conditional update, so concurrent labels and undos never
fail on the unique constraint and the history records exactly what happened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import (
    Boolean,
    DateTime,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from galmorph.labelling.choices import labelling_for

log = logging.getLogger(__name__)


class LabelError(ValueError):
    """A label request is invalid (unknown object, malformed label, nothing to undo)."""


class UnknownObject(LabelError, KeyError):
    """The object is not in the label database's queue."""


def check_label(task: str, label: str, object_id: str | None = None) -> None:
    """LabelError unless ``label`` is one of ``task``'s labels (its classes or ``unsure``)."""
    try:
        spec = labelling_for(task)
    except ValueError as exc:
        raise LabelError(str(exc)) from None
    if label not in spec.labels:
        where = f"object {object_id}: " if object_id is not None else ""
        raise LabelError(f"{where}label {label!r} is not one of the {task} labels {list(spec.labels)}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class ObjectRow(Base):
    __tablename__ = "objects"
    object_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str | None] = mapped_column(String(1000))
    queue_bin: Mapped[str | None] = mapped_column(String(64))
    queue_position: Mapped[int | None] = mapped_column(Integer)
    row: Mapped[str] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LabelRow(Base):
    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("task", "object_id", "labeller", name="uq_label_per_labeller"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    object_id: Mapped[str] = mapped_column(String(200), index=True)
    labeller: Mapped[str] = mapped_column(String(100), index=True)
    label: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class EventRow(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(200))
    labeller: Mapped[str] = mapped_column(String(100), index=True)
    action: Mapped[str] = mapped_column(String(16))  # "set" | "undo"
    label: Mapped[str | None] = mapped_column(String(32))
    previous_label: Mapped[str | None] = mapped_column(String(32))
    undone: Mapped[bool] = mapped_column(Boolean, default=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TokenRow(Base):
    __tablename__ = "tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    labeller: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of an access token (tokens are 256-bit random strings)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _json_value(v):
    if v is None or v is pd.NA:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(v, "item"):
        return v.item()
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _utc(dt: datetime | None) -> datetime | None:
    """sqlite drops the timezone; every time stored here is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _sqlite_immediate_transactions(engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions; writes begin with ``BEGIN IMMEDIATE`` so that
    a read-then-write transaction holds the write lock from its first read."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _rec):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("galmorph_write") else "BEGIN")


def _generic_upsert(task, object_id, labeller, label, now):  # pragma: no cover
    raise LabelError("label upsert is implemented for sqlite and postgresql databases only")


class LabelStore:
    """Labels of one database (``db_url``); creates the tables when missing."""

    def __init__(self, db_url: str):
        if db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
            Path(db_url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kw = {"connect_args": {"check_same_thread": False, "timeout": 60}} if db_url.startswith("sqlite") else {}
        self.url = db_url
        self.engine = create_engine(db_url, future=True, **kw)
        if self.engine.dialect.name == "sqlite":
            _sqlite_immediate_transactions(self.engine)
        #: engine whose transactions take the write lock at BEGIN (sqlite); used by every write
        self._writer = self.engine.execution_options(galmorph_write=True)
        Base.metadata.create_all(self.engine)

    # -- objects --------------------------------------------------------------------------------
    def register_queue(self, queue: pd.DataFrame, queue_name: str | None = None) -> int:
        """Insert (or refresh) the queue's objects; returns how many rows were written."""
        n = 0
        with Session(self._writer) as s, s.begin():
            for rec in queue.to_dict(orient="records"):
                oid = str(rec["object_id"])
                row = json.dumps({str(k): _json_value(v) for k, v in rec.items()})
                obj = s.get(ObjectRow, oid)
                qb = _json_value(rec.get("queue_bin"))
                qp = _json_value(rec.get("queue_position"))
                if obj is None:
                    s.add(ObjectRow(object_id=oid, queue=queue_name, queue_bin=qb,
                                    queue_position=None if qp is None else int(qp), row=row))
                else:
                    obj.queue, obj.queue_bin, obj.row = queue_name, qb, row
                    obj.queue_position = None if qp is None else int(qp)
                n += 1
        return n

    def has_object(self, object_id: str) -> bool:
        with Session(self.engine) as s:
            return s.get(ObjectRow, str(object_id)) is not None

    def objects(self) -> pd.DataFrame:
        """Every registered object as its queue row (a manifest-like frame)."""
        with Session(self.engine) as s:
            rows = [json.loads(o.row) for o in s.scalars(select(ObjectRow).order_by(ObjectRow.queue_position))]
        return pd.DataFrame(rows)

    # -- labels ---------------------------------------------------------------------------------
    def set_label(self, object_id: str, labeller: str, label: str, task: str = "lopsided") -> dict:
        """Record ``label`` by ``labeller`` (replacing only that labeller's own earlier label)."""
        object_id, labeller = str(object_id), str(labeller).strip()
        check_label(task, label, object_id)
        if not labeller:
            raise LabelError("labeller name is empty")
        with Session(self._writer) as s, s.begin():
            # lock the object row: concurrent labels of one object are serialised (sqlite: the
            # whole database is, by BEGIN IMMEDIATE)
            if s.scalar(select(ObjectRow.object_id).where(ObjectRow.object_id == object_id).with_for_update()) is None:
                raise UnknownObject(f"object {object_id!r} is not in the labelling queue")
            prev = s.scalar(select(LabelRow.label).where(LabelRow.task == task, LabelRow.object_id == object_id,
                                                         LabelRow.labeller == labeller))
            now = _now()
            s.execute(self._upsert_label(task, object_id, labeller, label, now))
            s.add(EventRow(task=task, object_id=object_id, labeller=labeller, action="set", label=label,
                           previous_label=prev, at=now))
        return {"object_id": object_id, "labeller": labeller, "label": label, "previous_label": prev}

    def _upsert_label(self, task: str, object_id: str, labeller: str, label: str, now: datetime):
        """``INSERT ... ON CONFLICT (task, object_id, labeller) DO UPDATE`` in the engine's dialect."""
        name = self.engine.dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # pragma: no cover - other databases: plain insert-or-update under the object lock
            return _generic_upsert(task, object_id, labeller, label, now)
        stmt = insert(LabelRow).values(task=task, object_id=object_id, labeller=labeller, label=label,
                                       created_at=now, updated_at=now)
        return stmt.on_conflict_do_update(index_elements=["task", "object_id", "labeller"],
                                          set_={"label": label, "updated_at": now})

    def undo(self, labeller: str, task: str = "lopsided") -> dict:
        """Revert ``labeller``'s latest label (restoring what it replaced). Raises LabelError when
        there is nothing to undo. An ``undo`` event is recorded only when a label was reverted."""
        labeller = str(labeller).strip()
        for _ in range(100):  # another undo may take the same event first (non-sqlite): take the next
            with Session(self._writer) as s, s.begin():
                ev = s.scalar(select(EventRow).where(EventRow.labeller == labeller, EventRow.task == task,
                                                     EventRow.action == "set", EventRow.undone.is_(False))
                              .order_by(EventRow.id.desc()).limit(1))
                if ev is None:
                    raise LabelError(f"labeller {labeller!r} has nothing to undo")
                claimed = s.execute(update(EventRow).where(EventRow.id == ev.id, EventRow.undone.is_(False))
                                    .values(undone=True).execution_options(synchronize_session=False))
                if claimed.rowcount != 1:
                    continue
                cur = s.scalar(select(LabelRow).where(LabelRow.task == task, LabelRow.object_id == ev.object_id,
                                                      LabelRow.labeller == labeller).with_for_update())
                if ev.previous_label is None:
                    if cur is not None:
                        s.delete(cur)
                elif cur is not None:
                    cur.label, cur.updated_at = ev.previous_label, _now()
                else:
                    now = _now()
                    s.add(LabelRow(task=task, object_id=ev.object_id, labeller=labeller, label=ev.previous_label,
                                   created_at=now, updated_at=now))
                s.add(EventRow(task=task, object_id=ev.object_id, labeller=labeller, action="undo",
                               label=ev.previous_label, previous_label=ev.label, at=_now()))
                return {"object_id": ev.object_id, "labeller": labeller, "undone_label": ev.label,
                        "restored_label": ev.previous_label}
        raise LabelError(f"labeller {labeller!r}: undo kept losing to concurrent undos; try again")

    # -- access tokens --------------------------------------------------------------------------
    def add_token(self, labeller: str) -> str:
        """A new access token for ``labeller`` (only its hash is stored; show the token once)."""
        labeller = str(labeller).strip()
        if not labeller or len(labeller) > 100:
            raise LabelError("labeller name must have 1 to 100 characters")
        token = new_token()
        with Session(self._writer) as s, s.begin():
            s.add(TokenRow(token_hash=hash_token(token), labeller=labeller, created_at=_now()))
        return token

    def revoke_tokens(self, labeller: str) -> int:
        """Revoke every token of ``labeller``; returns how many."""
        with Session(self._writer) as s, s.begin():
            res = s.execute(update(TokenRow).where(TokenRow.labeller == labeller, TokenRow.revoked.is_(False))
                            .values(revoked=True))
            return int(res.rowcount or 0)

    def labeller_for_token(self, token: str) -> str | None:
        """The labeller a (not revoked) token belongs to, or None."""
        if not token:
            return None
        with Session(self.engine) as s:
            row = s.get(TokenRow, hash_token(token))
            return row.labeller if row is not None and not row.revoked else None

    def labels(self, task: str = "lopsided", labeller: str | None = None) -> pd.DataFrame:
        """Current labels: ``object_id, labeller, label, created_at, updated_at``."""
        q = select(LabelRow).where(LabelRow.task == task)
        if labeller is not None:
            q = q.where(LabelRow.labeller == labeller)
        with Session(self.engine) as s:
            rows = [{"object_id": r.object_id, "labeller": r.labeller, "label": r.label,
                     "created_at": _utc(r.created_at), "updated_at": _utc(r.updated_at)}
                    for r in s.scalars(q.order_by(LabelRow.id))]
        return pd.DataFrame(rows, columns=["object_id", "labeller", "label", "created_at", "updated_at"])

    def current_labels(self, task: str, labeller: str) -> list[tuple[str, str]]:
        """``(object_id, label)`` of ``labeller``'s current labels of ``task`` (two columns only: the
        labelling app asks for them on every request)."""
        q = (select(LabelRow.object_id, LabelRow.label)
             .where(LabelRow.task == task, LabelRow.labeller == labeller).order_by(LabelRow.id))
        with Session(self.engine) as s:
            return [(str(o), str(lab)) for o, lab in s.execute(q)]

    def labelled_ids(self, task: str = "lopsided", labeller: str | None = None,
                     include_unsure: bool = True) -> set[str]:
        df = self.labels(task, labeller)
        if not include_unsure:
            df = df[df.label != "unsure"]
        return set(df.object_id)

    def labellers(self, task: str = "lopsided") -> list[str]:
        with Session(self.engine) as s:
            return sorted(s.scalars(select(LabelRow.labeller).where(LabelRow.task == task).distinct()))

    def count(self, task: str = "lopsided") -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(LabelRow).where(LabelRow.task == task)) or 0)

    def events(self, labeller: str | None = None) -> pd.DataFrame:
        q = select(EventRow)
        if labeller is not None:
            q = q.where(EventRow.labeller == labeller)
        with Session(self.engine) as s:
            rows = [{"id": e.id, "object_id": e.object_id, "labeller": e.labeller, "action": e.action,
                     "label": e.label, "previous_label": e.previous_label, "undone": e.undone, "at": _utc(e.at)}
                    for e in s.scalars(q.order_by(EventRow.id))]
        return pd.DataFrame(rows)
