"""One small storage adapter for every path a step reads or writes (docs/architecture.md,
"Storage URIs").

A location is a plain path, a `file://` URI or `s3://bucket/prefix`. The same calls work on
all of them: `exists`, `read_bytes`, `write_bytes`, `upload_file`, `download_file`,
`put_directory`, `get_directory` and `list_files`. A "directory" on S3 is a key prefix: the object
`s3://b/run/ckpt/model.safetensors` lies in the directory `s3://b/run/ckpt`.

S3 goes through boto3:

- **Credentials only from the environment** (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  optional `AWS_SESSION_TOKEN`; a Kubernetes Secret is mounted as these variables). They
  are handed to the session explicitly, so boto3 never falls back to instance metadata or
  shared credential files, and no message or log line of this module contains them.
  The endpoint is `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (none: AWS itself).
  `components.settings.configure()` puts the local stack's values there.
- **Retries** at two levels. botocore's "standard" mode retries each request on
  connection errors, throttling and 5xx with exponential backoff. On top, whole operations
  are retried (exponential backoff, `attempts` times) on errors botocore cannot retry
  itself: a connection that drops while a body streams, a multipart transfer that gave up.
- **Large files** go up in parts (`TransferConfig`: `part_size`, `multipart_threshold`) and
  come down in ranged parts, several at a time; directories move file by file in parallel.
- **Errors** name the URI and say what to do: `NotFound` (a `FileNotFoundError`),
  `AccessDenied` (a `PermissionError`: SignatureDoesNotMatch, InvalidAccessKeyId, no
  credentials), `Unavailable` (a `ConnectionError`: the endpoint cannot be reached).

Local writes are atomic (a temporary sibling, then a rename), so a reader never sees half
a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlparse

from tipsv2_core.errors import UserError

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # S3's minimum part is 5 MiB; 8 MiB is boto3's default too
MULTIPART_THRESHOLD = 8 * MiB
MAX_CONCURRENCY = 4  # parallel parts per file, and files per directory
REQUEST_ATTEMPTS = 4  # botocore, per HTTP request (a dead endpoint fails in a few seconds)
OPERATION_ATTEMPTS = 3  # this module, per whole operation
BACKOFF_S = 0.5  # first wait between operation attempts; doubles each time

# Error codes as S3 servers (AWS, MinIO, the JuiceFS gateway) send them. HEAD requests have
# no body, so their errors arrive as bare HTTP status codes ("404", "403").
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
DENIED_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
    }
)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "503"}
)

T = TypeVar("T")


class StorageError(UserError):
    """A storage operation failed; `uri` is the location it was about."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(f"{uri}: {message}")
        self.uri = uri


class NotFound(StorageError, FileNotFoundError):
    """No object, file, or bucket at the URI."""


class AccessDenied(StorageError, PermissionError):
    """The server rejected the credentials, or there are none."""


class Unavailable(StorageError, ConnectionError):
    """The endpoint could not be reached, even after retries."""


@dataclass(frozen=True)
class Location:
    """A parsed URI: `path` for local ones, `bucket` + `key` for S3 (`key` has no slashes
    at either end; "" is the bucket's root)."""

    uri: str
    path: Path | None = None
    bucket: str = ""
    key: str = ""

    @property
    def is_s3(self) -> bool:
        return self.path is None

    def child(self, relative: str) -> Location:
        """The location `relative` (a posix path) below this one."""
        if self.path is not None:
            return Location(uri=str(self.path / relative), path=self.path / relative)
        key = f"{self.key}/{relative}" if self.key else relative
        return Location(uri=f"s3://{self.bucket}/{key}", bucket=self.bucket, key=key)


def child(uri: str, name: str) -> str:
    """`name` inside the folder or prefix `uri` (a path, file:// or s3:// URI)."""
    return f"{uri.rstrip('/')}/{name}"


