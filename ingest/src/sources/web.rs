//! A web site: crawled from a start page (following links) or read from a
//! sitemap, within a URL prefix, as robots.txt allows, one request at a
//! time at a polite rate, with conditional requests (ETag,
//! Last-Modified) for pages seen before. A page that answers 404 or 410,
//! or that the crawl no longer reaches, is deleted; one that fails
//! otherwise (a 5xx, a timeout) keeps its last version.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rag_core::{Error, Result};
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Serialize};

use super::network::{Guarded, Network};
use super::{Scan, Source};
use crate::{Content, Input, Limits};

/// The user agent robots.txt rules are matched against.
const AGENT: &str = "rag";
const USER_AGENT: &str = concat!("rag/", env!("CARGO_PKG_VERSION"), " (document sync)");
/// The longest pause between requests a robots.txt `Crawl-delay` may ask.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Links followed per page: enough for any index page.
const MAX_LINKS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebConfig {
    /// The first page, or a sitemap (a URL ending in `.xml`).
    pub start_url: String,
    /// Only URLs that start with this; the start URL's folder when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// At most this many pages per sync.
    #[serde(default = "default_max_pages")]
    pub max_pages: usize,
    /// The pause between two requests, in milliseconds (robots.txt may
    /// ask for more).
    #[serde(default = "default_delay_ms")]
    pub delay_ms: u64,
    /// Networks (CIDR) the crawl may reach beyond the default
    /// ([`Network`]: not loopback, link-local or unspecified addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_networks: Vec<String>,
}

fn default_max_pages() -> usize {
    1000
}

fn default_delay_ms() -> u64 {
    250
}

impl WebConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let start = http_url("--web", &self.start_url)?;
        let prefix = self.prefix()?;
        if !public_url(&start).starts_with(prefix.as_str()) {
            return Err(Error::invalid(format!(
                "--web {}: outside --prefix {prefix}; the start page must be under the prefix",
                public_url(&start)
            )));
        }
        if self.max_pages == 0 {
            return Err(Error::invalid("--max-pages must be at least 1"));
        }
        Network::new(&self.allow_networks)?.check_url(&start)
    }

    /// The prefix pages must start with, without user information (the
    /// pages are compared without theirs).
    fn prefix(&self) -> Result<Url> {
        self.prefix_as_given()
            .map(|url| Url::parse(&public_url(&url)).unwrap_or(url))
    }

    fn prefix_as_given(&self) -> Result<Url> {
        match &self.prefix {
            Some(p) => http_url("--prefix", p),
            None => {
                let start = http_url("--web", &self.start_url)?;
                // The start page's folder.
                start
                    .join("./")
                    .map_err(|e| Error::invalid(format!("--web {start}: {e}")))
            }
        }
    }

    fn sitemap(&self) -> bool {
        Url::parse(&self.start_url).is_ok_and(|u| u.path().ends_with(".xml"))
    }
}

/// `url` without its user information (a password, a token): how a page is
/// named and shown. Requests keep it (it is how the site is signed in to).
fn public(url: &str) -> String {
    match Url::parse(url) {
        Ok(url) => public_url(&url),
        Err(_) => super::git::redact(url),
    }
}

/// [`public`] of a parsed URL; most have no user information, and are
/// not copied to lose it (this runs on every link a page has).
fn public_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

