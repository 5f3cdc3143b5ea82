"""The project's checkpoint file manager (jobs/jvm/.../DirectWriteCheckpointFileManager.java)
on the real object store: a checkpoint file goes straight to its name, whole or not at all,
and never over a file it must not replace (issue 14: the checkpoint's rename was 24 S3 calls
a file, four files a micro-batch)."""

from __future__ import annotations

import pytest
from py4j.protocol import Py4JJavaError

from testkit.pipeline import S3Trace

pytestmark = pytest.mark.integration

MANAGER = "iot.lakehouse.streaming.DirectWriteCheckpointFileManager"


def hadoop_path(lake, url: str):
    """Return Hadoop's Path of `url`, in the lake session's JVM."""
    return lake._jvm.org.apache.hadoop.fs.Path(url)


def file_manager(lake, url: str):
    """Return the checkpoint file manager Spark makes for `url` with the project's settings."""
    conf = lake._jsparkSession.sessionState().newHadoopConf()
    checkpointing = lake._jvm.org.apache.spark.sql.execution.streaming.checkpointing
    return checkpointing.CheckpointFileManager.create(hadoop_path(lake, url), conf)


def keys(pipeline) -> dict[str, bytes]:
    s3 = pipeline.s3()
    listed = s3.list_objects_v2(Bucket=pipeline.stack.bucket, Prefix=f"{pipeline.prefix}/checkpoint/")
    return {o["Key"].removeprefix(f"{pipeline.prefix}/checkpoint/"):
            s3.get_object(Bucket=pipeline.stack.bucket, Key=o["Key"])["Body"].read()
            for o in listed.get("Contents", [])}


def write(manager, path, data: bytes, overwrite: bool, finish: str = "close") -> None:
    out = manager.createAtomic(path, overwrite)
    out.write(bytearray(data))
    getattr(out, finish)()


def test_a_checkpoint_file_goes_straight_to_its_name(stack, lake, pipeline, tmp_path):
    manager = file_manager(lake, pipeline.path("checkpoint"))
    assert manager.getClass().getName() == MANAGER
    assert manager.writesDirectly() is True
    path = hadoop_path(lake, pipeline.path("checkpoint/offsets/7"))
    with S3Trace(stack, pipeline, tmp_path) as trace:
        write(manager, path, b'v1\n{"batchWatermarkMs":0}\n', overwrite=False)
    # one upload to the name; no temporary file, no copy (the trace shows the whole store's
    # calls: the running pipeline's too)
    ours = f"{pipeline.prefix}/checkpoint/"
    assert trace.count("PutObject", ours + "offsets/7") == 1
    assert trace.count("CopyObject", ours) == 0
    assert trace.count("DeleteObject", ours) == 0
    assert not [e for e in trace.events if ours in e.get("path", "") and ".tmp" in e.get("path", "")]
    assert keys(pipeline) == {"offsets/7": b'v1\n{"batchWatermarkMs":0}\n'}


def test_a_cancelled_file_leaves_nothing(lake, pipeline):
    manager = file_manager(lake, pipeline.path("checkpoint"))
    path = hadoop_path(lake, pipeline.path("checkpoint/commits/3"))
    write(manager, path, b"half a file", overwrite=False, finish="cancel")
    assert keys(pipeline) == {}
    assert manager.exists(path) is False


def test_a_file_that_must_not_be_replaced_is_kept_and_the_writer_told(lake, pipeline):
    manager = file_manager(lake, pipeline.path("checkpoint"))
    path = hadoop_path(lake, pipeline.path("checkpoint/offsets/0"))
    write(manager, path, b"first", overwrite=False)
    out = manager.createAtomic(path, False)
    out.write(bytearray(b"second"))
    with pytest.raises(Py4JJavaError) as raised:
        out.close()
    assert raised.value.java_exception.getClass().getName() == "org.apache.hadoop.fs.FileAlreadyExistsException"
    out.cancel()  # what Spark does after a failed close: nothing more happens
    assert keys(pipeline) == {"offsets/0": b"first"}
    # a file the caller may replace is replaced whole
    write(manager, path, b"third", overwrite=True)
    assert keys(pipeline) == {"offsets/0": b"third"}


def test_a_store_without_abortable_uploads_keeps_spark_s_rename(lake, tmp_path):
    manager = file_manager(lake, tmp_path.as_uri())
    assert manager.getClass().getName() == MANAGER
    assert manager.writesDirectly() is False
    path = hadoop_path(lake, (tmp_path / "offsets" / "0").as_uri())
    write(manager, path, b"local", overwrite=False)
    assert (tmp_path / "offsets" / "0").read_bytes() == b"local"
    assert sorted(p.name for p in (tmp_path / "offsets").iterdir() if not p.name.startswith(".")) == ["0"]
