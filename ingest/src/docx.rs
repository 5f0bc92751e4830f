//! Word documents (`.docx`, Office Open XML): the text of `word/document.xml`
//! as Markdown-like text. Paragraph styles that are headings (by their
//! style name, "heading 1" ..., or an outline level) become `#` lines, so
//! the chunker keeps a breadcrumb; table rows become one line each, cells
//! joined by ` | `; list paragraphs become `- ` items.
//!
//! The XML is read as a stream (quick-xml), never built into a tree, and
//! what is inflated from the archive is capped: a zip bomb or a huge part
//! is refused once `word/document.xml` passes 8 bytes of XML per byte of
//! text allowed (64 MB at the default limits) or the styles and
//! properties pass 8 MB. Text boxes are read in place; the fallback copy
//! of alternate content is skipped.

use std::collections::HashMap;
use std::io::{BufReader, Cursor, Read};
use std::time::Instant;

use quick_xml::events::{BytesStart, Event};
use rag_core::{Error, Result};

use crate::{Limits, LoadedDocument};

/// At most this many bytes of `word/document.xml` are inflated per byte of
/// text allowed: WordprocessingML spends a few bytes of markup per byte of
/// text (more in heavily formatted files, whose text is then capped lower).
const XML_PER_TEXT_BYTE: usize = 8;
/// At most this much of the styles and properties parts.
const MAX_SIDE_PART: usize = 8 << 20;
/// How often (in XML events) the parse deadline is checked.
const CHECK_EVERY: usize = 4096;

/// The text of a `.docx` file. A file that is not a Word document (not a
/// zip, no `word/document.xml`, malformed XML, encrypted) is refused with
/// the reason, and so is one over the text or time limits.
pub fn load_docx(bytes: &[u8], fallback_title: &str, limits: &Limits) -> Result<LoadedDocument> {
    let deadline = limits.deadline(Instant::now());
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
        Error::invalid(format!(
            "not a Word document (.docx is a zip archive; this one cannot be opened: {e}); \
             a Word 97-2003 .doc must be saved as .docx first"
        ))
    })?;
    let cap = limits.max_text_bytes.saturating_mul(XML_PER_TEXT_BYTE);
    let side = cap.min(MAX_SIDE_PART);
    let styles = match read_part(&mut archive, "word/styles.xml", side)? {
        Some(xml) => heading_styles(&xml, limits, deadline)?,
        None => HashMap::new(),
    };
    let Some(document) = read_part(&mut archive, "word/document.xml", cap)? else {
        return Err(Error::invalid(
            "not a Word document: the archive has no word/document.xml",
        ));
    };
    let title = read_part(&mut archive, "docProps/core.xml", side)?
        .and_then(|xml| core_title(&xml))
        .filter(|t| !t.is_empty());
    let (body, styled_title) = document_text(&document, &styles, limits, deadline)?;
    if !body.chars().any(char::is_alphanumeric) {
        return Err(Error::invalid("the Word document has no text"));
    }
    let title = title
        .or(styled_title)
        .or_else(|| {
            body.lines()
                .find_map(|l| l.strip_prefix('#'))
                .map(|h| h.trim_start_matches('#').trim().to_string())
        })
        .unwrap_or_else(|| fallback_title.to_string());
    Ok(LoadedDocument {
        title,
        tags: vec![],
        body,
        markdown: true,
        pages: vec![],
    })
}

/// One part of the archive, inflated up to `cap` bytes; `None` when the
/// archive has no such part.
fn read_part(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    cap: usize,
) -> Result<Option<Vec<u8>>> {
    let mut part = match archive.by_name(name) {
        Ok(part) => part,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => {
            return Err(Error::invalid(format!(
                "not a readable Word document: {name}: {e}"
            )));
        }
    };
    let too_big = || {
        Error::invalid(format!(
            "{name} inflates to more than {cap} bytes: more markup than the text limit allows \
             (ingest.max_text_mb)"
        ))
    };
    if usize::try_from(part.size()).unwrap_or(usize::MAX) > cap {
        return Err(too_big());
    }
    let mut out = Vec::new();
    // The declared size can lie: the reader stops at the cap either way.
    (&mut part)
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::invalid(format!("not a readable Word document: {name}: {e}")))?;
    if out.len() > cap {
        return Err(too_big());
    }
    Ok(Some(out))
}

