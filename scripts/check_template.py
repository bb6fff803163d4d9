"""Asserts what the validators miss inside SAM events: the projector's and the backstop's event
source mapping settings, the Events table's protection and stream, least-privilege policies per function, and that the HTTP API routes match the
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

# Every TALLY_* variable the functions get is one src/config.rs reads, and the policy is set.
known = set(re.findall(r'env = "(TALLY_[A-Z_]+)"', open("src/config.rs").read()))
given = set(template["Globals"]["Function"]["Environment"]["Variables"])
assert given <= known, f"variables src/config.rs does not read: {given - known}"
for var, param in [("TALLY_AMOUNT_MAX", "AmountMax"), ("TALLY_OVERDRAFT_LIMIT", "OverdraftLimit")]:
    assert template["Globals"]["Function"]["Environment"]["Variables"][var] == {"Ref": param}, var
assert template["Parameters"]["OverdraftLimit"]["Default"] == 0

writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
query = actions("QueryFunction")
assert all(not (a & writes) for a in query.values()), f"query may write: {query}"
assert "EventStream" not in query, "query may touch the stream"
command = actions("CommandFunction")
assert "BalancesTable" not in command and "QuarantineTable" not in command, f"command reaches the read model: {command}"
assert command["EventStream"] == {"kinesis:PutRecords", "kinesis:PutRecord"}
projector = actions("ProjectorFunction")
assert not (projector["EventsTable"] & writes), "the projector must not write events"
assert projector["QuarantineTable"] == {"dynamodb:PutItem", "dynamodb:GetItem"}
assert "EventStream" not in projector, "stream reads come with the event source mapping"
# The source of truth survives stack deletion, replacement and DeleteTable; its stream feeds
# the backstop, which sees only page inserts and must never give up on a record for age.
events = res["EventsTable"]
assert events.get("DeletionPolicy") == "Retain" and events.get("UpdateReplacePolicy") == "Retain"
assert events["Properties"].get("DeletionProtectionEnabled") is True
assert events["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}
pages = res["BackstopFunction"]["Properties"]["Events"]["Pages"]["Properties"]
assert pages["Stream"] == {"Fn::GetAtt": ["EventsTable", "StreamArn"]}
assert pages["MaximumRecordAgeInSeconds"] == -1, "the backstop must not drop records for age"
assert pages["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
pattern = pages["FilterCriteria"]["Filters"][0]["Pattern"]
import json
assert json.loads(pattern) == {"eventName": ["INSERT"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "v#"}]}}}}, pattern
backstop = actions("BackstopFunction")
assert not (backstop["EventsTable"] & writes), "the backstop must not write events"
assert backstop["BalancesTable"] == {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem"}
assert backstop["QuarantineTable"] == {"dynamodb:PutItem"}, "the backstop only parks accounts"
assert "EventStream" not in backstop
parks = [st for p in res["BackstopFunction"]["Properties"]["Policies"] for st in p["Statement"]
         if st["Resource"] == {"Fn::GetAtt": ["QuarantineTable", "Arn"]}]
assert parks and all(st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == ["parked#*"] for st in parks), \
    "the backstop writes parked-account items only"
# Every Tally metric an alarm names is one the code emits (metrics.rs, EMF names).
emitted = set(re.findall(r'\("([A-Za-z]+)", get\(', open("src/service/metrics.rs").read()))
def tally_metrics(props):
    if props.get("Namespace") == "Tally":
        yield props["MetricName"]
    for m in props.get("Metrics", []):
        metric = m.get("MetricStat", {}).get("Metric", {})
        if metric.get("Namespace") == "Tally":
            yield metric["MetricName"]
alarmed = {name for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm" for name in tally_metrics(r["Properties"])}
assert "AccountsParked" in alarmed, "parked accounts are alarmed"
assert alarmed <= emitted, f"alarms on metrics the code never emits: {alarmed - emitted}"
delay = template["Parameters"]["BackstopDelaySeconds"]
assert res["BackstopFunction"]["Properties"]["Timeout"] >= delay["MaxValue"] + 60, "timeout below the longest wait"
# The projector's mapping keeps a record as long as Kinesis does; the backstop covers the rest.
assert mapping["MaximumRecordAgeInSeconds"] <= res["EventStream"]["Properties"]["RetentionPeriodHours"] * 3600

for fn in ("CommandFunction", "QueryFunction", "ProjectorFunction", "BackstopFunction"):
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
print(f"template ok: mapping settings, least privilege for 4 functions, backstop, {len(routes)} routes")
sys.exit(0)