fn http_url(flag: &str, text: &str) -> Result<Url> {
    let url = Url::parse(text.trim()).map_err(|e| {
        Error::invalid(format!(
            "{flag} {:?}: not a URL ({e})",
            super::git::redact(text)
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::invalid(format!(
            "{flag} {:?}: give an http:// or https:// URL",
            super::git::redact(text)
        )));
    }
    Ok(url)
}

/// What the last sync knew of each page.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    pages: BTreeMap<String, Page>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Page {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    /// The page's links within the prefix: a `304 Not Modified` has no
    /// body to read them from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    links: Vec<String>,
    /// The URL a redirect landed on, when it is not the one asked for: the
    /// document's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    landed: Option<String>,
}

impl Page {
    /// The source of the document this page was fetched as.
    fn document(&self, asked: &str) -> String {
        public(self.landed.as_deref().unwrap_or(asked))
    }
}

pub(crate) struct WebSource {
    config: WebConfig,
}

impl WebSource {
    pub(crate) fn new(config: WebConfig) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Source for WebSource {
    async fn scan(
        &self,
        state: &serde_json::Value,
        retry: &[String],
        known: &HashSet<String>,
        limits: &Limits,
    ) -> Result<Scan> {
        // Every sync crawls the whole site, failed pages included.
        self.config.validate()?;
        let old: State = serde_json::from_value(state.clone()).unwrap_or_default();
        // A password in the start URL is in what reqwest and the crawl say
        // of it: every message leaves without it.
        let hide = |e: Error| Error::new(e.kind(), super::git::redact(e.message()));
        let crawler = Crawler::new(&self.config, *limits).map_err(hide)?;
        let mut scan = crawler.crawl(&old, retry, known).await.map_err(hide)?;
        for (_, reason) in &mut scan.failed {
            *reason = super::git::redact(reason);
        }
        Ok(scan)
    }
}

struct Crawler {
    client: reqwest::Client,
    network: Arc<Network>,
    start: Url,
    prefix: String,
    max_pages: usize,
    delay: Duration,
    limits: Limits,
    sitemap: bool,
}

/// What one request gave.
enum Fetched {
    Page {
        url: Url,
        extension: &'static str,
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    NotModified,
    Gone,
    /// 401 or 403: the page is no longer open to the crawl.
    Forbidden,
    /// Not a document (an image, a redirect out of the prefix): neither
    /// kept nor failed.
    Ignored,
    Failed(String),
}

impl Crawler {
    fn new(config: &WebConfig, limits: Limits) -> Result<Self> {
        let prefix = config.prefix()?.to_string();
        let start = http_url("--web", &config.start_url)?;
        // Redirects are followed only within the prefix (and to robots.txt
        // of the start page's own site): the crawl never requests what it
        // may not crawl.
        let (within, origin) = (prefix.clone(), start.origin());
        let network = Arc::new(Network::new(&config.allow_networks)?);
        network.check_url(&start)?;
        let guard = network.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let url = attempt.url();
            let allowed = public_url(url).starts_with(&within)
                || (url.path() == "/robots.txt" && url.origin() == origin);
            if let Err(e) = guard.check_url(url) {
                attempt.error(e)
            } else if attempt.previous().len() < 5 && allowed {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        // Every name resolved is checked (`Guarded`), so DNS rebinding
        // fails too; no proxy, which would connect for us unchecked.
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(limits.source_timeout)
            .redirect(redirects)
            .dns_resolver(Arc::new(Guarded(network.clone())))
            .no_proxy()
            .build()
            .map_err(|e| Error::internal("building the HTTP client").with_source(e))?;
        Ok(Self {
            client,
            network,
            start,
            prefix,
            max_pages: config.max_pages,
            delay: Duration::from_millis(config.delay_ms),
            limits,
            sitemap: config.sitemap(),
        })
    }

    fn within(&self, url: &Url) -> bool {
        public_url(url).starts_with(&self.prefix)
    }

    async fn crawl(
        mut self,
        old: &State,
        retry: &[String],
        known: &HashSet<String>,
    ) -> Result<Scan> {
        let robots = self.robots().await?;
        if let Some(seconds) = robots.as_ref().and_then(|r| r.delay) {
            let asked = Duration::from_secs_f32(seconds.clamp(0.0, MAX_DELAY.as_secs_f32()));
            self.delay = self.delay.max(asked);
        }
        let allowed = |url: &Url| robots.as_ref().is_none_or(|r| r.allowed(url.as_str()));
        if !allowed(&self.start) {
            return Err(Error::invalid(format!(
                "robots.txt of {} forbids {} to user agent {AGENT:?}: nothing was fetched",
                self.start.origin().ascii_serialization(),
                self.start
            )));
        }
        let mut queue: VecDeque<Url> = VecDeque::new();
        // Some URLs were left out for the request budget: what the crawl
        // does not reach is not known to be gone.
        let mut cut = false;
        if self.sitemap {
            let (urls, sitemap_cut) = self.sitemap_urls(&allowed).await?;
            cut = sitemap_cut;
            for url in urls {
                if self.within(&url) {
                    queue.push_back(url);
                }
            }
        } else {
            queue.push_back(self.start.clone());
        }
        if self.sitemap && queue.is_empty() {
            return Err(Error::invalid(format!(
                "the sitemap {} lists no page under {}; nothing was changed",
                self.start, self.prefix
            )));
        }
        let mut seen: HashSet<String> = queue.iter().map(|u| u.to_string()).collect();
        // Complete (what it did not reach is gone) only if the crawl ends
        // by itself, not at `max_pages`.
        let mut scan = Scan {
            complete: true,
            ..Default::default()
        };
        let mut state = State::default();
        let (mut requests, mut pages) = (0usize, 0usize);
        while let Some(url) = queue.pop_front() {
            if pages == self.max_pages || requests == 4 * self.max_pages {
                scan.complete = false;
                break;
            }
            if !allowed(&url) {
                continue;
            }
            if requests > 0 {
                tokio::time::sleep(self.delay).await;
            }
            requests += 1;
            let key = url.to_string();
            // A page asked for conditionally only if the store holds it and
            // it did not fail last time: an ETag recorded for a page whose
            // ingest then failed must not answer 304 for ever.
            let before = old.pages.get(&key);
            let conditional = before.filter(|page| {
                let document = page.document(&key);
                known.contains(&document) && !retry.contains(&document)
            });
            let first = requests == 1 && !self.sitemap;
            let mut links: Vec<String> = Vec::new();
            match self.fetch(&url, conditional).await {
                Fetched::Page {
                    url: landed,
                    extension,
                    body,
                    etag,
                    last_modified,
                } => {
                    let landed_key = landed.to_string();
                    if landed_key != key && !seen.insert(landed_key.clone()) {
                        continue; // a redirect to a page already crawled
                    }
                    if extension == "html" {
                        links = self.links(&landed, &body);
                    }
                    pages += 1;
                    // Under the URL asked for (the next crawl asks for it
                    // again), naming the document it landed on.
                    state.pages.insert(
                        key.clone(),
                        Page {
                            etag,
                            last_modified,
                            links: links.clone(),
                            landed: (landed_key != key).then(|| landed_key.clone()),
                        },
                    );
                    let shown = public_url(&landed);
                    scan.documents.push(Input::Fetched {
                        name: file_name(&landed, extension),
                        url: Some(shown.clone()),
                        source: shown,
                        content: Content::Bytes(Arc::new(body)),
                    });
                }
                Fetched::NotModified => {
                    let page = before.cloned().unwrap_or_default();
                    links = page.links.clone();
                    pages += 1;
                    scan.unchanged.push(page.document(&key));
                    state.pages.insert(key.clone(), page);
                }
                Fetched::Gone if first => {
                    return Err(Error::invalid(format!(
                        "the start page {url} answers that it does not exist (404/410); \
                         nothing was changed"
                    )));
                }
                Fetched::Gone => scan
                    .deleted
                    .push(before.map_or_else(|| public(&key), |p| p.document(&key))),
                Fetched::Forbidden if first => {
                    return Err(Error::invalid(format!(
                        "the start page {url} now asks to sign in (401/403); nothing was \
                         changed"
                    )));
                }
                Fetched::Forbidden => {
                    let document = before.map_or_else(|| public(&key), |p| p.document(&key));
                    scan.forbidden.push(document.clone());
                    scan.deleted.push(document);
                }
                // A start page that leads out of the prefix (a login page)
                // or is not a document would make every page look gone.
                Fetched::Ignored if first => {
                    return Err(Error::invalid(format!(
                        "the start page {url} redirects out of {} (to a login page?) or is not \
                         a document; nothing was changed",
                        self.prefix
                    )));
                }
                Fetched::Ignored => {}
                Fetched::Failed(reason) if first => {
                    return Err(Error::invalid(format!(
                        "the start page {url} cannot be fetched: {reason}; nothing was changed"
                    )));
                }
                Fetched::Failed(reason) => {
                    // Kept as it was, links and all, until it answers again.
                    if let Some(page) = before {
                        links = page.links.clone();
                        scan.failed.push((page.document(&key), reason));
                        state.pages.insert(key.clone(), page.clone());
                    }
                }
            }
            if !self.sitemap {
                for link in links {
                    if seen.contains(&link) {
                        continue;
                    }
                    // Past the request budget a link would never be asked
                    // for: the queue (and what it has seen) stops growing.
                    if queue.len() >= self.budget() {
                        cut = true;
                        break;
                    }
                    seen.insert(link.clone());
                    if let Ok(url) = Url::parse(&link) {
                        queue.push_back(url);
                    }
                }
            }
        }
        if cut {
            scan.complete = false;
        }
        scan.state = serde_json::to_value(&state).expect("state serialises");
        Ok(scan)
    }

    /// The site's robots.txt: `None` when it has none (4xx).
    async fn robots(&self) -> Result<Option<texting_robots::Robot>> {
        let mut url = self.start.clone();
        url.set_path("/robots.txt");
        url.set_query(None);
        url.set_fragment(None);
        let response = self.client.get(url.clone()).send().await.map_err(|e| {
            Error::invalid(format!(
                "{} is unreachable: {}; nothing was changed",
                self.start.origin().ascii_serialization(),
                describe(&e)
            ))
        })?;
        let status = response.status();
        if status.is_client_error() {
            return Ok(None);
        }
        if !status.is_success() {
            // The convention (RFC 9309): a server error means "do not crawl".
            return Err(Error::invalid(format!(
                "{url} answers {status}: the site may not be crawled now; nothing was changed"
            )));
        }
        let body = read_capped(response, 512 << 10).await.map_err(|reason| {
            let reason = if reason.is_empty() {
                "larger than 512 KiB".to_string()
            } else {
                reason
            };
            Error::invalid(format!("reading {url}: {reason}"))
        })?;
        texting_robots::Robot::new(AGENT, &body)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{url}: not a robots.txt the parser reads: {e}")))
    }

    /// The page URLs of a sitemap (or of the sitemaps a sitemap index
    /// names, one level down).
    /// The crawl asks for at most this many URLs ([`Crawler::crawl`]'s
    /// request budget): a sitemap or the links found may list more, and
    /// nothing beyond it is kept.
    fn budget(&self) -> usize {
        4 * self.max_pages
    }

    /// The page URLs of the sitemap (or of the sitemaps a sitemap index
    /// names, one level down), and whether some were left out for the
    /// budget (then the crawl is not complete).
    async fn sitemap_urls(
        &self,
        allowed: &(dyn Fn(&Url) -> bool + Sync),
    ) -> Result<(Vec<Url>, bool)> {
        let (kind, mut locs) = self.read_sitemap(&self.start).await?;
        if kind != "sitemapindex" {
            let cut = locs.len() > self.budget();
            locs.truncate(self.budget());
            return Ok((locs, cut));
        }
        // Child sitemaps are read like pages: within the prefix, as
        // robots.txt allows, and no more of them than pages may be read.
        let mut out = Vec::new();
        let children: Vec<Url> = locs
            .into_iter()
            .filter(|child| self.within(child) && allowed(child))
            .collect();
        let mut cut = children.len() > self.max_pages;
        for child in children.into_iter().take(self.max_pages) {
            if out.len() >= self.budget() {
                cut = true;
                break;
            }
            tokio::time::sleep(self.delay).await;
            let (_, pages) = self.read_sitemap(&child).await?;
            out.extend(pages);
        }
        cut |= out.len() > self.budget();
        out.truncate(self.budget());
        Ok((out, cut))
    }

    async fn read_sitemap(&self, url: &Url) -> Result<(String, Vec<Url>)> {
        self.network.check_url(url)?;
        let response = self.client.get(url.clone()).send().await.map_err(|e| {
            Error::invalid(format!(
                "the sitemap {url} is unreachable: {}; nothing was changed",
                describe(&e)
            ))
        })?;
        if !response.status().is_success() {
            return Err(Error::invalid(format!(
                "the sitemap {url} answers {}; nothing was changed",
                response.status()
            )));
        }
        let body = self.body(response).await.map_err(|reason| {
            Error::invalid(format!("the sitemap {url}: {reason}; nothing was changed"))
        })?;
        parse_sitemap(&body).map_err(|reason| {
            Error::invalid(format!(
                "the sitemap {url} is malformed: {reason}; nothing was changed"
            ))
        })
    }

    async fn fetch(&self, url: &Url, before: Option<&Page>) -> Fetched {
        if let Err(e) = self.network.check_url(url) {
            return Fetched::Failed(e.to_string());
        }
        let mut request = self.client.get(url.clone());
        if let Some(page) = before {
            if let Some(etag) = &page.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &page.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, modified);
            }
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Fetched::Failed(describe(&e)),
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Fetched::NotModified;
        }
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Fetched::Gone;
        }
        // Its readers lost access upstream: so do ours.
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Fetched::Forbidden;
        }
        // A redirect the policy did not follow: out of the prefix.
        if status.is_redirection() {
            return Fetched::Ignored;
        }
        if !status.is_success() {
            return Fetched::Failed(format!("HTTP {status}"));
        }
        let landed = response.url().clone();
        if !self.within(&landed) {
            return Fetched::Ignored;
        }
        let text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (text(header::ETAG), text(header::LAST_MODIFIED));
        let content_type = text(header::CONTENT_TYPE).unwrap_or_default();
        let Some(extension) = extension_of(&content_type, &landed) else {
            return Fetched::Ignored;
        };
        match self.body(response).await {
            Ok(body) => Fetched::Page {
                url: landed,
                extension,
                body,
                etag,
                last_modified,
            },
            Err(reason) => Fetched::Failed(reason),
        }
    }

    /// A response's body, refused past the document size limit.
    async fn body(&self, response: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
        let max = self.limits.max_bytes;
        read_capped(response, max).await.map_err(|e| {
            if e.is_empty() {
                format!("larger than the {max} bytes a document may be (ingest.max_document_mb)")
            } else {
                e
            }
        })
    }

    /// The links of an HTML page within the prefix, without fragments.
    fn links(&self, page: &Url, body: &[u8]) -> Vec<String> {
        let html = String::from_utf8_lossy(body);
        // The loader refuses pages nested too deep; so does the crawler.
        if crate::formats::html_depth(&html, crate::formats::MAX_HTML_DEPTH)
            > crate::formats::MAX_HTML_DEPTH
        {
            return vec![];
        }
        let doc = scraper::Html::parse_document(&html);
        let anchors = scraper::Selector::parse("a[href]").expect("static selector");
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for a in doc.select(&anchors) {
            let Some(href) = a.value().attr("href") else {
                continue;
            };
            let Ok(mut url) = page.join(href.trim()) else {
                continue;
            };
            url.set_fragment(None);
            if self.within(&url) && seen.insert(url.to_string()) {
                out.push(url.to_string());
            }
            if out.len() == MAX_LINKS {
                break;
            }
        }
        out
    }
}