/// What a paragraph style is: a heading of some level, or the title.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Style {
    Title,
    Heading(usize),
}

/// The heading styles of `word/styles.xml`, by style id: from the style's
/// name ("heading 2", "Title"), else its outline level, else what it is
/// based on.
fn heading_styles(
    xml: &[u8],
    limits: &Limits,
    deadline: Instant,
) -> Result<HashMap<String, Style>> {
    struct Raw {
        name: String,
        outline: Option<usize>,
        based_on: Option<String>,
    }
    let mut raw: HashMap<String, Raw> = HashMap::new();
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(xml));
    let mut buf = Vec::new();
    let mut current: Option<(String, Raw)> = None;
    let mut events = 0usize;
    loop {
        buf.clear();
        events += 1;
        if events.is_multiple_of(CHECK_EVERY) && Instant::now() >= deadline {
            return Err(limits.timed_out());
        }
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed("word/styles.xml", e))?;
        match &event {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"style" => {
                    let paragraph = attr(e, b"type").is_none_or(|t| t == "paragraph");
                    current = match attr(e, b"styleId") {
                        Some(id) if paragraph => Some((
                            id,
                            Raw {
                                name: String::new(),
                                outline: None,
                                based_on: None,
                            },
                        )),
                        _ => None,
                    };
                }
                b"name" => {
                    if let (Some((_, r)), Some(v)) = (current.as_mut(), attr(e, b"val")) {
                        r.name = v;
                    }
                }
                b"basedOn" => {
                    if let (Some((_, r)), Some(v)) = (current.as_mut(), attr(e, b"val")) {
                        r.based_on = Some(v);
                    }
                }
                b"outlineLvl" => {
                    if let (Some((_, r)), Some(v)) = (current.as_mut(), attr(e, b"val")) {
                        r.outline = v.parse::<usize>().ok();
                    }
                }
                _ => {}
            },
            Event::End(e) if e.local_name().as_ref() == b"style" => {
                if let Some((id, r)) = current.take() {
                    raw.insert(id, r);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let own = |r: &Raw| -> Option<Style> {
        let name = r.name.to_lowercase();
        if name == "title" {
            return Some(Style::Title);
        }
        if let Some(Ok(level)) = name
            .strip_prefix("heading")
            .map(|l| l.trim().parse::<usize>())
        {
            return Some(Style::Heading(level.clamp(1, 6)));
        }
        // Outline level 9 is "body text".
        r.outline
            .filter(|&l| l < 9)
            .map(|l| Style::Heading((l + 1).min(6)))
    };
    let mut styles = HashMap::new();
    for id in raw.keys() {
        // Follow `basedOn` a few steps (cycles are possible in bad files).
        let mut at = raw.get(id);
        for _ in 0..8 {
            let Some(r) = at else { break };
            if let Some(style) = own(r) {
                styles.insert(id.clone(), style);
                break;
            }
            at = r.based_on.as_ref().and_then(|b| raw.get(b));
        }
    }
    Ok(styles)
}

/// The style a paragraph's `w:pStyle` names, when the styles part says
/// nothing of it: Word's built-in ids ("Heading1", "Title").
fn builtin_style(id: &str) -> Option<Style> {
    if id.eq_ignore_ascii_case("title") {
        return Some(Style::Title);
    }
    let level = id
        .strip_prefix("Heading")
        .or_else(|| id.strip_prefix("heading"))?;
    level
        .parse::<usize>()
        .ok()
        .map(|l| Style::Heading(l.clamp(1, 6)))
}

/// `dc:title` of `docProps/core.xml`.
fn core_title(xml: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(xml));
    let mut buf = Vec::new();
    let mut inside = false;
    let mut title = String::new();
    loop {
        buf.clear();
        match reader.read_event_into(&mut buf).ok()? {
            Event::Start(e) if e.local_name().as_ref() == b"title" => inside = true,
            Event::End(e) if e.local_name().as_ref() == b"title" => break,
            Event::Text(t) if inside => title.push_str(&t.unescape().ok()?),
            Event::Eof => break,
            _ => {}
        }
    }
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(title)
}

