//! What the fuzz targets run (fuzz/), their seed corpora, and the checks
//! on each result, shared with the regression tests that replay seeds and
//! every input the fuzzer once found (`ingest/tests/fuzz_regressions.rs`).

use std::path::Path;
use std::time::Duration;

use crate::formats::pdf_fixture::{build, bytes};
use crate::{Limits, LoadedDocument};

/// The fuzz targets of the loaders, by name (the upload form's is
/// `rag_api::fuzzing`).
pub const TARGETS: &[&str] = &["pdf", "html", "markdown", "docx"];

/// The limits under fuzzing: the defaults, with a parse time well under
/// libFuzzer's own timeout so that a slow input shows as our error rather
/// than as a hang.
pub fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 20,
        parse_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// Runs one input through a target. Panics (which the fuzzer reports) on a
/// crash in our code or a library's, and on results that break what the
/// rest of the pipeline relies on.
pub fn run(target: &str, data: &[u8]) {
    let limits = limits();
    match target {
        "pdf" | "html" | "markdown" | "docx" => {
            let name = match target {
                "pdf" => "fuzz.pdf",
                "html" => "fuzz.html",
                "docx" => "fuzz.docx",
                _ => "fuzz.md",
            };
            if let Ok(doc) = crate::load_bytes(Path::new(name), data, &limits) {
                check_document(&doc, &limits);
            }
        }
        other => panic!("no fuzz target {other}; targets: {TARGETS:?}"),
    }
}

fn check_document(doc: &LoadedDocument, limits: &Limits) {
    assert!(
        doc.body.len() <= limits.max_text_bytes,
        "text over the limit"
    );
    let mut last = None;
    for &(page, offset) in &doc.pages {
        assert!(
            doc.body.is_char_boundary(offset),
            "page {page} starts mid-character"
        );
        assert!(
            last.is_none_or(|(p, o)| p < page && o <= offset),
            "pages out of order"
        );
        last = Some((page, offset));
    }
}

/// Seed inputs per target, made here rather than stored: `(target, name,
/// bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let pdfs: Vec<(&str, Vec<u8>)> = vec![
        (
            "three-pages",
            bytes(build(
                &[
                    Some(&["Expense policy", "Receipts are kept for seven years."]),
                    None,
                    Some(&["Mileage is paid at 0.30 EUR per km."]),
                ],
                Some("Expenses handbook"),
            )),
        ),
        ("image-only", bytes(build(&[None, None], None))),
        (
            "one-line",
            bytes(build(&[Some(&["(nested) \\ escapes"])], None)),
        ),
        ("header-only", b"%PDF-1.5\n%%EOF\n".to_vec()),
    ];
    for (name, pdf) in pdfs {
        out.push(("pdf", format!("{name}.pdf"), pdf));
    }
    let html = [
        r#"<!doctype html><html><head><title>Travel | Intranet</title><style>x{}</style><script>var s=1;</script></head><body><nav><a href="/">Home</a></nav><main><h1>Travel</h1><p>Book trips.</p><h2>Per diem</h2><ul><li>Lunch: 15 EUR</li></ul><table><tr><th>City</th><td>Lisbon</td></tr></table></main></body></html>"#,
        "<p>unclosed <b>bold <i>italic</p><h1>Late title",
        "<html><body><pre>  code\n  block</pre><br><br/><!-- comment --></body>",
        "<table><tr><td><table><tr><td>nested</td></tr></table></td></tr></table>",
    ];
    for (i, page) in html.iter().enumerate() {
        out.push(("html", format!("page-{i}.html"), page.as_bytes().to_vec()));
    }
    let markdown = [
        "---\ntitle: Sick leave\nkeywords: sick, leave\ntags: [hr]\n---\n# Sick leave\nYou can request [the form](https://x.example/a).\n\n## Approval\n{% alert %}Note{% endalert %}\n",
        "---\ntitle: [unclosed\n---\nbody",
        "# A\n## B\n### C\ntext {{ var }} <!-- hidden --> ![img](x.png)\n\n\n\n- item\n",
        "no front matter, just text\\# and \\~",
    ];
    for (i, page) in markdown.iter().enumerate() {
        out.push(("markdown", format!("page-{i}.md"), page.as_bytes().to_vec()));
    }
    use crate::docx::fixture::{Block, build as docx};
    let docs = [
        (
            "handbook",
            docx(
                &[
                    Block::Paragraph(Some("Title"), "Handbook"),
                    Block::Paragraph(Some("Heading1"), "Leave"),
                    Block::Paragraph(None, "Sick leave is paid for 60 days."),
                    Block::Table(vec![vec!["Kind", "Days"], vec!["Annual", "25"]]),
                ],
                Some("Employee handbook"),
            ),
        ),
        (
            "plain",
            docx(&[Block::Paragraph(None, "one & <two>")], None),
        ),
    ];
    let truncated = docs[0].1[..docs[0].1.len() / 2].to_vec();
    for (name, bytes) in docs.into_iter().chain([("truncated", truncated)]) {
        out.push(("docx", format!("{name}.docx"), bytes));
    }
    out
}
