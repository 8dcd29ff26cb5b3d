#!/usr/bin/env python3
"""The emotion mix of every room, per UTC hour, read from emosation's log.

An analytics consumer written outside the Rust workspace, with what a data
team has at hand: confluent-kafka to read the log, fastavro to decode it, and
the published schemas (schemas/avro/*.avsc and avro/history/) alone. It joins
a consumer group of its own, reads every partition of `emosation.rooms` from
the beginning, folds the records the way the projector does (docs/log.md,
"What the fold decides"), and prints, as JSON:

    {"rooms": {"<room_id>": {
        "name": "...",
        "messages": 12,
        "emotions": {"joy": 7, "neutral": 5},
        "hours": {"2026-12-02T06:00:00Z": {"messages": 12, "authors": 3,
                                           "emotions": {"joy": 7, "neutral": 5}}}}},
     "records": 123, "undecodable": 0, "misrouted": 0, "refused": {...}}

`messages` counts stored messages (a repeated client_msg_id or a post by a
non-member is refused by the fold, exactly as in the server's views), in the
hour of their `at`; `emotions` counts, per message, the emotion that stands:
the first the log holds for it, superseded by its latest edit's, none once it
is deleted. Direct-message rooms count like any room (they exist once a pair
of friends opens one); a post carrying files the fold refuses (not the
author's own uploads to that room, or already sent) is not a message. So the answer equals the server's own views: the room's
`GET /v1/rooms/{id}/emotions` summary and its `GET /v1/rooms/{id}/activity`
hours (the project's test command checks exactly that).

By default it stops once it has read every partition to its end (a
backfill); `--follow` keeps it running and prints the mix every
`--every` seconds. The state lives in memory, so each run reads from offset 0;
the offsets it commits to its group show its progress (and lag) to Kafka
tooling, nothing more.

    pip install -r requirements.txt
    python3 emotion_mix.py --bootstrap localhost:9092
"""

import argparse
import glob
import io
import json
import math
import os
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

LABELS = ("joy", "sadness", "anger", "fear", "surprise", "disgust", "neutral")
MAGIC = b"\xc3\x01"

# Logs written before emosation wrote spec-exact fingerprints carry these
# (docs/log.md, "Fingerprints written before 2026-12"): header bytes → the
# schema file they were written under.
LEGACY = {
    "ea0977a338efac17": "history/user_signed_up.v1.avsc",
    "5db3f12f79af924b": "history/account_deleted.v1.avsc",
    "f8ab100a6dbb1d89": "history/account_restored.v1.avsc",
    "d7bd46f6ec245485": "history/session_revoked.v1.avsc",
    "c44a6671c68fa3f8": "history/room_created.v1.avsc",
    "65ac1500e71421ba": "history/member_joined.v1.avsc",
    "79dc7d339c12a4b1": "history/member_quit.v1.avsc",
    "db6f6a9e68c06830": "history/message_posted.v1.avsc",
    "16d14ece05d46222": "history/read_marker_set.v1.avsc",
    "fe278f712bb9c4b9": "history/emotion_recorded.v1.avsc",
}


class Schemas:
    """Every published schema, found by its single-object fingerprint."""

    def __init__(self, avro_dir):
        self.writers = {}  # fingerprint bytes -> (record name, writer schema)
        self.readers = {}  # record name -> current (reader) schema
        by_file = {}
        for path in sorted(glob.glob(os.path.join(avro_dir, "*.avsc"))):
            schema = self._load(path)
            self.readers[schema["name"]] = schema
            by_file[os.path.relpath(path, avro_dir)] = schema
        for path in sorted(glob.glob(os.path.join(avro_dir, "history", "*.avsc"))):
            by_file[os.path.relpath(path, avro_dir)] = self._load(path)
        if not self.readers:
            raise SystemExit(f"no schemas in {avro_dir}")
        for rel, schema in by_file.items():
            self.writers[self._fingerprint(rel, avro_dir)] = (schema["name"], schema)
        for hexfp, rel in LEGACY.items():
            if rel in by_file:
                self.writers[bytes.fromhex(hexfp)] = (by_file[rel]["name"], by_file[rel])

    @staticmethod
    def _load(path):
        with open(path) as f:
            return parse_schema(json.load(f))

    @staticmethod
    def _fingerprint(rel, avro_dir):
        with open(os.path.join(avro_dir, rel)) as f:
            pcf = to_parsing_canonical_form(json.load(f))
        # fastavro returns the fingerprint's bytes little-endian, as the
        # single-object header carries them.
        return bytes.fromhex(fingerprint(pcf, "CRC-64-AVRO"))

    def decode(self, value):
        """(short record name, dict) or None for bytes that are not a record."""
        if value is None or len(value) < 10 or value[:2] != MAGIC:
            return None
        known = self.writers.get(value[2:10])
        if known is None:
            return None
        name, writer = known
        body = io.BytesIO(value[10:])
        try:
            datum = schemaless_reader(body, writer, self.readers[name])
        except Exception:
            return None
        if body.read(1):
            return None  # trailing bytes: not a record of this schema
        return name.rsplit(".", 1)[-1], datum