def parse(uri: str | os.PathLike[str]) -> Location:
    """Parses a plain path, `file://…` or `s3://bucket/prefix`; other schemes are an error."""
    text = os.fspath(uri)
    if "://" not in text:
        return Location(uri=text, path=Path(text).expanduser())
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: file:// URIs with a host are not supported")
        return Location(uri=text, path=Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{text}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return Location(uri=text, bucket=parsed.netloc, key=parsed.path.strip("/"))
    raise ValueError(f"{text}: unsupported scheme {parsed.scheme!r} (use a path, file:// or s3://)")


def _safe_relative(name: str, uri: str) -> str:
    """Refuses object names that would escape the target folder ("../x", "/etc/x")."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise StorageError(uri, f"refusing to download the unsafe object name {name!r}")
    return rel.as_posix()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` on a temporary sibling of `path`, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class FileStat(NamedTuple):
    """One file below a listed directory / prefix: its relative posix name, size in bytes
    and modification time (epoch seconds)."""

    name: str
    size: int
    modified: float


class Storage:
    """Reads and writes local paths and S3 URIs; one instance holds one S3 client.

    `environ` (default `os.environ`, read when the client is first needed) supplies the
    endpoint and credentials. `part_size` / `multipart_threshold` control multipart
    uploads; `request_attempts` is botocore's per-request budget, `attempts` / `backoff`
    this class's per-operation retries.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        max_concurrency: int = MAX_CONCURRENCY,
        request_attempts: int = REQUEST_ATTEMPTS,
        attempts: int = OPERATION_ATTEMPTS,
        backoff: float = BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if part_size < 5 * MiB:
            raise ValueError(f"part_size must be at least 5 MiB (S3's minimum), got {part_size}")
        self._environ = environ
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.max_concurrency = max_concurrency
        self.request_attempts = request_attempts
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._client: BaseClient | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- S3 client

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint URL, None for AWS itself."""
        env = self.environ
        return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None

    def client(self, uri: str = "s3://") -> BaseClient:
        """The boto3 S3 client, built once from the environment's endpoint and credentials."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client(uri)
            return self._client

    def _make_client(self, uri: str) -> BaseClient:
        import boto3
        from botocore.config import Config

        env = self.environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise AccessDenied(
                uri,
                "no S3 credentials in the environment: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or run `tipsv2 stack up` for the local stack)",
            )
        # Explicit credentials: boto3 must not wander off to instance metadata (seconds of
        # timeouts on a closed network) or to credential files nobody asked for.
        session = boto3.session.Session(
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": self.request_attempts},
            connect_timeout=5,
            read_timeout=60,
            # MinIO-dialect gateways reject the streaming trailing checksums that newer
            # SDKs send by default; WHEN_REQUIRED is valid for AWS too.
            request_checksum_calculation=env.get(
                "AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"
            ).lower(),
            # Custom endpoints (MinIO, gateways on 127.0.0.1) have no per-bucket DNS names.
            s3={"addressing_style": "path"} if self.endpoint else {},
        )
        return session.client("s3", endpoint_url=self.endpoint, config=config)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.max_concurrency,
        )

    # ----------------------------------------------------------------------- errors, retries

    def _translate(self, error: BaseException, loc: Location) -> BaseException:
        """Maps a boto3 / botocore error to a StorageError that names the URI."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(error, StorageError):
            return error
        from boto3.exceptions import RetriesExceededError, S3UploadFailedError
        from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceededError

        where = self.endpoint or "AWS S3"
        # boto3 / s3transfer wrap the real error: unwrap those wrappers, and only those (an
        # error raised while handling another must not be reported as the other).
        wrappers = (S3UploadFailedError, RetriesExceededError, TransferRetriesExceededError)
        while isinstance(error, wrappers):
            inner = getattr(error, "last_exception", None) or error.__cause__ or error.__context__
            if inner is None:
                break
            error = inner
        if isinstance(error, ClientError):
            err = error.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code == "NoSuchBucket":
                return NotFound(loc.uri, f"bucket {loc.bucket!r} does not exist at {where}")
            if code in NOT_FOUND_CODES:
                return NotFound(loc.uri, "no such object")
            if code in DENIED_CODES:
                return AccessDenied(
                    loc.uri,
                    f"{where} rejected the request ({code}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (values not shown)",
                )
            return StorageError(loc.uri, f"{code or 'error'} from {where}: {err.get('Message')}")
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return AccessDenied(
                loc.uri, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(error, (ConnectionError, HTTPClientError)):
            return Unavailable(loc.uri, f"cannot reach {where}: {type(error).__name__}")
        return StorageError(loc.uri, f"{type(error).__name__}: {error}")

    @staticmethod
    def _transient(error: BaseException) -> bool:
        """Errors worth another try of the whole operation (botocore's own retries are over)."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            HTTPClientError,
            IncompleteReadError,
        )
        from s3transfer.exceptions import RetriesExceededError
        from urllib3.exceptions import ProtocolError

        if isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
            # Nothing listens there: botocore already retried; more tries only delay the
            # message that the service is down.
            return False
        if isinstance(error, ClientError):
            return str(error.response.get("Error", {}).get("Code")) in TRANSIENT_CODES
        return isinstance(
            error, (HTTPClientError, IncompleteReadError, ProtocolError, RetriesExceededError)
        )

    def _retry(self, loc: Location, what: str, fn: Callable[[], T]) -> T:
        """Runs `fn`, retrying transient failures with exponential backoff."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as e:
                if attempt == self.attempts or not self._transient(e):
                    raise self._translate(e, loc) from e
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "%s %s failed (%s), attempt %d/%d; retrying in %.1f s",
                    what, loc.uri, type(e).__name__, attempt, self.attempts, delay,
                )  # fmt: skip
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    # ------------------------------------------------------------------------------ objects

    def exists(self, uri: str | os.PathLike[str]) -> bool:
        """True for an existing file / object, or a non-empty directory / prefix.

        A missing bucket counts as missing; a rejected credential raises AccessDenied.
        """
        loc = parse(uri)
        if loc.path is not None:
            return loc.path.exists()
        client = self.client(loc.uri)

        def probe() -> bool:
            from botocore.exceptions import ClientError

            if loc.key:
                try:
                    client.head_object(Bucket=loc.bucket, Key=loc.key)
                    return True
                except ClientError as e:
                    if str(e.response.get("Error", {}).get("Code")) not in NOT_FOUND_CODES:
                        raise
            prefix = f"{loc.key}/" if loc.key else ""
            try:
                page = client.list_objects_v2(Bucket=loc.bucket, Prefix=prefix, MaxKeys=1)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    return False
                raise
            return bool(page.get("KeyCount") or page.get("Contents"))

        return self._retry(loc, "exists", probe)

    def read_bytes(self, uri: str | os.PathLike[str]) -> bytes:
        """The whole content of a file / object."""
        loc = parse(uri)
        if loc.path is not None:
            try:
                return loc.path.read_bytes()
            except FileNotFoundError:
                raise NotFound(loc.uri, "no such file") from None
        client = self.client(loc.uri)

        def get() -> bytes:
            # The body streams after botocore's retries are over: a drop here is retried
            # by _retry, from the first byte.
            return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()

        return self._retry(loc, "read", get)

    def write_bytes(self, uri: str | os.PathLike[str], data: bytes) -> None:
        """Writes `data` to a file (atomically; parents are created) or an object."""
        loc = parse(uri)
        if loc.path is not None:
            _atomic_write(loc.path, lambda tmp: tmp.write_bytes(data))
            return
        self._require_key(loc)
        client = self.client(loc.uri)
        self._retry(
            loc, "write", lambda: client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        )

    def upload_file(self, local_path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
        """Copies a local file to `uri`; multipart above `multipart_threshold`."""
        src = Path(local_path)
        if not src.is_file():
            raise NotFound(str(src), "no such local file to upload")
        loc = parse(uri)
        if loc.path is not None:
            target = loc.path
            _atomic_write(target, lambda tmp: shutil.copyfile(src, tmp))
            return
        self._require_key(loc)
        self._transfer([(src, loc)], upload=True)

    def download_file(
        self, uri: str | os.PathLike[str], local_path: str | os.PathLike[str]
    ) -> None:
        """Copies `uri` to a local file (written under a temporary name, then renamed)."""
        loc = parse(uri)
        dst = Path(local_path)
        if loc.path is not None:
            src = loc.path
            if not src.is_file():
                raise NotFound(loc.uri, "no such file")
            _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
            return
        self._require_key(loc)
        dst.parent.mkdir(parents=True, exist_ok=True)
        self._transfer([(dst, loc)], upload=False)

    @staticmethod
    def _require_key(loc: Location) -> None:
        if not loc.key:
            raise StorageError(loc.uri, "needs an object key (s3://bucket/key), not a bucket")

    def _transfer(self, items: list[tuple[Path, Location]], *, upload: bool) -> None:
        """Moves (local file, S3 location) pairs through one transfer manager, in parallel.

        Each failed file is retried on its own (exponential backoff), so one dropped
        connection does not send the whole directory again.
        """
        from boto3.s3.transfer import create_transfer_manager

        if not items:
            return
        client = self.client(items[0][1].uri)
        with create_transfer_manager(client, self._transfer_config()) as manager:

            def submit(path: Path, loc: Location) -> Any:
                if upload:
                    return manager.upload(str(path), loc.bucket, loc.key)
                return manager.download(loc.bucket, loc.key, str(path))

            pending = items
            for attempt in range(1, self.attempts + 1):
                futures = [(path, loc, submit(path, loc)) for path, loc in pending]
                failed: list[tuple[Path, Location, BaseException]] = []
                for path, loc, future in futures:
                    try:
                        future.result()
                    except Exception as e:
                        failed.append((path, loc, e))
                if not failed:
                    return
                fatal = [f for f in failed if not self._transient(f[2])]
                if fatal or attempt == self.attempts:
                    _, loc, error = (fatal or failed)[0]
                    raise self._translate(error, loc) from error
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "%d transfer(s) failed (%s), attempt %d/%d; retrying in %.1f s",
                    len(failed), type(failed[0][2]).__name__, attempt, self.attempts, delay,
                )  # fmt: skip
                self._sleep(delay)
                pending = [(path, loc) for path, loc, _ in failed]

    # --------------------------------------------------------------------------- directories

    def list_files(self, uri: str | os.PathLike[str]) -> list[str]:
        """Every file below a directory / prefix, recursively, as sorted posix paths relative
        to it. A missing directory or prefix lists as empty; a missing bucket is NotFound."""
        return [f.name for f in self.stat_files(uri)]

    def stat_files(self, uri: str | os.PathLike[str]) -> list[FileStat]:
        """Every file below a directory / prefix, recursively, sorted by relative posix
        name, with its size and modification time (epoch seconds). A missing directory or
        prefix lists as empty; a missing bucket is NotFound."""
        loc = parse(uri)
        if loc.path is not None:
            root = loc.path
            if not root.is_dir():
                return []
            stats = []
            for p in _walk_files(root):
                st = p.stat()
                stats.append(FileStat(p.relative_to(root).as_posix(), st.st_size, st.st_mtime))
            return sorted(stats)
        client = self.client(loc.uri)
        prefix = f"{loc.key}/" if loc.key else ""

        def collect() -> list[FileStat]:
            stats = []
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=prefix
            ):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix) :]
                    if name and not name.endswith("/"):  # skip "folder" marker objects
                        modified = obj["LastModified"].timestamp()
                        stats.append(FileStat(name, int(obj["Size"]), modified))
            return sorted(stats)

        return self._retry(loc, "list", collect)

    def put_directory(
        self,
        local_dir: str | os.PathLike[str],
        uri: str | os.PathLike[str],
        skip: Collection[str] = (),
    ) -> list[str]:
        """Copies every file below `local_dir` to the directory `uri`, but the relative
        names in `skip`; returns the relative names written. Existing objects with other
        names are left alone."""
        src = Path(local_dir)
        if not src.is_dir():
            raise NotFound(str(src), "no such local directory to upload")
        names = sorted(p.relative_to(src).as_posix() for p in _walk_files(src))
        names = [name for name in names if name not in skip]
        loc = parse(uri)
        if loc.path is not None:
            root = loc.path

            def copy(name: str) -> None:
                _atomic_write(root / name, lambda tmp: shutil.copyfile(src / name, tmp))

            with ThreadPoolExecutor(self.max_concurrency) as pool:
                list(pool.map(copy, names))
            return names
        self._transfer([(src / name, loc.child(name)) for name in names], upload=True)
        return names

    def delete_directory(self, uri: str | os.PathLike[str]) -> int:
        """Removes every file below the directory / prefix `uri` (a missing one is empty);
        returns how many. On S3 the prefix is `KEY/`, so `s3://b/ds` never touches
        `s3://b/ds2/`."""
        loc = parse(uri)
        if loc.path is not None:
            count = len(self.list_files(uri))
            if loc.path.is_dir():
                shutil.rmtree(loc.path)
            return count
        if not loc.key:
            raise ValueError(f"{loc.uri}: refusing to delete a whole bucket")
        return self.delete_files(uri, self.list_files(uri))

    def delete_files(self, uri: str | os.PathLike[str], names: Collection[str]) -> int:
        """Removes the files `names` (relative posix paths) below the directory / prefix
        `uri`; a name that is already gone is no error. Returns how many were asked for."""
        loc = parse(uri)
        if loc.path is not None:
            for name in names:
                if Path(name).is_absolute() or ".." in PurePosixPath(name).parts:
                    raise StorageError(loc.uri, f"refusing to delete outside it: {name!r}")
                with contextlib.suppress(FileNotFoundError):
                    (loc.path / name).unlink()
            return len(names)
        client = self.client(loc.uri)

        # One DELETE per object: the MinIO-dialect gateway wants a Content-MD5 on the
        # batch call, which boto3 leaves out where checksums are only sent when required.
        def delete(name: str) -> None:
            key = loc.child(name).key
            self._retry(loc, "delete", lambda: client.delete_object(Bucket=loc.bucket, Key=key))

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            list(pool.map(delete, names))
        return len(names)

    def get_directory(
        self, uri: str | os.PathLike[str], local_dir: str | os.PathLike[str]
    ) -> list[str]:
        """Copies every file below the directory `uri` into `local_dir`; returns the
        relative names. An empty or missing prefix is NotFound (nothing to get)."""
        loc = parse(uri)
        names = [_safe_relative(n, loc.uri) for n in self.list_files(uri)]
        if not names:
            raise NotFound(loc.uri, "no files below this directory / prefix")
        dst = Path(local_dir)
        if loc.path is not None:
            root = loc.path

            def copy(name: str) -> None:
                _atomic_write(dst / name, lambda tmp: shutil.copyfile(root / name, tmp))

            with ThreadPoolExecutor(self.max_concurrency) as pool:
                list(pool.map(copy, names))
            return names
        for name in names:
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
        self._transfer([(dst / name, loc.child(name)) for name in names], upload=False)
        return names


def _walk_files(root: Path) -> Iterator[Path]:
    """Files below `root` (symlinked files are followed, symlinked folders are not, so a
    link cycle cannot loop), skipping our own half-written temporaries."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if ".tmp-" in name and name.startswith("."):
                continue
            yield Path(dirpath) / name


