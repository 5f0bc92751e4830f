//! HTML and PDF: the two formats that need a parser rather than a cleanup.

use rag_core::{Error, Result};
use scraper::{ElementRef, Html, Node, Selector};

use crate::{Limits, LoadedDocument};

/// Elements whose text is never content: code, styling, navigation and
/// page furniture.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
    "button", "svg", "iframe", "head",
];

/// The deepest element nesting a page may have. Browsers build at most
/// 512 levels (Blink's parser attaches deeper elements as siblings), so no
/// real page needs more; html5ever's tree builder slows down with depth
/// (a 2.4 MB page of 200,000 nested `<div>`s held it past a minute).
pub const MAX_HTML_DEPTH: usize = 512;

/// Elements that never have content.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen",
];
/// Elements that the next one of their kind (or their parent's end)
/// closes: left open in ordinary HTML, they do not nest.
const SELF_CLOSING: &[&str] = &[
    "p", "li", "dt", "dd", "tr", "td", "th", "option", "thead", "tbody", "tfoot", "colgroup",
];
/// Elements whose content is raw text, not tags (in HTML, not inside SVG
/// or MathML).
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title", "xmp", "plaintext"];
/// Elements whose content is SVG or MathML, where `/>` closes an element.
const FOREIGN: &[&str] = &["svg", "math"];
/// Elements inside SVG or MathML whose content is HTML again.
const HTML_AGAIN: &[&str] = &["foreignobject", "desc", "title", "annotation-xml"];
/// The tree builder's "special" elements and scope boundaries: an end tag
/// that would have to close one of these to reach its element is ignored
/// (the HTML standard's "any other end tag" and "has an element in
/// scope"), so the scan keeps everything open then.
const SPECIAL: &[&str] = &[
    "address",
    "applet",
    "area",
    "article",
    "aside",
    "base",
    "basefont",
    "bgsound",
    "blockquote",
    "body",
    "br",
    "button",
    "caption",
    "center",
    "col",
    "colgroup",
    "dd",
    "details",
    "dir",
    "div",
    "dl",
    "dt",
    "embed",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "frame",
    "frameset",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hgroup",
    "hr",
    "html",
    "iframe",
    "img",
    "input",
    "keygen",
    "li",
    "link",
    "listing",
    "main",
    "marquee",
    "menu",
    "meta",
    "nav",
    "noembed",
    "noframes",
    "noscript",
    "object",
    "ol",
    "p",
    "param",
    "plaintext",
    "pre",
    "script",
    "search",
    "section",
    "select",
    "source",
    "style",
    "summary",
    "table",
    "tbody",
    "td",
    "template",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "track",
    "ul",
    "wbr",
    "xmp",
    "svg",
    "math",
    "foreignobject",
    "desc",
    "annotation-xml",
];
/// Elements that bound the scope an end tag of a special element looks in.
const SCOPE: &[&str] = &[
    "applet", "caption", "html", "table", "td", "th", "marquee", "object", "template",
];
/// Levels the tree builder adds for a table: the table, and the `tbody`,
/// `tr` and `td` it makes whether or not the page writes them.
const TABLE_LEVELS: usize = 4;

