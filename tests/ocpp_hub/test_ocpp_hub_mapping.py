"""The OCPP charger behind the charger interface, without sockets: a real
hub core (connector machine, session ledger, card decisions) fed the OCPP
layer's events, a stand-in station recording the hub's calls (R-O2..R-O5)."""

import pytest

from edge.core.hub import Hub, Refused
from ocpp_hub_rig import OcppRig


async def test_r_o2_status_notifications_feed_the_connector_machine(rig):
    await rig.status(1, "Preparing")
    assert rig.state("C7") == "Preparing"
    await rig.status(1, "Available")
    assert rig.state("C7") == "Available"
    await rig.status(2, "Faulted", error="GroundFailure")
    assert rig.state("C8") == "Faulted"
    assert "Faulted/GroundFailure" in rig.hub.connectors["C8"].fault_reason
    await rig.status(2, "Available")
    assert rig.state("C8") == "Available"
    statuses = [(e["data"]["connector"], e["data"]["status"]) for e in rig.events("connector.status")]
    assert statuses == [("C7", "Preparing"), ("C7", "Available"), ("C8", "Faulted"), ("C8", "Available")]


async def test_r_o2_unavailable_the_hub_asked_for_stays_unavailable_one_it_did_not_is_a_fault(rig):
    rig.hub.set_availability("C7", False, "cable cut")
    await rig.settle()
    assert ("set_available", 1, False) in rig.station.calls  # ChangeAvailability Inoperative
    await rig.status(1, "Unavailable")
    assert rig.state("C7") == "Unavailable"
    await rig.status(2, "Unavailable")
    assert rig.state("C8") == "Faulted"
    assert "without the hub asking" in rig.hub.connectors["C8"].fault_reason
    rig.hub.set_availability("C7", True, "fixed")
    await rig.settle()
    assert ("set_available", 1, True) in rig.station.calls


async def test_r_o2_authorize_gets_the_readers_decision_list_blocked_and_offline_policy(rig):
    ok = await rig.authorise("04aa0001")
    assert ok.status == "Accepted"
    blocked = await rig.authorise("04BB0002")
    assert blocked.status == "Blocked"
    unknown = await rig.authorise("04CC0003")  # cloud down, [auth] unknown_offline = refuse
    assert unknown.status == "Unknown"
    accepted = rig.events("auth.accepted")
    rejected = rig.events("auth.rejected")
    assert [e["data"]["code"] for e in accepted] == ["authorised"]
    assert [e["data"]["code"] for e in rejected] == ["blocked", "unknown_offline"]
    assert all(e["data"]["token"].startswith("*") for e in accepted + rejected)


async def test_r_o2_tap_before_plug_then_station_start_is_one_own_card_session(rig):
    assert (await rig.authorise("04AA0001")).status == "Accepted"
    assert rig.sessions() == []  # Authorize names no connector: nothing held at the hub
    await rig.status(1, "Preparing")
    answer = await rig.start(1, "04AA0001", meter=1000)
    assert answer.decision.status == "Accepted" and answer.transaction_id >= 1
    await rig.status(1, "Charging")
    [s] = rig.sessions()
    assert (s.connector, s.method, s.status, s.meter_start_wh) == ("C7", "own_card", "active", 1000)
    assert s.extra["ocpp"]["started_by"] == "station"
    assert rig.state("C7") == "Charging" and rig.hub.connectors["C7"].session_id == s.id
    assert len(rig.events("session.started")) == 1


