//! An upload (`multipart/form-data`: `file` fields plus `collection`,
//! `tags`, `groups`) read into documents to ingest.
//!
//! The fuzzer drives it through the library (`rag_api::fuzzing`).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

use rag_ingest::{IngestOptions, Input, Limits, SUPPORTED_EXTENSIONS};

/// A file refused at upload, with the status it would have alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub file: String,
    pub status: u16,
    pub reason: String,
}

/// What an upload carried: the files that passed the checks (type, size,
/// readable) and those refused, each with its reason.
#[derive(Debug)]
pub struct Upload {
    pub options: IngestOptions,
    pub inputs: Vec<Input>,
    pub rejected: Vec<Rejected>,
}

/// The request as a whole is refused: an HTTP status and what to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct FormError {
    pub status: u16,
    pub message: String,
}

fn form_error(status: u16, message: impl Into<String>) -> FormError {
    FormError {
        status,
        message: message.into(),
    }
}

/// The error a body stream yields when the request passed the server's
/// size limit; the form reads it as 413.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request is larger than the server accepts")
    }
}

impl std::error::Error for BodyTooLarge {}

fn multipart_error(e: multer::Error) -> FormError {
    let too_large = match &e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => true,
        multer::Error::StreamReadFailed(inner) => inner.downcast_ref::<BodyTooLarge>().is_some(),
        _ => false,
    };
    if too_large {
        form_error(413, format!("the request is too large: {e}"))
    } else {
        form_error(400, format!("malformed multipart body: {e}"))
    }
}

/// The boundary of a `multipart/form-data` content type; 415 otherwise.
pub fn boundary(content_type: Option<&str>) -> Result<String, FormError> {
    content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            form_error(
                415,
                "send multipart/form-data (with its boundary) with one or more `file` fields",
            )
        })
}