def position_id(partition, offset):
    """A message id: the record's position, as the server writes it."""
    return f"{partition:04x}{offset:012x}"


def hour_of(at_ms):
    # fastavro gives timestamp-millis as an aware datetime.
    if isinstance(at_ms, datetime):
        at = at_ms.astimezone(timezone.utc)
    else:
        at = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)
    return at.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def pair_room_id(a, b):
    """The direct-message room of two users (and the key of their
    relationship's records): FNV-1a of "dm\0" + the lower id + "\0" + the
    higher, as 16 hex digits (core/src/ids.rs)."""
    lo, hi = sorted((a, b))
    h = 0xCBF29CE484222325
    for byte in b"dm\0" + lo.encode() + b"\0" + hi.encode():
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


class RoomsFold:
    """The projector's rules for emosation.rooms, as far as messages and
    emotions need them (docs/log.md, "What the fold decides"): rooms and
    their capacity, membership (direct-message rooms too, opened and closed
    by a pair's relationship), idempotent posts, edits and deletes, and each
    stored message's emotion — its first, superseded by its latest edit's,
    dropped when it is deleted."""

    def __init__(self):
        self.rooms = {}  # room_id -> {"name", "capacity", "owner", "members": set}
        self.client_msgs = set()  # (room_id, author_id, client_msg_id)
        # (room_id, message_id) -> {"hour", "author", "deleted", "edit_id",
        #  "label": the counted label or None, "first": a first emotion came,
        #  "edit_emotion": the edit whose emotion counts, or None}
        self.messages = {}
        self.pairs = {}  # (user_id, other_id) -> {"status", "blocking", "blocked_by"}
        self.attachments = {}  # (room_id, attachment_id) -> {"uploader", "sent": bool}
        self.mix = defaultdict(lambda: {"hours": defaultdict(lambda: {"messages": 0, "authors": set(), "emotions": defaultdict(int)})})
        self.refused = defaultdict(int)

    def refuse(self, why):
        self.refused[why] += 1

    def _count(self, room_id, m, label):
        """Moves the message's counted emotion to `label` (None: uncounted)."""
        emotions = self.mix[room_id]["hours"][m["hour"]]["emotions"]
        if m["label"] is not None:
            emotions[m["label"]] -= 1
            if emotions[m["label"]] == 0:
                del emotions[m["label"]]
        if label is not None:
            emotions[label] += 1
        m["label"] = label

    @staticmethod
    def _well_formed(r):
        scores = r["scores"]
        return (
            r["label"] in LABELS
            and len(scores) == len(LABELS)
            and math.isfinite(r["score"])
            and all(math.isfinite(s) for s in scores)
        )

    def _relationship(self, r):
        """A friend request, answer, block or `open` of the pair's room."""
        me_id, other_id = r["user_id"], r["other_id"]
        if me_id == other_id or r["room_id"] != pair_room_id(me_id, other_id):
            return self.refuse("malformed")
        new = lambda: {"status": "none", "blocking": False, "blocked_by": False}  # noqa: E731
        me = dict(self.pairs.get((me_id, other_id)) or new())
        them = dict(self.pairs.get((other_id, me_id)) or new())
        blocked = me["blocking"] or me["blocked_by"]
        action = r["action"]

        def both(mine, theirs):
            me["status"], them["status"] = mine, theirs

        if action == "request":
            if blocked:
                return self.refuse("blocked")
            if me["status"] == "request_in":
                both("friends", "friends")
            elif me["status"] == "none":
                both("request_out", "request_in")
        elif action == "accept":
            if me["status"] == "request_in":
                both("friends", "friends")
            elif me["status"] != "friends":
                return self.refuse("no_request")
        elif action in ("decline", "cancel"):
            if me["status"] != ("request_in" if action == "decline" else "request_out"):
                return self.refuse("no_request")
            both("none", "none")
        elif action == "remove":
            if me["status"] != "friends":
                return self.refuse("not_friends")
            both("none", "none")
            self._close_direct(r)
        elif action == "block":
            me["blocking"], them["blocked_by"] = True, True
            both("none", "none")
            self._close_direct(r)
        elif action == "unblock":
            me["blocking"], them["blocked_by"] = False, False
        elif action == "open":
            if blocked:
                return self.refuse("blocked")
            if me["status"] != "friends":
                return self.refuse("not_friends")
            room = self.rooms.setdefault(r["room_id"], {"name": "", "capacity": 2, "owner": "", "members": set()})
            room["members"].update((me_id, other_id))
        else:
            return self.refuse("malformed")
        self.pairs[(me_id, other_id)], self.pairs[(other_id, me_id)] = me, them

    def _close_direct(self, r):
        room = self.rooms.get(r["room_id"])
        if room is not None:
            room["members"].difference_update((r["user_id"], r["other_id"]))

    def apply(self, kind, r, partition, offset):
        if kind == "RoomCreated":
            if r["room_id"] in self.rooms:
                return self.refuse("room_exists")
            self.rooms[r["room_id"]] = {
                "name": r["name"],
                "capacity": max(1, r["capacity"]),
                "owner": r["owner_id"],
                "members": {r["owner_id"]},
            }
            self.mix[r["room_id"]]["name"] = r["name"]
        elif kind == "RelationshipChanged":
            self._relationship(r)
        elif kind == "MemberJoined":
            room = self.rooms.get(r["room_id"])
            if room is None:
                return self.refuse("room_not_found")
            if not room["owner"]:
                return self.refuse("room_not_found")  # direct messages: only the pair's `open`
            if r["user_id"] in room["members"]:
                return  # joining twice is a no-op
            if len(room["members"]) >= room["capacity"]:
                return self.refuse("room_full")
            room["members"].add(r["user_id"])
        elif kind == "MemberQuit":
            room = self.rooms.get(r["room_id"])
            if room is None:
                return self.refuse("room_not_found")
            if r["user_id"] not in room["members"]:
                return self.refuse("not_member")
            room["members"].discard(r["user_id"])
        elif kind == "MessagePosted":
            room = self.rooms.get(r["room_id"])
            if room is None:
                return self.refuse("room_not_found")
            if r["author_id"] not in room["members"]:
                return self.refuse("not_member")
            idem = (r["room_id"], r["author_id"], r["client_msg_id"])
            if idem in self.client_msgs:
                return self.refuse("duplicate")
            # Files (v2): the author's own uploads to this room that no
            # message carries yet, each once, at most 10; else refused whole.
            files = r.get("attachments") or []
            if len(files) > 10:
                return self.refuse("malformed")
            for i, a in enumerate(files):
                att = self.attachments.get((r["room_id"], a))
                if a == "*" or a in files[:i] or att is None or att["uploader"] != r["author_id"] or att["sent"]:
                    return self.refuse("invalid_attachment")
            for a in files:
                self.attachments[(r["room_id"], a)]["sent"] = True
            self.client_msgs.add(idem)
            hour = hour_of(r["at"])
            self.messages[(r["room_id"], position_id(partition, offset))] = {
                "hour": hour, "author": r["author_id"], "deleted": False, "edit_id": None,
                "label": None, "first": False, "edit_emotion": None,
            }
            h = self.mix[r["room_id"]]["hours"][hour]
            h["messages"] += 1
            h["authors"].add(r["author_id"])
        elif kind == "AttachmentUploaded":
            room = self.rooms.get(r["room_id"])
            if room is None:
                return self.refuse("room_not_found")
            if r["uploader_id"] not in room["members"]:
                return self.refuse("not_member")
            # Its id: the room id, then the record's position.
            self.attachments[(r["room_id"], r["room_id"] + position_id(partition, offset))] = {
                "uploader": r["uploader_id"], "sent": False,
            }
        elif kind == "AttachmentExpired":
            att = self.attachments.get((r["room_id"], r["attachment_id"]))
            if r["attachment_id"] == "*" or att is None or att["sent"]:
                return self.refuse("invalid_attachment")
            del self.attachments[(r["room_id"], r["attachment_id"])]
        elif kind in ("MessageEdited", "MessageDeleted"):
            room = self.rooms.get(r["room_id"])
            if room is None:
                return self.refuse("room_not_found")
            if r["user_id"] not in room["members"]:
                return self.refuse("not_member")
            m = self.messages.get((r["room_id"], r["message_id"]))
            if m is None:
                return self.refuse("message_not_found")
            if kind == "MessageEdited":
                if m["author"] != r["user_id"]:
                    return self.refuse("not_author")
                if m["deleted"]:
                    return self.refuse("message_deleted")
                m["edit_id"] = position_id(partition, offset)
            else:
                if r["user_id"] not in (m["author"], room["owner"]):
                    return self.refuse("not_author")
                if not m["deleted"]:
                    m["deleted"] = True
                    m["edit_emotion"] = None
                    self._count(r["room_id"], m, None)  # its emotion stops counting
        elif kind == "EmotionRecorded":
            if r["room_id"] not in self.rooms:
                return self.refuse("room_not_found")
            m = self.messages.get((r["room_id"], r["message_id"]))
            if m is None:
                return self.refuse("message_not_found")
            edit_id = r.get("edit_id")
            if edit_id is None:
                # The message as posted: its first emotion wins, none once deleted.
                if m["first"] or m["deleted"]:
                    return
                if not self._well_formed(r):
                    return self.refuse("malformed")
                m["first"] = True
                if m["edit_emotion"] is None:  # unless an edit's already superseded it
                    self._count(r["room_id"], m, r["label"])
            else:
                # An edit's emotion: only for the latest edit, once; it supersedes.
                if m["deleted"] or m["edit_id"] != edit_id or m["edit_emotion"] == edit_id:
                    return
                if not self._well_formed(r):
                    return self.refuse("malformed")
                m["edit_emotion"] = edit_id
                self._count(r["room_id"], m, r["label"])
        # ReadMarkerSet and anything newer change no message or emotion.

    def report(self):
        rooms = {}
        for room_id, m in sorted(self.mix.items()):
            hours = {}
            total = defaultdict(int)
            messages = 0
            for hour, h in sorted(m["hours"].items()):
                hours[hour] = {
                    "messages": h["messages"],
                    "authors": len(h["authors"]),
                    "emotions": dict(sorted(h["emotions"].items())),
                }
                messages += h["messages"]
                for label, n in h["emotions"].items():
                    total[label] += n
            rooms[room_id] = {
                "name": m.get("name"),
                "messages": messages,
                "emotions": dict(sorted(total.items())),
                "hours": hours,
            }
        return rooms


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="localhost:9092", help="Kafka bootstrap servers")
    ap.add_argument("--topic-prefix", default="", help="the server's kafka://…?prefix= (default none)")
    ap.add_argument("--group", default=None, help="consumer group (default emotion-mix-<random>)")
    ap.add_argument("--schemas", default=os.path.join(here, "..", "..", "schemas", "avro"), help="folder of the .avsc files")
    ap.add_argument("--follow", action="store_true", help="keep reading; print the mix every --every seconds")
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=120.0, help="give up a backfill after this many seconds")
    args = ap.parse_args()

    schemas = Schemas(args.schemas)
    topic = f"{args.topic_prefix}emosation.rooms"
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group or f"emotion-mix-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # The state is in memory: every run reads from offset 0.
            "enable.partition.eof": True,
        }
    )
    assigned = set()

    def on_assign(c, partitions):
        for p in partitions:
            p.offset = OFFSET_BEGINNING
            assigned.add(p.partition)
        c.assign(partitions)

    consumer.subscribe([topic], on_assign=on_assign)
    fold = RoomsFold()
    stats = {"records": 0, "undecodable": 0, "misrouted": 0}
    at_end = set()
    started = time.monotonic()
    last_print = started
    try:
        while True:
            msg = consumer.poll(0.5)
            now = time.monotonic()
            if msg is not None and msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                elif msg.error().code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise SystemExit(f"kafka: {msg.error()}")
            elif msg is not None:
                at_end.discard(msg.partition())
                stats["records"] += 1
                decoded = schemas.decode(msg.value())
                if decoded is None:
                    stats["undecodable"] += 1
                else:
                    kind, record = decoded
                    # The fold skips a record its key does not route (docs/log.md).
                    if record.get("room_id", "").encode() != (msg.key() or b""):
                        stats["misrouted"] += 1
                    else:
                        fold.apply(kind, record, msg.partition(), msg.offset())
                # Progress for Kafka tooling (lag), not a resume point.
                if stats["records"] % 1000 == 0:
                    consumer.commit(asynchronous=True)
            if args.follow:
                if now - last_print >= args.every:
                    print(json.dumps({"rooms": fold.report(), **stats}), flush=True)
                    last_print = now
                continue
            if assigned and at_end >= assigned and _all_at_high_watermark(consumer, topic, assigned):
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException:
                    pass  # nothing new since the last commit
                break
            if now - started > args.timeout:
                raise SystemExit(f"backfill not finished within {args.timeout} s ({len(at_end)}/{len(assigned)} partitions at their end)")
    finally:
        consumer.close()
    print(json.dumps({"rooms": fold.report(), **stats, "refused": dict(fold.refused)}, indent=2, sort_keys=True))


def _all_at_high_watermark(consumer, topic, partitions):
    """Every partition's position has reached its high watermark now."""
    positions = consumer.position([TopicPartition(topic, p) for p in partitions])
    for tp in positions:
        _, high = consumer.get_watermark_offsets(tp, timeout=5.0)
        if tp.offset < 0 and high > 0:
            return False
        if tp.offset >= 0 and tp.offset < high:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
