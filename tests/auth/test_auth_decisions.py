"""Decisions of edge.parts.cards.auth.Authorisation, driven by events without I/O."""

from datetime import datetime, timedelta, timezone

from edge.parts.cards.auth import (
    AuthAccepted, AuthorisationLapsed, AuthorisedAwaitingPlug, SendAuthRequest,
    StartCharging, StopSession, TokenBlockedInSession,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


OWN = "04A1B2C3"
SAME_GROUP = "04D4E5F6"
OTHER = "04000001"
ROAMING = "04C0FFEE"


def kinds(decisions):
    return [type(d).__name__ for d in decisions]


def charging(auth, connector="c1", uid=OWN, session="s1", t=0):
    """Plug, tap, and let the charger report the session as charging."""
    auth.connector_changed(connector, "Preparing", at(t))
    out = auth.card_tapped(connector, uid, at(t + 1))
    assert isinstance(out[0], StartCharging)
    auth.connector_changed(connector, "Charging", at(t + 2), session_id=session, token_uid=uid)


# -- R-C3: start on the plugged connector, or authorise before plugging ---------------------
def test_r_c3_tap_on_preparing_connector_starts_charging(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", "04a1b2c3", at(1))
    assert out[0] == StartCharging("c1", OWN, "own_card", "fleet-north", "truck NB-1")
    assert isinstance(out[1], AuthAccepted) and out[1].code == "start" and out[1].source == "local_list"


def test_r_c3_tap_before_plug_then_plug_within_timeout_starts(auth):
    out = auth.card_tapped("c1", OWN, at(0))
    assert out[0] == AuthorisedAwaitingPlug("c1", OWN, at(60))
    assert out[1].code == "authorised"
    out = auth.connector_changed("c1", "Preparing", at(59))
    assert out == [StartCharging("c1", OWN, "own_card", "fleet-north", "truck NB-1")]


def test_r_c3_tap_before_plug_lapses_after_connection_timeout(auth):
    auth.card_tapped("c1", OWN, at(0))
    assert auth.tick(at(59)) == []
    out = auth.tick(at(60))
    assert kinds(out) == ["AuthorisationLapsed"] and out[0].token_uid == OWN
    # Plugging in afterwards starts nothing: the authorisation is gone.
    assert auth.connector_changed("c1", "Preparing", at(61)) == []


def test_r_c3_plug_after_timeout_without_tick_starts_nothing(auth):
    auth.card_tapped("c1", OWN, at(0))
    out = auth.connector_changed("c1", "Preparing", at(61))
    assert kinds(out) == ["AuthorisationLapsed"]


def test_r_c3_tap_unplug_tap_again_authorises_again(auth):
    charging(auth)
    auth.connector_changed("c1", "Finishing", at(100))
    auth.connector_changed("c1", "Available", at(110))  # truck unplugged
    out = auth.card_tapped("c1", OWN, at(120))
    assert kinds(out) == ["AuthorisedAwaitingPlug", "AuthAccepted"]
    assert kinds(auth.connector_changed("c1", "Preparing", at(130))) == ["StartCharging"]


def test_r_c3_tap_on_faulted_connector_refused(auth):
    auth.connector_changed("c1", "Faulted", at(0))
    out = auth.card_tapped("c1", OWN, at(1))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "connector_unavailable"


def test_r_c3_connector_faulting_ends_preauthorisation(auth):
    auth.card_tapped("c1", OWN, at(0))
    out = auth.connector_changed("c1", "Faulted", at(5))
    assert kinds(out) == ["AuthorisationLapsed"]
    auth.connector_changed("c1", "Available", at(6))
    assert auth.connector_changed("c1", "Preparing", at(7)) == []


# -- R-C4: who may stop --------------------------------------------------------------------
def test_r_c4_same_card_stops_its_session(auth):
    charging(auth)
    out = auth.card_tapped("c1", OWN, at(100))
    assert out[0] == StopSession("s1", "c1", OWN, "card")
    assert out[1].code == "stop_same_card"


def test_r_c4_another_card_does_not_stop(auth):
    charging(auth)
    out = auth.card_tapped("c1", OTHER, at(100))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "not_session_card"
    assert "tap the card that started it" in out[0].reason


def test_r_c4_master_card_stops(store, make_auth):
    auth = make_auth(store, master_uids=frozenset({"0fffffff"}))
    charging(auth)
    out = auth.card_tapped("c1", "0FFFFFFF", at(100))
    assert out[0] == StopSession("s1", "c1", "0FFFFFFF", "card") and out[1].code == "stop_master"


def test_r_c4_group_card_stops_unless_policy_forbids(store, make_auth):
    auth = make_auth(store)
    charging(auth)
    out = auth.card_tapped("c1", SAME_GROUP, at(100))
    assert isinstance(out[0], StopSession) and out[1].code == "stop_group"

    strict = make_auth(store, group_may_stop=False)
    charging(strict)
    out = strict.card_tapped("c1", SAME_GROUP, at(100))
    assert out[0].code == "not_session_card"


def test_r_c4_blocked_card_of_same_group_does_not_stop(store, auth):
    charging(auth)
    store.apply({"version": 2, "kind": "delta",
                 "upsert": [{"uid": SAME_GROUP, "status": "Blocked", "type": "own", "group": "fleet-north"}]})
    out = auth.card_tapped("c1", SAME_GROUP, at(100))
    assert kinds(out) == ["AuthRejected"]


# -- R-A1: blocked / expired ----------------------------------------------------------------
def test_r_a1_blocked_and_expired_refused(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    assert auth.card_tapped("c1", "0BADBAD0", at(1))[0].code == "blocked"
    assert auth.card_tapped("c1", "0E0E0E0E", at(2))[0].code == "expired"
    # A passed expiry date makes an Active card expired.
    assert auth.card_tapped("c1", "0A0A0A0A", at(3))[0].code == "expired"


def test_r_a1_blocked_refused_offline_and_online_without_asking_cloud(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    assert kinds(auth.card_tapped("c1", "0BADBAD0", at(1))) == ["AuthRejected"]
    auth.cloud_link(True, at(2))
    out = auth.card_tapped("c1", "0BADBAD0", at(10))
    assert kinds(out) == ["AuthRejected"], "a blocked card never goes to the cloud"


def test_r_a1_blocked_while_charging_session_goes_on_by_default(store, auth):
    charging(auth)
    store.apply({"version": 2, "kind": "delta", "upsert": [{"uid": OWN, "status": "Blocked", "type": "own"}]})
    out = auth.tokens_changed(at(50))
    assert out == [TokenBlockedInSession("s1", "c1", OWN, "Blocked", stopping=False)]


def test_r_a1_blocked_while_charging_stops_with_stop_on_blocked(store, make_auth):
    auth = make_auth(store, stop_on_blocked=True)
    charging(auth)
    store.apply({"version": 2, "kind": "delta", "upsert": [{"uid": OWN, "status": "Blocked", "type": "own"}]})
    out = auth.tokens_changed(at(50))
    assert out[1] == StopSession("s1", "c1", OWN, "blocked")


# -- R-A2: roaming cards, the cloud, the cache, offline --------------------------------------
def test_r_a2_roaming_card_checked_with_cloud_then_started(auth):
    auth.cloud_link(True, at(0))
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", ROAMING, at(1))
    assert out == [SendAuthRequest("req-1", ROAMING, "emsp", "c1")]
    out = auth.cloud_answer("req-1", "Accepted", at(2), group="roam-y", reference="Spedition X")
    assert out[0] == StartCharging("c1", ROAMING, "emsp_card", "roam-y", "Spedition X")
    assert out[1].source == "cloud" and out[1].offline is False


def test_r_a2_emsp_token_on_local_list_still_checked_online(auth):
    auth.cloud_link(True, at(0))
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", "04EEEE01", at(1))
    assert out == [SendAuthRequest("req-1", "04EEEE01", "emsp", "c1")]
    assert auth.cloud_answer("req-1", "Blocked", at(2))[0].code == "blocked"


def test_r_a2_cloud_answer_cached_and_used_offline(auth, store):
    auth.cloud_link(True, at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    auth.cloud_answer("req-1", "Accepted", at(2), expires=at(3600))
    auth.connector_changed("c1", "Preparing", at(3))  # starts from the pre-authorisation
    auth.cloud_link(False, at(10))
    auth.connector_changed("c2", "Preparing", at(20))
    out = auth.card_tapped("c2", ROAMING, at(20))
    assert isinstance(out[0], StartCharging) and out[1].source == "cache" and out[1].offline


def test_r_a2_cache_expiry(auth):
    auth.cloud_link(True, at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    auth.cloud_answer("req-1", "Accepted", at(2), expires=at(300))
    auth.cloud_link(False, at(10))
    auth.connector_changed("c2", "Preparing", at(400))
    out = auth.card_tapped("c2", ROAMING, at(400))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "unknown_offline"


def test_r_a2_cached_refusal_refuses_offline(auth):
    auth.cloud_link(True, at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    auth.cloud_answer("req-1", "Invalid", at(2))
    auth.cloud_link(False, at(10))
    out = auth.card_tapped("c1", ROAMING, at(20))
    assert out[0].code == "invalid" and "cache" in out[0].reason


def test_r_a2_cloud_timeout_then_late_answer_ignored_for_tap_but_cached(auth):
    auth.cloud_link(True, at(0))
    auth.connector_changed("c1", "Preparing", at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    assert auth.tick(at(5.9)) == []
    out = auth.tick(at(6))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "cloud_timeout"
    assert auth.cloud_answer("req-1", "Accepted", at(7), expires=at(3600)) == [], "late: nothing starts"
    auth.cloud_link(False, at(8))
    out = auth.card_tapped("c1", ROAMING, at(20))
    assert isinstance(out[0], StartCharging) and out[1].source == "cache"


def test_r_a2_timeout_falls_back_to_local_emsp_list(auth):
    auth.cloud_link(True, at(0))
    auth.connector_changed("c1", "Preparing", at(0))
    auth.card_tapped("c1", "04EEEE01", at(1))
    out = auth.tick(at(7))
    assert isinstance(out[0], StartCharging) and out[1].offline


def test_r_a2_link_down_decides_pending_checks_offline(auth):
    auth.cloud_link(True, at(0))
    auth.connector_changed("c1", "Preparing", at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    out = auth.cloud_link(False, at(2))
    assert out[0].code == "unknown_offline"


def test_r_a2_offline_unknown_refused_by_default(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", ROAMING, at(1))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "unknown_offline"
    assert "try again later or pay at the terminal" in out[0].reason


def test_r_a2_offline_unknown_accepted_by_policy(store, make_auth):
    auth = make_auth(store, offline_unknown="accept")
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", ROAMING, at(1))
    assert out[0] == StartCharging("c1", ROAMING, "emsp_card", None, None)
    assert out[1].source == "offline_policy" and out[1].offline


def test_r_a2_own_card_offline_decided_by_local_list(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    out = auth.card_tapped("c1", OWN, at(1))
    assert isinstance(out[0], StartCharging) and out[1].offline


def test_r_a2_unreadable_cloud_status_refuses(auth):
    auth.cloud_link(True, at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    out = auth.cloud_answer("req-1", "Maybe", at(2))
    assert out[0].code == "invalid"


def test_r_a2_second_card_while_check_pending_is_told_to_wait(auth):
    auth.cloud_link(True, at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    out = auth.card_tapped("c1", OWN, at(2))
    assert out[0].code == "check_in_progress"


# -- R-A4: debounce -------------------------------------------------------------------------
def test_r_a4_two_readers_one_card_counts_once(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    auth.connector_changed("c2", "Preparing", at(0))
    first = auth.card_tapped("c1", OWN, at(1))
    second = auth.card_tapped("c2", OWN, at(1.3))
    assert kinds(first) == ["StartCharging", "AuthAccepted"] and second == []


def test_r_a4_held_card_does_not_stop_the_session_it_just_started(auth):
    auth.connector_changed("c1", "Preparing", at(0))
    auth.card_tapped("c1", OWN, at(1))
    auth.connector_changed("c1", "Charging", at(1.5), session_id="s1", token_uid=OWN)
    assert auth.card_tapped("c1", OWN, at(2)) == []
    assert isinstance(auth.card_tapped("c1", OWN, at(10))[0], StopSession)


# -- R-B3: reserved connectors --------------------------------------------------------------
def test_r_b3_reserved_connector_refuses_other_tokens(auth):
    auth.connector_changed("c1", "Reserved", at(0))
    auth.reservation("c1", "04D4E5F6", None)
    out = auth.card_tapped("c1", OWN, at(1))
    assert kinds(out) == ["AuthRejected"] and out[0].code == "reserved"
    out = auth.card_tapped("c1", "04d4e5f6", at(5))
    assert kinds(out) == ["AuthorisedAwaitingPlug", "AuthAccepted"]


def test_r_b3_reserved_for_group_admits_group_card(auth):
    auth.connector_changed("c1", "Reserved", at(0))
    auth.reservation("c1", None, "fleet-north")
    assert kinds(auth.card_tapped("c1", OWN, at(1)))[0] == "AuthorisedAwaitingPlug"
    assert auth.card_tapped("c1", OTHER, at(5))[0].code == "reserved"


def test_r_b3_reservation_checked_after_cloud_answer(auth):
    auth.cloud_link(True, at(0))
    auth.reservation("c1", None, "roam-y")
    auth.connector_changed("c1", "Reserved", at(0))
    auth.card_tapped("c1", ROAMING, at(1))
    out = auth.cloud_answer("req-1", "Accepted", at(2), group="roam-z")
    assert out[0].code == "reserved"


def test_r_b3_reservation_released_admits_anyone(auth):
    auth.reservation("c1", "04D4E5F6", None)
    auth.reservation("c1", None, None)
    assert isinstance(auth.card_tapped("c1", OWN, at(1))[0], AuthorisedAwaitingPlug)


def test_session_found_after_restart_knows_its_group(auth):
    """R-C9 with R-C4: a session re-read from the charger keeps its card's group."""
    auth.connector_changed("c1", "Charging", at(0), session_id="s9", token_uid=OWN)
    out = auth.card_tapped("c1", SAME_GROUP, at(5))
    assert out[1].code == "stop_group"


def test_lapsed_decision_names_the_card(auth):
    auth.card_tapped("c1", OWN, at(0))
    out = auth.tick(at(0) + timedelta(seconds=61))
    assert out == [AuthorisationLapsed("c1", OWN, "the truck was not plugged in within the connection timeout")]
