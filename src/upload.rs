//! Accepting an upload: stream the body into storage (hashing and counting as it
//! goes), then record the file as `pending`. Bytes first, row second, so a row never
//! points at bytes that are not there; a failed or abandoned upload leaves neither.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use uuid::Uuid;

use crate::engine::DecimalSeparator;
use crate::files::{repo, FileRow, NewFile};
use crate::storage::{Storage, StorageError, Stored};

/// Longest filename kept, in characters.
pub const MAX_FILENAME_CHARS: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the uploaded file is empty")]
    Empty,
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    #[error("the upload sent nothing for {0:?}; it was abandoned")]
    Stalled(std::time::Duration),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// How the file is to be read; given with the upload and kept with the file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadOptions {
    pub delimiter: Option<u8>,
    pub decimal_separator: DecimalSeparator,
}

impl ReadOptions {
    /// Parses the `delimiter` and `decimal_separator` parameters.
    pub fn parse(delimiter: Option<&str>, decimal_separator: Option<&str>) -> Result<Self, String> {
        let delimiter = match delimiter {
            None => None,
            Some(d) => Some(parse_delimiter(d)?),
        };
        let decimal_separator = match decimal_separator {
            None | Some(".") => DecimalSeparator::Dot,
            Some(",") => DecimalSeparator::Comma,
            Some(other) => {
                return Err(format!(
                    "decimal_separator {other:?} is not supported; use \".\" or \",\""
                ))
            }
        };
        Ok(Self {
            delimiter,
            decimal_separator,
        })
    }
}

/// Delimiters Tally reads: `,` `;` TAB (also written `tab` or `\t`) and `|`.
pub fn parse_delimiter(raw: &str) -> Result<u8, String> {
    match raw {
        "," => Ok(b','),
        ";" => Ok(b';'),
        "\t" | "tab" | "TAB" | "\\t" => Ok(b'\t'),
        "|" => Ok(b'|'),
        other => Err(format!(
            "delimiter {other:?} is not supported; use \",\", \";\", \"tab\" or \"|\""
        )),
    }
}

/// The client's filename is display text only: it never reaches a path.
pub fn check_filename(name: &str) -> Result<String, UploadError> {
    let name = name.trim();
    if name.chars().any(char::is_control) {
        return Err(UploadError::Invalid(
            "the filename contains control characters; rename the file".into(),
        ));
    }
    if name.chars().count() > MAX_FILENAME_CHARS {
        return Err(UploadError::Invalid(format!(
            "the filename is longer than {MAX_FILENAME_CHARS} characters; rename the file"
        )));
    }
    Ok(if name.is_empty() {
        "upload.csv".to_string()
    } else {
        name.to_string()
    })
}

/// Bytes that are stored but not yet recorded. Dropped without [`commit`], the
/// object is deleted, so an upload that fails after storing leaves nothing behind.
pub struct Staged {
    id: Uuid,
    key: String,
    stored: Stored,
    storage: Option<Storage>,
}

impl Staged {
    pub fn stored(&self) -> &Stored {
        &self.stored
    }

    pub async fn discard(mut self) {
        if let Some(storage) = self.storage.take() {
            if let Err(e) = storage.delete(&self.key).await {
                tracing::warn!(file_id = %self.id, error = %e, "could not delete a discarded upload");
            }
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(storage) = self.storage.take() {
            let key = std::mem::take(&mut self.key);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = storage.delete(&key).await;
                });
            }
        }
    }
}

/// Bounds on one upload.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    /// Longest wait for the next piece of the body.
    pub idle: std::time::Duration,
}

/// Streams `body` into storage under a fresh id, within `limits`.
pub async fn stage<S, E>(storage: &Storage, limits: Limits, body: S) -> Result<Staged, UploadError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let limit = limits.max_bytes;
    let id = Uuid::now_v7();
    let key = Storage::key_for(id);
    let mut upload = storage.begin_upload(&key).await?;
    let mut body = std::pin::pin!(body);
    loop {
        let next = tokio::time::timeout(limits.idle, body.next())
            .await
            .map_err(|_| UploadError::Stalled(limits.idle))?;
        let Some(chunk) = next else {
            break;
        };
        // On any early return `upload` is dropped, which aborts it.
        let chunk = chunk.map_err(|e| UploadError::Interrupted(e.to_string()))?;
        if upload.size() + chunk.len() as u64 > limit {
            upload.abort().await;
            return Err(UploadError::TooLarge { limit });
        }
        upload.write(chunk).await?;
    }
    if upload.size() == 0 {
        upload.abort().await;
        return Err(UploadError::Empty);
    }
    let stored = upload.finish().await?;
    Ok(Staged {
        id,
        key,
        stored,
        storage: Some(storage.clone()),
    })
}

/// Records staged bytes as a pending file; workers are woken by the insert.
pub async fn commit(
    db: &PgPool,
    mut staged: Staged,
    filename: String,
    options: &ReadOptions,
) -> Result<FileRow, UploadError> {
    let file = NewFile {
        id: staged.id,
        filename,
        size_bytes: staged.stored.size,
        sha256: staged.stored.sha256.clone(),
        object_key: staged.key.clone(),
        delimiter: options.delimiter.map(|d| (d as char).to_string()),
        decimal_separator: options.decimal_separator.to_string(),
    };
    let row = repo::insert(db, &file).await?;
    // Recorded: the object is the file's now.
    staged.storage = None;
    crate::metrics::METRICS.upload(file.size_bytes);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_display_text_only() {
        assert_eq!(
            check_filename("../../etc/passwd").unwrap(),
            "../../etc/passwd"
        );
        assert_eq!(check_filename("  ").unwrap(), "upload.csv");
        assert!(check_filename("a\0b.csv").is_err());
        assert!(check_filename("a\nb.csv").is_err());
        assert!(check_filename(&"x".repeat(10_000)).is_err());
    }

    #[test]
    fn read_options_parse() {
        let o = ReadOptions::parse(Some(";"), Some(",")).unwrap();
        assert_eq!(o.delimiter, Some(b';'));
        assert_eq!(o.decimal_separator, DecimalSeparator::Comma);
        assert_eq!(
            ReadOptions::parse(Some("tab"), None).unwrap().delimiter,
            Some(b'\t')
        );
        assert!(ReadOptions::parse(Some("x"), None).is_err());
        assert!(ReadOptions::parse(Some(""), None).is_err());
        assert!(ReadOptions::parse(None, Some("")).is_err());
        assert!(ReadOptions::parse(None, Some("'")).is_err());
    }
}