# ---------------------------------------------------------------------------------------
# module-level shortcuts over a shared Storage for the current environment

_DEFAULT: tuple[tuple[str | None, ...], Storage] | None = None
_DEFAULT_LOCK = threading.Lock()


def default_storage() -> Storage:
    """A Storage for `os.environ`, rebuilt when the endpoint or credentials change there
    (e.g. after `components.settings.configure()` loaded the local stack)."""
    global _DEFAULT
    keys = (
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    )
    fingerprint = tuple(os.environ.get(k) for k in keys)
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT[0] != fingerprint:
            _DEFAULT = (fingerprint, Storage())
        return _DEFAULT[1]


def exists(uri: str | os.PathLike[str]) -> bool:
    """`Storage.exists` with the environment's settings."""
    return default_storage().exists(uri)


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """`Storage.read_bytes` with the environment's settings."""
    return default_storage().read_bytes(uri)


def write_bytes(uri: str | os.PathLike[str], data: bytes) -> None:
    """`Storage.write_bytes` with the environment's settings."""
    default_storage().write_bytes(uri, data)


def upload_file(local_path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """`Storage.upload_file` with the environment's settings."""
    default_storage().upload_file(local_path, uri)


def download_file(uri: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
    """`Storage.download_file` with the environment's settings."""
    default_storage().download_file(uri, local_path)


def put_directory(local_dir: str | os.PathLike[str], uri: str | os.PathLike[str]) -> list[str]:
    """`Storage.put_directory` with the environment's settings."""
    return default_storage().put_directory(local_dir, uri)


def delete_directory(uri: str | os.PathLike[str]) -> int:
    """`Storage.delete_directory` with the environment's settings."""
    return default_storage().delete_directory(uri)


def get_directory(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str]) -> list[str]:
    """`Storage.get_directory` with the environment's settings."""
    return default_storage().get_directory(uri, local_dir)


def list_files(uri: str | os.PathLike[str]) -> list[str]:
    """`Storage.list_files` with the environment's settings."""
    return default_storage().list_files(uri)
