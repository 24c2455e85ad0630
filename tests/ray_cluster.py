"""Helper process for tests/embed/test_cluster.py: Ray reads RAY_AUTH_MODE once per process, and the test session's
own Ray runs with auth off, so everything that talks to the token-auth cluster runs here, in a fresh process.

    python tests/ray_cluster.py up                 start a head + 1 worker node; print {"address", "dashboard"};
                                                   shut the cluster down when stdin closes
    python tests/ray_cluster.py submit DASH CMD    submit CMD as a Ray job, wait, print status, logs, job info and
                                                   the state API's tasks and actors (detail) as JSON
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time


def up() -> None:
    from ray.cluster_utils import Cluster

    # Apart from any other Ray on the machine (other test sessions run clusters too):
    # - dashboard_agent_listen_port None = a free port: the default 52365 is often taken, and a head agent that
    #   cannot bind it never serves the Jobs API ("No available agent to submit job");
    # - its own temp_dir, holding its own ray_current_cluster: the job supervisor gives a submitted driver the
    #   address in {temp_dir}/ray_current_cluster, which in the shared /tmp/ray names whichever cluster started
    #   last (a driver was seen joining another session's cluster and failing its token check); and this cluster
    #   no longer overwrites /tmp/ray/ray_current_cluster under other sessions.
    import ray._private.utils as ray_utils

    temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")
    write = ray_utils.write_ray_address
    ray_utils.write_ray_address = lambda address, where=None: write(address, where or temp_dir)
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": 0,
                                "dashboard_agent_listen_port": None, "temp_dir": temp_dir})
    c.add_node(num_cpus=1, temp_dir=temp_dir)
    c.wait_for_nodes()
    print(json.dumps({"address": c.address, "dashboard": "http://" + c.head_node.address_info["webui_url"]}),
          flush=True)
    try:
        sys.stdin.read()
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(dash: str, cmd: str) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_tasks

    client = JobSubmissionClient(dash)
    deadline = time.monotonic() + 180  # slow to come up on a busy 2-core machine
    while True:  # the head's job agent comes up a few seconds after the dashboard
        try:
            job = client.submit_job(entrypoint=cmd, metadata={"purpose": "jinabatch cluster test"})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)
    deadline = time.monotonic() + 240
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job)
            break
        time.sleep(1)

    def dump(f):
        return [getattr(x, "__dict__", x) for x in f(address=dash, detail=True, limit=1000, raise_on_missing_output=False)]

    print(json.dumps({"status": str(status), "logs": client.get_job_logs(job),
                      "info": client.get_job_info(job).__dict__, "tasks": dump(list_tasks),
                      "actors": dump(list_actors)}, default=str))


if __name__ == "__main__":
    {"up": lambda: up(), "submit": lambda: submit(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
