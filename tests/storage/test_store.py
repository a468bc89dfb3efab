"""pearl_pipelines.storage on a real S3 server (SeaweedFS, tests/s3_local.py) and on a local folder: the same calls,
the same answers; URLs and keys that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pearl_pipelines.settings import Settings
from pearl_pipelines.storage import LocalStore, ObjectStore, S3Store, StorageError, check_key, parse_storage_url
from tests.s3_local import S3Server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return ObjectStore.open(None, tmp_path)
    server: S3Server = request.getfixturevalue("s3_env")
    return ObjectStore.open(server.url(f"t/{tmp_path.name}"), tmp_path)


def test_server_checks_the_keys(s3_server: S3Server) -> None:
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="auth/ok.txt", Body=b"ok")
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        s3_server.client(secret_key="not-the-secret").get_object(Bucket=s3_server.bucket, Key="auth/ok.txt")


def test_put_get_list_delete(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(bytes(range(256)) * 4)
    store.put_file(source, "review/projects/1/aois/2/predictions/v1/classes.tif")
    store.put_bytes(b"{}", "review/projects/1/aois/2/predictions/v1/prediction.json")
    store.put_bytes(b"x", "review/projects/1/aois/2/predictions/v2/classes.tif")

    assert store.get_bytes("review/projects/1/aois/2/predictions/v1/classes.tif") == source.read_bytes()
    assert store.get_bytes("review/projects/1/aois/2/predictions/v1/classes.tif", 10, 20) == bytes(range(10, 20))
    assert store.exists("review/projects/1/aois/2/predictions/v1/prediction.json")
    assert not store.exists("review/projects/1/aois/2/predictions/v9/classes.tif")
    with pytest.raises(FileNotFoundError):
        store.get_bytes("review/projects/1/nothing.tif")
    assert sorted(store.list("review/projects/1/aois/2/predictions")) == [
        "review/projects/1/aois/2/predictions/v1/classes.tif",
        "review/projects/1/aois/2/predictions/v1/prediction.json",
        "review/projects/1/aois/2/predictions/v2/classes.tif",
    ]
    assert list(store.list("review/projects/1/aois/20")) == []  # a folder, not a name prefix

    assert store.delete("review/projects/1/aois/2/predictions/v1") == 2
    assert list(store.list("review/projects/1/aois/2/predictions")) == [
        "review/projects/1/aois/2/predictions/v2/classes.tif"
    ]
    with pytest.raises(StorageError, match="whole store"):
        store.delete("")


def test_gdal_path_and_env(s3_env: S3Server, tmp_path: Path) -> None:
    local = ObjectStore.open(None, tmp_path)
    assert isinstance(local, LocalStore)
    assert local.gdal_path("maps/a.tif") == str(tmp_path.resolve() / "maps" / "a.tif")
    assert local.gdal_env() == {}

    remote = ObjectStore.from_settings(Settings(home=tmp_path, storage_url=s3_env.url("deploy/one")))
    assert isinstance(remote, S3Store) and remote.remote
    assert remote.gdal_path("maps/a.tif") == "/vsis3/pearl/deploy/one/maps/a.tif"
    env = remote.gdal_env()
    assert env["AWS_HTTPS"] == "NO" and env["AWS_VIRTUAL_HOSTING"] == "FALSE"
    options = env["session"].get_credential_options()  # what rasterio.Env sets for GDAL from the session
    assert options["AWS_S3_ENDPOINT"] == f"127.0.0.1:{s3_env.port}"
    assert options["AWS_ACCESS_KEY_ID"] == s3_env.access_key and options["AWS_SECRET_ACCESS_KEY"] == s3_env.secret_key


@pytest.mark.parametrize(
    "url",
    [
        "http://bucket/prefix",
        "file:///etc",
        "s3://",
        "s3://ab/x",
        "s3://Upper/x",
        "s3://bucket_underscore",
        "s3://-bucket/x",
        "s3://192.168.1.1/x",
        "s3://a..b/x",
        "s3://user@bucket/x",
        "s3://bucket/x?versionId=1",
        "s3://bucket/../x",
        "s3://bucket/a//b",
    ],
)
def test_bad_storage_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageError, match=r"PEARL_STORAGE_URL|storage key"):
        parse_storage_url(url)


def test_storage_url_parts() -> None:
    assert parse_storage_url("s3://pearl") == ("pearl", "")
    assert parse_storage_url("s3://pearl-data.eu/team/prod/") == ("pearl-data.eu", "team/prod")


@pytest.mark.parametrize("key", ["/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "a/./b", "", "a b", "a/\n"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageError, match="storage key"):
        check_key(key)


def test_local_store_never_leaves_its_root(tmp_path: Path) -> None:
    store = ObjectStore.open(None, tmp_path / "home")
    with pytest.raises(StorageError):
        store.put_bytes(b"x", "../outside.txt")
    assert not (tmp_path / "outside.txt").exists()
