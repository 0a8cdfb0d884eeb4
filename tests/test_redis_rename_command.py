"""A Redis whose configuration renames or disables (``rename-command X ""``) a command the store uses: one
line naming that command, not the server's reply (a script's hash and line, or the command's arguments)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from engine import open_store
from engine.models import StoreError
from tests.fixtures_engine import queued_record
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


class RenamedServer(RedisServer):
    def __init__(self, directory: Path, command: str) -> None:
        super().__init__(directory)
        self.command = command

    def args(self) -> list[str]:
        return [*super().args(), "--rename-command", self.command, ""]


@pytest.mark.parametrize(
    "command",
    [
        "PUBLISH",  # checked before a script's writes: "invalid command passed to redis.acl_check_cmd() script: ..."
        "ZADD",  # run by a script: "Unknown Redis command called from script script: <sha>, on @user_script:N"
        "EVALSHA",  # sent: "unknown command 'EVALSHA', with args beginning with: <sha> <keys> ..."
        "HMGET",  # sent when the store opens
    ],
)
async def test_a_command_the_server_lacks_is_named_in_one_line(
    redis_factory: Callable[..., RedisServer], tmp_path: Path, command: str
) -> None:
    redis_factory()  # the fixture's checks (redis-server installed) and cleanup
    server = RenamedServer(tmp_path / f"renamed-{command}", command)
    server.start()
    try:
        store = open_store(server.url, namespace="rn", checkpoint_mirror=None)
        with pytest.raises(StoreError) as caught:
            async with store:
                await store.create(queued_record())
    finally:
        server.kill()
    text = str(caught.value)
    assert f"does not run the command {command}, which the store uses" in text
    assert "rename-command" in text
    assert "user_script" not in text and "args beginning" not in text
    assert "\n" not in text
