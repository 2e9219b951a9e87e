"""horovodrun across two hosts, proven on this machine: two network namespaces joined by a veth
pair (made here, removed after), "hostA" launching and "hostB" reached over real SSH (an sshd
started in hostB's namespace with a key made for the test). Traffic goes only between the two
namespaces. One epoch there equals one epoch of the single-host run (horovodrun -np 2 -H
localhost:2), weight for weight.

Needs root (network namespaces) and openssh-server (scripts/setup.sh installs it); without them
the test is skipped with the reason, never passed."""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from afm_dist.dataset import COMPLETE_MARKER
from afm_dist.model_dir import MODEL_WEIGHTS
from tests.conftest import REPO, VENV_BIN, horovod_command, run_horovod, wait_for
from tests.train.test_train import check, metrics, train_args

SSHD = Path("/usr/sbin/sshd")
NIC = "afm0"  # the same interface name on both hosts: Horovod's --network-interface names one


def sh(*cmd: str, netns: str | None = None) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
    return subprocess.run(full, capture_output=True, text=True, timeout=60)


def must(*cmd: str, netns: str | None = None) -> None:
    proc = sh(*cmd, netns=netns)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"


@pytest.fixture
def two_hosts(tmp_path):
    """Namespaces hostA and hostB (10.X.Y.1 and .2 on the veth pair, names in each one's
    /etc/hosts), an sshd in hostB, an ssh wrapper using the test's key and known_hosts file."""
    if os.geteuid() != 0:
        pytest.skip(f"multi-host test needs root to create network namespaces (running as uid {os.geteuid()})")
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        pytest.skip(f"multi-host test needs openssh-server ({SSHD}) and ssh-keygen: run make setup")
    tag = f"{os.getpid() % 100000}"
    ns = {"hostA": f"afmA{tag}", "hostB": f"afmB{tag}"}
    net = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    ip = {"hostA": f"{net}.1", "hostB": f"{net}.2"}
    made: list[str] = []
    sshd = None
    try:
        first = sh("ip", "netns", "add", ns["hostA"])
        if first.returncode != 0:
            pytest.skip(f"cannot create network namespaces here: {first.stderr.strip()}")
        made.append(ns["hostA"])
        must("ip", "netns", "add", ns["hostB"])
        made.append(ns["hostB"])
        must("ip", "link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for host, dev in (("hostA", f"va{tag}"), ("hostB", f"vb{tag}")):
            must("ip", "link", "set", dev, "netns", ns[host])
            must("ip", "link", "set", dev, "name", NIC, netns=ns[host])
            must("ip", "addr", "add", f"{ip[host]}/24", "dev", NIC, netns=ns[host])
            must("ip", "link", "set", NIC, "up", netns=ns[host])
            must("ip", "link", "set", "lo", "up", netns=ns[host])
            etc = Path("/etc/netns") / ns[host]  # ip netns exec mounts it over /etc
            etc.mkdir(parents=True, exist_ok=True)
            # Each host resolves the names of both, and its own machine name to its own address
            # (Gloo looks that name up).
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{ip['hostA']} hostA\n{ip['hostB']} hostB\n"
                                       f"{ip[host]} {socket.gethostname()}\n")
        ssh = tmp_path / "ssh"
        ssh.mkdir()
        for key in ("client", "host"):
            must("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / key))
        (ssh / "authorized_keys").write_text((ssh / "client.pub").read_text())
        (ssh / "sshd_config").write_text(
            f"ListenAddress {ip['hostB']}\nPort 22\nHostKey {ssh / 'host'}\nAuthorizedKeysFile {ssh / 'authorized_keys'}\n"
            f"PidFile {ssh / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        sshd = subprocess.Popen(["ip", "netns", "exec", ns["hostB"], str(SSHD), "-D", "-e", "-f", str(ssh / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=open(ssh / "sshd.log", "w"))
        # horovodrun calls `ssh HOST ...`: this ssh is the real one with the test's key and
        # known_hosts, so root's own ~/.ssh is never touched.
        (ssh / "config").write_text(f"IdentityFile {ssh / 'client'}\nUserKnownHostsFile {ssh / 'known_hosts'}\n"
                                    "StrictHostKeyChecking no\nLogLevel ERROR\nBatchMode yes\n")
        wrapper = ssh / "bin" / "ssh"
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ssh')} -F {ssh / 'config'} \"$@\"\n")
        wrapper.chmod(0o755)
        wait_for(lambda: sh(str(wrapper), "hostB", "true", netns=ns["hostA"]).returncode == 0, 30,
                 "sshd in hostB", [sshd])
        yield {"ns": ns, "ip": ip, "path": str(wrapper.parent), "sshd_log": ssh / "sshd.log"}
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        for name in made:
            sh("ip", "netns", "del", name)  # takes its end of the veth pair, and so the pair, with it
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def test_two_hosts_over_ssh_equal_one_host(two_hosts, planted_data, tmp_path):
    common = ["--epochs", "1", "--batch-size", "64", "--seed", "5", "--threads", "1"]
    single = tmp_path / "single"
    check(run_horovod(train_args(planted_data, "afm", single, *common), np=2))

    multi = tmp_path / "multi"
    _, env = horovod_command([])
    env["PATH"] = f"{two_hosts['path']}{os.pathsep}{env['PATH']}"
    cmd = ["ip", "netns", "exec", two_hosts["ns"]["hostA"],
           str(VENV_BIN / "horovodrun"), "-np", "2", "-H", "hostA:1,hostB:1", "--gloo", "--network-interface", NIC,
           "--disable-cache", "--start-timeout", "60", sys.executable, *train_args(planted_data, "afm", multi, *common)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    check(proc)
    assert "2 worker(s)" in proc.stdout + proc.stderr
    # hostB's rank came over SSH (the reachability check, then the rank itself).
    assert two_hosts["sshd_log"].read_text().count("Accepted publickey for root") >= 2
    assert (multi / COMPLETE_MARKER).exists()
    ours, theirs = load_file(multi / MODEL_WEIGHTS), load_file(single / MODEL_WEIGHTS)
    assert ours.keys() == theirs.keys()
    for name in ours:
        diff = (ours[name] - theirs[name]).abs().max().item()
        assert diff <= 1e-6, (name, diff)
    assert metrics(multi)[0]["val_rmse"] == pytest.approx(metrics(single)[0]["val_rmse"], rel=1e-6)
