//! Sources over real peers on this machine: a Git repository the test
//! commits to (with the `git` command), and a web site an HTTP server on
//! loopback serves, whose pages change and disappear.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use rag_core::{DocumentStore, Embedder, SourceRecord, VectorStore};
use rag_ingest::sources::{GitConfig, SourceConfig, SyncReport, WebConfig, sync};
use rag_ingest::testing::{DocxBlock, build_docx, word_tokenizer};
use rag_ingest::{ChunkOptions, Chunker, Ingestor, Limits};
use rag_store::{EdgeVectorStore, SqlDocumentStore};

const DIM: usize = 8;

struct Hashed;

impl Embedder for Hashed {
    fn model_id(&self) -> &str {
        "hashed"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed(&self, texts: &[&str]) -> rag_core::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0.01f32; DIM];
                for w in t.split_whitespace() {
                    v[w.len() % DIM] += 1.0;
                }
                v
            })
            .collect())
    }
}

struct Fixture {
    ingestor: Ingestor,
    _dir: tempfile::TempDir,
    cache: std::path::PathBuf,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EdgeVectorStore::open(&dir.path().join("vectors"), DIM).unwrap());
    let docs: Arc<dyn DocumentStore> = Arc::new(SqlDocumentStore::connect(&url).await.unwrap());
    let chunker = Chunker::new(
        word_tokenizer(),
        ChunkOptions {
            max_tokens: 60,
            overlap_tokens: 0,
        },
    )
    .unwrap();
    Fixture {
        cache: dir.path().join("sources"),
        ingestor: Ingestor {
            embedder: Arc::new(Hashed),
            vectors,
            docs,
            chunker: Arc::new(chunker),
            limits: Limits::default(),
            context_header: true,
        },
        _dir: dir,
    }
}

impl Fixture {
    async fn add(&self, name: &str, config: SourceConfig) {
        config.validate().unwrap();
        self.ingestor
            .docs
            .add_source(&SourceRecord {
                name: name.into(),
                kind: config.kind().into(),
                config: config.to_json(),
                collection: "default".into(),
                tags: vec!["wiki".into()],
                groups: vec!["staff".into()],
                state: String::new(),
                created_at: "2026-12-02T00:00:00Z".into(),
                synced_at: None,
            })
            .await
            .unwrap();
    }

    async fn sync(&self, name: &str) -> rag_core::Result<SyncReport> {
        let record = self.ingestor.docs.source(name).await?.unwrap();
        sync(
            &self.ingestor,
            &record,
            &self.cache.join(name),
            &[],
            &|_: rag_ingest::Progress| {},
        )
        .await
    }

    /// `(source, url)` of every document, by source.
    async fn documents(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<_> = self
            .ingestor
            .docs
            .documents(None)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.source, d.url))
            .collect();
        out.sort();
        out
    }

    async fn text_of(&self, source: &str) -> String {
        let doc = self
            .ingestor
            .docs
            .documents_by_source("default", source)
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("no document {source}"));
        let ids = self.ingestor.docs.chunk_ids_of(&doc.id).await.unwrap();
        let chunks = self.ingestor.docs.chunks(&ids).await.unwrap();
        chunks
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every vector belongs to a committed chunk and the other way round.
    async fn consistent(&self) {
        let mut rows = self.ingestor.docs.chunk_ids().await.unwrap();
        let mut vectors = self.ingestor.vectors.chunk_ids().await.unwrap();
        rows.sort();
        vectors.sort();
        assert_eq!(rows, vectors, "rows and vectors differ");
    }
}

fn counts(r: &SyncReport) -> (usize, usize, usize, usize, usize) {
    (r.added, r.updated, r.unchanged, r.deleted, r.failed)
}

