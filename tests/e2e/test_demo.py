"""``make demo ONCE=1`` does what the README says: the chain from a Git commit to objects.

Runs ``python -m jaas.demo --once`` (what ``make demo ONCE=1`` runs) as a
child process: its own control plane, real Flux controllers, Git server and
operator. It must exit 0 and show the objects kustomize-controller applied,
before and after the commit it makes.
"""

from __future__ import annotations

import subprocess

from jaas.child import python_module_argv

#: Seconds the whole demo may take on a busy 2-core machine.
DEMO_TIMEOUT = 600


def test_the_demo_follows_a_commit_from_git_to_the_cluster() -> None:
    result = subprocess.run(
        python_module_argv("jaas.demo", "--once"),
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "==> demo succeeded" in output
    before, _, after = output.partition("production gets 5 replicas")
    assert "replicas=3 image=ghcr.io/example/web:1.3.2" in before, output
    assert "replicas=5 image=ghcr.io/example/web:1.4.0" in after, output
    assert "data={" in before, output  # hello-world's ConfigMap
    assert "git commit → Deployment changed in the cluster" in after, output