async def test_r_o3_stop_ends_the_session_with_the_stations_meter_and_signed_values(rig):
    await rig.status(1, "Preparing")
    tx = str((await rig.start(1, "04AA0001", meter=1000)).transaction_id)
    await rig.status(1, "Charging")
    await rig.meter(1, tx, 21_000, signed="OCMF|{\"RD\":[{\"RV\":21.0}]}|{\"SD\":\"30450221\"}")
    assert rig.hub.readings["C7"].energy_wh == 21_000
    await rig.stop(tx, 41_000, reason="EVDisconnected", evse=1)
    [s] = rig.sessions()
    assert (s.status, s.meter_stop_wh, s.energy_wh, s.stop_reason) == ("stopped", 41_000, 40_000, "ev_disconnected")
    assert s.signed_stop is None or s.signed_stop.startswith("OCMF")
    kept = rig.site.ocpp_store.signed_values(s.id)
    assert [k["data"][:5] for k in kept] == ["OCMF|"]
    [ev] = rig.events("session.stopped")
    assert ev["data"]["energy_wh"] == 40_000
    assert rig.hub.connectors["C7"].session_id is None
    await rig.status(1, "Finishing")
    await rig.status(1, "Available")
    assert len(rig.events("session.stopped")) == 1


async def test_r_o3_finishing_before_stop_transaction_keeps_the_stations_figures(rig):
    await rig.status(1, "Preparing")
    tx = str((await rig.start(1, "04AA0001", meter=1000)).transaction_id)
    await rig.status(1, "Charging")
    await rig.meter(1, tx, 20_000)
    await rig.status(1, "Finishing")  # some stations say Finishing first
    await rig.stop(tx, 20_500, reason="Local", evse=1)
    [s] = rig.sessions()
    assert (s.status, s.meter_stop_wh, s.energy_wh) == ("stopped", 20_500, 19_500)
    assert len(rig.events("session.stopped")) == 1


async def test_r_o3_transaction_ids_unique_and_stable_across_restarts(tmp_path):
    rig = OcppRig(tmp_path, tokens={"04AA0001": "Active"})
    first = (await rig.start(1, "04AA0001", meter=1)).transaction_id
    second = (await rig.start(2, "04AA0001", meter=2)).transaction_id
    assert first != second
    rig.close()
    again = OcppRig(tmp_path)
    third = (await again.start(1, "04AA0001", meter=3)).transaction_id
    assert third > max(first, second)
    assert again.charger.transactions == {"C7": str(third), "C8": str(second)}  # open ones known after restart
    again.close()


async def test_r_o3_a_replayed_start_is_answered_the_same_and_recorded_once(rig):
    await rig.status(1, "Preparing")
    at = rig.clock.now()
    a = await rig.start(1, "04AA0001", meter=500, at=at)
    b = await rig.start(1, "04AA0001", meter=500, at=at)  # the answer was lost: the station sends it again
    assert a == b
    assert len(rig.sessions()) == 1 and len(rig.events("session.started")) == 1
    tx = str(a.transaction_id)
    await rig.stop(tx, 900, at=at)
    await rig.stop(tx, 900, at=at)
    assert len(rig.events("session.stopped")) == 1


async def test_r_o3_blocked_card_started_while_the_hub_was_down_is_recorded_then_stopped(rig):
    answer = await rig.start(1, "04BB0002", meter=700, offline=True)
    await rig.settle()
    assert answer.decision.status == "Blocked"
    [s] = rig.sessions()
    assert s.status == "active" and s.extra["ocpp"]["offline"] is True
    assert ("remote_stop", str(answer.transaction_id)) in rig.station.calls
    assert rig.events("auth.rejected")[-1]["data"]["code"] == "blocked"
    await rig.stop(str(answer.transaction_id), 900, reason="Remote", evse=1)
    [s] = rig.sessions()
    assert (s.status, s.stop_reason, s.energy_wh) == ("stopped", "remote", 200)


async def test_r_o3_a_stop_for_an_unknown_transaction_is_recorded_not_refused(rig):
    assert await rig.stop("-1", 1234, reason="Local") is None
    rec = rig.site.ocpp_store.transaction("CS1", "-1")
    assert rec is not None and rec.ended and rec.session_id is None


