"""Creates the DynamoDB tables and the Kinesis stream on the local emulators from the
definitions in template.yaml, so local and deployed resources cannot drift apart.

Run by `scripts/emulators up` (which installs boto3 and PyYAML into .tools/python). Reads
the names from TALLY_EVENTS_TABLE, TALLY_BALANCES_TABLE, TALLY_QUARANTINE_TABLE and
TALLY_STREAM, the endpoints from AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL_KINESIS.
Idempotent: what exists is left alone. Point-in-time recovery and stream encryption are
AWS-side settings the emulators do not model; key schemas, billing mode, TTL, the Events table's
stream (the backstop reads it) and the shard count are applied as written.
"""
import os
import sys
import time

import boto3
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = {
    "EventsTable": "TALLY_EVENTS_TABLE",
    "BalancesTable": "TALLY_BALANCES_TABLE",
    "QuarantineTable": "TALLY_QUARANTINE_TABLE",
}
STREAM = ("EventStream", "TALLY_STREAM")


class TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation short forms (!Ref, !GetAtt, !Sub, ...) as plain dicts."""


def _intrinsic(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


TemplateLoader.add_multi_constructor("!", _intrinsic)


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"create_resources: {name} is not set (eval \"$(scripts/emulators env)\")")
    return value


def client(service):
    return boto3.client(
        service,
        endpoint_url=env(f"AWS_ENDPOINT_URL_{service.upper()}"),
        region_name=os.environ.get("AWS_REGION", "eu-west-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
    )


def parameter_default(template, value):
    if isinstance(value, dict) and "Ref" in value:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def main():
    with open(os.path.join(ROOT, "template.yaml")) as f:
        template = yaml.load(f, Loader=TemplateLoader)
    resources = template["Resources"]
    dynamodb = client("dynamodb")
    created = []
    for logical, variable in TABLES.items():
        props = resources[logical]["Properties"]
        name = env(variable)
        extra = {}
        if "StreamSpecification" in props:
            extra["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": props["StreamSpecification"]["StreamViewType"],
            }
        try:
            dynamodb.create_table(
                TableName=name,
                AttributeDefinitions=props["AttributeDefinitions"],
                KeySchema=props["KeySchema"],
                BillingMode=props["BillingMode"],
                **extra,
            )
            created.append(f"table {name}")
        except dynamodb.exceptions.ResourceInUseException:
            pass
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2})
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
            if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
                )

    kinesis = client("kinesis")
    logical, variable = STREAM
    name = env(variable)
    shards = int(parameter_default(template, resources[logical]["Properties"]["ShardCount"]))
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        created.append(f"stream {name} ({shards} shards)")
    except kinesis.exceptions.ResourceInUseException:
        pass
    for _ in range(100):
        if kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            break
        time.sleep(0.1)
    else:
        sys.exit(f"create_resources: stream {name} did not become ACTIVE")
    print("created from template.yaml: " + (", ".join(created) if created else "nothing (all exist)"))


if __name__ == "__main__":
    main()
