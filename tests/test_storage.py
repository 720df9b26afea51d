"""components.storage on local paths, file:// URIs and the real JuiceFS S3 gateway.

The S3 tests share one gateway (`tipsv2 stack up --services s3`, ready in well under a
second) in a temporary TIPSV2_HOME; the local and error-path tests need no server.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from botocore.exceptions import ResponseStreamingError

from components import storage
from components.settings import configure
from components.storage import (
    AccessDenied,
    MiB,
    NotFound,
    Storage,
    StorageError,
    Unavailable,
    parse,
)


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A directory with nesting, an empty file and one file above the multipart size."""
    root = tmp_path_factory.mktemp("tree")
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.json").write_text('{"k": 1}')
    (root / "a" / "empty.bin").write_bytes(b"")
    (root / "a" / "b" / "weights.bin").write_bytes(os.urandom(6 * MiB + 123))
    (root / "a" / "b" / "name with spaces.txt").write_text("x")
    return root


# --------------------------------------------------------------------------- local


@pytest.mark.unit
def test_parse():
    assert parse("s3://bucket/a/b/").bucket == "bucket"
    assert parse("s3://bucket/a/b/").key == "a/b"
    assert parse("s3://bucket").key == ""
    assert parse("file:///tmp/x%20y").path == Path("/tmp/x y")
    assert parse("rel/dir").path == Path("rel/dir")
    for bad in ("gs://b/k", "s3:///k", "file://host/x"):
        with pytest.raises(ValueError, match=bad.split(":")[0]):
            parse(bad)


@pytest.mark.unit
@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_local_roundtrip(tmp_path, tree, as_uri):
    store = Storage()
    root = tmp_path / "store"

    def u(rel: str) -> str:
        p = root / rel
        return p.as_uri() if as_uri else str(p)

    assert not store.exists(u("x/obj.bin"))
    store.write_bytes(u("x/obj.bin"), b"abc")
    assert store.exists(u("x/obj.bin")) and store.exists(u("x"))
    assert store.read_bytes(u("x/obj.bin")) == b"abc"
    store.upload_file(tree / "top.json", u("x/top.json"))
    store.download_file(u("x/top.json"), tmp_path / "down" / "top.json")
    assert (tmp_path / "down" / "top.json").read_bytes() == (tree / "top.json").read_bytes()
    assert store.list_files(u("x")) == ["obj.bin", "top.json"]
    assert store.list_files(u("missing")) == []

    names = store.put_directory(tree, u("ckpt"))
    assert names == sorted(digests(tree))
    assert store.list_files(u("ckpt")) == names
    store.get_directory(u("ckpt"), tmp_path / "back")
    assert digests(tmp_path / "back") == digests(tree)
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


@pytest.mark.unit
def test_local_missing_names_the_uri(tmp_path):
    uri = (tmp_path / "nope.bin").as_uri()
    with pytest.raises(NotFound, match="nope.bin: no such file") as e:
        Storage().read_bytes(uri)
    assert e.value.uri == uri
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(NotFound, match="no files below"):
        Storage().get_directory(tmp_path / "empty", tmp_path / "out")


@pytest.mark.unit
def test_retries_transient_errors_with_exponential_backoff():
    waits: list[float] = []
    store = Storage(environ={}, attempts=4, backoff=0.5, sleep=waits.append)
    calls = []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            raise ResponseStreamingError(error="connection reset by peer")
        return b"ok"

    assert store._retry(parse("s3://b/k"), "read", flaky) == b"ok"
    assert waits == [0.5, 1.0]

    waits.clear()

    def always() -> bytes:
        raise ResponseStreamingError(error="connection reset by peer")

    with pytest.raises(Unavailable, match="s3://b/k: cannot reach AWS S3"):
        store._retry(parse("s3://b/k"), "read", always)
    assert waits == [0.5, 1.0, 2.0]


@pytest.mark.unit
def test_non_transient_errors_are_not_retried():
    from botocore.exceptions import ClientError

    waits: list[float] = []
    store = Storage(environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, sleep=waits.append)
    denied = ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": "m"}}, "GetObject")
    with pytest.raises(AccessDenied, match="SignatureDoesNotMatch"):
        store._retry(parse("s3://b/k"), "read", lambda: (_ for _ in ()).throw(denied))
    assert waits == []