/// The last component of an uploaded file's name, without control
/// characters: it names the document and is never used as a path.
pub fn upload_name(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().to_string();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

fn list_field(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads a multipart body. Each file is checked now (type, size, parsed
/// within the limits) so that a bad file is refused with its reason while
/// the others go on; the request fails as a whole only when it is
/// malformed, names an unknown field, or has no `collection`.
pub async fn read_form<S, O, E>(
    body: S,
    boundary: &str,
    limits: &Limits,
) -> Result<Upload, FormError>
where
    S: Stream<Item = Result<O, E>> + Send + 'static,
    O: Into<Bytes> + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut options = IngestOptions::default();
    let mut inputs = Vec::new();
    let mut rejected = Vec::new();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let Some(file_name) = field.file_name().map(str::to_string) else {
            let value = field.text().await.map_err(multipart_error)?;
            match name.as_str() {
                "collection" => options.collection = value.trim().to_string(),
                "tags" | "tag" => options.tags.extend(list_field(&value)),
                "groups" | "group" => options.groups.extend(list_field(&value)),
                other => {
                    return Err(form_error(
                        400,
                        format!("unknown field `{other}`; fields: file, collection, tags, groups"),
                    ));
                }
            }
            continue;
        };
        let Some(source) = upload_name(&file_name) else {
            return Err(form_error(
                400,
                format!("file name {file_name:?} is empty or not a name"),
            ));
        };
        let mut refuse = |status: u16, reason: String| {
            rejected.push(Rejected {
                file: source.clone(),
                status,
                reason,
            })
        };
        let ext = rag_ingest::extension(Path::new(&source));
        if !SUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
            let supported: Vec<String> = SUPPORTED_EXTENSIONS
                .iter()
                .map(|e| format!(".{e}"))
                .collect();
            refuse(
                415,
                format!("unsupported file type; supported: {}", supported.join(", ")),
            );
            continue;
        }
        let mut bytes = Vec::new();
        let mut too_big = false;
        while let Some(piece) = field.chunk().await.map_err(multipart_error)? {
            if bytes.len() + piece.len() > limits.max_bytes {
                too_big = true; // the rest of the field is skipped unread
                break;
            }
            bytes.extend_from_slice(&piece);
        }
        if too_big {
            refuse(
                413,
                format!(
                    "larger than the {} MiB a file may be (ingest.max_document_mb)",
                    limits.max_bytes >> 20
                ),
            );
            continue;
        }
        let bytes = Arc::new(bytes);
        let check = (source.clone(), bytes.clone(), *limits);
        let parse = tokio::task::spawn_blocking(move || {
            rag_ingest::load_bytes(Path::new(&check.0), &check.1, &check.2).map(|_| ())
        });
        let checked = match tokio::time::timeout(limits.parse_timeout, parse).await {
            Err(_) => Err(limits.timed_out().to_string()),
            Ok(Err(e)) => {
                // A panic in a loader: its text is for the log, not the client.
                tracing::error!(file = %source, error = %e, "a loader failed");
                Err("the loader failed on this file".to_string())
            }
            Ok(Ok(loaded)) => loaded.map_err(|e| e.to_string()),
        };
        match checked {
            Ok(()) => inputs.push(Input::Bytes { source, bytes }),
            Err(reason) => refuse(422, reason),
        }
    }
    if options.collection.is_empty() {
        return Err(form_error(400, "`collection` is empty"));
    }
    Ok(Upload {
        options,
        inputs,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, file, content) in parts {
            out.extend_from_slice(b"--XB\r\nContent-Disposition: form-data; name=\"");
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
            if let Some(file) = file {
                out.extend_from_slice(format!("; filename=\"{file}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XB--\r\n");
        out
    }

    async fn read(raw: Vec<u8>, limits: &Limits) -> Result<Upload, FormError> {
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(raw)]);
        read_form(stream, "XB", limits).await
    }

    #[tokio::test]
    async fn good_files_pass_and_bad_ones_are_refused_alone() {
        let limits = Limits {
            max_bytes: 64,
            ..Limits::default()
        };
        let raw = body(&[
            ("collection", None, b" wiki "),
            ("tags", None, b"hr, travel"),
            ("groups", None, b"staff"),
            ("file", Some("../../etc/notes.md"), b"# Notes\nbody"),
            ("file", Some("tool.exe"), b"MZ"),
            ("file", Some("big.txt"), &[b'a'; 65]),
            ("file", Some("broken.pdf"), b"%PDF-1.5 nothing"),
        ]);
        let upload = read(raw, &limits).await.unwrap();
        assert_eq!(upload.options.collection, "wiki");
        assert_eq!(upload.options.tags, ["hr", "travel"]);
        assert_eq!(upload.options.groups, ["staff"]);
        // The name is the last component: never a path.
        let sources: Vec<&str> = upload.inputs.iter().map(Input::source).collect();
        assert_eq!(sources, ["notes.md"]);
        let refused: Vec<(&str, u16)> = upload
            .rejected
            .iter()
            .map(|r| (r.file.as_str(), r.status))
            .collect();
        assert_eq!(
            refused,
            [("tool.exe", 415), ("big.txt", 413), ("broken.pdf", 422)]
        );
        assert!(upload.rejected[2].reason.contains("not a readable PDF"));
    }

    #[tokio::test]
    async fn malformed_requests_fail_as_a_whole() {
        let limits = Limits::default();
        let no_collection = body(&[("collection", None, b" "), ("file", Some("a.md"), b"x")]);
        let err = read(no_collection, &limits).await.unwrap_err();
        assert_eq!(
            (err.status, err.message.as_str()),
            (400, "`collection` is empty")
        );
        let err = read(body(&[("owner", None, b"me")]), &limits)
            .await
            .unwrap_err();
        assert!(err.message.contains("unknown field `owner`"), "{err:?}");
        let err = read(b"--XB\r\nno headers end".to_vec(), &limits)
            .await
            .unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        let too_large = futures_util::stream::iter([Err::<Vec<u8>, _>(
            Box::new(BodyTooLarge) as Box<dyn std::error::Error + Send + Sync>
        )]);
        let err = read_form(too_large, "XB", &limits).await.unwrap_err();
        assert_eq!(err.status, 413, "{err:?}");
        assert_eq!(boundary(Some("application/json")).unwrap_err().status, 415);
        assert_eq!(
            boundary(Some("multipart/form-data; boundary=XB")).unwrap(),
            "XB"
        );
    }
}
