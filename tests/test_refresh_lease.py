"""One refresh of a root at a time: the lease ``jinabatch refresh`` holds on ROOT (``cli.refresh.lease``), on a local
folder and on a real S3-compatible server (SeaweedFS)."""
from __future__ import annotations

import threading
import time

import pytest

from jinabatch.cli.refresh import LOCK, lease
from jinabatch.config import StorageSettings
from jinabatch.errors import JinaBatchError
from jinabatch.storage import Storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return Storage.open(tmp_path / "nightly", StorageSettings())
    bucket = request.getfixturevalue("s3_bucket")()
    return Storage.open(f"s3://{bucket}/nightly", StorageSettings())


def test_a_refresh_holding_the_lease_stops_another_naming_it_and_lets_go_at_the_end(root):
    with lease(root, "20261207", settle_s=0.1) as me:
        assert root.read_json(LOCK)["owner"] == me["owner"]
        with pytest.raises(JinaBatchError) as e, lease(root, "20261208", settle_s=0.1):
            pass
        msg = str(e.value)
        assert root.uri_of(LOCK) in msg and "another refresh of this root is running" in msg
        assert "'20261207'" in msg and me["owner"] in msg and "_latest.json" in msg
        assert root.read_json(LOCK)["owner"] == me["owner"]  # the refused run leaves the holder's lease alone
    assert root.read_json(LOCK) is None
    with lease(root, "20261208", settle_s=0.1):  # free again
        pass


def test_a_lease_not_renewed_in_time_is_a_dead_runs_and_is_taken_over(root):
    root.write_json(LOCK, {"owner": "gone:1:dead", "night": "20261206", "started": 0, "renewed": time.time() - 700})
    with lease(root, "20261207", settle_s=0.1) as me:
        assert root.read_json(LOCK)["owner"] == me["owner"] != "gone:1:dead"
    assert root.read_json(LOCK) is None


def test_the_lease_is_renewed_while_the_night_runs(root):
    with lease(root, "20261207", settle_s=0.1, renew_s=0.2) as me:
        first = root.read_json(LOCK)["renewed"]
        time.sleep(1.0)
        assert root.read_json(LOCK)["renewed"] > first and root.read_json(LOCK)["owner"] == me["owner"]


def test_two_refreshes_started_together_run_one_at_a_time(root):
    """Both read no lease and write theirs; the read-back after the settle time lets exactly one go on."""
    outcome: dict[str, str] = {}

    def night(name: str) -> None:
        try:
            with lease(root, name, settle_s=1.0):
                outcome[name] = "ran"
                time.sleep(0.5)
        except JinaBatchError as e:
            outcome[name] = str(e)

    threads = [threading.Thread(target=night, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v == "ran" for v in outcome.values()) == [False, True], outcome
    assert root.read_json(LOCK) is None