/// Where the tag that starts at `from` (just after its name) ends: the
/// first `>` outside a quoted attribute value.
fn tag_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'>' => return i,
            b'=' => {
                i += 1;
                while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
                    i += 1;
                }
                if let Some(&q) = bytes.get(i).filter(|&&q| q == b'"' || q == b'\'') {
                    i = bytes[i + 1..]
                        .iter()
                        .position(|&b| b == q)
                        .map_or(bytes.len(), |p| i + 1 + p);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// How deep the page's elements nest, counted by a linear scan of its tags
/// (no tree is built), stopping as soon as it passes `limit`. It follows
/// the tokenizer and the tree builder where that matters for depth: tags
/// end at a `>` outside quoted attribute values; comments at `-->`, `--!>`
/// or at once (`<!-->`), bogus ones (`<?`, `<!x`, `</1`) at the next `>`,
/// CDATA in SVG at `]]>`; an end tag closes the nearest open element of
/// its name and those inside it, unless a special element or a scope
/// boundary is in the way (then it is ignored, as the tree builder does);
/// void and self-closing elements do not count, a table counts its
/// implied rows and cells; `/>` closes an element only inside SVG or
/// MathML (HTML ignores it). Where it is unsure it counts more, never less.
pub fn html_depth(html: &str, limit: usize) -> usize {
    let bytes = html.as_bytes();
    // Open elements, each with whether its content is SVG or MathML.
    let mut open: Vec<(&str, bool)> = Vec::new();
    let mut deepest = 0;
    let mut i = 0;
    let skip_past = |from: usize, needle: &str| {
        html[from..]
            .find(needle)
            .map_or(bytes.len(), |e| from + e + needle.len())
    };
    while let Some(at) = memchr_lt(bytes, i) {
        i = at + 1;
        let foreign = open.last().is_some_and(|(_, f)| *f);
        if html[i..].starts_with("!--") {
            let body = &html[i + 3..];
            i = if body.starts_with('>') {
                i + 4
            } else if body.starts_with("->") {
                i + 5
            } else {
                let ends = [
                    body.find("-->").map(|e| e + 3),
                    body.find("--!>").map(|e| e + 4),
                ];
                ends.into_iter()
                    .flatten()
                    .min()
                    .map_or(bytes.len(), |e| i + 3 + e)
            };
            continue;
        }
        if foreign && html[i..].starts_with("![CDATA[") {
            i = skip_past(i, "]]>");
            continue;
        }
        let closing = bytes.get(i) == Some(&b'/');
        let start = i + usize::from(closing);
        let next = bytes.get(start).copied();
        let bogus = if closing {
            next.is_some_and(|c| !c.is_ascii_alphabetic())
        } else {
            matches!(next, Some(b'!' | b'?'))
        };
        if bogus {
            // A doctype or a bogus comment: to the next `>`.
            i = skip_past(start, ">");
            continue;
        }
        if !bytes.get(start).is_some_and(u8::is_ascii_alphabetic) {
            continue; // `<` as text
        }
        let end = html[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .map_or(bytes.len(), |e| start + e);
        let name = &html[start..end];
        let tag_end = tag_end(bytes, end);
        let self_closed = html[..tag_end].ends_with('/');
        i = tag_end;
        let is = |list: &[&str]| list.iter().any(|t| t.eq_ignore_ascii_case(name));
        if closing {
            if let Some(at) = open.iter().rposition(|(o, _)| o.eq_ignore_ascii_case(name)) {
                // In the way: for a table, another template; for a special
                // element, a scope boundary; for any other, a special one.
                // (A table's unnamed levels are its cells: both.)
                let in_way = |list: &[&str]| {
                    open[at + 1..].iter().any(|(o, _)| {
                        o.is_empty() || list.iter().any(|s| s.eq_ignore_ascii_case(o))
                    })
                };
                let blocked = if name.eq_ignore_ascii_case("table") {
                    open[at + 1..]
                        .iter()
                        .any(|(o, _)| o.eq_ignore_ascii_case("template"))
                } else if is(SPECIAL) {
                    in_way(SCOPE)
                } else {
                    in_way(SPECIAL)
                };
                if !blocked {
                    open.truncate(at);
                }
            }
        } else if !foreign && is(RAW_TEXT) {
            // Skip to the element's end tag, in any case.
            let name = name.as_bytes();
            i = (i..bytes.len())
                .find(|&j| {
                    bytes[j] == b'<'
                        && bytes.get(j + 1) == Some(&b'/')
                        && bytes
                            .get(j + 2..j + 2 + name.len())
                            .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .unwrap_or(bytes.len());
        } else if !((foreign && self_closed) || is(VOID) || (!foreign && is(SELF_CLOSING))) {
            let content_foreign = if foreign {
                !is(HTML_AGAIN)
            } else {
                is(FOREIGN)
            };
            open.push((name, content_foreign));
            if !foreign && name.eq_ignore_ascii_case("table") {
                // Unnamed levels: no end tag closes them but the table's.
                open.extend(std::iter::repeat_n(("", false), TABLE_LEVELS - 1));
            }
            deepest = deepest.max(open.len());
            if deepest > limit {
                break;
            }
        }
    }
    deepest
}

fn memchr_lt(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .iter()
        .position(|&b| b == b'<')
        .map(|p| from + p)
}

/// The main text of an HTML page as Markdown-like text (headings become
/// `#` lines, so the chunker keeps a breadcrumb), with the title from
/// `<title>`, else the first `<h1>`, else `fallback_title`. A page nested
/// deeper than [`MAX_HTML_DEPTH`] is refused before it is parsed.
pub fn load_html(html: &str, fallback_title: &str) -> Result<LoadedDocument> {
    let depth = html_depth(html, MAX_HTML_DEPTH);
    if depth > MAX_HTML_DEPTH {
        return Err(Error::invalid(format!(
            "HTML nested more than {MAX_HTML_DEPTH} elements deep (browsers build no deeper); \
             refused as hostile structure"
        )));
    }
    let page = Html::parse_document(html);
    let select = |s: &str| Selector::parse(s).expect("static selector");
    let text_of = |e: ElementRef| e.text().collect::<Vec<_>>().join(" ");
    let clean = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let title = page
        .select(&select("title"))
        .next()
        .map(|t| clean(text_of(t)))
        .filter(|t| !t.is_empty())
        .or_else(|| {
            page.select(&select("h1"))
                .next()
                .map(|t| clean(text_of(t)))
                .filter(|t| !t.is_empty())
        })
        .unwrap_or_else(|| fallback_title.to_string());
    // The page's main content when it marks it, else the whole body.
    let root = ["main", "article", "[role=main]", "body"]
        .iter()
        .find_map(|s| page.select(&select(s)).next())
        .unwrap_or_else(|| page.root_element());
    let mut out = String::new();
    walk(root, &mut out, 0);
    let body = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    let body = crate::load::collapse_blank_lines(&body);
    Ok(LoadedDocument {
        title,
        tags: vec![],
        body,
        markdown: true,
        pages: vec![],
    })
}

/// Appends the text under `element`; `depth` bounds the recursion, should
/// the tree builder nest deeper than [`html_depth`] counted.
fn walk(element: ElementRef, out: &mut String, depth: usize) {
    if depth > 2 * MAX_HTML_DEPTH {
        return;
    }
    for child in element.children() {
        match child.value() {
            Node::Text(text) => out.push_str(text),
            Node::Element(e) => {
                let name = e.name();
                if SKIPPED.contains(&name) {
                    continue;
                }
                let Some(child) = ElementRef::wrap(child) else {
                    continue;
                };
                match name {
                    "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                        let level = name[1..].parse::<usize>().unwrap_or(1);
                        let text: String = child.text().collect::<Vec<_>>().join(" ");
                        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                        if !text.is_empty() {
                            out.push_str(&format!("\n\n{} {text}\n\n", "#".repeat(level)));
                        }
                    }
                    "br" => out.push('\n'),
                    "li" => {
                        out.push_str("\n- ");
                        walk(child, out, depth + 1);
                        out.push('\n');
                    }
                    "tr" => {
                        out.push('\n');
                        walk(child, out, depth + 1);
                    }
                    "td" | "th" => {
                        out.push_str(" | ");
                        walk(child, out, depth + 1);
                    }
                    "p" | "div" | "section" | "article" | "main" | "ul" | "ol" | "table"
                    | "blockquote" | "pre" | "dl" | "dt" | "dd" | "figure" | "figcaption" => {
                        out.push_str("\n\n");
                        walk(child, out, depth + 1);
                        out.push_str("\n\n");
                    }
                    _ => walk(child, out, depth + 1),
                }
            }
            _ => {}
        }
    }
}

/// The text of a PDF, page by page. Encrypted, unreadable and image-only
/// files are refused with the reason, and so are files over the page,
/// text or time limits.
pub fn load_pdf(bytes: &[u8], fallback_title: &str, limits: &Limits) -> Result<LoadedDocument> {
    let deadline = limits.deadline(std::time::Instant::now());
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| {
        let msg = e.to_string();
        if msg.to_lowercase().contains("decrypt") || msg.to_lowercase().contains("password") {
            Error::invalid(format!(
                "encrypted PDF: it needs a password to open ({msg}); remove the protection and try again"
            ))
        } else {
            Error::invalid(format!("not a readable PDF: {msg}"))
        }
    })?;
    if doc.is_encrypted() && doc.encryption_state.is_none() {
        return Err(Error::invalid(
            "encrypted PDF: it needs a password to open; remove the protection and try again",
        ));
    }
    let numbers = doc.get_pages();
    if numbers.len() > limits.max_pages {
        return Err(Error::invalid(format!(
            "{} pages: more than the {} read per document (ingest.max_pages)",
            numbers.len(),
            limits.max_pages
        )));
    }
    let mut body = String::new();
    let mut pages = Vec::new();
    for number in numbers.keys() {
        if std::time::Instant::now() >= deadline {
            return Err(limits.timed_out());
        }
        let text = doc.extract_text(&[*number]).unwrap_or_default();
        let text = text.lines().map(str::trim).collect::<Vec<_>>().join("\n");
        let text = crate::load::collapse_blank_lines(&text);
        if !text.chars().any(char::is_alphanumeric) {
            continue;
        }
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        pages.push((*number, body.len()));
        body.push_str(&text);
        limits.check_text(body.len())?;
    }
    if pages.is_empty() {
        return Err(Error::invalid(
            "the PDF has no extractable text (scanned or image-only? text recognition is not supported)",
        ));
    }
    let title = pdf_title(&doc).unwrap_or_else(|| fallback_title.to_string());
    Ok(LoadedDocument {
        title,
        tags: vec![],
        body,
        markdown: false,
        pages,
    })
}

/// The `/Title` of the document information dictionary, when set.
fn pdf_title(doc: &lopdf::Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let info = match info {
        lopdf::Object::Reference(id) => doc.get_object(*id).ok()?,
        other => other,
    };
    let title = info.as_dict().ok()?.get(b"Title").ok()?;
    let title = lopdf::decode_text_string(title).ok()?;
    let title = title.trim().to_string();
    (!title.is_empty()).then_some(title)
}

/// Writes PDFs for tests: one page per entry, each line a text line
/// (`None`: a page with no text, as a scan would be).
#[doc(hidden)]
pub mod pdf_fixture {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};

    pub fn build(pages: &[Option<&[&str]>], title: Option<&str>) -> Document {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
        });
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
        });
        let mut kids = Vec::new();
        for page in pages {
            let mut operations = Vec::new();
            if let Some(lines) = page {
                operations.push(Operation::new("BT", vec![]));
                operations.push(Operation::new("Tf", vec!["F1".into(), 12.into()]));
                operations.push(Operation::new("Td", vec![72.into(), 720.into()]));
                operations.push(Operation::new("TL", vec![14.into()]));
                for line in *lines {
                    operations.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
                    operations.push(Operation::new("T*", vec![]));
                }
                operations.push(Operation::new("ET", vec![]));
            } else {
                // A filled rectangle: marks on the page, no text.
                operations.push(Operation::new(
                    "re",
                    vec![72.into(), 72.into(), 400.into(), 600.into()],
                ));
                operations.push(Operation::new("f", vec![]));
            }
            let content = Content { operations };
            let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
            kids.push(
                doc.add_object(dictionary! {
                    "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
                })
                .into(),
            );
        }
        let count = kids.len() as i64;
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => kids, "Count" => count,
                "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        if let Some(title) = title {
            let info_id = doc.add_object(dictionary! {
                "Title" => Object::string_literal(title),
            });
            doc.trailer.set("Info", info_id);
        }
        doc
    }

    pub fn bytes(mut doc: Document) -> Vec<u8> {
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::pdf_fixture::{build, bytes};
    use super::*;

    #[test]
    fn html_keeps_main_text_and_headings_only() {
        let html = r#"<!doctype html><html><head><title>Travel policy | Intranet</title>
            <style>.x { color: red }</style><script>var secret = "tracking";</script></head>
            <body><nav><a href="/">Home</a> <a href="/leave">Leave</a></nav>
            <header>Company intranet</header>
            <main><h1>Travel policy</h1><p>Book trips in the   travel tool.</p>
            <h2>Per diem</h2><ul><li>Lunch: 15 EUR</li><li>Dinner: 25 EUR</li></ul>
            <table><tr><th>City</th><th>Rate</th></tr><tr><td>Lisbon</td><td>120</td></tr></table>
            </main><footer>Copyright</footer></body></html>"#;
        let doc = load_html(html, "fallback").unwrap();
        assert_eq!(doc.title, "Travel policy | Intranet");
        assert!(doc.markdown);
        for gone in ["secret", "color", "Home", "Company intranet", "Copyright"] {
            assert!(!doc.body.contains(gone), "{gone:?} leaked: {}", doc.body);
        }
        assert!(
            doc.body
                .contains("# Travel policy\n\nBook trips in the travel tool."),
            "{}",
            doc.body
        );
        assert!(doc.body.contains("## Per diem"), "{}", doc.body);
        assert!(doc.body.contains("- Lunch: 15 EUR\n"), "{}", doc.body);
        assert!(doc.body.contains("| Lisbon | 120"), "{}", doc.body);

        // Without <title>, the first <h1>; without either, the file name.
        assert_eq!(
            load_html("<body><h1>Leave</h1><p>x</p></body>", "f")
                .unwrap()
                .title,
            "Leave"
        );
        assert_eq!(
            load_html("<p>just text</p>", "notes").unwrap().title,
            "notes"
        );
    }

    #[test]
    fn pdf_text_comes_page_by_page_with_the_title() {
        let pdf = bytes(build(
            &[
                Some(&["Expense policy", "Receipts are kept for seven years."]),
                None,
                Some(&["Mileage is paid at 0.30 EUR per km."]),
            ],
            Some("Expenses handbook"),
        ));
        let doc = load_pdf(&pdf, "file", &Limits::default()).unwrap();
        assert_eq!(doc.title, "Expenses handbook");
        // The empty second page is left out; page numbers stay true.
        assert_eq!(doc.pages.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3]);
        let page3 = &doc.body[doc.pages[1].1..];
        assert!(page3.contains("Mileage is paid"), "{page3:?}");
        assert!(
            doc.body[..doc.pages[1].1].contains("seven years"),
            "{}",
            doc.body
        );
        // No title in the file: the fallback.
        let pdf = bytes(build(&[Some(&["text"])], None));
        assert_eq!(
            load_pdf(&pdf, "scan-01", &Limits::default()).unwrap().title,
            "scan-01"
        );
    }

    #[test]
    fn bad_pdfs_fail_with_their_reason() {
        let limits = Limits::default();
        let err = load_pdf(b"%PDF-1.5\nthis is not really a pdf", "x", &limits).unwrap_err();
        assert!(err.to_string().contains("not a readable PDF"), "{err}");

        let image_only = bytes(build(&[None, None], None));
        let err = load_pdf(&image_only, "x", &limits).unwrap_err();
        assert!(err.to_string().contains("no extractable text"), "{err}");

        let mut doc = build(&[Some(&["Salaries are confidential."])], None);
        let id = lopdf::Object::string_literal(b"0123456789abcdef".to_vec());
        doc.trailer.set("ID", vec![id.clone(), id]);
        let state = lopdf::EncryptionState::try_from(lopdf::EncryptionVersion::V2 {
            document: &doc,
            owner_password: "owner",
            user_password: "secret",
            key_length: 128,
            permissions: lopdf::Permissions::all(),
        })
        .unwrap();
        doc.encrypt(&state).unwrap();
        let err = load_pdf(&bytes(doc), "x", &limits).unwrap_err();
        assert!(err.to_string().contains("encrypted PDF"), "{err}");

        let three = bytes(build(&[Some(&["a"]), Some(&["b"]), Some(&["c"])], None));
        let two_pages = Limits {
            max_pages: 2,
            ..limits
        };
        let err = load_pdf(&three, "x", &two_pages).unwrap_err();
        assert!(err.to_string().contains("ingest.max_pages"), "{err}");
        let no_time = Limits {
            parse_timeout: std::time::Duration::ZERO,
            ..limits
        };
        let err = load_pdf(&three, "x", &no_time).unwrap_err();
        assert!(err.to_string().contains("ingest.parse_timeout_s"), "{err}");
    }
}
