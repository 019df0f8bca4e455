"""A local filesystem that counts its calls, standing in for an object store in the table benchmarks and tests.

On S3 or GCS every listing page, file-info lookup and file open is at least one request; counting the calls a
reader makes on this filesystem tells how its request count grows with the table.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.fs as pafs


class CountingHandler(pafs.FileSystemHandler):
    """Delegates to a local filesystem and counts each call by name (``calls``)."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.calls: Counter = Counter()

    def _count(self, name: str) -> pafs.LocalFileSystem:
        self.calls[name] += 1
        return self.local

    def get_type_name(self):
        return "counting-local"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self._count("get_file_info").get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._count("list").get_file_info(selector)

    def create_dir(self, path, recursive):
        self._count("create_dir").create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._count("delete_dir").delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._count("delete_dir_contents").delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise NotImplementedError

    def delete_file(self, path):
        self._count("delete_file").delete_file(path)

    def move(self, src, dest):
        self._count("move").move(src, dest)

    def copy_file(self, src, dest):
        self._count("copy_file").copy_file(src, dest)

    def open_input_stream(self, path):
        return self._count("open").open_input_stream(path)

    def open_input_file(self, path):
        return self._count("open").open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self._count("write").open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self._count("append").open_append_stream(path, metadata=metadata)


def counting_filesystem() -> tuple[pafs.PyFileSystem, CountingHandler]:
    handler = CountingHandler()
    return pafs.PyFileSystem(handler), handler
