"""Two runs of one Dagster instance sharing the warehouse, each in its own process (the test
of a run's hold on the warehouse: tests/resources/test_warehouse.py).

    python -m tests.resources.warehouse_runs first|second DAGSTER_HOME WAREHOUSE

``first`` writes, keeps the pool's one slot without the warehouse until another run waits for it
(at most ``FIRST_PAUSE_MAX_S``), then writes again; ``second``, started meanwhile, waits for the
slot and then writes once, giving up on the warehouse's lock after ``LOCK_TIMEOUT_S``. Prints the
run's success.
"""

import sys
import time

import dagster as dg

from resources.warehouse import WAREHOUSE_POOL, WarehouseResource

FIRST_PAUSE_MAX_S = 60.0
LOCK_TIMEOUT_S = 2.0


def write(warehouse: WarehouseResource, who: str) -> None:
    with warehouse.connection() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS writes (who VARCHAR, written_at TIMESTAMPTZ)")
        conn.execute("INSERT INTO writes VALUES (?, now())", [who])


@dg.asset(pool=WAREHOUSE_POOL)
def first_write(warehouse: WarehouseResource) -> None:
    write(warehouse, "first")
    print("first wrote", flush=True)  # the test starts the second run now


@dg.asset(pool=WAREHOUSE_POOL, deps=[first_write])
def first_pause(context: dg.AssetExecutionContext) -> None:
    """Holds the slot, not the warehouse, until the second run waits for the slot."""
    storage = context.instance.event_log_storage
    deadline = time.monotonic() + FIRST_PAUSE_MAX_S
    while not storage.get_concurrency_info(WAREHOUSE_POOL).pending_run_ids - {context.run_id}:
        if time.monotonic() > deadline:
            raise RuntimeError("the second run never waited for the pool")
        time.sleep(0.1)


@dg.asset(pool=WAREHOUSE_POOL, deps=[first_pause])
def first_write_again(warehouse: WarehouseResource) -> None:
    write(warehouse, "first again")


@dg.asset(pool=WAREHOUSE_POOL)
def second_write(warehouse: WarehouseResource) -> None:
    write(warehouse, "second")


RUNS = {"first": [first_write, first_pause, first_write_again], "second": [second_write]}


def main() -> None:
    which, home, path = sys.argv[1:4]
    warehouse = WarehouseResource(path=path, lock_timeout_s=LOCK_TIMEOUT_S)
    with dg.DagsterInstance.from_config(home) as instance:
        result = dg.materialize(
            RUNS[which], instance=instance, resources={"warehouse": warehouse},
            raise_on_error=False,
        )  # fmt: skip
    print("success" if result.success else "failed", flush=True)


if __name__ == "__main__":
    main()