/// A response's body, read up to `max` bytes: an empty error when it is
/// longer, else what failed.
async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> std::result::Result<Vec<u8>, String> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(String::new());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return Err(String::new());
        }
    }
    Ok(body)
}

/// The loader a response goes to, by its content type (else the URL's
/// extension); `None` for what is not a document.
fn extension_of(content_type: &str, url: &Url) -> Option<&'static str> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "text/html" | "application/xhtml+xml" => Some("html"),
        "text/markdown" | "text/x-markdown" => Some("md"),
        "text/plain" => Some(if url.path().ends_with(".md") {
            "md"
        } else {
            "txt"
        }),
        "application/pdf" => Some("pdf"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "" | "application/octet-stream" => {
            let ext = crate::load::extension(std::path::Path::new(url.path()));
            crate::SUPPORTED_EXTENSIONS
                .iter()
                .find(|e| **e == ext)
                .copied()
        }
        _ => None,
    }
}

/// A file name for the loader: the URL's last segment (its title when the
/// page names none), with the extension the content type says.
fn file_name(url: &Url, extension: &str) -> String {
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|s| !s.is_empty())
        .unwrap_or("index");
    let stem = last.rsplit_once('.').map_or(last, |(stem, _)| stem);
    let stem = if stem.is_empty() { "index" } else { stem };
    format!("{stem}.{extension}")
}