fn git(repo: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(repo: &Path, path: &str, bytes: &[u8]) {
    let path = repo.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_git_repository_stays_in_sync() {
    let mut f = fixture().await;
    let upstream = tempfile::tempdir().unwrap();
    let repo = upstream.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"]);
    write(
        repo,
        "handbook/leave.md",
        b"# Leave\n\nSick leave is paid for 60 days.\n",
    );
    write(
        repo,
        "handbook/travel.md",
        b"# Travel\n\nTrains under four hours.\n",
    );
    write(
        repo,
        "handbook/benefits.docx",
        &build_docx(
            &[
                DocxBlock::Paragraph(Some("Heading1"), "Benefits"),
                DocxBlock::Table(vec![vec!["Plan", "Cost"], vec!["Dental", "12 EUR"]]),
            ],
            Some("Benefits"),
        ),
    );
    write(repo, "handbook/broken.docx", b"PK\x03\x04 not a word file");
    write(repo, "handbook/logo.png", b"\x89PNG");
    write(repo, "outside.md", b"# Outside\n\nNot under the path.\n");
    // A link to a file of this machine is never read.
    std::os::unix::fs::symlink("/etc/hostname", repo.join("handbook/host.md")).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", "first"]);

    let config = SourceConfig::Git(GitConfig {
        url: repo.display().to_string(),
        branch: None,
        path: Some("handbook".into()),
        url_template: Some("https://git.example/wiki/blob/main/{path}".into()),
        allow_networks: vec![],
    });
    f.add("wiki", config).await;
    let first = f.sync("wiki").await.unwrap();
    eprintln!("{first:?}");
    assert_eq!(counts(&first), (3, 0, 0, 0, 1));
    assert_eq!(first.failures[0].document, "handbook/broken.docx");
    assert!(
        first.failures[0].reason.contains("not a Word document"),
        "{}",
        first.failures[0].reason
    );
    assert_eq!(
        f.documents().await,
        [
            (
                "handbook/benefits.docx".to_string(),
                Some("https://git.example/wiki/blob/main/handbook/benefits.docx".to_string())
            ),
            (
                "handbook/leave.md".into(),
                Some("https://git.example/wiki/blob/main/handbook/leave.md".into())
            ),
            (
                "handbook/travel.md".into(),
                Some("https://git.example/wiki/blob/main/handbook/travel.md".into())
            ),
        ]
    );
    assert!(
        f.text_of("handbook/benefits.docx")
            .await
            .contains("Dental | 12 EUR")
    );
    let doc = f
        .ingestor
        .docs
        .documents_by_source("default", "handbook/leave.md")
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(doc.origin.as_deref(), Some("wiki"));
    assert_eq!(doc.groups, ["staff"]);
    f.consistent().await;

    // Nothing new: nothing read again.
    let again = f.sync("wiki").await.unwrap();
    assert_eq!(counts(&again), (0, 0, 3, 0, 1), "{again:?}");

    // A change, a deletion, a rename, and the broken file mended.
    write(
        repo,
        "handbook/leave.md",
        b"# Leave\n\nSick leave is paid for 90 days.\n",
    );
    git(repo, &["rm", "--quiet", "handbook/travel.md"]);
    std::fs::create_dir_all(repo.join("handbook/hr")).unwrap();
    git(
        repo,
        &["mv", "handbook/benefits.docx", "handbook/hr/benefits.docx"],
    );
    write(
        repo,
        "handbook/broken.docx",
        &build_docx(&[DocxBlock::Paragraph(None, "Mended.")], None),
    );
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", "second"]);
    let second = f.sync("wiki").await.unwrap();
    eprintln!("{second:?}");
    // Added: the renamed file and the mended one; deleted: the old name
    // and the removed page.
    assert_eq!(counts(&second), (2, 1, 0, 2, 0));
    let sources: Vec<String> = f.documents().await.into_iter().map(|d| d.0).collect();
    assert_eq!(
        sources,
        [
            "handbook/broken.docx",
            "handbook/hr/benefits.docx",
            "handbook/leave.md"
        ]
    );
    assert!(f.text_of("handbook/leave.md").await.contains("90 days"));
    f.consistent().await;

    // A rewritten history (a force push of an unrelated commit) seen from
    // a fresh clone (the cache gone, as in a new pod): the last synced
    // commit is nowhere, so a full listing, and what it no longer names is
    // deleted.
    git(repo, &["checkout", "--quiet", "--orphan", "fresh"]);
    git(repo, &["rm", "--quiet", "-r", "--cached", "."]);
    std::fs::remove_dir_all(repo.join("handbook")).unwrap();
    write(repo, "handbook/only.md", b"# Only\n\nThe one page left.\n");
    git(repo, &["add", "handbook/only.md"]);
    git(repo, &["commit", "--quiet", "-m", "rewritten"]);
    git(repo, &["branch", "--quiet", "-D", "main"]);
    git(repo, &["branch", "--quiet", "-m", "main"]);
    git(repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(repo, &["gc", "--quiet", "--prune=now"]);
    std::fs::remove_dir_all(f.cache.join("wiki")).unwrap();
    // It loses most of the source: stopped, unless forced.
    let err = f.sync("wiki").await.unwrap_err().to_string();
    assert!(err.contains("would delete 3 of its 3 documents"), "{err}");
    assert_eq!(f.documents().await.len(), 3);
    f.ingestor.limits.max_delete_fraction = f64::INFINITY;
    let third = f.sync("wiki").await.unwrap();
    eprintln!("{third:?}");
    assert_eq!(third.added, 1);
    assert_eq!(
        f.documents().await,
        [(
            "handbook/only.md".to_string(),
            Some("https://git.example/wiki/blob/main/handbook/only.md".to_string())
        )]
    );
    f.consistent().await;

    // Removing the source removes its documents.
    let removed = rag_ingest::sources::remove(&f.ingestor, "wiki", &f.cache.join("wiki"))
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(f.documents().await.is_empty());
    assert!(
        !f.cache.join("wiki").exists(),
        "the clone went with the source"
    );
    f.consistent().await;
}

#[tokio::test]
async fn a_bad_repository_fails_with_the_reason_and_changes_nothing() {
    let f = fixture().await;
    let not_a_repo = tempfile::tempdir().unwrap();
    f.add(
        "nothing",
        git_source(&not_a_repo.path().display().to_string()),
    )
    .await;
    let err = f.sync("nothing").await.unwrap_err().to_string();
    assert!(
        err.contains("cloning") && err.contains("git clone failed"),
        "{err}"
    );

    // A branch that is not there.
    let upstream = tempfile::tempdir().unwrap();
    git(
        upstream.path(),
        &["init", "--quiet", "--initial-branch=main"],
    );
    write(upstream.path(), "a.md", b"# A\n\ntext\n");
    git(upstream.path(), &["add", "-A"]);
    git(upstream.path(), &["commit", "--quiet", "-m", "a"]);
    f.add(
        "nobranch",
        SourceConfig::Git(GitConfig {
            url: upstream.path().display().to_string(),
            branch: Some("release".into()),
            path: None,
            url_template: None,
            allow_networks: vec![],
        }),
    )
    .await;
    let err = f.sync("nobranch").await.unwrap_err().to_string();
    assert!(err.contains("release"), "{err}");
    assert!(f.documents().await.is_empty());
}

/// A small site served on loopback; the test changes its pages.
#[derive(Clone, Default)]
struct Site {
    pages: Arc<Mutex<HashMap<String, (String, String)>>>, // path -> (content type, body)
    log: Arc<Mutex<Vec<(String, bool)>>>,                 // (path, conditional)
}

impl Site {
    fn set(&self, path: &str, content_type: &str, body: &str) {
        self.pages
            .lock()
            .unwrap()
            .insert(path.into(), (content_type.into(), body.into()));
    }
    fn remove(&self, path: &str) {
        self.pages.lock().unwrap().remove(path);
    }
    fn take_log(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.log.lock().unwrap())
    }

    async fn serve(&self) -> String {
        use axum::http::{HeaderMap, StatusCode, Uri, header};
        use axum::response::IntoResponse;
        let site = self.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let site = site.clone();
            async move {
                let path = uri.path().to_string();
                let page = site.pages.lock().unwrap().get(&path).cloned();
                let conditional = headers.contains_key(header::IF_NONE_MATCH);
                site.log.lock().unwrap().push((path.clone(), conditional));
                let Some((content_type, body)) = page else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                if content_type == "redirect" {
                    return (StatusCode::FOUND, [(header::LOCATION, body)]).into_response();
                }
                // "status": answer with the status in the body alone.
                if content_type == "status" {
                    return StatusCode::from_u16(body.parse().unwrap())
                        .unwrap()
                        .into_response();
                }
                let etag = format!(
                    "\"{:x}\"",
                    body.len() * 31 + body.bytes().map(usize::from).sum::<usize>()
                );
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.to_str().unwrap_or("") == etag)
                {
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                (
                    [(header::CONTENT_TYPE, content_type), (header::ETAG, etag)],
                    body,
                )
                    .into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

fn html(title: &str, body: &str) -> String {
    format!(
        "<html><head><title>{title}</title></head><body><nav><a href=\"/docs/\">Home</a> \
         <a href=\"/elsewhere/page\">Elsewhere</a></nav><main><h1>{title}</h1>{body}</main></body></html>"
    )
}

impl Site {
    /// `/docs/` linking to `/docs/p1` .. `/docs/pN`, each a page of its
    /// own; returns the index page, to be put back.
    fn docs(&self, pages: usize) -> String {
        let links: String = (1..=pages)
            .map(|i| format!("<a href=\"/docs/p{i}\">p{i}</a> "))
            .collect();
        let index = html("Home", &format!("<p>Index.</p>{links}"));
        self.set("/docs/", "text/html", &index);
        for i in 1..=pages {
            self.set(
                &format!("/docs/p{i}"),
                "text/html",
                &html(&format!("P{i}"), &format!("<p>Page {i} of the docs.</p>")),
            );
        }
        index
    }
}

/// A git source of `url` with no other settings.
fn git_source(url: &str) -> SourceConfig {
    SourceConfig::Git(GitConfig {
        url: url.into(),
        branch: None,
        path: None,
        url_template: None,
        allow_networks: vec![],
    })
}

fn web(start: &str) -> SourceConfig {
    SourceConfig::Web(WebConfig {
        start_url: start.into(),
        prefix: None,
        max_pages: 50,
        delay_ms: 0,
        // The test sites are on loopback, which sources may not reach by
        // default.
        allow_networks: vec!["127.0.0.0/8".into()],
    })
}

#[tokio::test]
async fn a_web_site_stays_in_sync() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/robots.txt",
        "text/plain",
        "User-agent: *\nDisallow: /docs/private\n",
    );
    site.set(
        "/docs/",
        "text/html",
        &html(
            "Handbook",
            "<p>Start here.</p><a href=\"leave\">Leave</a> <a href=\"travel#rates\">Travel</a> \
             <a href=\"private/salaries\">Salaries</a> <a href=\"logo.png\">Logo</a> \
             <a href=\"moved\">Moved</a>",
        ),
    );
    site.set(
        "/docs/leave",
        "text/html; charset=utf-8",
        &html(
            "Leave",
            "<p>Sick leave is paid for 60 days.</p><a href=\"old\">Old</a>",
        ),
    );
    site.set(
        "/docs/travel",
        "text/html",
        &html("Travel", "<p>Trains under four hours.</p>"),
    );
    site.set(
        "/docs/old",
        "text/html",
        &html("Old", "<p>An old page.</p>"),
    );
    site.set(
        "/docs/private/salaries",
        "text/html",
        &html("Salaries", "<p>Secret.</p>"),
    );
    site.set("/docs/logo.png", "image/png", "png");
    site.set(
        "/elsewhere/page",
        "text/html",
        &html("Elsewhere", "<p>Outside.</p>"),
    );
    // A redirect out of the prefix is not followed.
    site.set("/docs/moved", "redirect", "/elsewhere/page");

    f.add("site", web(&format!("{base}/docs/"))).await;
    let first = f.sync("site").await.unwrap();
    eprintln!("{first:?}");
    assert_eq!(counts(&first), (4, 0, 0, 0, 0));
    let docs = f.documents().await;
    let sources: Vec<&str> = docs.iter().map(|d| d.0.as_str()).collect();
    let expected: Vec<String> = ["/docs/", "/docs/leave", "/docs/old", "/docs/travel"]
        .iter()
        .map(|p| format!("{base}{p}"))
        .collect();
    assert_eq!(sources, expected);
    // Its URL is its address; the text is the main part only.
    assert!(docs.iter().all(|(s, u)| u.as_deref() == Some(s.as_str())));
    let leave = f.text_of(&format!("{base}/docs/leave")).await;
    assert!(
        leave.contains("60 days") && !leave.contains("Elsewhere"),
        "{leave}"
    );
    let log = site.take_log();
    assert!(
        log.iter()
            .all(|(p, _)| !p.starts_with("/docs/private") && !p.starts_with("/elsewhere")),
        "{log:?}"
    );

    // A change, a page gone (404), a page no longer linked; the rest
    // answer 304 to conditional requests.
    site.set(
        "/docs/leave",
        "text/html",
        &html("Leave", "<p>Sick leave is paid for 90 days.</p>"),
    );
    site.remove("/docs/travel");
    let second = f.sync("site").await.unwrap();
    eprintln!("{second:?}");
    assert_eq!(counts(&second), (0, 1, 1, 2, 0));
    assert!(
        f.text_of(&format!("{base}/docs/leave"))
            .await
            .contains("90 days")
    );
    let sources: Vec<String> = f.documents().await.into_iter().map(|d| d.0).collect();
    assert_eq!(
        sources,
        [format!("{base}/docs/"), format!("{base}/docs/leave")]
    );
    let log = site.take_log();
    assert!(
        log.iter()
            .any(|(p, conditional)| p == "/docs/" && *conditional),
        "{log:?}"
    );
    f.consistent().await;

    // The start page sends the crawler to a login page out of the prefix:
    // an error, and nothing lost (not "every page gone").
    site.set("/docs/", "redirect", "/login?next=/docs/");
    let err = f.sync("site").await.unwrap_err().to_string();
    assert!(err.contains("redirects out of"), "{err}");
    assert_eq!(f.documents().await.len(), 2);
    assert!(!site.take_log().iter().any(|(p, _)| p == "/login"));
    site.set(
        "/docs/",
        "text/html",
        &html("Handbook", "<p>Start here.</p><a href=\"leave\">Leave</a>"),
    );

    // A robots.txt that forbids everything: an error, and nothing lost.
    site.set("/robots.txt", "text/plain", "User-agent: *\nDisallow: /\n");
    let err = f.sync("site").await.unwrap_err().to_string();
    assert!(
        err.contains("robots.txt") && err.contains("forbids"),
        "{err}"
    );
    assert_eq!(f.documents().await.len(), 2);

    // The site down: an error, and nothing lost.
    site.set("/robots.txt", "text/plain", "User-agent: *\nAllow: /\n");
    site.remove("/docs/");
    let err = f.sync("site").await.unwrap_err().to_string();
    assert!(
        err.contains("start page") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(f.documents().await.len(), 2);
    f.consistent().await;
}

#[tokio::test]
async fn sitemaps_and_unreachable_sites() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/docs/sitemap.xml",
        "application/xml",
        &format!(
            "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\
             <url><loc>{base}/docs/a</loc></url><url><loc>{base}/docs/b</loc></url>\
             <url><loc>{base}/other/c</loc></url></urlset>"
        ),
    );
    site.set("/docs/a", "text/html", &html("A", "<p>Page a.</p>"));
    site.set("/docs/b", "text/markdown", "# B\n\nPage b.\n");
    site.set(
        "/other/c",
        "text/html",
        &html("C", "<p>Outside the prefix.</p>"),
    );
    f.add("map", web(&format!("{base}/docs/sitemap.xml"))).await;
    let report = f.sync("map").await.unwrap();
    assert_eq!(counts(&report), (2, 0, 0, 0, 0), "{report:?}");

    // A sitemap that lists nothing under the prefix: an error, and nothing
    // lost.
    site.set(
        "/docs/sitemap.xml",
        "application/xml",
        &format!("<urlset><url><loc>{base}/other/c</loc></url></urlset>"),
    );
    let err = f.sync("map").await.unwrap_err().to_string();
    assert!(err.contains("lists no page"), "{err}");
    assert_eq!(f.documents().await.len(), 2);

    // A malformed sitemap: an error that says so, and nothing lost.
    site.set("/docs/sitemap.xml", "application/xml", "<urlset><url><loc>");
    let err = f.sync("map").await.unwrap_err().to_string();
    assert!(
        err.contains("sitemap") && err.contains("malformed"),
        "{err}"
    );
    assert_eq!(f.documents().await.len(), 2);

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    f.add("down", web(&format!("http://127.0.0.1:{port}/docs/")))
        .await;
    let err = f.sync("down").await.unwrap_err().to_string();
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(f.documents().await.len(), 2);
}

/// A crawl stopped by `max_pages` is not the whole site: what it did not
/// reach this time stays.
#[tokio::test]
async fn a_crawl_cut_at_max_pages_deletes_nothing_it_did_not_reach() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/docs/",
        "text/html",
        &html(
            "Start",
            "<p>Start.</p><a href=\"a\">A</a> <a href=\"b\">B</a>",
        ),
    );
    site.set("/docs/a", "text/html", &html("A", "<p>Page a.</p>"));
    site.set("/docs/b", "text/html", &html("B", "<p>Page b.</p>"));
    f.add(
        "capped",
        SourceConfig::Web(WebConfig {
            start_url: format!("{base}/docs/"),
            prefix: None,
            max_pages: 3,
            delay_ms: 0,
            allow_networks: vec!["127.0.0.0/8".into()],
        }),
    )
    .await;
    assert_eq!(counts(&f.sync("capped").await.unwrap()), (3, 0, 0, 0, 0));
    // The start page now links to a new page first: the cap is reached
    // before b, which must not be deleted for that.
    site.set(
        "/docs/",
        "text/html",
        &html(
            "Start",
            "<p>Start.</p><a href=\"new\">New</a> <a href=\"a\">A</a> <a href=\"b\">B</a>",
        ),
    );
    site.set("/docs/new", "text/html", &html("New", "<p>A new page.</p>"));
    let report = f.sync("capped").await.unwrap();
    assert_eq!((report.added, report.deleted), (1, 0), "{report:?}");
    assert_eq!(f.documents().await.len(), 4);
}

