"""The card part's pieces that need no sockets: the loop's view of the token
store, `hubctl tokens` answers and rendering, the config-to-policy mapping
(R-A1..R-A4), and the store's bulk apply against its item-by-item check."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from edge.parts.cards import tokens as tokens_module
from edge.parts.cards.auth import AuthRejected, Authorisation, AuthPolicy, SendAuthRequest
from edge.parts.cards.part import LoopTokens, policy_from_config, token_answer
from edge.parts.cards.hubctl import hubctl_commands
from edge.core.config import parse_config
from edge.hubctl import EXIT_NOT_FOUND, EXIT_OK
from edge.hubctl_render import Style
from edge.parts.cards.tokens import CachedAuthorisation, TokenStore

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = TokenStore(str(tmp_path / "tokens.sqlite3"))
    assert s.apply({"version": 7, "kind": "full", "upsert": [
        {"uid": "04A1B2C3", "status": "Active", "type": "own", "group": "fleet-north", "reference": "truck 12"},
        {"uid": "0BADBAD0", "status": "Blocked", "type": "own"},
        {"uid": "0A0A0A0A", "status": "Active", "type": "own", "expires": "2026-03-01T00:00:00Z"},
    ]}).ok
    yield s
    s.close()


def test_r_a2_token_answer_says_where_it_came_from(store):
    held = {"version": store.version, "count": store.count}
    local = token_answer("04a1b2c3", store, NOW, held)
    assert local == {"token": "*B2C3", "list": {"version": 7, "count": 3}, "source": "local_list", "status": "Active",
                     "type": "own", "group": "fleet-north", "reference": "truck 12", "expires": None}
    assert token_answer("0A0A0A0A", store, NOW, held)["status"] == "Expired"  # R-A1: past its expiry
    store.remember(CachedAuthorisation("04C0FFEE", "Accepted", NOW + timedelta(hours=1), "roam-x"), NOW)
    cached = token_answer("04C0FFEE", store, NOW, held)
    assert (cached["source"], cached["status"], cached["group"]) == ("cache", "Accepted", "roam-x")
    assert token_answer("04C0FFEE", store, NOW + timedelta(hours=2), held)["source"] == "unknown"
    assert token_answer("04DEAD01", store, NOW, held)["source"] == "unknown"


async def test_r_a2_cloud_answer_is_served_from_memory_until_the_write_lands(store):
    """Remembering runs off the loop; a tap right after still sees the answer."""
    tasks = []
    loop_tokens = LoopTokens(store, lambda coro: tasks.append(asyncio.ensure_future(coro)))
    answer = CachedAuthorisation("04C0FFEE", "Accepted", NOW + timedelta(minutes=30), "roam-x", "truck R")
    loop_tokens.remember(answer, NOW)
    assert loop_tokens.cached("04c0ffee", NOW) == answer
    assert loop_tokens.cached("04C0FFEE", NOW + timedelta(hours=1)) is None  # expired even from memory
    await asyncio.gather(*tasks)
    assert loop_tokens._fresh == {}
    assert store.cached("04C0FFEE", NOW).group == "roam-x"  # durable: survives a restart


def test_r_a2_roaming_check_not_sent_decides_offline_at_once(store):
    """When the link drops under a request, the tap is decided without waiting
    for the timeout: an unknown card is refused by the offline policy."""
    auth = Authorisation(store, AuthPolicy(), new_request_id=lambda: "req-1", online=True)
    auth.connector_changed("C1", "Preparing", NOW)
    out = auth.card_tapped("C1", "04DEAD01", NOW)
    assert out == [SendAuthRequest("req-1", "04DEAD01", "emsp", "C1")]
    refused = auth.request_not_sent("req-1", NOW)
    assert len(refused) == 1 and isinstance(refused[0], AuthRejected)
    assert (refused[0].code, refused[0].source) == ("unknown_offline", "offline_policy")
    assert auth.request_not_sent("req-1", NOW) == []  # decided once


def test_r_c3_failed_start_frees_the_connector_for_the_next_tap(store):
    auth = Authorisation(store, AuthPolicy(debounce_s=0))
    auth.connector_changed("C1", "Preparing", NOW)
    assert type(auth.card_tapped("C1", "04A1B2C3", NOW)[0]).__name__ == "StartCharging"
    busy = auth.card_tapped("C1", "04A1B2C3", NOW + timedelta(seconds=5))
    assert busy[0].code == "connector_busy"
    auth.start_failed("C1")
    assert type(auth.card_tapped("C1", "04A1B2C3", NOW + timedelta(seconds=10))[0]).__name__ == "StartCharging"


def test_r_a1_rejection_names_its_source_and_card_type(store):
    auth = Authorisation(store, AuthPolicy())
    auth.connector_changed("C1", "Preparing", NOW)
    [blocked] = auth.card_tapped("C1", "0BADBAD0", NOW)
    assert (blocked.code, blocked.source, blocked.token_type) == ("blocked", "local_list", "own")


def test_r_a4_policy_comes_from_the_auth_section():
    cfg = parse_config({"hub": {"id": "H", "country": "NL", "vat_rate": "0.21"}, "auth": {
        "connection_timeout_s": 45, "debounce_s": 1.5, "cloud_timeout_s": 4, "unknown_offline": "accept",
        "master_cards": ["04aa0001"], "stop_on_blocked": True}})
    p = policy_from_config(cfg)
    assert (p.connection_timeout_s, p.debounce_s, p.cloud_timeout_s, p.offline_unknown, p.stop_on_blocked) == (
        45, 1.5, 4, "accept", True)
    assert p.master_uids == frozenset({"04AA0001"})


def _cli():
    [cmd] = hubctl_commands()
    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    return cmd, parser


def test_hubctl_tokens_lookup_renders_status_source_and_version():
    cmd, parser = _cli()
    args = parser.parse_args(["lookup", "04A1B2C3"])
    assert cmd.request(args) == ("tokens", {"action": "lookup", "uid": "04A1B2C3"})
    found = {"token": "*B2C3", "list": {"version": 7, "count": 3}, "source": "local_list", "status": "Blocked",
             "type": "own", "group": "fleet-north", "reference": "truck 12", "expires": None}
    text = cmd.render(found, Style(False), args)
    assert "card *B2C3: Blocked" in text and "the local token list" in text and "fleet-north" in text
    assert "version 7, 3 tokens" in text and "04A1B2C3" not in text
    assert cmd.exit_code(found) == EXIT_OK
    unknown = {"token": "*AD01", "list": {"version": 0, "count": 0}, "source": "unknown"}
    text = cmd.render(unknown, Style(False), args)
    assert "unknown here" in text and "hubctl resync" in text  # says what to do next
    assert cmd.exit_code(unknown) == EXIT_NOT_FOUND


def test_hubctl_tokens_lookup_without_uid_is_a_usage_error():
    from edge.hubctl import HubctlError

    cmd, parser = _cli()
    with pytest.raises(HubctlError) as exc:  # main() prints it, as JSON with --json
        cmd.request(parser.parse_args(["lookup"]))
    assert exc.value.exit_status == 2 and "hubctl tokens lookup 04A1B2C3" in exc.value.message


def _message(n: int, **extra) -> dict:
    return {"version": 1, "kind": "full", "upsert": [
        {"uid": f"04{i:08X}", "status": "Active" if i % 5 else "Blocked", "type": "own" if i % 3 else "emsp",
         "group": f"fleet-{i % 7}" if i % 2 else None, "reference": f"truck {i}",
         **({"expires": "2027-01-01T00:00:00Z"} if i % 11 == 0 else {})} for i in range(n)], **extra}


def test_r_a3_bulk_check_gives_the_same_rows_as_the_item_loop():
    msg = _message(500)
    bulk, _seen = tokens_module._rows_in_bulk(msg["upsert"], "delta")
    reasons: list[str] = []
    loop, _ = tokens_module._rows_item_by_item(msg["upsert"], reasons)
    assert bulk == loop and reasons == []
    for bad in ({"uid": "04 12"}, {"status": "Lost"}, {"type": "fleet"}, {"group": 5}, {"uid": "AB\nCD"},
                {"expires": "tomorrow"}, {"reference": "x" * 201}):
        upsert = [dict(item) for item in msg["upsert"]]
        upsert[3].update(bad)
        assert tokens_module._rows_in_bulk(upsert, "full") is None, bad


def test_r_a3_duplicate_in_a_full_list_is_refused_by_name_and_changes_nothing(store):
    msg = _message(50)
    msg["upsert"].append(dict(msg["upsert"][10], uid=msg["upsert"][10]["uid"].lower()))
    msg["version"] = 8
    result = store.apply(msg)
    assert not result.ok and any("appears twice" in r for r in result.reasons)
    assert store.version == 7 and store.count == 3 and store.lookup("04A1B2C3") is not None


def test_r_a3_delta_keeps_the_count_right(store):
    result = store.apply({"version": 8, "kind": "delta", "remove": ["0BADBAD0", "04FFFFFF"], "upsert": [
        {"uid": "04A1B2C3", "status": "Blocked", "type": "own"},
        {"uid": "04000001", "status": "Active", "type": "emsp"},
    ]})
    assert result.ok and store.count == 3  # one replaced, one added, one removed, one not there
    reopened = TokenStore(store.path)
    assert reopened.count == 3 and reopened.version == 8
    reopened.close()