async def test_r_o2_remote_start_binds_the_hub_session_to_the_stations_transaction(rig):
    await rig.status(1, "Preparing")
    s = await rig.hub.start_session("C7", method="bank_card", token="ref-77", token_masked="*0077")
    method, evse, id_tag, rid = rig.station.calls[-1][:4]
    assert (method, evse) == ("remote_start", 1) and id_tag.startswith("HUB")
    answer = await rig.start(1, id_tag, meter=3000, remote_start_id=rid)
    assert answer.decision.status == "Accepted"
    [got] = rig.sessions()
    assert got.id == s.id and got.status == "active" and got.method == "bank_card" and got.meter_start_wh == 3000
    await rig.status(1, "Charging")
    assert rig.state("C7") == "Charging"
    # cost cap / technician / cloud: a remote stop of that transaction
    await rig.hub.stop_session(s.id, reason="cost_cap")
    assert rig.station.calls[-1] == ("remote_stop", str(answer.transaction_id))
    await rig.stop(str(answer.transaction_id), 9000, reason="Remote", evse=1)
    got = rig.hub.sessions.get(s.id)
    assert (got.status, got.stop_reason, got.energy_wh) == ("stopped", "cost_cap", 6000)


async def test_r_o2_rejected_remote_start_fails_the_session_and_is_a_device_event(rig):
    await rig.status(1, "Preparing")
    rig.station.answers["remote_start"] = "Rejected"
    with pytest.raises(Refused):
        await rig.hub.start_session("C7", method="bank_card")
    [s] = rig.sessions()
    assert s.status == "failed"
    [ev] = rig.events("device.command_failed")
    assert ev["data"]["command"] == "remote_start" and ev["data"]["outcome"] == "Rejected"
    assert rig.charger.pending == {}


async def test_race_unplug_during_start_fails_the_session_and_a_late_transaction_is_its_own(rig):
    await rig.status(1, "Preparing")
    s = await rig.hub.start_session("C7", method="bank_card")
    id_tag = rig.station.calls[-1][2]
    await rig.status(1, "Available")  # the truck left before the station started
    assert rig.hub.sessions.get(s.id).status == "failed"
    assert rig.charger.pending == {}
    answer = await rig.start(1, id_tag, meter=10)  # the station started anyway: recorded, not refused
    sessions = rig.sessions()
    assert len(sessions) == 2 and answer.transaction_id is not None
    assert rig.hub.sessions.get(s.id).status == "failed"


async def test_race_stop_before_the_transaction_exists_stops_it_when_it_starts(rig):
    await rig.status(1, "Preparing")
    s = await rig.hub.start_session("C7", method="bank_card")
    rid = rig.station.calls[-1][3]
    await rig.charger.stop("C7", session_id=s.id)
    assert rig.charger.pending["C7"].stop_when_started
    answer = await rig.start(1, rig.station.calls[-1][2], meter=10, remote_start_id=rid)
    await rig.settle()
    assert rig.station.calls[-1] == ("remote_stop", str(answer.transaction_id))


async def test_race_stop_during_reconnect_is_sent_when_the_station_is_back(rig):
    await rig.status(1, "Preparing")
    tx = str((await rig.start(1, "04AA0001", meter=1)).transaction_id)
    await rig.status(1, "Charging")
    s = rig.sessions()[0]
    rig.station.connected = False
    with pytest.raises(Refused, match="sent when it reconnects"):
        await rig.hub.stop_session(s.id, reason="technician")
    assert "remote_stop" not in rig.station.names()
    rig.station.connected = True
    await rig.connect()
    await rig.settle()
    assert ("remote_stop", tx) in rig.station.calls
    assert rig.charger.owed_stops == set()


