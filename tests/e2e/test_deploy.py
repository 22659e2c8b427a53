"""The deployment files, checked by machines: deploy/cloudformation.yaml passes cfn-lint, is
created in moto's CloudFormation as declared, and its role allows exactly what the code calls;
deploy/portcullis.service passes systemd-analyze's hardening check and its example config is
one the binary reads."""

import io
import json
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import botocore.session
import pytest
import yaml

from conftest import BIN, ROOT, aws, unique

TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"
UNIT = ROOT / "deploy" / "portcullis.service"
EXAMPLE = ROOT / "deploy" / "portcullis.toml"
VENV_BIN = pathlib.Path(sys.executable).parent

# The SDK clients of crates/aws, by the crate each file imports, and the IAM prefix of each.
SERVICES = {"aws_sdk_ec2": "ec2", "aws_sdk_dynamodb": "dynamodb", "aws_sdk_dynamodbstreams": "dynamodbstreams",
            "aws_sdk_autoscaling": "autoscaling", "aws_sdk_secretsmanager": "secretsmanager", "aws_sdk_lambda": "lambda",
            "aws_sdk_sts": "sts"}
IAM_PREFIX = {"dynamodbstreams": "dynamodb"}
# Operations whose IAM action has another name.
IAM_ACTION = {"lambda:Invoke": "lambda:InvokeFunction"}
# Calls the code makes that the Lambda never makes, and why.
NOT_IN_LAMBDA = {
    "dynamodb:CreateTable": "portcullis init; the stack creates the tables",
    "dynamodb:UpdateTimeToLive": "portcullis init",
    "dynamodb:DescribeTable": "serve's start-up check and init; the Lambda opens the store without describing it",
    "dynamodb:DescribeStream": "serve's stream reader (listed below for the event source mapping)",
    "dynamodb:GetShardIterator": "serve's stream reader (listed below for the event source mapping)",
    "dynamodb:GetRecords": "serve's stream reader (listed below for the event source mapping)",
}
# What the role needs that no SDK call in crates/aws names.
NOT_CALLED_BY_CODE = {
    "logs:CreateLogStream": "the Lambda runtime's logs",
    "logs:PutLogEvents": "the Lambda runtime's logs",
    "dynamodb:DescribeStream": "the event source mapping reads the stream with the function's role",
    "dynamodb:GetRecords": "the event source mapping",
    "dynamodb:GetShardIterator": "the event source mapping",
    "dynamodb:ListStreams": "the event source mapping",
    "sts:AssumeRole": "aws-config's AssumeRoleProvider, for a target's role_arn",
}


