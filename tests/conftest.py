import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import OPEN_CONNECTIONS


@pytest.fixture(autouse=True)
async def close_raw_connections() -> AsyncIterator[None]:
    yield
    while OPEN_CONNECTIONS:
        writer = OPEN_CONNECTIONS.pop()
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1)
