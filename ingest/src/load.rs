use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rag_core::{Error, Result};
use regex::Regex;
use serde::Deserialize;

/// File extensions the loaders read.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "md", "markdown", "txt", "text", "html", "htm", "pdf", "docx",
];

/// A parsed document, before chunking.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDocument {
    pub title: String,
    pub tags: Vec<String>,
    /// Clean text: Markdown for `.md` files (headings kept, template tags
    /// and link targets removed), plain text otherwise.
    pub body: String,
    pub markdown: bool,
    /// For paged formats (PDF): `(page number, byte offset in body where
    /// the page starts)`, in order; empty otherwise.
    pub pages: Vec<(u32, usize)>,
}

/// What one document may cost, so that one hostile or huge file fails
/// alone instead of stalling an ingest or filling memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of the file.
    pub max_bytes: usize,
    /// Pages of a PDF.
    pub max_pages: usize,
    /// Bytes of text extracted from the file.
    pub max_text_bytes: usize,
    /// Time to read and chunk one document.
    pub parse_timeout: Duration,
    /// Time one network operation of a source sync may take (a git clone
    /// or fetch, one HTTP request): `sources.timeout_s`.
    pub source_timeout: Duration,
    /// The largest share of a source's documents one sync may delete
    /// (`sources.max_delete_fraction`); more stops the sync before it
    /// changes anything. Above 1 (`f64::INFINITY`): no limit (`rag sync
    /// --force`).
    pub max_delete_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 25 << 20,
            max_pages: 2_000,
            max_text_bytes: 8 << 20,
            parse_timeout: Duration::from_secs(60),
            source_timeout: Duration::from_secs(60),
            max_delete_fraction: 0.5,
        }
    }
}

