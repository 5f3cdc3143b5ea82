package iot.lakehouse.delta;

import io.delta.storage.S3SingleDriverLogStore;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.Iterator;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.S3AFileSystem;
import org.apache.hadoop.fs.s3a.S3AUtils;
import software.amazon.awssdk.core.exception.SdkException;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.ListObjectsV2Request;
import software.amazon.awssdk.services.s3.model.ListObjectsV2Response;
import software.amazon.awssdk.services.s3.model.S3Object;

/**
 * Delta's S3 log store, listing a table's _delta_log from a version on with S3's start-after.
 *
 * <p>Delta's S3SingleDriverLogStore lists the whole _delta_log folder (1,000 names a page) to
 * find the files from a version on, several times a commit. A stream commits every few seconds
 * and keeps 7 days of log: over a week a commit's listings grow from one page to hundreds, and
 * every micro-batch slows with the table's age. Delta's own fix (delta.enableFastS3AListFrom)
 * calls S3A internals that Hadoop 3.5 no longer has (NoSuchMethodError). This class asks S3
 * for the names after the one before `path` only, through S3A's own client (its credentials,
 * endpoint and retries), and leaves everything else (writes, the one-writer lock) to Delta's.
 * An empty answer goes to Delta's listing, which tells a missing folder from an empty one.
 *
 * <p>Enabled by spark.delta.logStore.s3a.impl (jobs/spark_conf.py); built by `make up`.
 */
public class StartAfterS3LogStore extends S3SingleDriverLogStore {

  public StartAfterS3LogStore(Configuration hadoopConf) {
    super(hadoopConf);
  }

  @Override
  public Iterator<FileStatus> listFrom(Path path, Configuration hadoopConf) throws IOException {
    FileSystem fs = path.getFileSystem(hadoopConf);
    if (!(fs instanceof S3AFileSystem)) {
      return super.listFrom(path, hadoopConf);
    }
    S3AFileSystem s3a = (S3AFileSystem) fs;
    String key = s3a.pathToKey(s3a.makeQualified(path));
    int slash = key.lastIndexOf('/');
    String folder = key.substring(0, slash + 1);
    String name = key.substring(slash + 1);
    List<FileStatus> found;
    try {
      found = listAfter(s3a, folder, keyBefore(key), name);
    } catch (SdkException e) {  // as S3A reports it: an IOException Delta knows (a store outage)
      throw S3AUtils.translateException("list " + folder + " from " + name, key, e);
    }
    if (found.isEmpty()) {
      return super.listFrom(path, hadoopConf);
    }
    found.sort(Comparator.comparing(status -> status.getPath().getName()));
    return found.iterator();
  }

  /** The files (not folders) directly in `folder` whose key sorts after `startAfter`. */
  static List<FileStatus> listAfter(S3AFileSystem s3a, String folder, String startAfter, String fromName) {
    S3Client client = s3a.getS3AInternals().getAmazonS3Client("Delta log listing from a version");
    ListObjectsV2Request request = ListObjectsV2Request.builder()
        .bucket(s3a.getBucket()).prefix(folder).delimiter("/").startAfter(startAfter).build();
    List<FileStatus> found = new ArrayList<>();
    long blockSize = s3a.getDefaultBlockSize();
    for (ListObjectsV2Response page : client.listObjectsV2Paginator(request)) {
      for (S3Object object : page.contents()) {
        String name = object.key().substring(folder.length());
        if (name.isEmpty() || name.compareTo(fromName) < 0) {
          continue;
        }
        found.add(new FileStatus(object.size(), false, 1, blockSize, object.lastModified().toEpochMilli(),
            s3a.keyToQualifiedPath(object.key())));
      }
    }
    return found;
  }

  /** A key that sorts just before `key`: S3's start-after leaves out the key it is given. */
  static String keyBefore(String key) {
    if (key.isEmpty()) {
      return key;
    }
    char last = key.charAt(key.length() - 1);
    return key.substring(0, key.length() - 1) + (char) (last - 1) + "\uffff";
  }
}