@pytest.mark.unit
def test_wrapped_errors_are_unwrapped_and_context_is_not_blamed():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError

    store = Storage(environ={}, sleep=lambda _: None)
    loc = parse("s3://b/k")

    def wrapped() -> None:
        try:
            raise ClientError({"Error": {"Code": "InvalidAccessKeyId"}}, "UploadPart")
        except ClientError as e:
            raise S3UploadFailedError("Failed to upload") from e

    with pytest.raises(AccessDenied, match="InvalidAccessKeyId"):
        store._retry(loc, "upload", wrapped)

    def down_while_handling_a_404() -> None:
        try:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        except ClientError:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1") from None

    with pytest.raises(Unavailable):
        store._retry(loc, "exists", down_while_handling_a_404)


@pytest.mark.unit
def test_no_credentials_is_a_clear_error():
    with pytest.raises(AccessDenied, match="s3://b/k: no S3 credentials in the environment"):
        Storage(environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}).read_bytes("s3://b/k")


@pytest.mark.unit
def test_unreachable_endpoint_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    store = Storage(environ=env, request_attempts=2, sleep=lambda _: None)
    with pytest.raises(Unavailable, match=f"s3://b/k: cannot reach http://127.0.0.1:{port}"):
        store.read_bytes("s3://b/k")


@pytest.mark.unit
def test_part_size_below_the_s3_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 5 MiB"):
        Storage(part_size=1 * MiB)


# --------------------------------------------------------------------------- S3


@pytest.fixture
def s3(s3_env) -> Storage:
    return Storage(environ=s3_env, part_size=5 * MiB, multipart_threshold=5 * MiB)


@pytest.mark.integration
def test_s3_object_roundtrip(s3):
    uri = "s3://tipsv2/roundtrip/a/obj.bin"
    assert not s3.exists(uri)
    s3.write_bytes(uri, b"\x00payload\xff")
    assert s3.exists(uri)
    assert s3.exists("s3://tipsv2/roundtrip/a")  # a prefix is a directory
    assert not s3.exists("s3://tipsv2/roundtrip/a/ob")
    assert s3.read_bytes(uri) == b"\x00payload\xff"
    assert s3.list_files("s3://tipsv2/roundtrip") == ["a/obj.bin"]
    assert s3.list_files("s3://tipsv2/roundtrip/nothing-here") == []


@pytest.mark.integration
def test_s3_multipart_upload_and_download(s3, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MiB))
    uri = "s3://tipsv2/multipart/big.bin"
    s3.upload_file(src, uri)
    head = s3.client().head_object(Bucket="tipsv2", Key="multipart/big.bin")
    assert head["ContentLength"] == 12 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts
    s3.download_file(uri, tmp_path / "back" / "big.bin")
    assert digests(tmp_path / "back")["big.bin"] == digests(tmp_path)["big.bin"]


@pytest.mark.integration
def test_s3_directory_put_get_identical_hashes(s3, tree, tmp_path):
    names = s3.put_directory(tree, "s3://tipsv2/runs/ckpt")
    assert s3.list_files("s3://tipsv2/runs/ckpt") == names == sorted(digests(tree))
    got = s3.get_directory("s3://tipsv2/runs/ckpt", tmp_path / "ckpt")
    assert got == names
    assert digests(tmp_path / "ckpt") == digests(tree)


@pytest.mark.integration
def test_s3_missing_object_and_bucket_name_the_uri(s3, tmp_path):
    with pytest.raises(NotFound, match="s3://tipsv2/no/such.bin: no such object"):
        s3.read_bytes("s3://tipsv2/no/such.bin")
    with pytest.raises(NotFound, match="s3://tipsv2/no/such.bin: no such object"):
        s3.download_file("s3://tipsv2/no/such.bin", tmp_path / "x")
    with pytest.raises(NotFound, match="bucket 'nobucket' does not exist"):
        s3.read_bytes("s3://nobucket/k")
    assert not s3.exists("s3://nobucket/k")
    with pytest.raises(NotFound, match="no files below"):
        s3.get_directory("s3://tipsv2/no/such/dir", tmp_path / "y")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
    ],
)
def test_s3_wrong_credentials_are_rejected_by_the_server(s3_env, tmp_path, change, code):
    env = dict(s3_env, **{change: s3_env[change][:-4] + "zzzz"})
    bad = Storage(environ=env, sleep=lambda _: None)
    with pytest.raises(
        AccessDenied, match=f"s3://tipsv2/k: .*rejected the request \\({code}\\)"
    ) as e:
        bad.read_bytes("s3://tipsv2/k")
    with pytest.raises(AccessDenied):
        bad.write_bytes("s3://tipsv2/k", b"x")
    with pytest.raises(AccessDenied, match="403"):  # HEAD: no body, a bare status code
        bad.exists("s3://tipsv2/k")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(AccessDenied):
        bad.upload_file(src, "s3://tipsv2/k")
    for value in (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]):
        assert value not in str(e.value)