impl Limits {
    pub(crate) fn check_bytes(&self, len: usize) -> Result<()> {
        if len > self.max_bytes {
            return Err(Error::invalid(format!(
                "{len} bytes: larger than the {} bytes a document may be (ingest.max_document_mb)",
                self.max_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn check_text(&self, len: usize) -> Result<()> {
        if len > self.max_text_bytes {
            return Err(Error::invalid(format!(
                "{len} bytes of text: more than the {} a document may have (ingest.max_text_mb)",
                self.max_text_bytes
            )));
        }
        Ok(())
    }

    /// The instant parsing started at `start` must stop.
    pub(crate) fn deadline(&self, start: Instant) -> Instant {
        start + self.parse_timeout
    }

    /// The error of a document whose parsing outlived `parse_timeout`.
    pub fn timed_out(&self) -> Error {
        Error::invalid(format!(
            "reading it took longer than {} s (ingest.parse_timeout_s)",
            self.parse_timeout.as_secs_f64()
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
struct FrontMatter {
    title: Option<String>,
    #[serde(default)]
    tags: Option<serde_json::Value>,
    #[serde(default)]
    keywords: Option<serde_json::Value>,
}

/// Reads and parses one file; the extension picks the loader.
pub fn load_file(path: &Path, limits: &Limits) -> Result<LoadedDocument> {
    if !SUPPORTED_EXTENSIONS.contains(&extension(path).as_str()) {
        return Err(unsupported(path));
    }
    let with_name = |e: Error| Error::invalid(format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| Error::invalid(format!("{}: cannot read: {e}", path.display())))?
        .len();
    limits
        .check_bytes(usize::try_from(size).unwrap_or(usize::MAX))
        .map_err(with_name)?;
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("{}: cannot read: {e}", path.display())))?;
    load_bytes(path, &bytes, limits)
}

/// Parses a file's bytes; `name` (a path or a file name, never opened)
/// gives the extension and the fallback title.
pub fn load_bytes(name: &Path, bytes: &[u8], limits: &Limits) -> Result<LoadedDocument> {
    let ext = extension(name);
    if !SUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
        return Err(unsupported(name));
    }
    let fallback = name
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let with_name = |e: Error| Error::invalid(format!("{}: {e}", name.display()));
    limits.check_bytes(bytes.len()).map_err(with_name)?;
    if ext == "pdf" {
        return crate::formats::load_pdf(bytes, &fallback, limits).map_err(with_name);
    }
    if ext == "docx" {
        return crate::docx::load_docx(bytes, &fallback, limits).map_err(with_name);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::invalid(format!("{}: not valid UTF-8 text", name.display())))?;
    let doc = match ext.as_str() {
        "html" | "htm" => crate::formats::load_html(text, &fallback).map_err(with_name)?,
        "md" | "markdown" => load_text(text, true, &fallback),
        _ => load_text(text, false, &fallback),
    };
    limits.check_text(doc.body.len()).map_err(with_name)?;
    Ok(doc)
}

/// The error for a file no loader reads, listing those that are read.
pub(crate) fn unsupported(path: &Path) -> Error {
    let supported: Vec<String> = SUPPORTED_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect();
    Error::invalid(format!(
        "{}: unsupported file type; supported: {}",
        path.display(),
        supported.join(", ")
    ))
}

/// A file's extension, lower-cased: what picks its loader.
pub fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default()
}

/// Parses text already in memory; `fallback_title` is used when the text
/// names none.
pub fn load_text(text: &str, markdown: bool, fallback_title: &str) -> LoadedDocument {
    if !markdown {
        return LoadedDocument {
            title: fallback_title.to_string(),
            tags: vec![],
            body: text.trim().to_string(),
            markdown: false,
            pages: vec![],
        };
    }
    let matter = gray_matter::Matter::<gray_matter::engine::YAML>::new();
    let (front, content) = match matter.parse::<FrontMatter>(text) {
        Ok(parsed) => (parsed.data.unwrap_or_default(), parsed.content),
        Err(_) => (FrontMatter::default(), text.to_string()),
    };
    let body = clean_markdown(&content);
    let title = front
        .title
        .filter(|t| !t.trim().is_empty())
        .or_else(|| first_heading(&body))
        .unwrap_or_else(|| fallback_title.to_string());
    let mut tags = list_of(front.tags);
    tags.extend(list_of(front.keywords));
    tags.dedup();
    LoadedDocument {
        title: title.trim().to_string(),
        tags,
        body,
        markdown: true,
        pages: vec![],
    }
}

fn list_of(value: Option<serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|i| i.as_str().map(|s| s.trim().to_string()))
            .filter(|t| !t.is_empty())
            .collect(),
        _ => vec![],
    }
}

fn first_heading(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| {
            l.strip_prefix('#')
                .map(|h| h.trim_start_matches('#').trim().to_string())
        })
        .filter(|h| !h.is_empty())
}

static TEMPLATE_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{%-?[\s\S]*?-?%\}|\{\{[\s\S]*?\}\}").unwrap());
static LINK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"!?\[([^\]]*)\]\([^)\s]*(?:\s+\x22[^\x22]*\x22)?\)").unwrap());
static HTML_COMMENT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"<!--[\s\S]*?-->").unwrap());
static BLANK_LINES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\n{3,}").unwrap());

/// Trims the text and leaves at most one blank line between paragraphs.
pub(crate) fn collapse_blank_lines(text: &str) -> String {
    BLANK_LINES.replace_all(text.trim(), "\n\n").into_owned()
}

