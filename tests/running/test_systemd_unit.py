"""The systemd unit in ``deploy/``: the settings a graceful stop depends on."""

from __future__ import annotations

import configparser

from orders_service.config import Settings
from orders_service.dev.migrate import PROJECT_ROOT

UNIT = PROJECT_ROOT / "deploy" / "systemd" / "orders-service.service"


def test_the_unit_stops_the_replica_gracefully_with_the_default_settings() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(UNIT)
    service = unit["Service"]
    defaults = Settings.from_env({})
    # SIGTERM to the main process (every process would drain the same: worker_signals), SIGKILL only past the timeout.
    assert service["KillMode"] in {"mixed", "control-group"}
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > defaults.shutdown_grace_seconds + defaults.worker_kill_timeout
    assert service["ExecStart"].endswith("orders-service serve")
    assert int(service["LimitNOFILE"]) > 10_000  # room for idle keep-alive connections (HTTP_MAX_CONNECTIONS)