/// `(root element, <loc> URLs)` of a sitemap or sitemap index.
fn parse_sitemap(body: &[u8]) -> std::result::Result<(String, Vec<Url>), String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    let mut root: Option<String> = None;
    let mut in_loc = false;
    let mut loc = String::new();
    let mut out = Vec::new();
    let mut depth = 0usize;
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| e.to_string())?
        {
            Event::Start(e) => {
                depth += 1;
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if root.is_none() {
                    if name != "urlset" && name != "sitemapindex" {
                        return Err(format!(
                            "its root element is <{name}>, not <urlset> or <sitemapindex>"
                        ));
                    }
                    root = Some(name.clone());
                }
                if name == "loc" {
                    in_loc = true;
                    loc.clear();
                }
            }
            Event::Text(t) if in_loc => {
                loc.push_str(&t.unescape().map_err(|e| e.to_string())?);
            }
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                if e.local_name().as_ref() == b"loc" {
                    in_loc = false;
                    let url = Url::parse(loc.trim())
                        .map_err(|e| format!("<loc>{}</loc> is not a URL ({e})", loc.trim()))?;
                    out.push(url);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    match root {
        Some(root) if depth == 0 => Ok((root, out)),
        Some(_) => Err("it ends before its elements are closed".into()),
        None => Err("it has no <urlset> or <sitemapindex>".into()),
    }
}

/// A request error in words: the kind, and what reqwest says of it.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    let mut message = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sitemaps_good_and_bad() {
        let ok = br#"<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
            <url><loc>https://w.example/a</loc></url><url><loc> https://w.example/b?x=1&amp;y=2 </loc></url></urlset>"#;
        let (root, urls) = parse_sitemap(ok).unwrap();
        assert_eq!(root, "urlset");
        assert_eq!(urls[1].as_str(), "https://w.example/b?x=1&y=2");
        for (bad, why) in [
            (
                &b"<html><body>not a sitemap</body></html>"[..],
                "root element is <html>",
            ),
            (
                b"<urlset><url><loc>https://w.example/a</loc>",
                "ends before",
            ),
            (
                b"<urlset><url><loc>not a url</loc></url></urlset>",
                "not a URL",
            ),
            (b"", "no <urlset>"),
        ] {
            let err = parse_sitemap(bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let config = |start: &str, prefix: Option<&str>| WebConfig {
            start_url: start.into(),
            prefix: prefix.map(str::to_string),
            max_pages: 10,
            delay_ms: 0,
            allow_networks: vec![],
        };
        assert!(
            config("https://w.example/docs/start", None)
                .validate()
                .is_ok()
        );
        assert_eq!(
            config("https://w.example/docs/start", None)
                .prefix()
                .unwrap()
                .as_str(),
            "https://w.example/docs/"
        );
        for bad in [
            config("ftp://w.example/", None),
            config("not a url", None),
            config("https://w.example/a", Some("https://w.example/b/")),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loaders_by_content_type() {
        let url = Url::parse("https://w.example/guide/leave.md").unwrap();
        assert_eq!(extension_of("text/html; charset=utf-8", &url), Some("html"));
        assert_eq!(extension_of("text/plain", &url), Some("md"));
        assert_eq!(extension_of("image/png", &url), None);
        assert_eq!(extension_of("", &url), Some("md"));
        assert_eq!(file_name(&url, "md"), "leave.md");
        let root = Url::parse("https://w.example/").unwrap();
        assert_eq!(file_name(&root, "html"), "index.html");
    }
}
