"""Upstream drift: has the hub moved past the pins? Reported, never acted on."""


import dagster as dg

from awb_dagster.constants import GROUP_PINS
from awb_dagster.registry.lock import PinLock
from awb_dagster.registry.pin_status import pin_statuses
from awb_dagster.resources import AwbHome, HubResource

DEFAULT_PIN_STATUS_CRON = "0 6 * * *"  # daily, after the nightly re-materialization

_STATUS_COLUMNS = {
    "model_id": "string",
    "pin": "string",
    "pinned_sha": "string",
    "followed": "string",
    "hub_head": "string",
    "state": "string",
    "error": "string",
}


@dg.asset(
    group_name=GROUP_PINS,
    description="Whether the hub's head moved past each model's active pin since pinning (the "
    "branch or tag it was pinned from; `main` for a pin by commit sha). Reports only: re-pin with "
    "`awb pin MODEL` to adopt a new head.",
    kinds={"huggingface"},
    check_specs=[
        dg.AssetCheckSpec(
            "hub_answered",
            asset="pin_status",
            description="The hub answered for every active pin (a failed lookup leaves that pin unchecked).",
        )
    ],
)
def pin_status(context: dg.AssetExecutionContext, home: AwbHome, hub: HubResource) -> dg.MaterializeResult:
    statuses = pin_statuses(PinLock.load(home.paths.lock).active_pins(), endpoint=hub.endpoint, token=hub.token)
    for status in statuses:
        if status.error is not None:
            context.log.warning(f"{status.pin.key}: {status.error}")
        elif status.moved:
            context.log.info(f"{status.pin.key}: the hub's {status.followed} moved to {status.head}")
    moved = [s.pin.key for s in statuses if s.moved]
    failed = {s.pin.key: s.error for s in statuses if s.error is not None}
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name="hub_answered",
                passed=not failed,
                description="; ".join(f"{key}: {error}" for key, error in failed.items()) or None,
                metadata={"unanswered_pins": dg.MetadataValue.json(sorted(failed))},
            )
        ],
        metadata={
            "pins_checked": len(statuses),
            "moved": len(moved),
            "errors": len(failed),
            "moved_pins": dg.MetadataValue.json(moved),
            "status": dg.MetadataValue.table(
                [dg.TableRecord(s.to_row()) for s in statuses],
                schema=dg.TableSchema.from_name_type_dict(_STATUS_COLUMNS),
            ),
            "lock": dg.MetadataValue.path(str(home.paths.lock)),
        }
    )


def pin_status_schedule(cron: str) -> dg.ScheduleDefinition:
    """Materializes ``pin_status`` on ``cron``; running by default."""
    return dg.ScheduleDefinition(
        name="pin_status_schedule",
        target=pin_status,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Asks the hub whether each pinned model's head moved; changes no pin.",
    )