@pytest.mark.integration
def test_module_functions_follow_the_environment(s3_home, monkeypatch):
    """After configure() loads the stack, the plain module functions reach the gateway."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "MLFLOW_", "TIPSV2_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite://")  # keep configure() off the disk
    settings = configure(s3_home)
    assert settings.storage == "stack"
    assert settings.storage_root == "s3://tipsv2"
    uri = f"{settings.storage_root}/env/x.txt"
    storage.write_bytes(uri, b"via env")
    assert storage.read_bytes(uri) == b"via env"
    assert storage.list_files("s3://tipsv2/env") == ["x.txt"]
    assert storage.exists(uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # a new client is built
    with pytest.raises(AccessDenied):
        storage.read_bytes(uri)


@pytest.mark.integration
def test_storage_errors_are_storage_errors(s3):
    with pytest.raises(StorageError):
        s3.write_bytes("s3://tipsv2", b"x")  # a bucket is not an object


@pytest.mark.unit
def test_configure_is_independent_of_storage(tmp_path):
    """Embedded mode: no S3 variables appear, steps write under $TIPSV2_HOME/storage."""
    environ: dict[str, str] = {}
    settings = configure(tmp_path, environ=environ)
    s = Storage(environ=environ)
    s.write_bytes(Path(settings.storage_root) / "x.bin", b"1")
    assert s.read_bytes(Path(settings.storage_root) / "x.bin") == b"1"


# ------------------------------------------------------------------ datasets on S3: commit


@pytest.mark.integration
def test_a_partial_dataset_on_s3_is_never_read_and_a_failed_rewrite_keeps_the_old_one(
    s3_env, tmp_path, monkeypatch, capsys
):
    import uuid

    from components.datasets import publish
    from components.s3_publish import current_root
    from pipelines.cli import main
    from tipsv2_core.data.synth_dataset import write_synthetic_dataset

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    store = storage.default_storage()
    local = tmp_path / "ds"
    write_synthetic_dataset(str(local), num_images=40, image_size=112, seed=3, progress=False)
    want = store.list_files(local)
    out = f"s3://tipsv2/partial-{uuid.uuid4().hex[:8]}/ds"

    def validates() -> bool:
        return main(["data", "validate", "--data", out, "--out", str(tmp_path / "report")]) == 0

    def published_files() -> list[str]:
        """The prefix's objects: COMPLETE and exactly one version holding the dataset."""
        root = current_root(out)
        assert root is not None and root.startswith(f"{out}/versions/v")
        version = root[len(out) + 1 :]
        assert store.list_files(out) == sorted(["COMPLETE", *(f"{version}/{n}" for n in want)])
        return store.list_files(out)

    # What a write killed outright leaves: most files, no COMPLETE, and a stray shard.
    store.put_directory(local, out)
    marker = storage.parse(f"{out}/COMPLETE")
    store.client(out).delete_object(Bucket=marker.bucket, Key=marker.key)
    store.write_bytes(f"{out}/shards/stray-000099.tar", b"half a shard")
    for argv in (["data", "validate", "--data", out],
                 ["data", "tokenizer", "--data", out, "--vocab-size", "100", "--out",
                  str(tmp_path / "tok")]):  # fmt: skip
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "incomplete or missing dataset (no COMPLETE object)" in line and out in line
    assert not (tmp_path / "tok").exists()

    # The next write to the prefix sweeps it: a new version, named by COMPLETE, and nothing
    # else (the version's own COMPLETE came after its files).
    publish(local, out)
    first = published_files()
    assert validates()

    # A rewrite that fails half-way (a file vanishes under it while it uploads) leaves
    # the previous dataset as it was: current, whole, and nothing of the failed write.
    (local / "zz-vanished").symlink_to(local / "no-such-file")
    with pytest.raises(storage.StorageError, match="zz-vanished"):
        publish(local, out)
    assert store.list_files(out) == first
    assert validates()

    # A rewrite that succeeds leaves exactly the new version: no stale object.
    (local / "zz-vanished").unlink()
    publish(local, out)
    assert published_files() != first
    assert validates()