async def test_r_o5_offline_makes_connectors_unavailable_and_reconnection_brings_them_back(rig):
    await rig.status(1, "Preparing")
    await rig.start(1, "04AA0001", meter=1)
    await rig.status(1, "Charging")
    rig.charger._lose("charger offline", "no frame for 95 s")
    assert rig.state("C8") == "Unavailable" and rig.hub.connectors["C8"].admin_unavailable == "charger offline"
    assert rig.state("C7") == "Faulted" and rig.hub.connectors["C7"].fault_reason == "charger offline"
    [fault] = rig.events("device.fault")
    assert fault["data"]["device"] == "CS1"
    rig.station.calls.clear()
    await rig.connect()
    await rig.settle()
    assert rig.state("C8") == "Available"
    assert rig.state("C7") == "Charging"  # its last reading until the triggered status arrives
    assert ("trigger_status", 1) in rig.station.calls and ("trigger_status", 2) in rig.station.calls
    assert ("trigger_meter_values", 1) in rig.station.calls  # in a transaction
    assert len(rig.events("device.recovered")) == 1


async def test_r_o5_the_offline_clock_in_the_chargers_loop(rig):
    import asyncio

    rig.hub.cfg.ocpp.__dict__["offline_after_s"] = 0.2  # a short clock for the test
    rig.station._silent = 5.0
    rig.site._starting = asyncio.get_running_loop().create_future()
    rig.site._starting.set_result(None)
    task = asyncio.create_task(rig.charger.run(rig.hub))
    await asyncio.sleep(0.3)
    task.cancel()
    assert rig.state("C7") == "Unavailable" and rig.charger.lost_reason == "charger offline"


async def test_boot_data_kept_and_shown_configuration_sent(rig):
    await rig.boot()
    await rig.settle()
    view = rig.charger.view()
    assert (view["vendor"], view["model"], view["firmware"], view["protocol"]) == ("Kempower", "T500", "1.2.3",
                                                                                   "ocpp1.6")
    assert ("set_heartbeat_interval", 30) in rig.station.calls and ("set_meter_interval", 60) in rig.station.calls
    rig.close()
    again = OcppRig(rig.tmp)
    assert again.charger.view()["serial"] == "SN-1"  # kept across restarts
    again.close()


async def test_r_e4_fail_safe_and_tx_limits(rig):
    await rig.charger.set_fail_safe_limit(150_000)
    limits = [c[1] for c in rig.station.calls if c[0] == "set_power_limit"]
    assert [(p.purpose, p.watts, p.evse) for p in limits] == [("tx_default", 150_000.0, 0),
                                                              ("station_max", 300_000.0, 0)]
    await rig.status(1, "Preparing")
    tx = str((await rig.start(1, "04AA0001", meter=1)).transaction_id)
    await rig.charger.set_power_limit("C7", 90_000)
    p = rig.station.calls[-1][1]
    assert (p.purpose, p.watts, p.evse, p.transaction_id) == ("tx", 90_000.0, 1, tx)
    await rig.charger.set_power_limit("C8", 50_000)
    p = rig.station.calls[-1][1]
    assert (p.purpose, p.evse) == ("tx_default", 2)
    rig.station.answers["set_power_limit"] = "NotSupported"
    from edge.core.charger import CommandFailed
    with pytest.raises(CommandFailed) as info:
        await rig.charger.set_power_limit("C7", 80_000)
    assert info.value.outcome == "not_supported"


async def test_r_c5_unlock_through_the_hubs_unlock_path(rig):
    assert await rig.hub.unlock("C7") is True
    assert rig.station.calls[-1] == ("unlock", 1, 1)
    rig.station.answers["unlock"] = "Rejected"
    assert await rig.hub.unlock("C7") is False


async def test_r_b3_a_held_bay_is_reserved_at_the_station_and_cancelled_after(rig):
    rig.hub.reserve_connector("C8", "bk-42")
    await rig.settle()
    reserve = [c for c in rig.station.calls if c[0] == "reserve"]
    assert reserve and reserve[0][1] == 2
    rig.hub.release_connector("C8", "bk-42")
    await rig.settle()
    assert rig.station.calls[-1][0] == "cancel_reservation"


