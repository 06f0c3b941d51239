"""``aggregator explain``: a story, its members and why each one joined."""

from __future__ import annotations

from dataclasses import asdict

from .storage.stories import Member

_WHY = {
    "url": "same canonical link",
    "near-duplicate": "nearly the same text",
    "same-title": "nearly the same title (short item)",
    "linked": "its story joined this one: a later entry was nearly the same as both",
}


def reason(member: Member) -> str:
    if member.duplicate_of is None:
        return "original: seen first"
    why = _WHY.get(member.rule or "", member.rule or "unknown rule")
    if member.similarity is not None and member.rule != "url":
        why += f", similarity {member.similarity:.2f}"
    return f"joined entry {member.duplicate_of}: {why}"


def render_text(entry_id: int, members: list[Member]) -> str:
    original = members[0]
    lines = [
        f"story {original.id}: {original.title or '(untitled)'}",
        f"{len(members)} entr{'y' if len(members) == 1 else 'ies'} from "
        f"{len({m.feed_url for m in members})} feed{'s' if len({m.feed_url for m in members}) != 1 else ''}",
        "",
    ]
    for member in members:
        marker = "*" if member.id == entry_id else " "
        lines.append(f"{marker} {member.id:>7}  {member.published or member.first_seen}  {member.feed_title}")
        lines.append(f"           {member.title or '(untitled)'}")
        if member.link:
            lines.append(f"           {member.link}")
        lines.append(f"           {reason(member)}")
    return "\n".join(lines)


def as_dict(entry_id: int, members: list[Member]) -> dict[str, object]:
    return {
        "entry": entry_id,
        "story": members[0].id,
        "members": [{**asdict(m), "reason": reason(m)} for m in members],
    }
