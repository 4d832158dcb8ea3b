"""The control socket protocol (R-T1): versioned, one request per line,
bad requests refused without effect, peers outside the group refused."""

import asyncio
import json
import os

from edge.core.control import Caller, ControlError, ControlServer, caller_allowed, request


async def serve(tmp_path, handlers):
    server = ControlServer(tmp_path / "ctl.sock", "no-such-group-xyz", handlers)
    await server.start()
    return server


async def test_request_reply_progress_and_errors(tmp_path):
    calls = []

    async def echo(args, caller, progress):
        calls.append(args)
        await progress({"done": 1, "of": 2})
        return {"echo": args, "user": caller.user}

    async def refuse(args, caller, progress):
        raise ControlError("refused", "not now: try later")

    server = await serve(tmp_path, {"echo": echo, "refuse": refuse})
    try:
        seen = []
        resp = await request(tmp_path / "ctl.sock", "echo", {"x": 1}, on_progress=seen.append)
        assert resp["ok"] and resp["data"]["echo"] == {"x": 1}
        assert seen == [{"done": 1, "of": 2}]
        resp = await request(tmp_path / "ctl.sock", "refuse")
        assert resp == {"v": 1, "ok": False, "code": "refused", "message": "not now: try later"}
        resp = await request(tmp_path / "ctl.sock", "nope")
        assert resp["code"] == "unknown_command"
        # The socket is owner/group only.
        assert oct(os.stat(tmp_path / "ctl.sock").st_mode & 0o777) == "0o660"
    finally:
        await server.stop()
    assert calls == [{"x": 1}]


async def test_malformed_requests_change_nothing(tmp_path):
    calls = []

    async def act(args, caller, progress):
        calls.append(args)
        return {}

    server = await serve(tmp_path, {"act": act})
    try:
        for raw in [b"not json\n", b"[1,2]\n", b'{"v":2,"cmd":"act"}\n', b'{"v":1,"cmd":5}\n', b'{"v":1,"cmd":"act","args":[]}\n']:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "ctl.sock"))
            writer.write(raw)
            await writer.drain()
            resp = json.loads(await reader.readline())
            writer.close()
            assert resp["ok"] is False and resp["code"] in ("bad_request", "version"), raw
            assert resp["message"]
    finally:
        await server.stop()
    assert calls == []


def test_r_t1_users_outside_the_group_are_refused():
    assert caller_allowed(Caller(0, 0, 1), "whatever")
    assert caller_allowed(Caller(os.getuid(), os.getgid(), 1), "whatever")
    stranger = Caller(54321, 54321, 1)
    assert not caller_allowed(stranger, "no-such-group-xyz")


async def test_a_reply_reporting_a_change_waits_until_the_change_is_on_disk_R_D2(tmp_path):
    """The daemon answers "done" only once the change is durable; a command
    that changed nothing answers without waiting for the disk."""
    import threading

    from edge.core.daemon import durable_replies
    from edge.core.store import Store

    held = threading.Event()
    held.set()

    def fsync(fd):
        held.wait(10)
        os.fsync(fd)

    store = Store(tmp_path / "state", fsync=fsync)
    store.db.execute("CREATE TABLE t(x)")

    async def change(args, caller, progress):
        with store.transaction() as db:
            db.execute("INSERT INTO t VALUES (1)")
        return {"message": "done"}

    async def look(args, caller, progress):
        return {"rows": store.db.execute("SELECT count(*) FROM t").fetchone()[0]}

    server = await serve(tmp_path, durable_replies({"change": change, "look": look}, store))
    try:
        held.clear()  # the card is slow
        answer = asyncio.ensure_future(request(tmp_path / "ctl.sock", "change", {}))
        await asyncio.sleep(0.3)
        assert not answer.done(), "the reply said done before the change was on disk"
        looked = await asyncio.wait_for(request(tmp_path / "ctl.sock", "look", {}), 5)
        assert looked["ok"] and looked["data"] == {"rows": 1}
        held.set()
        assert (await asyncio.wait_for(answer, 5))["data"] == {"message": "done"}
        assert store.durable_commits == store.commits
    finally:
        held.set()
        await server.stop()
        store.close()