/// A password in a web source's URL (requests use the URL as given) is
/// never in a document's name or address, nor in a message; the prefix
/// is compared without it.
#[tokio::test]
async fn a_password_in_a_web_url_is_never_shown() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.set("/docs/", "text/html", &html("Home", "<p>Welcome home.</p>"));
    let signed_in = base.replace("http://", "http://bot:s3cr3t@");
    let config = SourceConfig::Web(WebConfig {
        start_url: format!("{signed_in}/docs/"),
        prefix: Some(format!("{base}/docs/")),
        max_pages: 10,
        delay_ms: 0,
        allow_networks: vec!["127.0.0.0/8".into()],
    });
    config.validate().unwrap();
    f.add("private", config).await;
    let report = f.sync("private").await.unwrap();
    assert_eq!(counts(&report), (1, 0, 0, 0, 0), "{report:?}");
    let documents = f.documents().await;
    assert_eq!(documents.len(), 1);
    for (source, url) in &documents {
        assert_eq!(source, &format!("{base}/docs/"));
        assert!(!url.as_deref().unwrap_or("").contains("s3cr3t"), "{url:?}");
    }
    // The start page gone: the error names it without the password.
    site.remove("/docs/");
    let err = f.sync("private").await.unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
    // A bad prefix says so without the password too.
    let outside = WebConfig {
        start_url: format!("{signed_in}/docs/"),
        prefix: Some(format!("{base}/other/")),
        max_pages: 10,
        delay_ms: 0,
        allow_networks: vec![],
    };
    let err = SourceConfig::Web(outside)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside --prefix") && !err.contains("s3cr3t"),
        "{err}"
    );
    // Nor does a URL of the wrong scheme.
    let ftp = WebConfig {
        start_url: "ftp://bot:s3cr3t@files.example/docs/".into(),
        prefix: None,
        max_pages: 10,
        delay_ms: 0,
        allow_networks: vec![],
    };
    let err = SourceConfig::Web(ftp).validate().unwrap_err().to_string();
    assert!(err.contains("http://") && !err.contains("s3cr3t"), "{err}");
}