def test_the_template_passes_cfn_lint():
    out = subprocess.run([str(VENV_BIN / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr


def stack_parameters(bucket, environment):
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in {
        "Environment": environment, "CodeBucket": bucket, "CodeKey": "portcullis/bootstrap.zip",
        "SlackSigningSecret": "s3cr3t", "SlackWebhookUrl": "https://hooks.slack.com/services/T/B/X",
    }.items()]


def code_bucket():
    """A bucket holding a stand-in for the function's zip."""
    bucket = unique("code")
    s3 = aws("s3")
    s3.create_bucket(Bucket=bucket)
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\n")
    s3.put_object(Bucket=bucket, Key="portcullis/bootstrap.zip", Body=package.getvalue())
    return bucket


def test_a_stack_for_a_team_switching_keeps_its_names_secrets_and_tags_and_has_alarms():
    """The parameters a team switching from the IP Whitelist Manager needs: the old function's
    name (the Slack bot's invoke target), an existing secret, its discovery tag, a VPC; and
    the alarms seed 000 recommends."""
    environment = unique("mig").replace("-", "")[:20]
    bucket = code_bucket()
    secrets_manager = aws("secretsmanager")
    secret = secrets_manager.create_secret(Name=unique("signing"), SecretString="s3cr3t")["ARN"]
    approval = secrets_manager.create_secret(Name=unique("approval"), SecretString="https://hooks.slack.com/services/T/B/A")["ARN"]
    ec2 = aws("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]
    group = ec2.create_security_group(GroupName=unique("fn"), Description="the function's", VpcId=subnet["VpcId"])["GroupId"]
    name = f"ip-whitelist-manager-{environment}"
    parameters = {
        "Environment": environment, "CodeBucket": bucket, "FunctionName": name, "SigningSecretArn": secret,
        "DiscoveryTagKey": "Team", "DiscoveryTagValue": "allowlisted", "SubnetIds": subnet["SubnetId"],
        "SecurityGroupIds": group, "ApprovalWebhookSecretArn": approval,
    }
    cf = aws("cloudformation")
    stack = unique("portcullis")
    cf.create_stack(StackName=stack, TemplateBody=TEMPLATE.read_text(), Capabilities=["CAPABILITY_NAMED_IAM"],
                    Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    described = cf.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described

    fn = aws("lambda").get_function(FunctionName=name)["Configuration"]
    env = fn["Environment"]["Variables"]
    assert env["SLACK_SIGNING_SECRET_ARN"] == secret, "the existing secret, not a new one"
    assert "SLACK_WEBHOOK_SECRET_ARN" not in env
    assert env["APPROVAL_WEBHOOK_SECRET_ARN"] == approval and "MONITORING_WEBHOOK_SECRET_ARN" not in env
    assert (env["SG_DISCOVERY_TAG_KEY"], env["SG_DISCOVERY_TAG_VALUE"]) == ("Team", "allowlisted")
    assert fn["VpcConfig"]["SubnetIds"] == [subnet["SubnetId"]] and fn["VpcConfig"]["SecurityGroupIds"] == [group], fn
    logs = aws("logs").describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{name}")["logGroups"]
    assert [g["logGroupName"] for g in logs] == [f"/aws/lambda/{name}"], "the log group follows the function's name"

    # moto's CloudFormation does not create CloudWatch alarms (it has no AWS::CloudWatch::Alarm),
    # so they are held to the template here and by cfn-lint.
    declared = yaml.safe_load(TEMPLATE.read_text())["Resources"]
    alarms = {k: r["Properties"] for k, r in declared.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    expected = {"ErrorsAlarm": ("Errors", "Sum", 1), "ThrottlesAlarm": ("Throttles", "Sum", 1),
                "DurationAlarm": ("Duration", "Maximum", 25000), "IteratorAgeAlarm": ("IteratorAge", "Maximum", 60000)}
    assert set(alarms) == set(expected), set(alarms)
    for key, (metric, statistic, threshold) in expected.items():
        alarm = alarms[key]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"], alarm["Threshold"]) == (
            "AWS/Lambda", metric, statistic, threshold), alarm
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "Function"}}], alarm
    assert alarms["DurationAlarm"]["Threshold"] < fn["Timeout"] * 1000

    # No secret of its own was made, and the role reads only the one it was given.
    assert declared["SigningSecret"]["Condition"] == "MakesSigning"
    iam = aws("iam")
    role = fn["Role"].split("/")[-1]
    secrets = iam.get_role_policy(RoleName=role, PolicyName="secrets")["PolicyDocument"]["Statement"][0]["Resource"]
    assert set([secrets] if isinstance(secrets, str) else secrets) == {secret}, secrets
    guard = iam.get_role_policy(RoleName=role, PolicyName="guard-approval-webhook")["PolicyDocument"]["Statement"][0]
    assert guard["Resource"] == approval, guard
    assert "guard-monitoring-webhook" not in iam.list_role_policies(RoleName=role)["PolicyNames"]


def test_the_stack_is_created_in_moto_as_declared():
    """moto's CloudFormation creates the tables, function, stream mapping, rules, permissions and
    role; it does not create Secrets Manager secrets or API Gateway v2 APIs from a template
    (it skips them), so those are held to the template by cfn-lint alone."""
    environment = unique("e2e").replace("-", "")[:20]
    bucket = code_bucket()

    cf = aws("cloudformation")
    stack = unique("portcullis")
    cf.create_stack(StackName=stack, TemplateBody=TEMPLATE.read_text(),
                    Parameters=stack_parameters(bucket, environment), Capabilities=["CAPABILITY_NAMED_IAM"])
    described = cf.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}

    # Tables: seed 000's schema with its stream and TTL, and our own.
    ddb = aws("dynamodb")
    grants = ddb.describe_table(TableName=f"ip-whitelist-{environment}")["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in grants["KeySchema"]] == [("ip_address", "HASH"), ("environment", "RANGE")]
    assert grants["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    own = ddb.describe_table(TableName=f"ip-whitelist-{environment}-portcullis")["Table"]
    assert [(k["AttributeName"], k["KeyType"]) for k in own["KeySchema"]] == [("pk", "HASH"), ("sk", "RANGE")]
    # moto's CloudFormation does not apply TimeToLiveSpecification (describe_time_to_live says
    # DISABLED), so the declared TTL attributes are checked in the template itself.
    declared = yaml.safe_load(TEMPLATE.read_text())["Resources"]
    assert declared["GrantsTable"]["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert declared["OwnTable"]["Properties"]["TimeToLiveSpecification"] == {"AttributeName": "gc_at", "Enabled": True}
    assert outputs["GrantsTable"] == grants["TableName"] and outputs["OwnTable"] == own["TableName"]

    # The function, as built by scripts/build-lambda, configured for the DynamoDB store.
    lam = aws("lambda")
    fn = lam.get_function(FunctionName=f"portcullis-{environment}")["Configuration"]
    assert (fn["Runtime"], fn["Handler"], fn["Architectures"], fn["Timeout"]) == ("provided.al2023", "bootstrap", ["x86_64"], 30)
    env = fn["Environment"]["Variables"]
    assert env["DYNAMODB_TABLE_NAME"] == grants["TableName"]
    assert env["PORTCULLIS_OWN_TABLE"] == own["TableName"]
    assert env["ENVIRONMENT"] == environment
    assert "PORTCULLIS_CONFIG" not in env, "no config file unless ConfigPath names one"
    assert fn["Role"] == outputs["RoleArn"]

    # The stream mapping answers partial batch failures.
    mappings = lam.list_event_source_mappings(FunctionName=fn["FunctionName"])["EventSourceMappings"]
    assert len(mappings) == 1
    assert mappings[0]["EventSourceArn"] == grants["LatestStreamArn"]
    assert mappings[0]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mappings[0]["StartingPosition"] == "LATEST"

    # EventBridge: the schedule, lifecycle actions and CloudTrail's rule changes, each to the
    # function, which each may invoke.
    events = aws("events")
    rules = {r["Name"]: r for r in events.list_rules(NamePrefix=f"portcullis-{environment}-")["Rules"]}
    assert set(rules) == {f"portcullis-{environment}-{n}" for n in ("sweep", "asg", "guard")}
    assert rules[f"portcullis-{environment}-sweep"]["ScheduleExpression"] == "rate(1 minute)"
    asg = json.loads(rules[f"portcullis-{environment}-asg"]["EventPattern"])
    assert asg["source"] == ["aws.autoscaling"]
    assert set(asg["detail-type"]) == {"EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action"}
    guard = json.loads(rules[f"portcullis-{environment}-guard"]["EventPattern"])
    assert guard["detail"]["eventName"] == ["AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress", "ModifySecurityGroupRules"]
    for name in rules:
        targets = events.list_targets_by_rule(Rule=name)["Targets"]
        assert [t["Arn"] for t in targets] == [fn["FunctionArn"]], name
    policy = json.loads(lam.get_policy(FunctionName=fn["FunctionName"])["Policy"])
    principals = sorted(s["Principal"]["Service"] for s in policy["Statement"])
    assert principals == ["apigateway.amazonaws.com"] + ["events.amazonaws.com"] * 3

    # The role: Lambda may assume it; its policies are the template's.
    iam = aws("iam")
    role = iam.get_role(RoleName=outputs["RoleArn"].split("/")[-1])["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    inline = set(iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"])
    assert {"logs", "store", "firewall", "self", "secrets"} <= inline, inline
    assert "other-accounts" not in inline, "no sts:AssumeRole unless TargetRoleArns names roles"


def code_actions():
    """Every AWS action crates/aws calls, as `prefix:Operation`: each zero-argument method call
    in a file that is an operation of an SDK client the file imports (botocore's models name
    the operations). A name two imported clients share would be ambiguous, and fails."""
    models = botocore.session.get_session()
    operations = {}
    for crate, service in SERVICES.items():
        name = {"dynamodbstreams": "dynamodbstreams", "secretsmanager": "secretsmanager"}.get(service, service)
        operations[crate] = set(models.get_service_model(name).operation_names)
    actions = {}
    for path in sorted((ROOT / "crates" / "aws" / "src").rglob("*.rs")):
        text = path.read_text()
        # A file of a directory module (dynamo/grants.rs) calls the clients its mod.rs imports.
        parent = path.parent / "mod.rs"
        scope = text + (parent.read_text() if parent.exists() and path != parent else "")
        imported = [c for c in SERVICES if re.search(rf"\b{c}::", scope)]
        for method in set(re.findall(r"\.([a-z][a-z0-9_]*)\(\)", text)):
            operation = "".join(part.capitalize() for part in method.split("_"))
            owners = [c for c in imported if operation in operations[c]]
            if len(owners) > 1:
                pytest.fail(f"{path}: {method}() is an operation of {owners}; say which")
            if owners:
                service = SERVICES[owners[0]]
                action = f"{IAM_PREFIX.get(service, service)}:{operation}"
                actions.setdefault(IAM_ACTION.get(action, action), []).append(path.name)
    # A transaction is authorized item by item: PutItem, UpdateItem, DeleteItem (and
    # ConditionCheckItem for condition checks, which the code does not make).
    if actions.pop("dynamodb:TransactWriteItems", None):
        for a in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
            actions.setdefault(a, []).append("a transaction")
    # Cross-account targets' credentials come from STS through aws-config.
    actions["sts:AssumeRole"] = ["ec2.rs (role_arn)"]
    return actions


def template_actions(template, conditions_on=True):
    actions = set()
    for resource in template["Resources"].values():
        documents = []
        if resource["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in resource["Properties"].get("Policies", [])]
        elif resource["Type"] == "AWS::IAM::Policy" and (conditions_on or "Condition" not in resource):
            documents = [resource["Properties"]["PolicyDocument"]]
        for document in documents:
            for statement in document["Statement"]:
                listed = statement["Action"]
                actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_the_role_allows_what_the_code_calls_and_nothing_more():
    template = yaml.safe_load(TEMPLATE.read_text())
    allowed = template_actions(template)
    called = code_actions()
    assert "ec2:AuthorizeSecurityGroupIngress" in called and "dynamodb:Query" in called, "the scan finds calls"
    missing = {a: where for a, where in called.items() if a not in allowed and a not in NOT_IN_LAMBDA}
    assert missing == {}, f"the code calls these, the role does not allow them: {missing}"
    extra = {a for a in allowed if a not in called and a not in NOT_CALLED_BY_CODE}
    assert extra == set(), f"the role allows these, and nothing calls them: {extra}"
    assert not [a for a in allowed if "*" in a], "no wildcard actions"


def test_the_systemd_unit_is_hardened_and_its_config_is_read_by_the_binary(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test installs Debian's systemd"
    # Exposure at most 2.0 ("OK"), on systemd's scale of 0 (locked down) to 10.
    out = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    unit = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/portcullis --config /etc/portcullis/portcullis.toml serve" in unit
    assert "StateDirectory=portcullis" in unit and "sqlite:/var/lib/portcullis/" in EXAMPLE.read_text()
    # The example config, as the unit passes it, with the store moved to a scratch file.
    out = subprocess.run([str(BIN), "--config", str(EXAMPLE), "--store", f"sqlite:{tmp_path / 'p.db'}", "--firewall",
                          "dry-run", "list", "--all", "--json"], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == []
