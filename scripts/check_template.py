"""Asserts what the validators miss inside SAM events: the projector's event source mapping
settings, least-privilege policies per function, and that the HTTP API routes match the
router's. Run by .ci/run after `sam validate` and `cfn-lint` (needs cfn-lint installed)."""
import re
import sys

from cfnlint.decode import decode

template, problems = decode("template.yaml")
assert not problems, problems
res = template["Resources"]


def actions(function):
    out = {}
    for policy in res[function]["Properties"]["Policies"]:
        for st in policy["Statement"]:
            targets = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            for t in targets:
                name = t["Fn::GetAtt"][0] if isinstance(t, dict) and "Fn::GetAtt" in t else str(t)
                out.setdefault(name, set()).update(st["Action"])
    return out


mapping = res["ProjectorFunction"]["Properties"]["Events"]["Stream"]["Properties"]
expected = {
    "StartingPosition": "TRIM_HORIZON",
    "MaximumBatchingWindowInSeconds": 1,
    "ParallelizationFactor": 4,
    "BisectBatchOnFunctionError": True,
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "MaximumRetryAttempts": 10,
    "MaximumRecordAgeInSeconds": 86400,
}
for key, value in expected.items():
    assert mapping.get(key) == value, f"mapping {key}: {mapping.get(key)!r} != {value!r}"
assert mapping["BatchSize"] == {"Ref": "BatchSize"}
assert mapping["Stream"] == {"Fn::GetAtt": ["EventStream", "Arn"]}
assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["ProjectorFailures", "Arn"]}

ttl = template["Parameters"]["MarkerTtlSeconds"]
assert ttl["Default"] == 0, f"txn outcomes must never expire by default: {ttl['Default']}"

writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
query = actions("QueryFunction")
assert all(not (a & writes) for a in query.values()), f"query may write: {query}"
assert "EventStream" not in query, "query may touch the stream"
command = actions("CommandFunction")
assert "BalancesTable" not in command and "QuarantineTable" not in command, f"command reaches the read model: {command}"
assert command["EventStream"] == {"kinesis:PutRecords", "kinesis:PutRecord"}
projector = actions("ProjectorFunction")
assert not (projector["EventsTable"] & writes), "the projector must not write events"
assert projector["QuarantineTable"] == {"dynamodb:PutItem"}
assert "EventStream" not in projector, "stream reads come with the event source mapping"
for fn in ("CommandFunction", "QueryFunction", "ProjectorFunction"):
    for actions_ in actions(fn).values():
        assert not any(a.endswith(":*") or a == "*" for a in actions_), f"{fn} has a wildcard action"

routes = set()
for fn in ("CommandFunction", "QueryFunction"):
    for event in res[fn]["Properties"]["Events"].values():
        if event["Type"] == "HttpApi":
            routes.add((event["Properties"]["Method"].lower(), event["Properties"]["Path"]))
router = set(re.findall(r'\("(get|post)", "([^"]+)"\)', open("src/http.rs").read()))
missing = router - routes - {("get", "/metrics")}
assert not missing, f"router routes the API does not expose: {missing}"
assert routes <= router, f"API routes the router does not serve: {routes - router}"
print(f"template ok: mapping settings, least privilege for 3 functions, {len(routes)} routes")
sys.exit(0)