/// A loopback address that accepts connections, reads nothing and
/// answers nothing.
fn silent_remote() -> std::net::SocketAddr {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

/// A remote that accepts connections and never answers (a git server, a
/// web site) holds a sync only as long as `sources.timeout_s`: the source
/// fails alone, with the reason, and changes nothing.
#[tokio::test]
async fn a_silent_remote_times_out() {
    let mut f = fixture().await;
    f.ingestor.limits.source_timeout = std::time::Duration::from_secs(2);
    let addr = silent_remote();
    f.add(
        "silent-git",
        SourceConfig::Git(GitConfig {
            url: format!("http://{addr}/wiki.git"),
            branch: None,
            path: None,
            url_template: None,
            allow_networks: vec!["127.0.0.0/8".into()],
        }),
    )
    .await;
    f.add("silent-web", web(&format!("http://{addr}/docs/")))
        .await;
    for name in ["silent-git", "silent-web"] {
        let started = std::time::Instant::now();
        let err = f.sync(name).await.unwrap_err().to_string();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{name} waited {:?}",
            started.elapsed()
        );
        assert!(
            err.contains("sources.timeout_s") || err.contains("timed out"),
            "{name}: {err}"
        );
    }
    // Nothing listens: it fails at once, with the reason.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    f.add(
        "gone-git",
        SourceConfig::Git(GitConfig {
            url: format!("http://127.0.0.1:{port}/wiki.git"),
            branch: None,
            path: None,
            url_template: None,
            allow_networks: vec!["127.0.0.0/8".into()],
        }),
    )
    .await;
    let err = f.sync("gone-git").await.unwrap_err().to_string();
    assert!(err.contains("cloning") && err.contains("failed"), "{err}");
    assert!(f.documents().await.is_empty());
}

