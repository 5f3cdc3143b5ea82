package iot.lakehouse.streaming;

import java.io.IOException;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.CommonPathCapabilities;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.sql.execution.streaming.checkpointing.CheckpointFileManager;
import org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager;

/**
 * Spark's checkpoint file manager, writing a file straight to its name on an object store.
 *
 * <p>Spark writes each checkpoint file (the stream's offsets and commits, and Delta's checksum
 * file after each commit) "atomically" by writing a temporary file and renaming it. On S3 a
 * rename is a copy and a delete, and S3A probes both names before it: 24 S3 calls and about
 * 50 ms a file, four files a micro-batch. But an S3 upload is itself atomic: the object appears
 * whole when the upload completes and not at all before, and an upload that is aborted (or
 * whose process dies) leaves nothing. So on a store whose output streams can be aborted
 * (S3A says so: fs.capability.outputstream.abortable), this writes to the final name, aborts
 * on cancel, and checks that a file it must not overwrite is still absent before completing
 * the upload. Elsewhere (a local folder, HDFS) it is Spark's rename-based manager, unchanged.
 *
 * <p>The check before completing is not a lock: two writers could both find the name free.
 * The stream has one writer per checkpoint (its lock, jobs/stream.py), as Delta's S3 log store
 * has one writer per table; Spark's own check was likewise a probe before a rename.
 * Errors are never swallowed: a failed upload throws, and the caller's cancel is then a no-op.
 *
 * <p>Enabled by spark.sql.streaming.checkpointFileManagerClass (jobs/spark_conf.py); built by
 * `make up`.
 */
public class DirectWriteCheckpointFileManager extends FileSystemBasedCheckpointFileManager {

  private final boolean abortable;

  public DirectWriteCheckpointFileManager(Path path, Configuration hadoopConf) throws IOException {
    super(path, hadoopConf);
    this.abortable = fs().hasPathCapability(path, CommonPathCapabilities.ABORTABLE_STREAM);
  }

  /** Whether this manager writes straight to the final name (false: Spark's rename). */
  public boolean writesDirectly() {
    return abortable;
  }

  @Override
  public CheckpointFileManager.CancellableFSDataOutputStream createAtomic(Path path, boolean overwriteIfPossible) {
    if (!abortable) {
      return super.createAtomic(path, overwriteIfPossible);
    }
    try {
      // overwrite: no probe here; the upload completes (and the name appears) only in close
      return new DirectStream(fs(), fs().create(path, true), path, overwriteIfPossible);
    } catch (IOException e) {
      throw sneaky(e);  // as Spark's Scala code throws it: the caller sees the IOException
    }
  }

  /** Rethrows a checked exception unchanged, as Scala code (which declares none) does. */
  @SuppressWarnings("unchecked")
  static <E extends Throwable> RuntimeException sneaky(Throwable e) throws E {
    throw (E) e;
  }

  /** An upload to the final name: close completes it, cancel aborts it. */
  static final class DirectStream extends CheckpointFileManager.CancellableFSDataOutputStream {
    private final FileSystem fs;
    private final FSDataOutputStream out;
    private final Path path;
    private final boolean overwriteIfPossible;
    private boolean terminated;

    DirectStream(FileSystem fs, FSDataOutputStream out, Path path, boolean overwriteIfPossible) {
      super(out);
      this.fs = fs;
      this.out = out;
      this.path = path;
      this.overwriteIfPossible = overwriteIfPossible;
    }

    @Override
    public synchronized void cancel() {
      if (terminated) {
        return;
      }
      terminated = true;
      out.abort();  // nothing is uploaded; the stream is closed
    }

    @Override
    public synchronized void close() throws IOException {
      if (terminated) {
        return;
      }
      terminated = true;
      boolean completed = false;
      try {
        if (!overwriteIfPossible && fs.exists(path)) {
          throw new FileAlreadyExistsException("not writing " + path + ": it already exists");
        }
        out.close();
        completed = true;
      } finally {
        if (!completed) {
          out.abort();
        }
      }
    }

    @Override
    public String toString() {
      return "DirectStream[" + path + "]";
    }
  }
}