/// A paragraph being read.
#[derive(Default)]
struct Paragraph {
    text: String,
    style: Option<Style>,
    /// `w:outlineLvl` set on the paragraph itself.
    outline: Option<usize>,
    list: bool,
}

/// A table being read: its finished rows, the row and the cell in
/// progress.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    row: Vec<String>,
    cell: String,
}

/// The body text of `word/document.xml`, and the text of its first
/// paragraph styled as the title.
fn document_text(
    xml: &[u8],
    styles: &HashMap<String, Style>,
    limits: &Limits,
    deadline: Instant,
) -> Result<(String, Option<String>)> {
    let mut reader = quick_xml::Reader::from_reader(BufReader::new(xml));
    let mut buf = Vec::new();
    let mut out = String::new();
    let mut title = None;
    let mut paragraph: Option<Paragraph> = None;
    let mut tables: Vec<Table> = Vec::new();
    let mut in_text = false;
    // Paragraphs inside the open one (a text box), and the depth inside
    // `mc:Fallback` (a second copy of alternate content).
    let (mut nested, mut fallback) = (0usize, 0usize);
    let mut events = 0usize;
    loop {
        buf.clear();
        events += 1;
        if events.is_multiple_of(CHECK_EVERY) {
            if Instant::now() >= deadline {
                return Err(limits.timed_out());
            }
            limits.check_text(out.len())?;
        }
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed("word/document.xml", e))?;
        match event {
            Event::Start(e) => match e.local_name().as_ref() {
                b"p" if paragraph.is_some() => {
                    nested += 1;
                    push_text(paragraph.as_mut(), " ");
                }
                b"p" => paragraph = Some(Paragraph::default()),
                b"Fallback" => fallback += 1,
                b"t" => in_text = true,
                b"tbl" => tables.push(Table::default()),
                b"tr" => {
                    if let Some(t) = tables.last_mut() {
                        t.row.clear();
                    }
                }
                b"tc" => {
                    if let Some(t) = tables.last_mut() {
                        t.cell.clear();
                    }
                }
                _ => paragraph_property(&e, paragraph.as_mut(), styles),
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                b"tab" => push_text(paragraph.as_mut(), " "),
                b"br" | b"cr" => push_text(paragraph.as_mut(), "\n"),
                b"p" => {}
                _ => paragraph_property(&e, paragraph.as_mut(), styles),
            },
            Event::Text(t) if in_text && fallback == 0 => {
                let text = t
                    .unescape()
                    .map_err(|e| malformed("word/document.xml", e))?;
                push_text(paragraph.as_mut(), &text);
            }
            Event::End(e) => match e.local_name().as_ref() {
                b"t" => in_text = false,
                b"Fallback" => fallback = fallback.saturating_sub(1),
                b"p" if nested > 0 => {
                    nested -= 1;
                    push_text(paragraph.as_mut(), " ");
                }
                b"p" => {
                    let Some(p) = paragraph.take() else { continue };
                    let text = p.text.split_whitespace().collect::<Vec<_>>().join(" ");
                    if text.is_empty() {
                        continue;
                    }
                    if let Some(t) = tables.last_mut() {
                        if !t.cell.is_empty() {
                            t.cell.push(' ');
                        }
                        t.cell.push_str(&text);
                        continue;
                    }
                    let style = p
                        .style
                        .or(p.outline.map(|l| Style::Heading((l + 1).min(6))));
                    match style {
                        Some(Style::Title) if title.is_none() => {
                            title = Some(text.clone());
                            block(&mut out, &format!("# {text}"));
                        }
                        Some(Style::Title) => block(&mut out, &format!("# {text}")),
                        Some(Style::Heading(level)) => {
                            block(&mut out, &format!("{} {text}", "#".repeat(level)))
                        }
                        None => {
                            // Lines of a paragraph, kept apart where it broke
                            // them; none may read as a heading.
                            let lines: Vec<String> = p
                                .text
                                .lines()
                                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                                .filter(|l| !l.is_empty())
                                .map(|l| match l.strip_prefix('#') {
                                    Some(_) => format!("\\{l}"),
                                    None => l,
                                })
                                .collect();
                            let text = lines.join("\n");
                            if p.list {
                                line(&mut out, &format!("- {text}"));
                            } else {
                                block(&mut out, &text);
                            }
                        }
                    }
                }
                b"tc" => {
                    if let Some(t) = tables.last_mut() {
                        let cell = std::mem::take(&mut t.cell);
                        t.row.push(cell);
                    }
                }
                b"tr" => {
                    if let Some(t) = tables.last_mut() {
                        let cells = std::mem::take(&mut t.row);
                        if cells.iter().any(|c| !c.is_empty()) {
                            t.rows.push(cells.join(" | "));
                        }
                    }
                }
                b"tbl" => {
                    let Some(done) = tables.pop() else { continue };
                    let rows = done.rows.join("\n");
                    match tables.last_mut() {
                        // A table in a cell: its rows become the cell's text.
                        Some(outer) => {
                            if !outer.cell.is_empty() {
                                outer.cell.push(' ');
                            }
                            outer.cell.push_str(&rows.replace('\n', "; "));
                        }
                        None if !rows.is_empty() => block(&mut out, &rows),
                        None => {}
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    limits.check_text(out.len())?;
    Ok((out, title))
}

/// Reads what a paragraph's properties say: its style, outline level, and
/// whether it is a list item.
fn paragraph_property(
    e: &BytesStart,
    paragraph: Option<&mut Paragraph>,
    styles: &HashMap<String, Style>,
) {
    let Some(p) = paragraph else { return };
    match e.local_name().as_ref() {
        b"pStyle" => {
            if let Some(id) = attr(e, b"val") {
                p.style = styles.get(&id).copied().or_else(|| builtin_style(&id));
                p.list |= id.to_lowercase().starts_with("list");
            }
        }
        b"outlineLvl" => {
            p.outline = attr(e, b"val")
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&l| l < 9);
        }
        b"numPr" => p.list = true,
        _ => {}
    }
}

fn push_text(paragraph: Option<&mut Paragraph>, text: &str) {
    if let Some(p) = paragraph {
        p.text.push_str(text);
    }
}

/// Appends a block (a paragraph, a heading, a table) after a blank line.
fn block(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(text);
}

/// Appends a list item: on its own line, right after a previous item.
fn line(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push_str(if out.ends_with(|c: char| c != '\n') && last_is_item(out) {
            "\n"
        } else {
            "\n\n"
        });
    }
    out.push_str(text);
}

fn last_is_item(out: &str) -> bool {
    out.rsplit('\n').next().is_some_and(|l| l.starts_with("- "))
}

/// The value of an attribute, by local name (`w:val` is `val`).
fn attr(e: &BytesStart, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn malformed(part: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not a readable Word document: {part}: {e}"))
}

/// Builds `.docx` files for tests (ours and the end-to-end tests').
#[doc(hidden)]
pub mod fixture {
    use std::io::Write;

    /// One block of a test document.
    pub enum Block<'a> {
        /// A paragraph with a style id (`Heading1`, `Title`, `ListParagraph`, or none).
        Paragraph(Option<&'a str>, &'a str),
        /// A table of rows of cells.
        Table(Vec<Vec<&'a str>>),
    }

    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    fn paragraph(style: Option<&str>, text: &str) -> String {
        let props = style
            .map(|s| format!("<w:pPr><w:pStyle w:val=\"{s}\"/></w:pPr>"))
            .unwrap_or_default();
        format!(
            "<w:p>{props}<w:r><w:t xml:space=\"preserve\">{}</w:t></w:r></w:p>",
            escape(text)
        )
    }

    /// A minimal Word document with `blocks`, the styles `Heading1`-`3`
    /// named as Word names them, and `title` in its core properties.
    pub fn build(blocks: &[Block], title: Option<&str>) -> Vec<u8> {
        let mut body = String::new();
        for b in blocks {
            match b {
                Block::Paragraph(style, text) => body.push_str(&paragraph(*style, text)),
                Block::Table(rows) => {
                    body.push_str("<w:tbl>");
                    for row in rows {
                        body.push_str("<w:tr>");
                        for cell in row {
                            body.push_str(&format!("<w:tc>{}</w:tc>", paragraph(None, cell)));
                        }
                        body.push_str("</w:tr>");
                    }
                    body.push_str("</w:tbl>");
                }
            }
        }
        let w = "xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"";
        let document = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\
             <w:document {w}><w:body>{body}<w:sectPr/></w:body></w:document>"
        );
        let mut styles = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><w:styles {w}>");
        for level in 1..=3 {
            styles.push_str(&format!(
                "<w:style w:type=\"paragraph\" w:styleId=\"Heading{level}\">\
                 <w:name w:val=\"heading {level}\"/><w:basedOn w:val=\"Normal\"/></w:style>"
            ));
        }
        styles.push_str(
            "<w:style w:type=\"paragraph\" w:styleId=\"Title\"><w:name w:val=\"Title\"/></w:style>\
             <w:style w:type=\"paragraph\" w:styleId=\"Normal\"><w:name w:val=\"Normal\"/></w:style>\
             </w:styles>",
        );
        let core = title.map(|t| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><cp:coreProperties \
                 xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" \
                 xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:title>{}</dc:title></cp:coreProperties>",
                escape(t)
            )
        });
        let content_types = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
            <Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
            <Default Extension=\"xml\" ContentType=\"application/xml\"/>\
            <Override PartName=\"/word/document.xml\" \
            ContentType=\"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml\"/>\
            </Types>";
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut parts = vec![
            ("[Content_Types].xml", content_types.to_string()),
            ("word/document.xml", document),
            ("word/styles.xml", styles),
        ];
        if let Some(core) = core {
            parts.push(("docProps/core.xml", core));
        }
        for (name, text) in parts {
            zip.start_file(name, options).expect("zip entry");
            zip.write_all(text.as_bytes()).expect("zip write");
        }
        zip.finish().expect("zip finish").into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{Block, build};
    use super::*;

    #[test]
    fn headings_become_the_breadcrumb_and_tables_rows() {
        let bytes = build(
            &[
                Block::Paragraph(Some("Title"), "Travel policy"),
                Block::Paragraph(Some("Heading1"), "Per diem"),
                Block::Paragraph(None, "Meals are paid at 45 EUR per day & night."),
                Block::Paragraph(Some("ListParagraph"), "Keep receipts"),
                Block::Paragraph(Some("ListParagraph"), "File within 30 days"),
                Block::Paragraph(Some("Heading2"), "Rates by city"),
                Block::Table(vec![vec!["City", "Rate"], vec!["Berlin", "60 EUR"]]),
                Block::Paragraph(None, "#not a heading"),
            ],
            Some("Travel and expenses"),
        );
        let doc = load_docx(&bytes, "file", &Limits::default()).unwrap();
        assert_eq!(doc.title, "Travel and expenses");
        assert!(doc.markdown);
        assert_eq!(
            doc.body,
            "# Travel policy\n\n# Per diem\n\nMeals are paid at 45 EUR per day & night.\n\n\
             - Keep receipts\n- File within 30 days\n\n## Rates by city\n\n\
             City | Rate\nBerlin | 60 EUR\n\n\\#not a heading"
        );
        let headings = crate::chunk::heading_offsets(&doc.body);
        let at = doc.body.find("Berlin").unwrap();
        assert_eq!(
            crate::chunk::breadcrumb(&headings, at),
            "Per diem > Rates by city"
        );
    }

    #[test]
    fn the_title_falls_back_to_the_title_style_then_the_file_name() {
        let styled = build(
            &[
                Block::Paragraph(Some("Title"), "Onboarding"),
                Block::Paragraph(None, "Welcome."),
            ],
            None,
        );
        assert_eq!(
            load_docx(&styled, "f", &Limits::default()).unwrap().title,
            "Onboarding"
        );
        let plain = build(&[Block::Paragraph(None, "Just text.")], None);
        assert_eq!(
            load_docx(&plain, "notes", &Limits::default())
                .unwrap()
                .title,
            "notes"
        );
    }

    #[test]
    fn text_boxes_stay_in_place_and_fallback_copies_are_skipped() {
        let w = "xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\" \
                 xmlns:mc=\"http://schemas.openxmlformats.org/markup-compatibility/2006\"";
        let xml = format!(
            "<w:document {w}><w:body><w:p><w:r><w:t>Before the box.</w:t></w:r>\
             <w:r><mc:AlternateContent><mc:Choice><w:txbxContent><w:p><w:r><w:t>Inside it.</w:t>\
             </w:r></w:p></w:txbxContent></mc:Choice><mc:Fallback><w:txbxContent><w:p><w:r>\
             <w:t>Inside it.</w:t></w:r></w:p></w:txbxContent></mc:Fallback></mc:AlternateContent>\
             </w:r><w:r><w:t>After it.</w:t></w:r></w:p></w:body></w:document>"
        );
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(
            "word/document.xml",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, xml.as_bytes()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let doc = load_docx(&bytes, "f", &Limits::default()).unwrap();
        assert_eq!(doc.body, "Before the box. Inside it. After it.");
    }

    #[test]
    fn broken_files_fail_with_the_reason() {
        let limits = Limits::default();
        let err = load_docx(b"PK\x03\x04 not really", "f", &limits).unwrap_err();
        assert!(err.to_string().contains("not a Word document"), "{err}");
        let err = load_docx(b"plain text", "f", &limits).unwrap_err();
        assert!(
            err.to_string().contains(".doc must be saved as .docx"),
            "{err}"
        );
        // A zip that is not a Word document.
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("a.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, b"hello").unwrap();
        let other = zip.finish().unwrap().into_inner();
        let err = load_docx(&other, "f", &limits).unwrap_err();
        assert!(err.to_string().contains("no word/document.xml"), "{err}");
        // Malformed XML inside.
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(
            "word/document.xml",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, b"<w:document><w:body><w:p></w:body>").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let err = load_docx(&bytes, "f", &limits).unwrap_err();
        assert!(err.to_string().contains("word/document.xml"), "{err}");
        // Empty text.
        let empty = build(&[Block::Paragraph(None, "   ")], None);
        let err = load_docx(&empty, "f", &limits).unwrap_err();
        assert!(err.to_string().contains("no text"), "{err}");
    }

    #[test]
    fn a_zip_bomb_stops_at_the_text_limit() {
        // 64 MB of one repeated paragraph deflates to well under 1 MB.
        let paragraph = "<w:p><w:r><w:t>aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</w:t></w:r></w:p>";
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file(
            "word/document.xml",
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, b"<w:document><w:body>").unwrap();
        for _ in 0..(64 << 20) / paragraph.len() {
            std::io::Write::write_all(&mut zip, paragraph.as_bytes()).unwrap();
        }
        std::io::Write::write_all(&mut zip, b"</w:body></w:document>").unwrap();
        let bomb = zip.finish().unwrap().into_inner();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let limits = Limits {
            max_text_bytes: 1 << 20,
            ..Limits::default()
        };
        let err = load_docx(&bomb, "f", &limits).unwrap_err();
        assert!(err.to_string().contains("ingest.max_text_mb"), "{err}");
    }
}