/// Drops what should not be indexed: template tags (`{% include %}`,
/// `{% alert %}`, `{{ var }}`), HTML comments, and link targets (the link
/// text stays).
fn clean_markdown(content: &str) -> String {
    let text = TEMPLATE_TAG.replace_all(content, "");
    let text = HTML_COMMENT.replace_all(&text, "");
    let text = LINK.replace_all(&text, "$1");
    let text = text.replace("\\#", "#").replace("\\~", "~");
    collapse_blank_lines(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_front_matter_and_cleanup() {
        let doc = load_text(
            "---\ntitle: Advanced sick leave\nkeywords: sick leave, sick\n---\n\
             You can request [the form](https://x.example/a). {% alert %}Note{% endalert %}\n\n\n\n## Approval\n\
             Use the [template]({% page \"/tools/x\" %}).",
            true,
            "fallback",
        );
        assert_eq!(doc.title, "Advanced sick leave");
        assert_eq!(doc.tags, ["sick leave", "sick"]);
        assert_eq!(
            doc.body,
            "You can request the form. Note\n\n## Approval\nUse the template."
        );
    }

    #[test]
    fn title_falls_back_to_heading_then_file_name() {
        assert_eq!(load_text("# Expenses\nbody", true, "f").title, "Expenses");
        assert_eq!(load_text("body only", true, "notes").title, "notes");
        assert_eq!(load_text("  plain  ", false, "readme").body, "plain");
    }

    #[test]
    fn unsupported_types_are_refused_with_the_supported_list() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.exe");
        std::fs::write(&p, b"MZ").unwrap();
        let err = load_file(&p, &Limits::default()).unwrap_err().to_string();
        assert!(
            err.contains("unsupported file type") && err.contains(".md"),
            "{err}"
        );
    }

    #[test]
    fn documents_over_a_limit_fail_with_the_setting_to_change() {
        let limits = Limits {
            max_bytes: 100,
            max_text_bytes: 10,
            ..Limits::default()
        };
        let err = load_bytes(Path::new("big.md"), &[b'a'; 101], &limits).unwrap_err();
        assert!(err.to_string().contains("ingest.max_document_mb"), "{err}");
        let err = load_bytes(Path::new("long.txt"), &[b'a'; 50], &limits).unwrap_err();
        assert!(err.to_string().contains("ingest.max_text_mb"), "{err}");
        assert!(load_bytes(Path::new("ok.txt"), b"short", &limits).is_ok());
    }

    /// 200,000 nested `<div>`s (2.4 MB) once held the parser for the whole
    /// parse limit; the depth scan refuses them before any tree is built.
    #[test]
    fn deeply_nested_html_is_refused_at_once() {
        let bomb = format!(
            "<html><body>{}x{}</body></html>",
            "<div>".repeat(200_000),
            "</div>".repeat(200_000)
        );
        let started = std::time::Instant::now();
        let err =
            load_bytes(Path::new("bomb.html"), bomb.as_bytes(), &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("nested more than 512"), "{err}");
        assert!(err.to_string().contains("bomb.html"), "{err}");
        eprintln!("refused in {:?}", started.elapsed());
        // The same bomb behind what the tree builder reads differently
        // from a naive scan: `/>` on HTML elements (ignored), ruby parts
        // without a ruby (they nest), comments that end at `--!>` or at
        // once, SVG's title (not raw text there), and HTML inside SVG.
        let deep = "<div>".repeat(5_000);
        for bomb in [
            "<div/>".repeat(5_000),
            "<rt>".repeat(5_000),
            "<optgroup>".repeat(5_000),
            format!("<!-- x --!>{deep}<!-- -->"),
            format!("<!-->{deep}<!-- -->"),
            format!("<svg><title>{deep}</title></svg>"),
            format!(
                "<svg><foreignObject>{}</foreignObject></svg>",
                "<div/>".repeat(5_000)
            ),
            // End tags the tree builder ignores: a special element or a
            // scope boundary is in the way.
            "<span><section></span>".repeat(5_000),
            "<div><object></div>".repeat(5_000),
            // What the tokenizer reads differently: `>` inside a quoted
            // attribute, bogus comments, CDATA in SVG.
            format!("<div x=\"><!--\">{deep}<div y=\"-->\">"),
            format!("<? <!-- >{deep}-->"),
            format!("</ <!-- >{deep}-->"),
            format!("<svg><![CDATA[<!--]]></svg>{deep}-->"),
            // Tables nest through the rows and cells they imply.
            "<table><td>".repeat(200),
        ] {
            let err = load_bytes(Path::new("b.html"), bomb.as_bytes(), &Limits::default())
                .map(|d| d.body.len())
                .unwrap_err();
            assert!(
                err.to_string().contains("nested more than 512"),
                "{bomb:.40}: {err}"
            );
        }
        // Ordinary pages, unclosed paragraphs and list items included, and
        // nesting up to the limit, still load.
        let ordinary = format!(
            "<html><body><main>{}{}<svg>{}</svg><ul><li>a<li>b</ul><p>one<p>two<br><img src=x>{}deep{}</main></body></html>",
            "<p>text".repeat(5_000),
            "<div><span>unclosed</div><table><tr><td><div>cell</table>".repeat(5_000),
            "<path d=\"M0 0\"/>".repeat(5_000),
            "<section>".repeat(500),
            "</section>".repeat(500)
        );
        let doc = load_bytes(
            Path::new("ok.html"),
            ordinary.as_bytes(),
            &Limits::default(),
        )
        .unwrap();
        assert!(doc.body.contains("deep"));
    }
}
