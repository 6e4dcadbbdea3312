"""Drive GET /v1/realtime?intent=transcription with the official openai
client's realtime connection.

Run by gateway/tests/realtime_ws.rs: BASE_URL and TOKEN come from the
environment, the argument is raw 24 kHz mono s16le speech. Two sessions:
server VAD (the audio streamed at real-time pace, then a pause), and
turn_detection null with one client commit. Prints one JSON object with the
events each session received.
"""

import asyncio
import base64
import json
import os
import sys

from openai import AsyncOpenAI

FRAME = 4800  # 100 ms of 24 kHz s16le


async def session(pcm: bytes, manual: bool) -> dict:
    base = os.environ["BASE_URL"]
    client = AsyncOpenAI(
        base_url=base + "/v1",
        websocket_base_url=base.replace("http", "ws", 1) + "/v1",
        api_key=os.environ["TOKEN"],
        max_retries=0,
    )
    events = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}, max_retries=0) as conn:
        session = {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        }
        if manual:
            session["turn_detection"] = None
        kind = "transcription_session.update" if manual else "session.update"
        await conn.send({"type": kind, "session": session})

        async def read():
            while True:
                event = await conn.recv()
                events.append(event.to_dict())

        reader = asyncio.create_task(read())
        for i in range(0, len(pcm), FRAME):
            chunk = base64.b64encode(pcm[i : i + FRAME]).decode()
            await conn.send({"type": "input_audio_buffer.append", "audio": chunk})
            await asyncio.sleep(0.1)
        if manual:
            await conn.send({"type": "input_audio_buffer.commit"})
        else:
            # A pause after the last words, as a microphone sends.
            silence = base64.b64encode(bytes(FRAME)).decode()
            for _ in range(15):
                await conn.send({"type": "input_audio_buffer.append", "audio": silence})
                await asyncio.sleep(0.1)
        # Until the transcripts are in: quiet for 3 s (at most 30 s).
        seen = -1
        for _ in range(30):
            await asyncio.sleep(1)
            done = [e for e in events if e["type"].endswith("transcription.completed")]
            if done and len(events) == seen:
                break
            seen = len(events)
        # A malformed append is an error event, and the session goes on.
        await conn.send({"type": "input_audio_buffer.append", "audio": "!!not base64!!"})
        await asyncio.sleep(0.5)
        reader.cancel()
    return {"events": events}


async def main() -> int:
    pcm = open(sys.argv[1], "rb").read()
    out = {"vad": await session(pcm, False), "manual": await session(pcm, True)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
