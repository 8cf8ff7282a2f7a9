"""Reading every subject of a stream takes more than one page once it holds over 100,000 subjects."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js import api

from pdcore.team.link import stream_subjects

SUBJECTS = 100_050  # the server answers at most 100,000 subjects per stream info


def test_stream_subjects_reads_every_page(nats_server):
    async def run() -> tuple[int, int]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(name="pages", subjects=["pd.pages.notes.>"]))
            for i in range(SUBJECTS):
                await nc.publish(f"pd.pages.notes.session-{i:08d}", b"x")
            await nc.flush()
            for _ in range(200):  # bounded: the server stores them within a few seconds
                if (await js.stream_info("pages")).state.messages == SUBJECTS:
                    break
                await asyncio.sleep(0.05)
            first_page = len((await js.stream_info("pages", subjects_filter="pd.pages.notes.>")).state.subjects)
            seen = [s async for s in stream_subjects(nc, "pages", "pd.pages.notes.>", 10)]
            assert len(seen) == len(set(seen))
            with pytest.raises(nats.js.errors.NotFoundError):
                [s async for s in stream_subjects(nc, "no-such-stream", ">", 10)]
            return first_page, len(seen)
        finally:
            await nc.close()

    first_page, total = asyncio.run(run())
    assert first_page < SUBJECTS  # what nats-py's stream_info alone would have read
    assert total == SUBJECTS
