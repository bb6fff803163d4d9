"""What DynamoDB Local itself sustains on this machine, without tally: the ceiling any
client's bulk ingestion meets on the emulators.

Writes the item shape tally's bulk path writes most of (one conditional outcome marker per
transaction id, `attribute_not_exists(pk)`, 100 items per `TransactWriteItems`, several
transactions in flight) into two fresh tables, one with a NEW_IMAGE stream (as tally's
Events table has, for the backstop) and one without, and prints items/s per round and the
median. Run by `loadtest/aws.sh ceiling` (needs `scripts/emulators up`); bounded: ROUNDS
rounds of CALLS transactions each, then both tables are deleted.
"""

import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3

ITEMS_PER_CALL = 100  # DynamoDB's TransactWriteItems limit, what tally packs to
CALLS = int(os.environ.get("CALLS", "40"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
IN_FLIGHT = int(os.environ.get("IN_FLIGHT", "8"))

kw = dict(region_name="eu-west-1", aws_access_key_id="local", aws_secret_access_key="local")
ddb = boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], **kw)


def table(stream: bool) -> str:
    name = f"ceiling-{'stream' if stream else 'plain'}-{uuid.uuid4().hex[:8]}"
    extra = {}
    if stream:
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        **extra,
    )
    return name


def transaction(name: str, call: int) -> None:
    """One transaction of markers like tally's: account partition, `t#<txn id>` sort key,
    outcome and version attributes, written only if absent."""
    items = []
    for i in range(ITEMS_PER_CALL):
        txn = f"{call:08d}-{i:03d}"
        items.append({
            "Put": {
                "TableName": name,
                "Item": {
                    "pk": {"S": f"acct-{(call * ITEMS_PER_CALL + i) % 1000:06d}"},
                    "sk": {"S": f"t#{txn}"},
                    "o": {"S": "b"},
                    "v": {"N": str(call)},
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        })
    ddb.transact_write_items(TransactItems=items)


def round_rate(name: str, first_call: int) -> float:
    started = time.monotonic()
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(lambda c: transaction(name, c), range(first_call, first_call + CALLS)))
    return CALLS * ITEMS_PER_CALL / (time.monotonic() - started)


def main() -> None:
    tables = {"no stream": table(False), "NEW_IMAGE stream": table(True)}
    try:
        rates = {label: [] for label in tables}
        for r in range(ROUNDS):
            for label, name in tables.items():
                rate = round_rate(name, r * CALLS)
                rates[label].append(rate)
                print(f"round {r + 1}/{ROUNDS}, {label:16s}: {rate:6.0f} items/s", flush=True)
        for label, rs in rates.items():
            print(
                f"CEILING ({label}): median {statistics.median(rs):.0f} conditional "
                f"transactional items/s ({ITEMS_PER_CALL} per TransactWriteItems, "
                f"{IN_FLIGHT} in flight, {ROUNDS} rounds)"
            )
    finally:
        for name in tables.values():
            ddb.delete_table(TableName=name)


if __name__ == "__main__":
    main()
