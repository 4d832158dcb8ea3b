"""The local token list (R-A3, R-A1) and the authorisation cache (R-A2)."""

from datetime import datetime, timedelta, timezone

import pytest

from edge.parts.cards.tokens import CachedAuthorisation, TokenStore

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def full(version=1, n=3):
    return {"version": version, "kind": "full",
            "upsert": [{"uid": f"0400000{i}", "status": "Active", "type": "own", "group": "g"} for i in range(n)]}


@pytest.fixture
def tokens(tmp_path):
    s = TokenStore(str(tmp_path / "tokens.sqlite"))
    yield s
    s.close()


def test_r_a3_full_then_delta_then_delta_on_wrong_base_refused(tokens):
    assert tokens.version == 0 and tokens.count == 0
    r = tokens.apply(full())
    assert r.ok and tokens.version == 1 and tokens.count == 3
    r = tokens.apply({"version": 2, "kind": "delta", "base_version": 1,
                      "upsert": [{"uid": "04000001", "status": "Blocked", "type": "own"},
                                 {"uid": "04abcdef", "status": "Active", "type": "emsp", "reference": "NL-12-AB"}],
                      "remove": ["04000002"]})
    assert r.ok and (r.upserted, r.removed) == (2, 1)
    assert tokens.version == 2 and tokens.count == 3
    assert tokens.lookup("04000001").status == "Blocked"
    assert tokens.lookup("04ABCDEF").reference == "NL-12-AB"
    assert tokens.lookup("04000002") is None

    r = tokens.apply({"version": 4, "kind": "delta", "base_version": 3,
                      "upsert": [{"uid": "04000000", "status": "Blocked", "type": "own"}]})
    assert not r.ok and r.version == 2
    assert "holds v2" in r.message and "resync" in r.message
    assert tokens.version == 2 and tokens.lookup("04000000").status == "Active", "nothing changed"


def test_r_a3_delta_without_base_must_follow_held_version(tokens):
    tokens.apply(full())
    assert not tokens.apply({"version": 3, "kind": "delta", "upsert": []}).ok
    assert tokens.apply({"version": 2, "kind": "delta", "remove": ["04000000"]}).ok
    assert tokens.count == 2
    # The same delta again (a resend) is not newer than what is held: refused, unchanged.
    again = tokens.apply({"version": 2, "kind": "delta", "base_version": 2, "remove": ["04000001"]})
    assert not again.ok and tokens.count == 2


def test_r_a3_full_list_replaces_everything_and_may_not_go_back(tokens):
    tokens.apply(full(version=5, n=3))
    assert tokens.apply({"version": 6, "kind": "full", "upsert": [{"uid": "0A0B0C0D", "status": "Active", "type": "own"}]}).ok
    assert tokens.count == 1 and tokens.lookup("04000000") is None
    stale = tokens.apply(full(version=4))
    assert not stale.ok and "older" in stale.message and tokens.version == 6


def test_r_a3_bad_items_refuse_whole_message_with_reasons(tokens):
    tokens.apply(full())
    r = tokens.apply({"version": 2, "kind": "delta", "upsert": [
        {"uid": "04000009", "status": "Active", "type": "own"},  # fine on its own
        {"uid": "04 00", "status": "Active", "type": "own"},
        {"uid": "04000010", "status": "Lost", "type": "own"},
        {"uid": "04000011", "status": "Active", "type": "fleet"},
        {"uid": "04000012", "status": "Active", "type": "own", "expires": "2026-04-01 10:00"},
        {"uid": "04000009", "status": "Active", "type": "own"},
    ], "remove": ["04000011"]})
    assert not r.ok and tokens.version == 1 and tokens.lookup("04000009") is None
    text = " | ".join(r.reasons)
    for expected in ("upsert[1].uid", "upsert[2].status", "upsert[3].type", "upsert[4].expires",
                     "upsert[5].uid", "appears twice", "both upserted and removed"):
        assert expected in text
    assert "*0009" in text and "04000009" not in text, "reasons mask the token id"


def test_r_a3_malformed_envelope_refused(tokens):
    for msg in ({"version": "2", "kind": "full"}, {"version": 1, "kind": "patch"}, {"version": 1, "kind": "delta", "upsert": {}},
                {"version": 1, "kind": "full", "remove": ["04000000"]}, {"version": True, "kind": "full"}):
        assert not tokens.apply(msg).ok
    assert tokens.version == 0


def test_r_a3_version_and_list_survive_reopen(tmp_path):
    path = str(tmp_path / "t.sqlite")
    s = TokenStore(path)
    s.apply(full(version=7))
    s.close()
    s = TokenStore(path)
    assert s.version == 7 and s.count == 3 and s.lookup("04000001").group == "g"


def test_r_a1_expiry_date_makes_token_expired(tokens):
    tokens.apply({"version": 1, "kind": "full", "upsert": [
        {"uid": "04000001", "status": "Active", "type": "own", "expires": "2026-03-02T09:00:00+01:00"}]})
    info = tokens.lookup("04000001")
    assert info.expires == datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    assert info.status_at(NOW - timedelta(seconds=1)) == "Active"
    assert info.status_at(NOW) == "Expired"


def test_r_a2_auth_cache_expires_and_survives_reopen(tmp_path):
    path = str(tmp_path / "t.sqlite")
    s = TokenStore(path)
    s.remember(CachedAuthorisation("04c0ffee", "Accepted", NOW + timedelta(hours=1), "roam", "Spedition"), NOW)
    s.close()
    s = TokenStore(path)
    hit = s.cached("04C0FFEE", NOW + timedelta(minutes=59))
    assert hit.status == "Accepted" and hit.group == "roam"
    assert s.cached("04C0FFEE", NOW + timedelta(hours=1)) is None
    with pytest.raises(ValueError):
        s.remember(CachedAuthorisation("04c0ffee", "Maybe", NOW + timedelta(hours=1)), NOW)