async def test_2_0_1_transaction_ids_and_seq_nos_kept_gaps_noticed_replays_once(rig201):
    rig = rig201
    await rig.status(1, "Preparing")
    answer = await rig.start(1, "04AA0001", meter=100, tx="TX-9", seq=0)
    assert answer.transaction_id is None and answer.decision.status == "Accepted"
    await rig.update("TX-9", 1)
    await rig.update("TX-9", 4, missing=(2, 3))
    await rig.update("TX-9", 4, missing=(2, 3))  # a replay: recorded once
    [gap] = rig.events("device.transaction_gap")
    assert gap["data"]["missing"] == [2, 3]
    assert rig.site.ocpp_store.transaction("CS1", "TX-9").last_seq == 4
    await rig.stop("TX-9", 5100, seq=5, evse=1, reason="StoppedByEV")
    [s] = rig.sessions()
    assert (s.status, s.energy_wh, s.stop_reason) == ("stopped", 5000, "ev_finished")


def test_hub_builds_ocpp_chargers_through_protocols(tmp_path):
    rig = OcppRig(tmp_path)
    from edge.core.charger import PROTOCOLS, Charger, PowerLimits, Reservations
    assert {"ocpp1.6", "ocpp2.0.1"} <= set(PROTOCOLS)
    ch = rig.hub.chargers["CS1"]
    assert isinstance(ch, Charger) and isinstance(ch, Reservations) and isinstance(ch, PowerLimits)
    assert rig.hub.places["C8"].index == 2 and isinstance(rig.hub, Hub)
    rig.close()


async def test_every_event_of_an_ocpp_day_follows_its_schema(rig):
    from edge.cloud.envelope import validate_event
    from drivers.ocpp.events import HandshakeRefused, Notification

    await rig.boot()
    assert (await rig.authorise("04BB0002")).status == "Blocked"
    await rig.status(1, "Preparing")
    tx = str((await rig.start(1, "04AA0001", meter=10)).transaction_id)
    await rig.status(1, "Charging")
    await rig.stop(tx, 5000, evse=1)
    rig.station.answers["unlock"] = "Rejected"
    await rig.hub.unlock("C8")
    await rig.site.handshake_refused(HandshakeRefused("CS9", "10.0.0.9:4000", 401, "unknown station", rig.clock.now()))
    await rig.site.notification(Notification("CS1", "security", "SecurityEventNotification",
                                             "SettingSystemTime at 2026-12-04", True, rig.clock.now()))
    rig.charger._lose("charger offline", "no frame for 95 s")
    await rig.connect()
    await rig.settle()
    events = rig.events()
    types = {e["type"] for e in events}
    assert {"device.command_failed", "device.handshake_refused", "device.notification", "auth.rejected",
            "session.started", "session.stopped", "device.fault", "device.recovered"} <= types
    for e in events:
        validate_event(e)
    assert "s3cret" not in str(events)


async def test_r_b3_r_o2_booked_start_uses_the_reservations_tag_so_the_station_lets_it_start(rig):
    rig.hub.reserve_connector("C8", "bk-42")
    await rig.settle()
    [reserve] = [c for c in rig.station.calls if c[0] == "reserve"]
    tag = reserve[3][:20].upper()
    await rig.status(2, "Preparing")  # the booked truck plugs in: the hub's hold becomes Preparing
    assert rig.state("C8") == "Preparing"
    s = await rig.hub.start_session("C8", method="remote", booking_id="bk-42")
    method, evse, id_tag, rid = rig.station.calls[-1][:4]
    assert (method, evse, id_tag) == ("remote_start", 2, tag)
    await rig.start(2, id_tag, meter=50, remote_start_id=rid)
    [got] = rig.sessions()
    assert got.id == s.id and got.booking_id == "bk-42" and got.status == "active"
    assert "cancel_reservation" not in rig.station.names()  # the station's reservation ends with its transaction


async def test_a_limit_the_station_keeps_refusing_is_evented_once_not_at_every_step(rig):
    from edge.core.charger import CommandFailed

    rig.station.answers["set_power_limit"] = "NotSupported"
    for _ in range(5):
        with pytest.raises(CommandFailed):
            await rig.charger.set_power_limit("C7", 80_000)
    assert len(rig.events("device.command_failed")) == 1
