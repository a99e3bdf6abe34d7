"""An S3 stand-in for tests: moto's server on 127.0.0.1, with the AWS settings s3fs reads pointed
at it. One place for what test_s3, test_urllist and test_train_loader each need."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def moto_s3(*buckets: str) -> Iterator[str]:
    """Start the server, point s3fs at it and create `buckets`; yields the endpoint URL. Skips the
    test when moto is not installed."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}.items():
        mp.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would still talk to an earlier server
    try:
        for bucket in buckets:
            s3fs.S3FileSystem(anon=False).mkdir(bucket)
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        mp.undo()
        server.stop()
