"""kill -9 of a process mid-call loses at most the turn in progress."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from rejoinder.store import Store

CHILD = textwrap.dedent("""
    import asyncio, sys
    from rejoinder.store import Recorder, Store

    def events(turn):
        return [{"type": "user", "turn": turn, "text": f"question {turn}"},
                {"type": "agent", "turn": turn, "text": f"answer {turn}"},
                {"type": "trace", "turn": turn, "outcome": "completed",
                 "ms_after_speech_end": {"speech_end": 0.0, "first_audio_sent": 400.0}}]

    async def main():
        store = Store(sys.argv[1])
        await store.migrate()
        recorder = Recorder(store)
        recorder.start()
        log = recorder.call("killed", transport="webrtc", agent="A")
        log.begin()
        for turn in (1, 2, 3):
            for e in events(turn):
                log.on_event(e)
            await recorder.flush()
        for e in events(4)[:2]:  # turn 4 is in progress: no trace yet
            log.on_event(e)
        print("mid-turn", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def test_kill_9_mid_call_loses_at_most_the_turn_in_progress(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/calls.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "mid-turn"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    async def read() -> dict[str, object] | None:
        store = Store(url)
        await store.migrate()
        try:
            return await store.get_call("killed")
        finally:
            await store.close()

    record = asyncio.run(read())
    assert record is not None and record["ended_at"] is None
    assert [t["user_text"] for t in record["turns"]] == [  # type: ignore[attr-defined]
        "question 1", "question 2", "question 3"]