/// A sync that would delete more than `max_delete_fraction` of a source's
/// documents (its start page now a login page naming no link, its
/// repository emptied by mistake) stops and changes nothing; with the
/// limit lifted (`rag sync --force`) it deletes them.
#[tokio::test]
async fn a_sync_that_would_delete_most_of_a_source_stops() {
    let mut f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    let index = site.docs(4);
    f.add("docs", web(&format!("{base}/docs/"))).await;
    let report = f.sync("docs").await.unwrap();
    assert_eq!(counts(&report).0, 5, "{report:?}");
    // The start page is now a sign-in page that links nowhere.
    site.set(
        "/docs/",
        "text/html",
        &html("Sign in", "<p>Please sign in.</p>"),
    );
    let err = f.sync("docs").await.unwrap_err().to_string();
    assert!(
        err.contains("would delete 4 of its 5 documents") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(f.documents().await.len(), 5, "nothing was changed");
    // One page of five gone is within the limit.
    site.set("/docs/", "text/html", &index);
    site.remove("/docs/p4");
    let report = f.sync("docs").await.unwrap();
    assert_eq!(report.deleted, 1, "{report:?}");
    // --force: the limit lifted.
    site.set(
        "/docs/",
        "text/html",
        &html("Sign in", "<p>Please sign in.</p>"),
    );
    f.ingestor.limits.max_delete_fraction = f64::INFINITY;
    let report = f.sync("docs").await.unwrap();
    assert_eq!(report.deleted, 3, "{report:?}");
    assert_eq!(f.documents().await.len(), 1);
}

/// A page that now answers 401 or 403 is removed (its readers lost access
/// upstream) and counted apart; a start page that does stops the sync.
#[tokio::test]
async fn pages_that_now_ask_to_sign_in_are_removed() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.docs(3);
    f.add("docs", web(&format!("{base}/docs/"))).await;
    assert_eq!(counts(&f.sync("docs").await.unwrap()).0, 4);
    site.set("/docs/p2", "status", "403");
    let report = f.sync("docs").await.unwrap();
    assert_eq!((report.deleted, report.forbidden), (1, 1), "{report:?}");
    assert!(
        !f.documents()
            .await
            .iter()
            .any(|(s, _)| s.ends_with("/docs/p2")),
        "the page its readers lost is gone"
    );
    site.set("/docs/", "status", "401");
    let err = f.sync("docs").await.unwrap_err().to_string();
    assert!(err.contains("asks to sign in"), "{err}");
    assert_eq!(f.documents().await.len(), 3);
}

