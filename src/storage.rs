//! Object storage for uploaded files: a local folder or an S3 bucket, through
//! `object_store`. Owns object keys, streaming writes (hashing as they go) and reads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, GetResultPayload, ObjectStore, ObjectStoreExt, RetryConfig,
    WriteMultipart,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use uuid::Uuid;

/// Where uploads live, as given by `STORAGE_URL`.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl StorageUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("expected s3://bucket or s3://bucket/prefix".into());
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some(path) = raw.strip_prefix("file://") {
            if path.is_empty() {
                return Err("expected file:///absolute/path".into());
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if raw.contains("://") {
            return Err("expected a folder path, file://PATH or s3://BUCKET/PREFIX".into());
        }
        Ok(Self::Local(PathBuf::from(raw)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage: object {0} not found")]
    NotFound(String),
    #[error("storage: {0}")]
    Backend(#[from] object_store::Error),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

/// How hard a request to the object store is retried before it counts as failed.
#[derive(Clone, Debug)]
pub struct StorageRetry {
    pub max_retries: usize,
    pub timeout: Duration,
}

impl Default for StorageRetry {
    fn default() -> Self {
        Self {
            max_retries: 3,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Size of the pieces an upload is sent in. S3 needs at least 5 MiB per part.
pub const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.store)
    }
}

impl Storage {
    /// Opens the store. `options` are `AWS_*` settings for S3 (endpoint, region, keys…).
    pub fn open(
        url: &StorageUrl,
        options: &[(String, String)],
        part_bytes: usize,
        retry: &StorageRetry,
    ) -> Result<Self, StorageError> {
        let store: Arc<dyn ObjectStore> = match url {
            StorageUrl::Local(dir) => {
                std::fs::create_dir_all(dir)?;
                // fsync so that "stored" means durable before the row says so.
                Arc::new(LocalFileSystem::new_with_prefix(dir)?.with_fsync(true))
            }
            StorageUrl::S3 { bucket, prefix } => {
                // Give up on an unreachable server within bounds: uploads answer 503 and
                // workers retry the file later, instead of hanging in a request.
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_retry(RetryConfig {
                        max_retries: retry.max_retries,
                        retry_timeout: retry.timeout,
                        backoff: BackoffConfig::default(),
                    })
                    .with_client_options(
                        ClientOptions::new().with_connect_timeout(Duration::from_secs(5)),
                    );
                for (key, value) in options {
                    if let Ok(key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                        builder = builder.with_config(key, value);
                    }
                }
                let s3 = builder.build()?;
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix.as_str()))
                }
            }
        };
        Ok(Self {
            store,
            part_bytes: part_bytes.max(5 * 1024 * 1024),
        })
    }

    /// The key a file's bytes are stored under: derived from its id only.
    pub fn key_for(id: Uuid) -> String {
        format!("files/{id}.csv")
    }

    /// Starts a streaming upload. Nothing is visible under `key` until [`Upload::finish`].
    pub async fn begin_upload(&self, key: &str) -> Result<Upload, StorageError> {
        let multipart = self.store.put_multipart(&Path::from(key)).await?;
        Ok(Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(
                multipart,
                self.part_bytes,
            )),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Reads an object as a byte stream, in large blocks.
    pub async fn reader(
        &self,
        key: &str,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, StorageError> {
        let result = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|e| not_found(key, e))?;
        match result.payload {
            // object_store reads local files 8 KiB at a time, each a hop to the blocking
            // pool; read the file directly instead, so the caller's block size applies.
            GetResultPayload::File(file, _) => {
                let mut file = tokio::fs::File::from_std(file);
                file.set_max_buf_size(4 * 1024 * 1024);
                Ok(Box::new(file))
            }
            GetResultPayload::Stream(stream) => Ok(Box::new(tokio_util::io::StreamReader::new(
                stream.map_err(std::io::Error::other),
            ))),
        }
    }

    /// Streams an object's bytes, for sending them back to a client.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let result = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|e| not_found(key, e))?;
        Ok(result.into_stream().map_err(StorageError::from).boxed())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the store answers: a lookup of a key that does not exist must say "not found".
    pub async fn check(&self) -> Result<(), StorageError> {
        match self.store.head(&Path::from("readyz-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn not_found(key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
        e => StorageError::Backend(e),
    }
}

/// An upload in progress. Dropped without [`Upload::finish`], it is aborted, so a
/// client that goes away mid-upload leaves no object behind.
pub struct Upload {
    writer: Option<WriteMultipart>,
    hasher: Sha256,
    size: u64,
}

/// What was stored: its length and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

impl Upload {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        // Back-pressure: at most a few parts buffered, whatever the file's size.
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        writer.put(chunk);
        Ok(())
    }

    /// Completes the upload; the object becomes visible atomically.
    pub async fn finish(mut self) -> Result<Stored, StorageError> {
        let writer = self.writer.take().expect("finish is called once");
        writer.finish().await?;
        let hasher = std::mem::take(&mut self.hasher);
        Ok(Stored {
            size: self.size,
            sha256: hex::encode(hasher.finalize()),
        })
    }

    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            if let Err(e) = writer.abort().await {
                tracing::warn!(error = %e, "aborting an upload failed");
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = writer.abort().await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_parse() {
        assert_eq!(
            StorageUrl::parse("./data/uploads").unwrap(),
            StorageUrl::Local("./data/uploads".into())
        );
        assert_eq!(
            StorageUrl::parse("file:///srv/tally").unwrap(),
            StorageUrl::Local("/srv/tally".into())
        );
        assert_eq!(
            StorageUrl::parse("s3://bucket/some/prefix/").unwrap(),
            StorageUrl::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert!(StorageUrl::parse("s3://").is_err());
        assert!(StorageUrl::parse("ftp://x").is_err());
    }
}
