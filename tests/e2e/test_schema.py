"""The JSON Schema (schema/policy.schema.json) accepts every example policy in the
repository, and it and the loader (`scripts/policy check`) agree on bad policies."""

import json
import subprocess

import jsonschema
import pytest

from harness import ROOT

SCHEMA = json.loads((ROOT / "schema/policy.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def loader_accepts(policy, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(policy))
    r = subprocess.run([str(ROOT / "scripts/policy"), "check", str(f)], capture_output=True, text=True)
    return r.returncode == 0, r.stderr


def examples():
    yield "envoy/policy.json", json.loads((ROOT / "envoy/policy.json").read_text())
    yield "tests/data/spec-example.json", json.loads((ROOT / "tests/data/spec-example.json").read_text())
    for p in sorted((ROOT / "istio").glob("*.json")) if (ROOT / "istio").exists() else []:
        yield str(p.relative_to(ROOT)), json.loads(p.read_text())


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name,policy", list(examples()), ids=[n for n, _ in examples()])
def test_examples_pass_schema_and_loader(name, policy, tmp_path):
    errors = [e.message for e in VALIDATOR.iter_errors(policy)]
    assert errors == [], errors
    ok, err = loader_accepts(policy, tmp_path)
    assert ok, err


R = lambda **kw: {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [dict({"matchResponseCodes": ["404"], "body": "x"}, **kw)]}}

BAD = {
    "unknown top field": {"hostRule": []},
    "unknown rule field": R(colour="red"),
    "bad code": {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["4x4"], "body": "x"}]}},
    "code out of range": {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["302"], "body": "x"}]}},
    "relative path": dict(R(path="e.html"), errorService="e"),
    "path ends with slash": dict(R(path="/e/"), errorService="e"),
    "override out of range": R(overrideResponseCode=600),
    "override 204": R(overrideResponseCode=204),
    "no path body passthrough": {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [{"matchResponseCodes": ["404"]}]}},
    "bad source": R(source="backend"),
    "bad content type": R(contentType="html"),
    "reserved header": R(headers={"content-length": "1"}),
    "header value with newline": R(headers={"retry-after": "1\nx: y"}),
    "timeout zero": {"errorService": {"cluster": "e", "timeoutMs": 0}},
    "empty cluster": {"errorService": ""},
    "variant without object": R(variants=[{"contentType": "application/json"}]),
    "both path and route rules": {"pathMatchers": [{"name": "m", "pathRules": [{"paths": ["/a"], "customErrorResponsePolicy": {}}], "routeRules": [{"priority": 1, "customErrorResponsePolicy": {}}]}]},
    "two path kinds": {"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"prefixMatch": "/a", "fullPathMatch": "/b"}], "customErrorResponsePolicy": {}}]}]},
    "header match without kind": {"pathMatchers": [{"name": "m", "routeRules": [{"priority": 1, "matchRules": [{"headerMatches": [{"headerName": "x"}]}], "customErrorResponsePolicy": {}}]}]},
    "path rule star in middle": {"pathMatchers": [{"name": "m", "pathRules": [{"paths": ["/a*"], "customErrorResponsePolicy": {}}]}]},
    "empty hosts": {"hostRules": [{"hosts": [], "pathMatcher": "m"}], "pathMatchers": [{"name": "m"}]},
    "route timeout zero": {"routeTimeoutsMs": {"checkout": 0}},
    "route timeout as text": {"routeTimeoutsMs": {"*": "1s"}},
    "rule name with a dot": R(name="a.b"),
    "rule name too long": R(name="x" * 65),
    "response match without kind": R(responseHeaderMatches=[{"headerName": "content-type"}]),
    "bad language tag": dict(R(path="/{lang}/404.html", languages=["en", "de_CH"]), errorService="e"),
    "no languages": dict(R(path="/{lang}/404.html", languages=[]), errorService="e"),
}


# The extensions' shapes, each accepted by both.
GOOD = {
    "named rule": R(name="not-found_1"),
    "response header matches": {"defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "passthrough": True,
         "responseHeaderMatches": [{"headerName": "content-type", "prefixMatch": "application/problem+json"}]},
        {"matchResponseCodes": ["404"], "body": "x",
         "responseHeaderMatches": [{"headerName": "x-debug", "presentMatch": True, "invertMatch": True}]},
        {"matchResponseCodes": ["404"], "body": ""}]}},
    "redirect": R(overrideResponseCode=302, headers={"location": "/login?next={{url}}"}),
    "languages": dict(R(path="/{lang}/404.html", languages=["en", "de-CH"]), errorService="e"),
}


@pytest.mark.parametrize("name", list(GOOD))
def test_schema_and_loader_agree_on_good_policies(name, tmp_path):
    policy = GOOD[name]
    assert [e.message for e in VALIDATOR.iter_errors(policy)] == []
    ok, err = loader_accepts(policy, tmp_path)
    assert ok, err


@pytest.mark.parametrize("name", list(BAD))
def test_schema_and_loader_agree_on_bad_policies(name, tmp_path):
    policy = BAD[name]
    schema_errors = list(VALIDATOR.iter_errors(policy))
    ok, err = loader_accepts(policy, tmp_path)
    assert schema_errors, f"schema accepted {policy}"
    assert not ok, f"loader accepted {policy}"
    assert ": " in err.strip()  # field.path: reason


CASES_SCHEMA = json.loads((ROOT / "schema/policy-tests.schema.json").read_text())


@pytest.mark.parametrize("name", ["envoy.cases.json", "istio.cases.json"])
def test_the_policy_test_cases_follow_their_schema(name):
    jsonschema.Draft202012Validator.check_schema(CASES_SCHEMA)
    validator = jsonschema.Draft202012Validator(CASES_SCHEMA)
    cases = json.loads((ROOT / "tests/policy" / name).read_text())
    assert [e.message for e in validator.iter_errors(cases)] == []
    # The twin: a misspelt expectation is refused by the schema, as by the tool.
    cases["cases"][0]["expect"]["stauts"] = 404
    assert any("stauts" in e.message for e in validator.iter_errors(cases))