/// The source stays the truth: a synced document deleted by hand comes
/// back at the next sync though no commit changed it, and a page whose
/// ingest failed is fetched again (not answered 304 on the ETag recorded
/// for it) until it is in.
#[tokio::test]
async fn what_the_store_lost_comes_back_from_the_source() {
    let f = fixture().await;
    let upstream = tempfile::tempdir().unwrap();
    let repo = upstream.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"]);
    write(repo, "a.md", b"# A\n\nPage a says alpha.\n");
    write(repo, "b.md", b"# B\n\nPage b says beta.\n");
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", "first"]);
    let config = git_source(&repo.display().to_string());
    f.add("wiki", config).await;
    assert_eq!(counts(&f.sync("wiki").await.unwrap()), (2, 0, 0, 0, 0));
    let lost = f
        .ingestor
        .docs
        .documents_of_origin("wiki")
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.source == "b.md")
        .unwrap();
    f.ingestor.delete(&lost.id).await.unwrap();
    let report = f.sync("wiki").await.unwrap();
    assert_eq!(counts(&report), (1, 0, 1, 0, 0), "{report:?}");
    assert!(f.text_of("b.md").await.contains("beta"));

    // A page whose ingest failed (a PDF that cannot be read) was recorded
    // with its ETag: it is asked for whole again, and its failure is
    // reported again, not taken for unchanged.
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/docs/",
        "text/html",
        &html(
            "Home",
            "<p>Welcome.</p><a href=\"/docs/broken.pdf\">broken</a>",
        ),
    );
    site.set("/docs/broken.pdf", "application/pdf", "%PDF-1.4 not really");
    f.add("site", web(&format!("{base}/docs/"))).await;
    let report = f.sync("site").await.unwrap();
    assert_eq!((report.added, report.failed), (1, 1), "{report:?}");
    site.take_log();
    let report = f.sync("site").await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    let asked = site.take_log();
    assert!(
        asked.contains(&("/docs/broken.pdf".to_string(), false)),
        "the failed page is asked for without its ETag: {asked:?}"
    );
    assert!(
        asked.contains(&("/docs/".to_string(), true)),
        "a page the store holds is still asked for with its ETag: {asked:?}"
    );
    f.consistent().await;
}

/// A source removed while its sync runs (by another process) leaves no
/// document behind: the sync deletes what it wrote and says why.
#[tokio::test]
async fn a_sync_of_a_source_removed_meanwhile_leaves_nothing() {
    let f = fixture().await;
    let upstream = tempfile::tempdir().unwrap();
    let repo = upstream.path();
    git(repo, &["init", "--quiet", "--initial-branch=main"]);
    write(repo, "a.md", b"# A\n\nPage a says alpha.\n");
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", "first"]);
    f.add("wiki", git_source(&repo.display().to_string())).await;
    // The sync has read its record; then the source is removed.
    let record = f.ingestor.docs.source("wiki").await.unwrap().unwrap();
    f.ingestor.docs.remove_source("wiki").await.unwrap();
    let err = sync(
        &f.ingestor,
        &record,
        &f.cache.join("wiki"),
        &[],
        &|_: rag_ingest::Progress| {},
    )
    .await
    .unwrap_err();
    // It reads its source again once it holds it.
    assert_eq!(err.kind(), rag_core::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("no source named"), "{err}");
    assert!(f.documents().await.is_empty());
    f.consistent().await;
}

/// One writer per source across processes: while a sync runs (here held
/// by a silent site), another sync or a removal of that source, which in
/// a cluster comes from another replica or the re-sync job, is refused
/// with `Conflict` and changes nothing; once the sync has ended, the
/// removal goes through. Another source is not held up.
#[tokio::test]
async fn a_source_has_one_writer_at_a_time() {
    let mut f = fixture().await;
    f.ingestor.limits.source_timeout = std::time::Duration::from_secs(3);
    let addr = silent_remote();
    f.add("slow", web(&format!("http://{addr}/docs/"))).await;
    let site = Site::default();
    site.set("/docs/", "text/html", &html("Home", "Welcome home."));
    let base = site.serve().await;
    f.add("other", web(&format!("{base}/docs/"))).await;
    let cache = f.cache.join("slow");
    let (slow, meanwhile) = tokio::join!(f.sync("slow"), async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let again = f.sync("slow").await.unwrap_err();
        let removal = rag_ingest::sources::remove(&f.ingestor, "slow", &cache)
            .await
            .unwrap_err();
        let other = f.sync("other").await;
        (again, removal, other)
    });
    let (again, removal, other) = meanwhile;
    for err in [&again, &removal] {
        assert_eq!(err.kind(), rag_core::ErrorKind::Conflict, "{err}");
        assert!(err.to_string().contains("another process"), "{err}");
    }
    assert_eq!(other.unwrap().added, 1);
    assert!(f.ingestor.docs.source("slow").await.unwrap().is_some());
    // The held sync ends (timed out), and lets go of its source.
    assert!(slow.unwrap_err().to_string().contains("timed out"));
    // A sync dropped midway (its client gone, a request deadline) lets go
    // of its source at once, not when the claim lapses.
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(300), f.sync("slow")).await;
    assert!(dropped.is_err(), "the silent site answered");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The record is read, and checked against the allowed hosts, under
    // the claim.
    let record = f.ingestor.docs.source("slow").await.unwrap().unwrap();
    let refused = sync(
        &f.ingestor,
        &record,
        &cache,
        &["wiki.example".to_string()],
        &|_: rag_ingest::Progress| {},
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("sources.allowed_hosts"),
        "{refused}"
    );
    let removed = rag_ingest::sources::remove(&f.ingestor, "slow", &cache)
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert!(f.ingestor.docs.source("slow").await.unwrap().is_none());
    f.consistent().await;
}

/// What a crawl keeps is bounded by its request budget (4 x max_pages):
/// child sitemaps are read only within the prefix and as robots.txt
/// allows, and links beyond the budget are not queued; a crawl cut that
/// way is not complete, so what it did not reach is not deleted.
#[tokio::test]
async fn a_crawl_keeps_no_more_than_it_may_ask_for() {
    let f = fixture().await;
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/robots.txt",
        "text/plain",
        "User-agent: *\nDisallow: /docs/private/\n",
    );
    site.set(
        "/docs/index.xml",
        "application/xml",
        &format!(
            "<sitemapindex><sitemap><loc>{base}/docs/a.xml</loc></sitemap>\
             <sitemap><loc>{base}/docs/private/b.xml</loc></sitemap>\
             <sitemap><loc>{base}/other/c.xml</loc></sitemap></sitemapindex>"
        ),
    );
    site.set(
        "/docs/a.xml",
        "application/xml",
        &format!("<urlset><url><loc>{base}/docs/p1</loc></url></urlset>"),
    );
    for path in ["/docs/private/b.xml", "/other/c.xml"] {
        site.set(
            path,
            "application/xml",
            &format!("<urlset><url><loc>{base}/docs/p2</loc></url></urlset>"),
        );
    }
    site.set("/docs/p1", "text/html", &html("P1", "<p>Page one.</p>"));
    site.set("/docs/p2", "text/html", &html("P2", "<p>Page two.</p>"));
    f.add("map", web(&format!("{base}/docs/index.xml"))).await;
    let report = f.sync("map").await.unwrap();
    assert_eq!(report.added, 1, "{report:?}");
    let asked: Vec<String> = site.take_log().into_iter().map(|(p, _)| p).collect();
    assert!(
        !asked
            .iter()
            .any(|p| p == "/docs/private/b.xml" || p == "/other/c.xml"),
        "{asked:?}"
    );

    // A page of 30 links with max_pages 2: 8 requests at most, so no more
    // than 8 links are queued, and the crawl is cut.
    let links: String = (0..30)
        .map(|i| format!("<a href=\"/site/l{i}\">l{i}</a> "))
        .collect();
    site.set(
        "/site/",
        "text/html",
        &html("Hub", &format!("<p>Hub.</p>{links}")),
    );
    for i in 0..30 {
        site.set(
            &format!("/site/l{i}"),
            "text/html",
            &html("L", &format!("<p>Leaf {i}.</p>")),
        );
    }
    let SourceConfig::Web(mut config) = web(&format!("{base}/site/")) else {
        unreachable!()
    };
    config.max_pages = 2;
    f.add("hub", SourceConfig::Web(config)).await;
    let report = f.sync("hub").await.unwrap();
    assert_eq!(report.added, 2, "{report:?}");
    let report = f.sync("hub").await.unwrap();
    assert_eq!(report.deleted, 0, "a cut crawl deletes nothing: {report:?}");
    let asked = site.take_log().len();
    assert!(asked <= 2 * 8, "{asked} requests");
}

/// A redirect to the server's own network is not followed: the site (on
/// an allowed address) sends the crawl to 127.0.0.2, and nothing reaches
/// it.
#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = fixture().await;
    let inside = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let target = inside.local_addr().unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    std::thread::spawn(move || {
        for _ in inside.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let site = Site::default();
    let base = site.serve().await;
    site.set(
        "/docs/",
        "text/html",
        &html("Home", "<p>Welcome.</p><a href=\"/docs/go\">go</a>"),
    );
    site.set(
        "/docs/go",
        "redirect",
        &format!("http://{target}/docs/secret"),
    );
    let SourceConfig::Web(mut config) = web(&format!("{base}/docs/")) else {
        unreachable!()
    };
    // Only the site's own address is opened, not the rest of loopback.
    config.allow_networks = vec!["127.0.0.1/32".into()];
    f.add("site", SourceConfig::Web(config)).await;
    let report = f.sync("site").await.unwrap();
    assert_eq!(report.added, 1, "{report:?}");
    assert_eq!(reached.load(Ordering::SeqCst), 0, "127.0.0.2 was reached");
}
