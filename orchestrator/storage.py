"""Where a sweep keeps everything, addressed by run id: a local directory, a shared filesystem, or an object store.

Layout under the storage root::

    tamt-store.json              format version, written once; a store of another version is refused
    runs/<run_id>/               one trial's files: spec.json, attempts.jsonl, masks/ or fine-tuning files
    table/                       the results: one file per finished trial, merged into parts (tamt_table)
    mlflow.db                    the default MLflow store (local storage only)
    ray/                         Ray Tune's own experiment state

A local path (or one on a shared filesystem such as NFS/EFS, the multi-node default) is used in place. A URI with
a scheme (``s3://``, ``gs://``, ``file://``) goes through :mod:`pyarrow.fs`: a trial works in a local scratch
directory, pulls its run directory before starting and pushes it back at each checkpoint and at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

import tamt_table
from tamt_table import FORMAT_VERSION, write_atomically

MARKER = "tamt-store.json"
DEFAULT_STORAGE = "./tamt-runs"


class StorageError(ValueError):
    """The storage cannot be used (unwritable, another format version, not a tamt store); names the fix."""


@dataclass(frozen=True)
class Storage:
    """A storage root: its URI as given, the pyarrow filesystem and the root path inside it."""

    uri: str

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    @property
    def local_root(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return tamt_table.filesystem(self.uri)

    @classmethod
    def at(cls, location: str | os.PathLike) -> Storage:
        text = str(location)
        return cls(text if "://" in text else str(Path(text).expanduser().resolve()))

    # --- paths ---------------------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A path inside the storage, in the filesystem's own terms."""
        _, root = self.filesystem()
        return "/".join([root.rstrip("/"), *parts])

    def run_path(self, run_id: str) -> str:
        return self.path("runs", run_id)

    def table_path(self) -> str:
        return self.path("table")

    def stems(self, folder: str, suffix: str) -> dict[str, str]:
        """File stem → path of the files named ``*<suffix>`` directly in ``folder``: one listing call (on an object
        store, one request per 1,000 files), no file opened."""
        fs, _ = self.filesystem()
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        return {info.base_name[:-len(suffix)]: info.path for info in fs.get_file_info(selector)
                if info.type == pafs.FileType.File and info.base_name.endswith(suffix)}

    def ray_storage_path(self) -> str:
        return self.uri.rstrip("/") + "/ray" if not self.is_local else str(self.local_root / "ray")

    def default_mlflow_uri(self) -> str | None:
        return f"sqlite:///{self.local_root / 'mlflow.db'}" if self.is_local else None

    # --- checks --------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the store, or check an existing one: writable, and of this format version.

        Raises:
            StorageError: unwritable location, a store of another format version, or a non-empty directory
                that is not a tamt store.
        """
        fs, root = self.filesystem()
        marker = f"{root}/{MARKER}"
        try:
            info = fs.get_file_info(marker)
            if info.type == pafs.FileType.File:
                with fs.open_input_stream(marker) as stream:
                    recorded = json.loads(stream.read().decode())
                version = recorded.get("format_version")
                if version != FORMAT_VERSION:
                    raise StorageError(
                        f"{self.uri} was written by tamt storage format {version}, this is format "
                        f"{FORMAT_VERSION}; pass a new --storage, or run the tamt version that wrote it")
            else:
                root_info = fs.get_file_info(root)
                if root_info.type == pafs.FileType.Directory and fs.get_file_info(
                        pafs.FileSelector(root, recursive=False)):
                    raise StorageError(f"{self.uri} is not empty and is not a tamt store (no {MARKER}); pass an "
                                       "empty or new --storage directory")
                fs.create_dir(root, recursive=True)
                write_atomically(fs, marker, json.dumps({"format_version": FORMAT_VERSION}).encode())
            probe = f"{root}/.write-probe-{uuid.uuid4().hex}"
            with fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            fs.delete_file(probe)
        except StorageError:
            raise
        except (OSError, pa.ArrowException) as error:
            raise StorageError(f"cannot write to storage {self.uri} ({error}); pass a writable --storage "
                               "directory or bucket you have write access to") from error


class RunDirectory:
    """A trial's working directory: the run's own directory on local storage, a synced scratch copy otherwise."""

    def __init__(self, storage: Storage, run_id: str, scratch_root: Path | None = None) -> None:
        self.storage, self.run_id = storage, run_id
        if storage.is_local:
            self.local = storage.local_root / "runs" / run_id
        else:
            base = scratch_root or Path(tempfile.gettempdir()) / "tamt-scratch"
            self.local = base / run_id
        self.local.mkdir(parents=True, exist_ok=True)

    def pull(self) -> None:
        """Bring the stored run directory (e.g. a checkpoint from an earlier attempt) into scratch."""
        if self.storage.is_local:
            return
        fs, _ = self.storage.filesystem()
        remote = self.storage.run_path(self.run_id)
        if fs.get_file_info(remote).type == pafs.FileType.Directory:
            shutil.rmtree(self.local, ignore_errors=True)
            self.local.mkdir(parents=True)
            pafs.copy_files(remote, str(self.local), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())

    def push(self) -> None:
        """Publish the scratch directory to the storage (a no-op on local storage, which is written in place)."""
        if self.storage.is_local:
            return
        fs, _ = self.storage.filesystem()
        pafs.copy_files(str(self.local), self.storage.run_path(self.run_id),
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def fetch(self, run_id: str, relative: str) -> Path:
        """A file of another run (a mask), as a local path."""
        if self.storage.is_local:
            return self.storage.local_root / "runs" / run_id / relative
        fs, _ = self.storage.filesystem()
        target = self.local / "inputs" / run_id / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{self.storage.run_path(run_id)}/{relative}") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return target
