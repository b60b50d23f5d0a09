"""Storage faults through a fault-injecting proxy in front of a real S3 endpoint, access denied,
and the security rules: never unpickle, never print a credential."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from raymerge.cli import main
from raymerge.storage import resolve
from tests.faultproxy import FaultProxy
from tests.helpers import shard_bytes

pytestmark = pytest.mark.integration
REPO = pathlib.Path(__file__).resolve().parents[2]


def upload(s3, family, bucket="fam"):
    fs = resolve(f"s3://{bucket}", {"s3://": s3}).fs
    fs.mkdir(bucket)
    for name, p in zip(("base", "ft1", "ft2"), family):
        fs.put(p, f"{bucket}/{name}", recursive=True)
    return fs


def config(tmp_path, opts, bucket="fam", out_local=False):
    cfg = {
        "merge_method": "ties",
        "base_model": f"s3://{bucket}/base",
        "models": [
            {"model": f"s3://{bucket}/ft{i}", "parameters": {"weight": 0.5, "density": 0.5}}
            for i in (1, 2)
        ],
        "storage_options": {"s3://": opts},
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_merge_survives_slowdowns_and_dropped_connections(
    tmp_path, family, ray_session, s3, capsys
):
    fs = upload(s3, family)
    clean = tmp_path / "clean"
    assert (
        main(["run", config(tmp_path, s3), str(clean), "--no-progress", "--shard-size", "60KB"])
        == 0
    )
    with FaultProxy(s3["endpoint_url"], rate=0.1, seed=5) as proxy:
        opts = dict(s3, endpoint_url=proxy.url)
        rc = main(
            ["run", config(tmp_path, opts), "s3://fam/out", "--no-progress", "--shard-size", "60KB",
             "--json"]
        )  # fmt: skip
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        summary = json.loads(cap.out[cap.out.index("{\n") :])
        assert main(["verify", "s3://fam/out", "--storage-options", json.dumps(opts)]) == 0
    print(  # shown in the report of a failing test only
        f"\nfault proxy: {proxy.counts}; storage retries in the summary: "
              f"{summary['storage_retries']}")  # fmt: skip
    assert summary["storage_retries"] >= 1  # the workers' share of the retried requests
    assert proxy.counts["slowdown"] + proxy.counts["dropped"] >= 3, proxy.counts
    local = shard_bytes(str(clean))
    assert {n: fs.cat_file(f"fam/out/{n}") for n in local} == local


def test_access_denied_is_a_clear_error(tmp_path, family, s3, capsys):
    upload(s3, family)
    with FaultProxy(s3["endpoint_url"], rate=0.0) as proxy:
        proxy.deny.append("/fam/ft2")
        opts = dict(s3, endpoint_url=proxy.url)
        rc = main(["run", config(tmp_path, opts), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "s3://fam/ft2" in err and "Traceback" not in err, err
    assert s3["secret"] not in err and not (tmp_path / "out").exists()


def test_no_pickle_loading_anywhere_in_the_package():
    pattern = re.compile(
        r"\b(torch\.load|pickle\.loads?|import pickle|cPickle|dill|joblib\.load)\b"
    )
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in (REPO / "raymerge").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
        and "never" not in line
        and "torch.load('pytorch_model.bin'" not in line
    ]
    assert hits == []


def test_secret_never_printed_or_stored(tmp_path, family, ray_session, s3, capsys):
    upload(s3, family)
    rc = main(["run", config(tmp_path, s3), "s3://fam/out2", "--no-progress", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    fs = resolve("s3://fam", {"s3://": s3}).fs
    for path in fs.find("fam/out2"):
        assert s3["secret"].encode() not in fs.cat_file(path), path
    assert s3["secret"] not in cap.out + cap.err
    # a config error that echoes storage options must not echo the secret either
    bad = {
        "merge_method": "ties",
        "models": [{"model": "s3://fam/ft1"}],
        "storage_options": {"s3://": s3},
        "oops": 1,
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    assert main(["plan", str(p)]) == 2
    assert s3["secret"] not in capsys.readouterr().err


def test_credentials_refused_on_the_output_bucket_say_so(tmp_path, family, s3, capsys):
    """A 403 on the output bucket is "access denied", not "bucket does not exist"."""
    upload(s3, family)
    with FaultProxy(s3["endpoint_url"], rate=0.0) as proxy:
        proxy.deny.append("/outbkt")
        opts = dict(s3, endpoint_url=proxy.url)
        rc = main(["run", config(tmp_path, opts), "s3://outbkt/x", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "access to bucket 'outbkt' denied" in err, err
    assert "does not exist" not in err and s3["secret"] not in err


def test_a_password_in_a_model_url_is_never_printed(tmp_path, capsys):
    secret = "pw-DO-NOT-LOG-42"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"merge_method": "linear", "models": [
        {"model": f"http://user:{secret}@127.0.0.1:9/m", "parameters": {"weight": 1}}]}))  # fmt: skip
    rc = main(["run", str(cfg), str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and secret not in err and "http://***@127.0.0.1:9/m" in err, err
