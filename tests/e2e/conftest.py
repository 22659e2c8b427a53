"""End-to-end tests of the built binary: `portcullis serve` as a process on loopback, EC2 and the
rest of AWS from moto's server, the console in Debian's Chromium (Playwright), the OpenAPI
contract under schemathesis, /metrics through prometheus_client's parser, and the deployment
files through cfn-lint, moto's CloudFormation and systemd-analyze.

Run by scripts/test (through scripts/with-moto, which starts moto and exports
PORTCULLIS_TEST_MOTO); every test has a time limit (pytest.ini)."""

import json
import os
import pathlib
import queue
import subprocess
import threading
import time
import uuid

import boto3
import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BIN = pathlib.Path(os.environ.get("PORTCULLIS_BIN", TARGET / "debug" / "portcullis"))
REGION = "us-east-1"


def moto():
    url = os.environ.get("PORTCULLIS_TEST_MOTO")
    if not url:
        pytest.fail("PORTCULLIS_TEST_MOTO is not set: run the suite with scripts/test, which starts moto_server")
    return url


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def aws(service, region=REGION):
    return boto3.client(service, endpoint_url=moto(), region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test")


def rules_of(group):
    """The (cidr, port, description) of every IPv4 rule of a group on moto."""
    out = aws("ec2").describe_security_groups(GroupIds=[group])
    rules = []
    for perm in out["SecurityGroups"][0].get("IpPermissions", []):
        for r in perm.get("IpRanges", []):
            rules.append((r["CidrIp"], perm.get("FromPort"), r.get("Description")))
    return sorted(rules)


def eventually(check, what, timeout=20.0):
    """Polls `check` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class World:
    """One test's world: a working directory with a store and a config, a discovery tag of its
    own and a managed security group on moto."""

    def __init__(self, tmp, config=""):
        self.dir = pathlib.Path(tmp)
        self.tag = unique("pc-e2e")
        ec2 = aws("ec2")
        self.group = ec2.create_security_group(GroupName=unique("sg"), Description="portcullis e2e")["GroupId"]
        ec2.create_tags(Resources=[self.group], Tags=[{"Key": self.tag, "Value": "true"}])
        self.config = self.dir / "portcullis.toml"
        self.config.write_text(config)

    def env(self, extra=None):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.dir),
            "USER": "tester",
            "AWS_ENDPOINT_URL": moto(),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PORTCULLIS_FIREWALL": "aws",
            "PORTCULLIS_STORE": f"sqlite:{self.dir / 'portcullis.db'}",
            "PORTCULLIS_CONFIG": str(self.config),
            "ENABLE_SG_DISCOVERY": "true",
            "SG_DISCOVERY_TAG_KEY": self.tag,
            "ENVIRONMENT": "dev",
        }
        env.update(extra or {})
        return env

    def cli(self, *args, check=True):
        out = subprocess.run([str(BIN), *args], env=self.env(), cwd=self.dir, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            pytest.fail(f"portcullis {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def token(self, user, role="admin", *envs):
        args = ["token", "create", "--user", user, "--role", role]
        for e in envs:
            args += ["--env", e]
        return self.cli(*args).stdout.strip()


class Server:
    """A running `portcullis serve` (public listener and metrics listener on free ports)."""

    def __init__(self, world, extra_env=None):
        env = world.env({"PORTCULLIS_METRICS_LISTEN": "127.0.0.1:0", **(extra_env or {})})
        self.process = subprocess.Popen([str(BIN), "serve", "--listen", "127.0.0.1:0"], env=env, cwd=world.dir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        self.log = []

        def read():
            for line in self.process.stderr:
                self.log.append(line)
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        self.base = self.metrics = None
        deadline = time.monotonic() + 60
        while self.base is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                pytest.fail("serve did not say where it listens:\n" + "".join(self.log))
            if line.startswith("portcullis metrics on "):
                self.metrics = line.split(" on ", 1)[1].strip()
            if line.startswith("portcullis listening on "):
                self.base = line.split(" on ", 1)[1].strip()

    def url(self, path):
        return self.base + path

    def session(self, token):
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        return s

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


@pytest.fixture
def serve():
    """Starts servers for a test and stops them after it."""
    servers = []

    def start(world, extra_env=None):
        server = Server(world, extra_env)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def pretty(value):
    return json.dumps(value, indent=2, sort_keys=True)
